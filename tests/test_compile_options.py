"""The library's compiler options on the CPU: convolutions leave YNNPACK for Eigen, with the
same results to float32 rounding; a jaxlib without the option compiles as plain ``jax.jit``."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simple_reflow import compile_options


def _conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _ynn_fusions(compiled) -> int:
    return len(re.findall(r'"kind":"__ynn', compiled.as_text()))


def test_convolutions_compile_without_ynnpack_and_agree_with_plain_jit():
    if not compile_options.cpu_conv_options():
        pytest.skip("this jaxlib has no xla_cpu_experimental_ynn_fusion_type compiler option")
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 32))
    w = jax.random.normal(jax.random.key(1), (3, 3, 32, 32)) / 17

    def loss(x, w):
        y = _conv(x, w)
        return jnp.sum(y @ jnp.eye(32)), y  # a dot next to the convolution stays YNNPACK's

    plain = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    ours = compile_options.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    assert _ynn_fusions(plain.lower(x, w).compile()) > _ynn_fusions(ours.lower(x, w).compile())
    text = ours.lower(x, w).compile().as_text()
    convs = [line for line in text.splitlines() if " convolution(" in line]
    assert len(convs) == 3  # forward, input gradient, weight gradient: plain Eigen convolutions
    (a, ya), ga = plain(x, w)
    (b, yb), gb = ours(x, w)
    # 288 products per output: float32 sums in another order differ by a few ulps of the sum
    np.testing.assert_allclose(yb, ya, rtol=0, atol=1e-5 * float(jnp.abs(ya).max()))
    for u, v in zip(ga, gb, strict=True):
        np.testing.assert_allclose(v, u, rtol=0, atol=1e-5 * float(jnp.abs(u).max()))


def test_user_options_are_kept_and_only_the_cpu_gets_them(monkeypatch):
    seen = {}
    monkeypatch.setattr(jax, "jit", lambda fn, **kw: seen.update(kw) or fn)
    compile_options.jit(abs, compiler_options={"xla_cpu_enable_fast_math": False})
    assert seen["compiler_options"]["xla_cpu_enable_fast_math"] is False
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    seen.clear()
    compile_options.jit(abs, donate_argnums=0)
    assert seen == {"donate_argnums": 0}


def test_the_environment_can_turn_the_options_off(monkeypatch):
    monkeypatch.setenv("SIMPLE_REFLOW_CPU_CONV", "xla")
    assert compile_options.cpu_conv_options() == {}
    monkeypatch.setenv("SIMPLE_REFLOW_CPU_CONV", "onednn")
    with pytest.raises(ValueError, match="SIMPLE_REFLOW_CPU_CONV='onednn'"):
        compile_options.cpu_conv_options()
