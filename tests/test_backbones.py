"""Image backbones (EDM's DDPM++ and ADM), EDM preconditioning, and model-config validation."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import backbones
from simple_reflow import paths
from simple_reflow.models import SONGUNET_VARIANTS, build_model, count_parameters
from simple_reflow.models.layers import class_labels, conv3x3
from simple_reflow.train.configure import model_from_config, validate_model_config

# Reference parameter counts, obtained by instantiating EDM's own PyTorch networks
# (NVlabs/edm training/networks.py, torch 2.13 CPU) as `EDMPrecond(**kwargs)` with the network
# options of EDM's train.py and README and summing `p.numel()` over `parameters()`:
#   CIFAR10 32²:   --arch=ddpmpp --cond=0 (augment on: augment_dim=9)          -> 55,733,891
#   AFHQv2 64²:    --arch=ddpmpp --cond=0 --cres=1,2,2,2 (augment_dim=9)      -> 61,805,571
#   FFHQ 64²:      same network as AFHQv2 (only dropout differs)             -> 61,805,571
#   ImageNet-64:   --arch=adm --cond=1 (label_dim=1000, augment=0)           -> 295,899,267
#   CIFAR10 32²:   --arch=ncsnpp --cond=0 (augment_dim=9)                     -> 56,397,827
#   AFHQv2/FFHQ:   --arch=ncsnpp --cres=1,2,2,2 (augment_dim=9)              -> 62,761,091
# (NCSN++'s Fourier frequencies are a buffer, not a parameter, in EDM and here.)
EDM_PARAM_COUNTS = {
    "cifar10_ddpmpp": (backbones.ddpmpp_cifar10, (32, 32, 3), 55_733_891),
    "cifar10_ncsnpp": (backbones.ncsnpp_cifar10, (32, 32, 3), 56_397_827),
    "afhqv2_ncsnpp": (lambda: backbones.ncsnpp_64(dropout=0.25), (64, 64, 3), 62_761_091),
    "afhqv2_ddpmpp": (lambda: backbones.ddpmpp_64(dropout=0.25), (64, 64, 3), 61_805_571),
    "ffhq_ddpmpp": (lambda: backbones.ddpmpp_64(dropout=0.05), (64, 64, 3), 61_805_571),
    "imagenet64_adm": (backbones.adm_imagenet64, (64, 64, 3), 295_899_267),
}


def _num_params(model) -> int:
    return count_parameters(model)


def _random_model(cfg, data_shape, seed=0, scale=0.1):
    """Builds ``cfg`` abstractly and fills every parameter with scale·N(0, 1) from NumPy.

    Skips the eager initialisation (one XLA compilation per parameter shape) and leaves no
    output layer at zero, so the network term of the denoiser is not negligible.
    """
    model = nnx.eval_shape(lambda: model_from_config(cfg, data_shape=data_shape, rngs=nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    rng = np.random.default_rng(seed)
    new = [jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype) for x in leaves]
    nnx.update(model, jax.tree.unflatten(treedef, new))
    return model


@nnx.jit
def _denoise(model, x_t, t, cond=None, key=None):
    """One compiled call of the flow-time denoiser (eager op-by-op dispatch is slow on a CPU)."""
    return model(x_t, t, cond, key=key)


def _tiny(preset, **fields):
    """A preset shrunk to 2 levels of 8/16 channels (eager init compiles once per shape)."""
    cfg = preset()
    cfg.update(
        dict(
            model_channels=8,
            channel_mult=(1, 2),
            num_blocks=1,
            attn_resolutions=(4,),
            channels_per_head=8,
        )
    )
    cfg.update(fields)
    return cfg


SHAPE = (8, 8, 3)
BATCH = 16


@pytest.fixture(scope="module")
def inputs():
    x_t = jax.random.normal(jax.random.key(1), (BATCH, *SHAPE))
    t = jnp.linspace(0.05, 0.95, BATCH)
    return x_t, t


@pytest.mark.parametrize("name", sorted(EDM_PARAM_COUNTS))
def test_param_counts_equal_edm(name):
    preset, data_shape, expected = EDM_PARAM_COUNTS[name]
    cfg = preset()
    model = nnx.eval_shape(lambda: model_from_config(cfg, data_shape=data_shape, rngs=nnx.Rngs(0)))
    assert _num_params(model) == expected


@pytest.mark.parametrize("preset", [backbones.ddpmpp_smoke, backbones.adm_smoke])
def test_smoke_presets_build_with_expected_shapes(preset):
    model = nnx.eval_shape(
        lambda: model_from_config(preset(), data_shape=(32, 32, 3), rngs=nnx.Rngs(0))
    )
    out = nnx.eval_shape(
        lambda m: m(
            jnp.zeros((2, 32, 32, 3)),
            jnp.full((2,), 0.5),
            jnp.zeros((2,), jnp.int32),
            key=jax.random.key(0),
        ),
        model,
    )
    assert out.shape == (2, 32, 32, 3) and out.dtype == jnp.float32
    assert 10_000 < _num_params(model) < 1_000_000  # "tiny": CPU smoke runs in seconds


@pytest.mark.slow  # eager init compiles once per parameter shape: ~15 s on the shared 2-core CPU
def test_init_output_is_the_skip_path(inputs):
    # EDM initialises ADM's output conv to zero, so F = 0 exactly at init and
    # D(x_t, t) = c_skip(σ)·x_t/(1 − t) = σ_d²(1 − t)·x_t / (t² + σ_d²(1 − t)²).
    x_t, t = inputs
    cfg = _tiny(backbones.adm_smoke, dropout=0.5, label_dropout=0.5)
    model = model_from_config(cfg, data_shape=SHAPE, rngs=nnx.Rngs(0))
    out = _denoise(model, x_t, t, jnp.arange(BATCH) % cfg.num_classes)
    assert out.shape == x_t.shape
    tb = t[:, None, None, None]
    expected = 0.25 * (1 - tb) * x_t / (tb**2 + 0.25 * (1 - tb) ** 2)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)  # float32 rounding only


@pytest.fixture(scope="module")
def random_ddpmpp():
    """Tiny DDPM++ with dropout 0.5 and random (non-zero) weights everywhere."""
    return _random_model(_tiny(backbones.ddpmpp_smoke, dropout=0.5), SHAPE)


def test_edm_wrapper_equals_direct_formula(random_ddpmpp, inputs):
    model, sd = random_ddpmpp, 0.5
    x_t, t = inputs
    # EDM Table 1 by hand, in σ-space, then back to flow time.
    sigma = t / (1 - t)
    x_ve = x_t / (1 - t)[:, None, None, None]
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / jnp.sqrt(sigma**2 + sd**2)
    c_in = 1 / jnp.sqrt(sigma**2 + sd**2)
    c_noise = jnp.log(sigma) / 4
    e = lambda c: c[:, None, None, None]
    f = nnx.jit(lambda m, x, c: m.backbone(x, c))(model, e(c_in) * x_ve, c_noise)
    expected = e(c_skip) * x_ve + e(c_out) * f
    assert float(jnp.abs(e(c_out) * f).max()) > 1e-2  # network term ≫ the 1e-5 tolerance
    # The same float32 operations in another order: agreement to a few ulps of O(1) values.
    np.testing.assert_allclose(_denoise(model, x_t, t), expected, rtol=1e-5, atol=1e-5)
    # EDM-space entry point, fed through the library's conversions.
    edm = nnx.jit(lambda m, x, s: m.edm(x, s))
    np.testing.assert_allclose(
        edm(model, paths.to_ve(x_t, t), paths.sigma_from_t(t)), expected, rtol=1e-5, atol=1e-5
    )


def test_block_dropout_active_iff_key(random_ddpmpp, inputs):
    x_t, t = inputs
    np.testing.assert_array_equal(_denoise(random_ddpmpp, x_t, t), _denoise(random_ddpmpp, x_t, t))
    a = _denoise(random_ddpmpp, x_t, t, None, jax.random.key(0))
    b = _denoise(random_ddpmpp, x_t, t, None, jax.random.key(1))
    assert float(jnp.abs(a - b).max()) > 1e-3


def test_class_labels_null_class():
    # Label == num_classes, no labels at all, and a dropped label are all the zero vector.
    onehot = class_labels(jnp.array([0, 2, 3]), 3, 3)
    np.testing.assert_array_equal(onehot, [[1, 0, 0], [0, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(class_labels(None, 3, 2), np.zeros((2, 3)))
    dropped = class_labels(
        jnp.zeros(1000, jnp.int32), 3, 1000, label_dropout=0.25, key=jax.random.key(0)
    )
    frac = 1.0 - float(dropped[:, 0].mean())
    assert abs(frac - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 1000)  # 4σ binomial band


@pytest.mark.slow
def test_label_dropout_gives_null_class_output(inputs):
    x_t, _ = inputs
    t = jnp.full((BATCH,), 0.7)  # σ = 2.3: c_out ≈ 0.49, the network term dominates
    cfg = _tiny(backbones.adm_smoke, num_classes=10, label_dropout=0.5, dropout=0.0)
    model = _random_model(cfg, SHAPE)
    cond = jnp.arange(BATCH) % 10
    labelled = _denoise(model, x_t, t, cond)
    null = _denoise(model, x_t, t, jnp.full((BATCH,), 10))  # label 10 = the null class
    train = _denoise(model, x_t, t, cond, jax.random.key(5))  # dropout 0: only labels dropped
    err_l = jnp.abs(train - labelled).max(axis=(1, 2, 3))
    err_n = jnp.abs(train - null).max(axis=(1, 2, 3))
    gap = jnp.abs(labelled - null).max(axis=(1, 2, 3))
    assert float(gap.min()) > 1e-4  # labels matter: 100× the equality tolerance below
    dropped = err_n < 1e-6
    assert bool(jnp.all(dropped | (err_l < 1e-6)))  # every sample is one of the two
    assert 0 < int(dropped.sum()) < BATCH  # p = 0.5 on 16 samples: both occur for this key


def test_build_model_mlp():
    # 2 + 32 Fourier time features in, two hidden layers of 32, 2 out (weights and biases).
    expected = (2 + 32) * 32 + 32 + 32 * 32 + 32 + 32 * 2 + 2
    model = nnx.eval_shape(
        lambda: build_model("mlp", hidden=32, depth=2, data_shape=(2,), rngs=nnx.Rngs(0))
    )
    assert type(model).__name__ == "MLPDenoiser" and _num_params(model) == expected
    cfg = backbones.ddpmpp_smoke()  # image fields are ignored for the MLP
    cfg.name = "mlp"
    cfg.hidden, cfg.depth = 32, 2
    model = nnx.eval_shape(lambda: model_from_config(cfg, data_shape=(2,), rngs=nnx.Rngs(0)))
    assert _num_params(model) == expected


def test_build_model_takes_the_backbone_options_and_names_bad_ones():
    kw = dict(
        model_channels=16,
        channel_mult=(1, 2),
        channel_mult_emb=2,
        num_blocks=1,
        attn_resolutions=(8,),
        augment_dim=0,
        dropout=0.0,
    )
    build = lambda name, **extra: nnx.eval_shape(
        lambda: build_model(  # noqa: E731
            name, data_shape=(16, 16, 3), rngs=nnx.Rngs(0), **kw, **extra
        )
    )
    ncsnpp, songunet = build("ncsnpp"), build("songunet")  # ncsnpp's SongUNet options by default
    assert _num_params(ncsnpp) > _num_params(songunet)
    assert _num_params(ncsnpp) == _num_params(build("songunet", **SONGUNET_VARIANTS["ncsnpp"]))
    for name, extra, message in [
        ("ddpmpp", {"embedding_type": "fourier"}, "^embedding_type='fourier' is not ddpmpp's"),
        ("adm", {"resample_filter": (1, 1)}, "^resample_filter is not an option of"),
        ("adm", {"channels_per_head": 0}, "^channels_per_head=0"),
        ("unet", {}, "^name must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            build(name, **extra)
    with pytest.raises(ValueError, match="^channel_mult has 2 levels"):
        build_model("songunet", data_shape=(15, 15, 3), rngs=nnx.Rngs(0), **kw)


@pytest.mark.parametrize("batch, size", [(4, 8), (1, 8), (6, 16)])
def test_chunked_conv_gradient_equals_xla(batch, size):
    # conv3x3's custom VJP (input grad as a forward conv, weight grad summed over batch
    # chunks) must equal XLA's own transpose rules; float32 sums in another order.
    x = jax.random.normal(jax.random.key(0), (batch, size, size, 8))
    w = jax.random.normal(jax.random.key(1), (3, 3, 8, 16))
    g = jax.random.normal(jax.random.key(2), (batch, size, size, 16))
    ref = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    y, vjp = jax.vjp(conv3x3, x, w)
    y_ref, vjp_ref = jax.vjp(ref, x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    for a, b in zip(vjp(g), vjp_ref(g), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


def _set(**fields):
    def edit(cfg):
        for k, v in fields.items():
            setattr(cfg, k, v)
        return cfg

    return edit


@pytest.mark.parametrize(
    "preset, edit, data_shape, field",
    [
        (backbones.ddpmpp_smoke, _set(name="unet3000"), (16, 16, 3), "model.name"),
        (backbones.ddpmpp_smoke, _set(dropout=-0.1), (16, 16, 3), "model.dropout"),
        (backbones.ddpmpp_smoke, _set(dropout=1.0), (16, 16, 3), "model.dropout"),
        (backbones.ddpmpp_smoke, _set(label_dropout=0.1), (16, 16, 3), "model.label_dropout"),
        (backbones.adm_smoke, _set(label_dropout=1.5), (16, 16, 3), "model.label_dropout"),
        (backbones.adm_smoke, _set(num_classes=-1), (16, 16, 3), "model.num_classes"),
        (backbones.ddpmpp_cifar10, _set(), (64, 64, 3), "model.resolution"),
        (backbones.adm_imagenet64, _set(), (32, 32, 3), "model.resolution"),
        (backbones.ddpmpp_smoke, _set(), (17, 17, 3), "model.channel_mult"),
        (backbones.ddpmpp_smoke, _set(), (16, 12, 3), "model.name"),
        (backbones.ddpmpp_smoke, _set(model_channels=34), (16, 16, 3), "model.model_channels"),
        (backbones.adm_smoke, _set(channels_per_head=0), (16, 16, 3), "model.channels_per_head"),
        (backbones.adm_smoke, _set(conv_algorithm="fast"), (16, 16, 3), "model.conv_algorithm"),
        (
            backbones.ddpmpp_smoke,
            _set(conv_algorithm="winograd", dtype="bfloat16"),
            (16, 16, 3),
            "model.conv_algorithm",
        ),
        (backbones.ddpmpp_smoke, _set(conv_grad="auto"), (16, 16, 3), "model.conv_grad"),
    ],
)
def test_validation_names_the_field(preset, edit, data_shape, field):
    cfg = edit(preset())
    start = time.perf_counter()
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        validate_model_config(cfg, data_shape=data_shape)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        model_from_config(cfg, data_shape=data_shape, rngs=nnx.Rngs(0))
    assert time.perf_counter() - start < 0.5  # pure Python, nothing compiled or allocated


@pytest.mark.parametrize(
    "preset, data_shape",
    [
        (backbones.ddpmpp_cifar10, (32, 32, 3)),
        (backbones.ddpmpp_64, (64, 64, 3)),
        (backbones.adm_imagenet64, (64, 64, 3)),
        (backbones.ddpmpp_smoke, (32, 32, 3)),
        (backbones.ddpmpp_smoke, (8, 8, 1)),
        (backbones.adm_smoke, (64, 64, 3)),
    ],
)
def test_presets_validate(preset, data_shape):
    validate_model_config(preset(), data_shape=data_shape)
