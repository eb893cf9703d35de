"""Guidance as denoiser wrappers (METHOD.md §5) [paper: used; form recon].

Both return a denoiser with the usual signature, so every solver and the NFE count apply
unchanged; a guided evaluation costs two network calls (the sampler's NFE counts guided
evaluations, as in the paper's NFE figures).
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["autoguidance", "classifier_free"]


def autoguidance(denoise_fn, bad_fn, w):
    """D_w = D + w·(D − D_bad), D_bad a weaker model; w = 0 is unguided (CIFAR10: w = 0.6)."""

    def guided(x_t, t, cond=None):
        d = denoise_fn(x_t, t, cond)
        return d + w * (d - bad_fn(x_t, t, cond))

    return guided


def classifier_free(denoise_fn, w, null_class):
    """D_w = D(·, c) + w·(D(·, c) − D(·, ∅)); ``null_class`` is the index of ∅.

    The conditional and unconditional passes run as one batch of twice the size.
    """

    def guided(x_t, t, cond):
        b = x_t.shape[0]
        null = jnp.full_like(cond, null_class)
        d = denoise_fn(
            jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]), jnp.concatenate([cond, null])
        )
        d_c, d_u = d[:b], d[b:]
        return d_c + w * (d_c - d_u)

    return guided
