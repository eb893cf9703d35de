"""Evaluation metrics: exact W2, straightness, Fréchet distance."""
