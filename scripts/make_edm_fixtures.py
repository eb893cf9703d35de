"""Writes the test fixtures for the EDM checkpoint converter from EDM's own PyTorch networks.

Run by hand, never by the tests (they only read what this writes):

  pip install -e '.[torch]'
  git clone https://github.com/NVlabs/edm /tmp/edm
  python scripts/make_edm_fixtures.py --edm /tmp/edm --out tests/fixtures/edm
  python scripts/make_edm_fixtures.py --edm /tmp/edm --full /tmp/edm_full

EDM's code (NVlabs/edm, CC BY-NC-SA 4.0) is imported from the checkout given by ``--edm`` and
none of it is copied here. Its network pickles normally embed the source of every persistent
class's module; the pickles written here carry a one-line placeholder instead.

``--out DIR`` builds small networks with EDM's structure (``training.networks.EDMPrecond`` over
``SongUNet``: DDPM++, NCSN++, skip encoder/decoder; ``DhariwalUNet``: ADM), perturbs every
parameter to non-zero values (EDM zero-initialises some layers, which would hide mismatches),
rounds parameters to float16-representable values, and writes ``DIR/NAME.npz`` with keys

  spec     0-d unicode: json {"precond": "EDMPrecond", "init_kwargs": {...}}
  x, sigma, labels (label_dim > 0), aug (augment_dim > 0)   inputs, float32, NCHW
  D        net(x, sigma, labels): EDM's denoiser (no augment labels)
  F_in, F_noise, F   the backbone alone: F = net.model(F_in, F_noise, labels, aug)
  w/KEY    every ``net.state_dict()`` key: parameters float16, buffers float32

except that ``ddpmpp_uncond`` keeps its weights in an EDM training snapshot
(``ddpmpp_uncond.pkl``) and ``ncsnpp_cond`` in ``torch.save(net.state_dict())``
(``ncsnpp_cond_state_dict.pt``); ``vp_precond.pkl`` is a snapshot of a ``VPPrecond``.

``--full DIR`` writes the full-size CIFAR-10 DDPM++ / NCSN++ and ImageNet-64 ADM networks in
the same layout (float32 weights, batch 2; not committed) and prints EDM's parameter counts.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
import pickle
import sys

import numpy as np

DDPMPP = dict(
    model_type="SongUNet",
    embedding_type="positional",
    encoder_type="standard",
    decoder_type="standard",
    channel_mult_noise=1,
    resample_filter=[1, 1],
)
NCSNPP = dict(
    model_type="SongUNet",
    embedding_type="fourier",
    encoder_type="residual",
    decoder_type="standard",
    channel_mult_noise=2,
    resample_filter=[1, 3, 3, 1],
)
ADM = dict(model_type="DhariwalUNet")
SMALL = dict(
    model_channels=8,
    channel_mult=[1, 2, 2],
    num_blocks=1,
    attn_resolutions=[16],
    dropout=0.13,
    augment_dim=9,
)
SMALL_ADM = dict(
    model_channels=16,
    channel_mult=[1, 2, 4],
    num_blocks=1,
    attn_resolutions=[16, 8],
    dropout=0.1,
    augment_dim=0,
)
SKIP = dict(encoder_type="skip", decoder_type="skip", augment_dim=0)

# name: (resolution, label_dim, kwargs, where the weights go: "npz" | "pkl" | "pt")
FIXTURES = {
    "ddpmpp_uncond": (32, 0, {**DDPMPP, **SMALL}, "pkl"),
    "ddpmpp_cond": (32, 10, {**DDPMPP, **SMALL}, "npz"),
    "ncsnpp_uncond": (32, 0, {**NCSNPP, **SMALL}, "npz"),
    "ncsnpp_cond": (32, 10, {**NCSNPP, **SMALL}, "pt"),
    "songunet_skip": (32, 0, {**NCSNPP, **SMALL, **SKIP}, "npz"),
    "adm_cond": (32, 10, {**ADM, **SMALL_ADM}, "npz"),
}
FULL = {
    "ddpmpp_cifar10_uncond": (
        32,
        0,
        {
            **DDPMPP,
            "model_channels": 128,
            "channel_mult": [2, 2, 2],
            "augment_dim": 9,
            "dropout": 0.13,
        },
    ),
    "ncsnpp_cifar10_uncond": (
        32,
        0,
        {
            **NCSNPP,
            "model_channels": 128,
            "channel_mult": [2, 2, 2],
            "augment_dim": 9,
            "dropout": 0.13,
        },
    ),
    "adm_imagenet64_cond": (
        64,
        1000,
        {
            **ADM,
            "model_channels": 192,
            "channel_mult": [1, 2, 3, 4],
            "augment_dim": 0,
            "dropout": 0.1,
        },
    ),
}
PARAM_COUNTS = {
    "DDPM++ 32x32": (
        32,
        0,
        {**DDPMPP, "model_channels": 128, "channel_mult": [2, 2, 2], "augment_dim": 9},
    ),
    "DDPM++ 64x64": (
        64,
        0,
        {**DDPMPP, "model_channels": 128, "channel_mult": [1, 2, 2, 2], "augment_dim": 9},
    ),
    "NCSN++ 32x32": (
        32,
        0,
        {**NCSNPP, "model_channels": 128, "channel_mult": [2, 2, 2], "augment_dim": 9},
    ),
    "NCSN++ 64x64": (
        64,
        0,
        {**NCSNPP, "model_channels": 128, "channel_mult": [1, 2, 2, 2], "augment_dim": 9},
    ),
    "ADM 64x64 cond": (
        64,
        1000,
        {**ADM, "model_channels": 192, "channel_mult": [1, 2, 3, 4], "augment_dim": 0},
    ),
}
SIGMAS = [0.002, 0.5, 2.0, 80.0]
FULL_SIGMAS = [0.5, 2.0]
ELIDED_SRC = "# EDM source elided from this test fixture (CC BY-NC-SA)\n"
RECONSTRUCT = ("torch_utils.persistence", "_reconstruct_persistent_obj")
META_KEYS = {"type", "version", "module_src", "class_name", "state"}


def build_net(precond, resolution, label_dim, kwargs, seed):
    """Constructs ``training.networks.<precond>`` with EDM's own initialisation, in eval mode."""
    import torch
    from training import networks

    init_kwargs = dict(img_resolution=resolution, img_channels=3, label_dim=label_dim, **kwargs)
    torch.manual_seed(seed)
    net = getattr(networks, precond)(**copy.deepcopy(init_kwargs)).eval()
    assert dict(net.init_kwargs) == init_kwargs, (dict(net.init_kwargs), init_kwargs)
    return net, init_kwargs


