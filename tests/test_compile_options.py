"""The library's compiler options on the CPU: convolutions leave YNNPACK for Eigen, with the
same results to float32 rounding; fusion barriers survive and stop XLA from recomputing a
tensor in each of its consumers; an option this jaxlib lacks is left out, the others kept."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import backbones
from simple_reflow import compile_options, losses_edm
from simple_reflow.train.configure import model_from_config
from simple_reflow.train.step import init_state, make_train_step, split_model


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


def _smoke_train_step(monkeypatch, barriers: bool):
    """The compiled training step of the DDPM++ smoke network (dropout on), its first result."""
    if not barriers:
        monkeypatch.setattr(compile_options, "fusion_barrier", lambda x: x)
    cfg = backbones.ddpmpp_smoke()
    cfg.dropout = 0.1
    model = model_from_config(cfg, data_shape=(16, 16, 3), rngs=nnx.Rngs(0))
    model_def, params = split_model(model)
    opt = optax.adam(1e-3)
    state = init_state(params, opt, seed=0)
    batch = {"x0": jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=-1, maxval=1)}
    step = make_train_step(model_def, losses_edm.edm_loss, opt, ema_decay=0.999)
    compiled = compile_options.jit(step).lower(state, batch).compile()
    monkeypatch.undo()
    return compiled.as_text(), compiled(state, batch)


@pytest.mark.slow
def test_fusion_barriers_stop_recomputation_and_change_no_result(monkeypatch):
    if "xla_disable_hlo_passes" not in compile_options.cpu_conv_options():
        pytest.skip("this jaxlib has no xla_disable_hlo_passes compiler option")
    text, (state, metrics) = _smoke_train_step(monkeypatch, barriers=True)
    plain_text, (plain_state, plain_metrics) = _smoke_train_step(monkeypatch, barriers=False)

    def wide_fusions(t):  # fusions reading 20 or more arrays: long chains fused into a consumer
        ops = re.findall(r"= \S+ fusion\((.*?)\), kind", t)
        return sum(o.count("%") >= 20 for o in ops)

    assert "opt-barrier" in text and "opt-barrier" not in plain_text
    # Measured on the 3-level smoke net: 28 wide fusions without the barriers, 3 with them; the
    # Threefry rounds of the dropout masks (logical right shifts), hashed in each use of a mask
    # without them: 1570 vs 308. On the 2-level smoke net (fewer masks, each used in fewer
    # places): 604 vs 224 shifts.
    assert 4 * wide_fusions(text) < wide_fusions(plain_text)
    hashes = [len(re.findall(r" shift-right-logical\(", t)) for t in (text, plain_text)]
    assert 2 * hashes[0] < hashes[1]
    # Same step: only the order of float32 sums may differ.
    np.testing.assert_allclose(metrics["train/loss"], plain_metrics["train/loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(plain_state), strict=True):
        if jnp.issubdtype(a.dtype, jnp.floating):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * (float(jnp.abs(b).max()) + 1e-6))


def test_fusion_barrier_is_the_identity_and_absent_without_the_options(monkeypatch):
    x = {"a": jnp.arange(6.0).reshape(2, 3), "mask": jnp.array([True, False])}
    out = jax.jit(compile_options.fusion_barrier)(x)
    np.testing.assert_array_equal(out["a"], x["a"])
    np.testing.assert_array_equal(out["mask"], x["mask"])
    grad = jax.grad(lambda v: jnp.sum(compile_options.fusion_barrier(v) ** 2))(x["a"])
    np.testing.assert_array_equal(grad, 2 * x["a"])
    monkeypatch.setenv("SIMPLE_REFLOW_CPU_CONV", "xla")
    assert compile_options.fusion_barrier(x) is x


def test_an_option_this_jaxlib_lacks_is_left_out(monkeypatch):
    real = compile_options.cpu_conv_options()
    if "xla_cpu_scheduler_type" not in real:
        pytest.skip("this jaxlib has no xla_cpu_scheduler_type compiler option")
    bogus = {**compile_options.CPU_CONV_OPTIONS, "xla_cpu_scheduler_type": "NO_SUCH_SCHEDULER"}
    monkeypatch.setattr(compile_options, "CPU_CONV_OPTIONS", bogus)
    compile_options._supported.cache_clear()
    try:
        kept = compile_options.cpu_conv_options()
    finally:
        monkeypatch.undo()
        compile_options._supported.cache_clear()
    assert kept == {k: v for k, v in real.items() if k != "xla_cpu_scheduler_type"}
    assert compile_options.cpu_conv_options() == real
