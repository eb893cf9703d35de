"""Orchestration: train state and step, the loop with checkpoints, and the stages."""