def _new_value(name, shape, norm_names):
    """The perturbed value of the parameter ``name`` (see the module docstring)."""
    import torch

    owner, _, leaf = name.rpartition(".")
    if len(shape) >= 2:
        return torch.randn(shape) / math.sqrt(math.prod(shape[1:]))
    if leaf == "weight" and owner in norm_names:
        return 1 + 0.1 * torch.randn(shape)
    return 0.1 * torch.randn(shape)


def perturb_(net, round_fp16):
    """Overwrites every parameter with non-zero random values; keeps the buffers.

    The buffers are ``resample_filter`` (fixed) and ``map_noise.freqs`` (NCSN++, already EDM's
    own ``randn * 16``); any other floating buffer is an error.
    """
    import torch
    from training import networks

    norm_names = {n for n, m in net.named_modules() if isinstance(m, networks.GroupNorm)}
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(_new_value(name, tuple(p.shape), norm_names))
            if round_fp16:
                p.copy_(p.half().float())
        for name, b in net.named_buffers():
            leaf = name.rpartition(".")[2]
            if b.is_floating_point() and leaf not in ("resample_filter", "freqs"):
                raise ValueError(f"unexpected floating buffer {name}")


def make_inputs(net, sigmas, seed):
    """x = x0 + σ·n with x0 ~ U(−1, 1), n ~ N(0, 1); one-hot labels (row 3 is the null label)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    b, r, c = len(sigmas), net.img_resolution, net.img_channels
    sigma = torch.tensor(sigmas, dtype=torch.float32)
    x0 = torch.rand([b, c, r, r], generator=g) * 2 - 1
    x = x0 + sigma.reshape(-1, 1, 1, 1) * torch.randn([b, c, r, r], generator=g)
    inputs = dict(x=x, sigma=sigma)
    if net.label_dim:
        classes = torch.randint(net.label_dim, [b], generator=g)
        labels = torch.nn.functional.one_hot(classes, net.label_dim).to(torch.float32)
        if b > 3:
            labels[3] = 0
        inputs["labels"] = labels
    map_augment = getattr(net.model, "map_augment", None)
    if map_augment is not None:
        inputs["aug"] = torch.randn([b, map_augment.in_features], generator=g)
    return inputs


def run_net(net, inputs):
    """EDM's denoiser D and its backbone F on the same inputs, as EDMPrecond.forward does."""
    import torch

    x, labels, aug = inputs["x"], inputs.get("labels"), inputs.get("aug")
    with torch.no_grad():
        d = net(x, inputs["sigma"], labels)
        sigma = inputs["sigma"].to(torch.float32).reshape(-1, 1, 1, 1)
        sd = net.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        f_in, f_noise = c_in * x, c_noise.flatten()
        f = net.model(f_in, f_noise, class_labels=labels, augment_labels=aug)
        f_plain = f if aug is None else net.model(f_in, f_noise, class_labels=labels)
    assert torch.allclose(d, c_skip * x + c_out * f_plain, rtol=1e-6, atol=1e-6)
    return dict(D=d, F_in=f_in, F_noise=f_noise, F=f)


