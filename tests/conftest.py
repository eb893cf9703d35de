"""Shared test setup: CPU only, strict dtype and rank promotion, a run-time call counter.

Strict promotion (as diffrax's ``test/conftest.py``): ``jax_numpy_dtype_promotion = "strict"``
turns every implicit dtype promotion (float32 with float64, int with float, bfloat16 with
float32) into an error, and ``jax_numpy_rank_promotion = "raise"`` turns every implicit
broadcast between arrays of different ranks into one, so a test fails where library code would
silently compute in the wrong precision or broadcast by accident. It is set when this file is
imported, before any test module, for every test in this process. A test that drives code we do
not own and that is not clean under it (a third-party library's internals) opts out with
``@pytest.mark.loose_promotion(reason=...)`` naming what breaks; nothing opts out silently.
Subprocess tests (``scripts/*.py`` run by ``subprocess``) run with JAX's defaults.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "loose_promotion(reason): run with JAX's standard dtype promotion and rank "
        "broadcasting, because code the test drives and we do not own is not clean under the "
        "strict setting (the reason says what)",
    )


@pytest.fixture(autouse=True)
def _promotion_opt_out(request):
    """Standard promotion for a test marked ``loose_promotion``; strict for every other."""
    marker = request.node.get_closest_marker("loose_promotion")
    if marker is None:
        yield
        return
    if not marker.kwargs.get("reason"):
        raise ValueError(
            f"{request.node.nodeid}: loose_promotion needs reason=... naming the "
            "code that is not clean under strict promotion."
        )
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


def count_calls(denoise_fn):
    """``(fn, counter)``: ``fn`` is ``denoise_fn`` and counts its *executed* calls on the host
    (a ``jax.debug.callback`` per call, so calls inside ``lax.scan`` or a while loop count once
    per iteration, unlike trace-time counting)."""
    counter = {"calls": 0}

    def bump():
        counter["calls"] += 1

    def fn(x_t, t, cond=None):
        jax.debug.callback(bump, ordered=False)
        return denoise_fn(x_t, t, cond)

    return fn, counter
