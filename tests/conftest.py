"""Shared test setup: CPU only, quiet logs, stub-free imports."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def count_calls(denoise_fn):
    """``(fn, counter)``: ``fn`` is ``denoise_fn`` and counts its *executed* calls on the host
    (a ``jax.debug.callback`` per call, so calls inside ``lax.scan`` or a while loop count once
    per iteration, unlike trace-time counting)."""
    import jax

    counter = {"calls": 0}

    def bump():
        counter["calls"] += 1

    def fn(x_t, t, cond=None):
        jax.debug.callback(bump, ordered=False)
        return denoise_fn(x_t, t, cond)

    return fn, counter