def weight_arrays(net, fp16):
    """``w/<state_dict key>`` arrays: parameters float16 (when ``fp16``), buffers float32."""
    params = {name for name, _ in net.named_parameters()}
    out = {}
    for key, value in net.state_dict().items():
        value = value.detach().cpu().float()
        if fp16 and key in params:
            half = value.half()
            assert half.float().equal(value), f"{key} is not float16-exact"
            out[f"w/{key}"] = half.numpy()
        else:
            out[f"w/{key}"] = value.numpy()
    return out


def write_npz(path, init_kwargs, tensors, weights, compress):
    """Writes the spec, the float32 inputs/outputs and the weight arrays to ``path``."""
    spec = json.dumps(dict(precond="EDMPrecond", init_kwargs=init_kwargs))
    arrays = {"spec": np.array(spec)}
    arrays.update({k: v.detach().cpu().numpy().astype(np.float32) for k, v in tensors.items()})
    arrays.update(weights)
    (np.savez_compressed if compress else np.savez)(path, **arrays)


@contextlib.contextmanager
def elided_sources():
    """Replaces the module source that EDM's persistent classes embed in pickles."""
    from torch_utils import persistence

    saved = {cls: cls._orig_module_src for cls in persistence._decorators}
    try:
        for cls in saved:
            cls._orig_module_src = ELIDED_SRC
        yield
    finally:
        for cls, src in saved.items():
            cls._orig_module_src = src


def write_snapshot(path, net, loss_name):
    """Pickles ``net`` the way EDM's training loop writes ``network-snapshot-*.pkl``."""
    import torch
    from training import augment, loss

    data = dict(
        ema=net,
        loss_fn=getattr(loss, loss_name)(),
        augment_pipe=augment.AugmentPipe(
            p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1
        ),
        dataset_kwargs=dict(
            class_name="training.dataset.ImageFolderDataset",
            path="cifar10-32x32.zip",
            use_labels=False,
            xflip=False,
            cache=True,
            resolution=32,
            max_size=50000,
        ),
    )
    for key, value in data.items():
        if isinstance(value, torch.nn.Module):
            data[key] = copy.deepcopy(value).eval().requires_grad_(False).cpu()
    with elided_sources(), open(path, "wb") as f:
        pickle.dump(data, f)


class _MetaUnpickler(pickle.Unpickler):
    """Loads a snapshot without running EDM's code: persistent objects stay meta dicts."""

    def __init__(self, file):
        super().__init__(file)
        self.globals = set()
        self.metas = []

    def find_class(self, module, name):
        self.globals.add(f"{module}.{name}")
        if (module, name) == RECONSTRUCT:
            return self._keep_meta
        return super().find_class(module, name)

    def _keep_meta(self, meta):
        self.metas.append(meta)
        return meta


def _meta_state_dict(obj, prefix=""):
    """The state_dict of a module tree whose persistent modules are meta dicts."""
    state = obj["state"] if isinstance(obj, dict) else obj.__dict__
    out = {prefix + k: v for k, v in state["_parameters"].items() if v is not None}
    skip = state.get("_non_persistent_buffers_set", set())
    out.update(
        {prefix + k: v for k, v in state["_buffers"].items() if v is not None and k not in skip}
    )
    for name, child in state["_modules"].items():
        if child is not None:
            out.update(_meta_state_dict(child, f"{prefix}{name}."))
    return out


def check_snapshot(path, net, class_name):
    """Checks that no EDM source is in the pickle and that it holds ``net``'s weights."""
    with open(path, "rb") as f:
        raw = f.read()
    assert b"def forward" not in raw and b"import torch" not in raw, path
    unpickler = _MetaUnpickler(io.BytesIO(raw))
    data = unpickler.load()
    assert sorted(data) == ["augment_pipe", "dataset_kwargs", "ema", "loss_fn"], sorted(data)
    for meta in unpickler.metas:
        assert set(meta) == META_KEYS and meta["type"] == "class", sorted(meta)
        assert meta["module_src"] == ELIDED_SRC and meta["version"] == 6
    assert data["ema"]["class_name"] == class_name
    loaded, expected = _meta_state_dict(data["ema"]), net.state_dict()
    assert list(loaded) == list(expected)
    assert all(loaded[k].equal(expected[k]) for k in expected)
    return sorted(unpickler.globals), len(unpickler.metas)


