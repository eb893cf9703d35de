"""Winograd F(4×4, 3×3) against float64 references, with the rounding bound of its arithmetic.

Every output of the Winograd algorithm is a sum of products whose terms pass through at most
``n`` float32 roundings (input transform 2 × 6, kernel transform with its float32 constants
14, the product 1, the channel sum I − 1, output transform 2 × 6), so
``|ŷ − y| ≤ γ_n · E`` with ``γ_n ≈ n·u`` (u = 2⁻²⁴; Higham, *Accuracy and Stability*, §3.1)
and ``E`` the same algorithm evaluated on absolute values — computed here in float64 from the
transform matrices, independently of the library's tiling.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from simple_reflow.models import layers, winograd

U32 = 2.0**-24


def _conv_ref(x, w):
    """Stride-1 "same" cross-correlation in float64: ``y[p] = Σ_k x[p + k − 1] · w[k]``."""
    _, h, wd, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(
        xp[:, k : k + h, l : l + wd] @ w[k, l]
        for k in range(3)
        for l in range(3)  # noqa: E741
    )


def _input_grad_ref(g, w):
    """``∂/∂x Σ g·y`` in float64: ``dx[q] = Σ_k g[q − k + 1] · w[k]ᵀ``."""
    _, h, wd, _ = g.shape
    gp = np.pad(g, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(
        gp[:, 2 - k : 2 - k + h, 2 - l : 2 - l + wd] @ w[k, l].T
        for k in range(3)
        for l in range(3)  # noqa: E741
    )


def _weight_grad_ref(x, g):
    """``∂/∂w Σ g·y`` in float64: ``dw[k, l] = Σ_{b,p} x[b, p + (k, l) − 1]ᵀ g[b, p]``."""
    _, h, wd, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return np.stack(
        [
            np.stack(
                [np.einsum("bhwi,bhwo->io", xp[:, k : k + h, l : l + wd], g) for l in range(3)]  # noqa: E741
            )
            for k in range(3)
        ]
    )


def _envelope(x, w):
    """``E``: Winograd F(4×4, 3×3) on absolute values, in float64, cropped to ``x``'s size."""
    at, bt, g = (np.abs(m.astype(np.float64)) for m in (winograd.AT, winograd.BT, winograd.G))
    kern = np.einsum("ip,jq,pa,qb,pk,ql->ijabkl", at, at, bt, bt, g, g)
    b, h, wd, _ = x.shape
    th, tw = -(-h // 4), -(-wd // 4)
    xp = np.pad(np.abs(x), ((0, 0), (1, 4 * th + 1 - h), (1, 4 * tw + 1 - wd), (0, 0)))
    tiles = np.stack(
        [
            np.stack([xp[:, 4 * r : 4 * r + 6, 4 * s : 4 * s + 6] for s in range(tw)], 1)
            for r in range(th)
        ],
        1,
    )  # [B, th, tw, 6, 6, I]
    e = np.einsum("ijabkl,nrsabc,klco->nrisjo", kern, tiles, np.abs(w))
    return e.reshape(b, 4 * th, 4 * tw, -1)[:, :h, :wd]


def _gamma(n):
    return n * U32 / (1 - n * U32)


@pytest.mark.parametrize("shape", [(2, 7, 7, 5, 3), (1, 8, 8, 16, 6), (1, 4, 9, 3, 2)])
def test_forward_and_gradients_within_the_rounding_bound(shape):
    b, h, wd, ci, co = shape
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (b, h, wd, ci))
    w = jax.random.normal(keys[1], (3, 3, ci, co))
    g = jax.random.normal(keys[2], (b, h, wd, co))
    y, vjp = jax.vjp(jax.jit(winograd.winograd_conv3x3), x, w)
    dx, dw = vjp(g)
    x64, w64, g64 = (np.asarray(v, np.float64) for v in (x, w, g))
    n_wino = ci + 40  # roundings per term, module docstring

    bound = _gamma(n_wino) * _envelope(x64, w64)
    assert np.all(np.abs(np.asarray(y) - _conv_ref(x64, w64)) <= bound)
    # The input gradient is Winograd on the cotangent with the flipped, transposed kernel.
    w_t = np.flip(w64, (0, 1)).transpose(0, 1, 3, 2)
    bound_dx = _gamma(co + 40) * _envelope(g64, w_t)
    assert np.all(np.abs(np.asarray(dx) - _input_grad_ref(g64, w64)) <= bound_dx)
    # The weight gradient is XLA's: a plain sum over B·H·W products per entry.
    dw_ref, abs_dw = _weight_grad_ref(x64, g64), _weight_grad_ref(np.abs(x64), np.abs(g64))
    assert np.all(np.abs(np.asarray(dw) - dw_ref) <= _gamma(b * h * wd + 1) * abs_dw)


def test_the_bound_catches_a_wrong_transform(monkeypatch):
    # The test above must fail for a broken algorithm: perturb one interpolation constant.
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 4))
    w = jax.random.normal(jax.random.key(2), (3, 3, 4, 2))
    broken = winograd.AT.copy()
    broken[3, 3] = 8.001
    monkeypatch.setattr(winograd, "AT", broken)
    y = np.asarray(winograd.winograd_conv3x3(x, w))
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    err = np.abs(y - _conv_ref(x64, w64))
    assert np.any(err > _gamma(44) * _envelope(x64, w64))


def test_rejects_other_kernels_and_dtypes():
    with pytest.raises(ValueError, match="3×3 kernel"):
        winograd.winograd_conv3x3(jnp.zeros((1, 4, 4, 2)), jnp.zeros((5, 5, 2, 2)))
    with pytest.raises(ValueError, match="float32 only"):
        winograd.winograd_conv3x3(jnp.zeros((1, 4, 4, 2), jnp.bfloat16), jnp.zeros((3, 3, 2, 2)))


@pytest.mark.parametrize(
    "x_shape, channels, dtype, backend, expected",
    [
        ((8, 32, 32, 256), 256, jnp.float32, "cpu", True),  # 2^29: CIFAR10 DDPM++ at 32²
        ((4, 32, 32, 256), 256, jnp.float32, "cpu", True),  # 2^28
        ((8, 16, 16, 256), 256, jnp.float32, "cpu", False),  # 2^27
        ((64, 16, 16, 256), 256, jnp.float32, "cpu", True),
        ((8, 32, 32, 256), 256, jnp.bfloat16, "cpu", False),
        ((8, 32, 32, 256), 256, jnp.float32, "gpu", False),
    ],
)
def test_winograd_pays(x_shape, channels, dtype, backend, expected):
    assert winograd.winograd_pays(x_shape, (3, 3, x_shape[3], channels), dtype, backend) is expected


def test_conv2d_auto_uses_winograd_exactly_where_it_pays(monkeypatch):
    calls = []
    real = winograd.winograd_conv3x3
    monkeypatch.setattr(
        winograd, "winograd_conv3x3", lambda x, w: calls.append(x.shape) or real(x, w)
    )
    conv = layers.Conv2d(256, 256, 3, conv_algorithm="auto", rngs=nnx.Rngs(0))
    for shape in [(8, 32, 32, 256), (8, 16, 16, 256)]:
        jax.eval_shape(conv, jax.ShapeDtypeStruct(shape, jnp.float32))
    assert calls == ([(8, 32, 32, 256)] if jax.default_backend() == "cpu" else [])
