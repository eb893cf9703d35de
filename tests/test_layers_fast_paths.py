"""The two hand-written fast paths of the U-Net layers against independent references.

- Dropout: :mod:`simple_reflow.models.dropout` computes Threefry unrolled; its bits, masks and
  outputs must equal JAX's own (``jax.random.bits``/``bernoulli``, ``nnx.Dropout``) exactly.
- GroupNorm: :func:`layers.group_norm` has a hand-written VJP; its value is checked against a
  float64 NumPy evaluation of the definition and its derivative against autodiff of the direct
  formula and against float64 central differences.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from simple_reflow.models import dropout, layers

SHAPES = [(), (1,), (7,), (5, 3), (2, 3, 5, 7), (3, 8, 8, 48)]


@pytest.mark.parametrize("shape", SHAPES)
def test_threefry_bits_equal_jax(shape):
    for key in (jax.random.key(0), jax.random.fold_in(jax.random.key(123), 7)):
        key = jax.random.split(key, 3)[2]
        np.testing.assert_array_equal(
            dropout.random_bits(key, shape), jax.random.bits(key, shape, jnp.uint32)
        )
        jitted = jax.jit(dropout.random_bits, static_argnums=1)(key, shape)
        np.testing.assert_array_equal(jitted, jax.random.bits(key, shape, jnp.uint32))


def test_threefry_known_answer():
    # Random123's known-answer vector for Threefry-2x32-20 with key = counter = 0.
    z = jnp.zeros((), jnp.uint32)
    out = dropout.threefry2x32(z, z, z, z)
    assert [int(v) for v in out] == [0x6B200159, 0x99BA4EFE]


@pytest.mark.parametrize("p", [0.0, 0.13, 0.5, 0.87, 1.0])
def test_bernoulli_equals_jax(p):
    key = jax.random.key(42)
    shape = (4, 16, 16, 32)
    mask = dropout.bernoulli(key, p, shape)
    np.testing.assert_array_equal(mask, jax.random.bernoulli(key, p, shape))
    if 0 < p < 1:  # and it is a Bernoulli(p): 32k draws, 6 standard errors
        assert abs(float(mask.mean()) - p) < 6 * np.sqrt(p * (1 - p) / mask.size)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dropout_equals_nnx_dropout(dtype):
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 16)).astype(dtype)
    key = jax.random.key(9)
    for rate in (0.0, 0.13, 0.5, 1.0):
        ours = dropout.Dropout(rate)(x, deterministic=False, rngs=key)
        ref = nnx.Dropout(rate)(x, deterministic=False, rngs=key)
        assert ours.dtype == x.dtype
        np.testing.assert_array_equal(ours, ref)
        np.testing.assert_array_equal(dropout.Dropout(rate)(x, deterministic=True), x)


def test_other_key_types_use_jax():
    key = jax.random.key(3, impl="rbg")
    shape = (3, 5)
    np.testing.assert_array_equal(
        dropout.bernoulli(key, 0.3, shape), jax.random.bernoulli(key, 0.3, shape)
    )
    with pytest.raises(ValueError, match="dropout rate"):
        dropout.Dropout(1.5)
    with pytest.raises(ValueError, match="needs a key"):
        dropout.Dropout(0.5)(jnp.ones(3), deterministic=False)


def _gn_numpy(x, w, b, groups, eps):
    """The definition in float64: per-sample, per-group mean and biased variance."""
    x = np.asarray(x, np.float64)
    bsz, h, wd, c = x.shape
    g = x.reshape(bsz, h, wd, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    y = ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)
    return y * np.asarray(w, np.float64) + np.asarray(b, np.float64)


def _gn_direct(x, w, b, groups, eps):
    """The direct formula in JAX (differentiated by autodiff)."""
    bsz, h, wd, c = x.shape
    g = x.reshape(bsz, h, wd, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = jnp.square(g - mean).mean(axis=(1, 2, 4), keepdims=True)
    y = ((g - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape)
    return y * w[None, None, None, :] + b[None, None, None, :]


def _gn_inputs(shape=(2, 6, 5, 32), offset=1.5):
    k = jax.random.split(jax.random.key(0), 4)
    c = shape[-1]
    x = 3.0 * jax.random.normal(k[0], shape) + offset
    w = 1.0 + 0.5 * jax.random.normal(k[1], (c,))
    b = jax.random.normal(k[2], (c,))
    ct = jax.random.normal(k[3], shape)
    return x, w, b, ct


@pytest.mark.parametrize("groups", [1, 8, 32])
def test_group_norm_value(groups):
    x, w, b, _ = _gn_inputs()
    y = layers.group_norm(x, w, b, groups, 1e-5)
    # float32 arithmetic on O(1) values: a few ulps, far below any modelling effect.
    np.testing.assert_allclose(y, _gn_numpy(x, w, b, groups, 1e-5), rtol=0, atol=2e-6 * 8)


@pytest.mark.parametrize("groups", [1, 8, 32])
def test_group_norm_vjp_against_autodiff(groups):
    x, w, b, ct = _gn_inputs()

    def loss(fn):
        return lambda x, w, b: jnp.sum(fn(x, w, b, groups, 1e-5) * ct)

    ours = jax.grad(loss(layers.group_norm), (0, 1, 2))(x, w, b)
    ref = jax.grad(loss(_gn_direct), (0, 1, 2))(x, w, b)
    for a, r in zip(ours, ref, strict=True):
        scale = float(jnp.abs(r).max())
        np.testing.assert_allclose(a, r, rtol=0, atol=1e-5 * scale)


def test_group_norm_vjp_against_finite_differences():
    groups, eps = 8, 1e-5
    x, w, b, ct = _gn_inputs(shape=(2, 4, 4, 16))
    dx, dw, db = jax.grad(
        lambda x, w, b: jnp.sum(layers.group_norm(x, w, b, groups, eps) * ct), (0, 1, 2)
    )(x, w, b)
    ct64 = np.asarray(ct, np.float64)
    rng = np.random.default_rng(0)
    h = 1e-5
    for _ in range(3):
        vx, vw, vb = (rng.standard_normal(a.shape) for a in (x, w, b))

        def f(e, vx=vx, vw=vw, vb=vb):
            args = (
                np.asarray(x, np.float64) + e * vx,
                np.asarray(w) + e * vw,
                np.asarray(b) + e * vb,
            )
            return float(np.sum(_gn_numpy(*args, groups, eps) * ct64))

        fd = (f(h) - f(-h)) / (2 * h)  # O(h²) ≈ 1e-10 in float64
        ours = float(jnp.sum(dx * vx) + jnp.sum(dw * vw) + jnp.sum(db * vb))
        # The float32 gradient: relative error ~1e-6 of the terms summed (sizes ~|ct|·|v|·n).
        assert abs(ours - fd) < 1e-4 * (1.0 + abs(fd)), (ours, fd)


def test_group_norm_keeps_dtype_and_matches_module():
    x, w, b, ct = _gn_inputs(shape=(2, 4, 4, 16))
    y = layers.group_norm(x.astype(jnp.bfloat16), w, b, 4, 1e-5)
    assert y.dtype == jnp.bfloat16
    dx = jax.grad(lambda x: jnp.sum(layers.group_norm(x, w, b, 4, 1e-5).astype(jnp.float32)))(
        x.astype(jnp.bfloat16)
    )
    assert dx.dtype == jnp.bfloat16
    module = layers.GroupNorm(16)  # EDM's rule: min(32, 16 // 4) = 4 groups
    assert module.num_groups == 4
    np.testing.assert_allclose(
        module(x), _gn_numpy(x, np.ones(16), np.zeros(16), 4, 1e-5), atol=1e-5
    )