def make_fixture(out, name, seed):
    """Builds, perturbs, runs and writes one small fixture (plus its pkl / pt weights)."""
    import torch

    resolution, label_dim, kwargs, fmt = FIXTURES[name]
    net, init_kwargs = build_net("EDMPrecond", resolution, label_dim, kwargs, seed)
    perturb_(net, round_fp16=True)
    inputs = make_inputs(net, SIGMAS, seed + 1)
    tensors = {**inputs, **run_net(net, inputs)}
    weights = weight_arrays(net, fp16=True) if fmt == "npz" else {}
    paths = [os.path.join(out, f"{name}.npz")]
    write_npz(paths[0], init_kwargs, tensors, weights, compress=True)
    if fmt == "pkl":
        paths.append(os.path.join(out, f"{name}.pkl"))
        write_snapshot(paths[-1], net, "EDMLoss")
        found, n_meta = check_snapshot(paths[-1], net, "EDMPrecond")
        print(f"{name}.pkl: {n_meta} persistent objects; globals: {', '.join(found)}")
    elif fmt == "pt":
        paths.append(os.path.join(out, f"{name}_state_dict.pt"))
        torch.save(net.state_dict(), paths[-1])
    return paths


def make_vp_snapshot(out, seed):
    """A snapshot of another network (``VPPrecond``) that the converter must reject."""
    resolution, label_dim, kwargs, _ = FIXTURES["ddpmpp_uncond"]
    net, _ = build_net("VPPrecond", resolution, label_dim, kwargs, seed)
    perturb_(net, round_fp16=True)
    path = os.path.join(out, "vp_precond.pkl")
    write_snapshot(path, net, "VPLoss")
    check_snapshot(path, net, "VPPrecond")
    return [path]


def print_sizes(paths):
    """Prints each file's size and the total."""
    total = 0
    for path in paths:
        size = os.path.getsize(path)
        total += size
        print(f"{size / 1024:9.1f} KiB  {path}")
    print(f"{total / 1024:9.1f} KiB  total")


def make_fixtures(out):
    """Writes all small fixtures to ``out``."""
    os.makedirs(out, exist_ok=True)
    paths = []
    for i, name in enumerate(FIXTURES):
        paths += make_fixture(out, name, seed=100 * (i + 1))
    paths += make_vp_snapshot(out, seed=100 * (len(FIXTURES) + 1))
    print_sizes(paths)


def param_counts():
    """Prints EDM's parameter counts of the full-size architectures."""
    for label, (resolution, label_dim, kwargs) in PARAM_COUNTS.items():
        net, _ = build_net("EDMPrecond", resolution, label_dim, kwargs, seed=0)
        print(f"{label}: {sum(p.numel() for p in net.parameters()):,} parameters")
        del net


def make_full(out):
    """Writes the full-size networks (float32 weights, batch 2) and prints parameter counts."""
    os.makedirs(out, exist_ok=True)
    paths = []
    for i, (name, (resolution, label_dim, kwargs)) in enumerate(FULL.items()):
        net, init_kwargs = build_net("EDMPrecond", resolution, label_dim, kwargs, seed=10 + i)
        perturb_(net, round_fp16=False)
        inputs = make_inputs(net, FULL_SIGMAS, seed=20 + i)
        tensors = {**inputs, **run_net(net, inputs)}
        paths.append(os.path.join(out, f"{name}.npz"))
        write_npz(paths[-1], init_kwargs, tensors, weight_arrays(net, fp16=False), compress=False)
        print(f"wrote {paths[-1]}", flush=True)
        del net
    print_sizes(paths)
    param_counts()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--edm", required=True, help="checkout of NVlabs/edm")
    parser.add_argument("--out", help="where the small fixtures go (tests/fixtures/edm)")
    parser.add_argument("--full", help="where the full-size networks go (not committed)")
    args = parser.parse_args()
    if not (args.out or args.full):
        parser.error("give --out and/or --full")
    sys.path.insert(0, os.path.abspath(args.edm))
    import torch

    torch.set_num_threads(2)
    if args.out:
        make_fixtures(args.out)
    if args.full:
        make_full(args.full)


if __name__ == "__main__":
    main()
