"""NVIDIA's EDM checkpoints as this library's models: architecture and weights.

EDM (Karras et al. 2022) publishes its networks as pickles of ``EDMPrecond`` modules
(``edm-cifar10-32x32-{cond,uncond}-{vp,ve}.pkl``, ``edm-{afhqv2,ffhq}-64x64-uncond-{vp,ve}.pkl``,
``edm-imagenet-64x64-cond-adm.pkl``; "vp" = DDPM++, "ve" = NCSN++, "adm" = ADM). This module
reads them without PyTorch (:mod:`simple_reflow.models.torch_files`) and without running the
source code EDM embeds in them:

- :func:`read_edm_network`: the network of a pickle — its constructor arguments (completed
  with the defaults of EDM's ``training/networks.py``) and its ``state_dict``;
- :func:`edm_architecture`: this library's model fields for that architecture;
- :func:`edm_params`: the ``state_dict`` as this library's parameters (names map one to one:
  ``model.enc.32x32_conv.weight`` → ``backbone/enc/32x32_conv/weight``; convolutions OIHW →
  HWIO, linear layers ``[out, in]`` → ``[in, out]``), every key and shape checked.

The config adapter (a pickle or a ``state_dict`` file plus a config → model section and
parameters) is :func:`simple_reflow.train.edm.import_edm`.

The imported denoiser computes what EDM's ``EDMPrecond.forward`` computes (tested against EDM's
own networks in ``tests/test_edm_import.py``); augment labels are not passed when sampling, as
in EDM's ``generate.py``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from simple_reflow.models import SONGUNET_VARIANTS
from simple_reflow.models.params import flat_params, unflatten_params
from simple_reflow.models.torch_files import PersistentObject, load_torch_file, module_state_dict

__all__ = ["EDMNetwork", "read_edm_network", "read_state_dict", "edm_architecture", "edm_params"]

# The constructor defaults of EDM's training/networks.py (facts about its pickles: EDM records
# only the arguments that were passed, so missing ones take these values).
_EDM_DEFAULTS = {
    "EDMPrecond": dict(
        label_dim=0,
        use_fp16=False,
        sigma_min=0.0,
        sigma_max=math.inf,
        sigma_data=0.5,
        model_type="DhariwalUNet",
    ),
    "SongUNet": dict(
        augment_dim=0,
        model_channels=128,
        channel_mult=[1, 2, 2, 2],
        channel_mult_emb=4,
        num_blocks=4,
        attn_resolutions=[16],
        dropout=0.10,
        label_dropout=0.0,
        embedding_type="positional",
        channel_mult_noise=1,
        encoder_type="standard",
        decoder_type="standard",
        resample_filter=[1, 1],
    ),
    "DhariwalUNet": dict(
        augment_dim=0,
        model_channels=192,
        channel_mult=[1, 2, 3, 4],
        channel_mult_emb=4,
        num_blocks=3,
        attn_resolutions=[32, 16, 8],
        dropout=0.10,
        label_dropout=0.0,
    ),
}
_OTHER_PRECONDS = {
    "VPPrecond": "EDM's VP baseline preconditioning (baseline-*-vp.pkl)",
    "VEPrecond": "EDM's VE baseline preconditioning (baseline-*-ve.pkl)",
    "iDDPMPrecond": "the improved-DDPM preconditioning (baseline-imagenet-64x64-cond-adm.pkl)",
}
_SONG_FIELDS = (
    "embedding_type",
    "channel_mult_noise",
    "encoder_type",
    "decoder_type",
    "resample_filter",
)


@dataclasses.dataclass(frozen=True)
class EDMNetwork:
    """An EDM ``EDMPrecond`` network read from a pickle.

    Attributes:
      kwargs: the constructor arguments of ``EDMPrecond`` and of its backbone, completed with
        EDM's defaults (``img_resolution``, ``img_channels``, ``label_dim``, ``sigma_data``,
        ``model_type``, ``model_channels``, ...).
      state: its ``state_dict``: parameter and buffer names → NumPy arrays.
    """

    kwargs: dict
    state: dict

    @classmethod
    def from_init_kwargs(cls, init_kwargs: dict, state: dict, *, source: str = "network"):
        """Completes ``EDMPrecond``'s recorded constructor arguments with EDM's defaults."""
        kwargs = {**_EDM_DEFAULTS["EDMPrecond"], **init_kwargs}
        model_type = kwargs["model_type"]
        if model_type not in ("SongUNet", "DhariwalUNet"):
            raise ValueError(
                f"{source}: EDMPrecond over a {model_type!r} backbone is not "
                "supported (SongUNet or DhariwalUNet)"
            )
        return cls({**_EDM_DEFAULTS[model_type], **kwargs}, dict(state))


def read_edm_network(path: str) -> EDMNetwork:
    """Reads the network of an EDM pickle (a training snapshot's ``"ema"``, or a bare module).

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: a truncated or corrupt file, another kind of object, or another network
        (VP/VE/iDDPM baselines are named as such); the message names the file.
    """
    obj = load_torch_file(path)
    net = obj.get("ema") if isinstance(obj, dict) else obj
    if (
        isinstance(obj, dict)
        and net is None
        and obj
        and all(isinstance(v, np.ndarray) for v in obj.values())
    ):
        raise ValueError(
            f"{path} is a state_dict, which holds no architecture: import it with "
            "the model section of a config (scripts/import_edm.py --config ...)"
        )
    if not isinstance(net, PersistentObject):
        raise ValueError(f"{path} is not an EDM network pickle (no EDM network under 'ema')")
    if net.class_name in _OTHER_PRECONDS:
        raise ValueError(
            f"{path} holds a {net.class_name} network, "
            f"{_OTHER_PRECONDS[net.class_name]}; only EDMPrecond networks (EDM's "
            "edm-*.pkl checkpoints) can be imported"
        )
    if net.class_name != "EDMPrecond":
        raise ValueError(
            f"{path} holds a {net.class_name!r} object, not an EDM network (EDMPrecond)"
        )
    return EDMNetwork.from_init_kwargs(net.init_kwargs, module_state_dict(net), source=path)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a ``torch.save(net.state_dict())`` file (or a ``.npz`` of the same names).

    Keys of the backbone alone (``enc.…``) are given EDMPrecond's ``model.`` prefix.
    """
    if str(path).endswith(".npz"):
        with np.load(path) as data:
            state = {k: data[k] for k in data.files}
    else:
        state = load_torch_file(path)
    if isinstance(state, dict) and "ema" in state:
        raise ValueError(
            f"{path} is a network pickle, not a state_dict: import it without a config"
        )
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise ValueError(f"{path} is not a state_dict (a mapping of names to tensors)")
    if not any(k.startswith("model.") for k in state):
        state = {f"model.{k}": v for k, v in state.items()}
    return dict(state)


def edm_architecture(net: EDMNetwork) -> dict:
    """This library's model fields (``configs/backbones.py``) for an EDM network, as a dict.

    SongUNets with DDPM++'s or NCSN++'s options are named ``ddpmpp`` / ``ncsnpp``, other
    SongUNets ``songunet``; DhariwalUNets ``adm`` (EDM's 64 channels per attention head).
    ``dropout`` and ``label_dropout`` are the network's training values.
    """
    k = net.kwargs
    song = {f: k.get(f, _EDM_DEFAULTS["SongUNet"][f]) for f in _SONG_FIELDS}
    song["resample_filter"] = tuple(int(v) for v in song["resample_filter"])
    song["channel_mult_noise"] = int(song["channel_mult_noise"])
    if k["model_type"] == "DhariwalUNet":
        name = "adm"
    else:
        name = next((n for n, v in SONGUNET_VARIANTS.items() if v == song), "songunet")
    return dict(
        name=name,
        resolution=int(k["img_resolution"]),
        model_channels=int(k["model_channels"]),
        channel_mult=tuple(int(v) for v in k["channel_mult"]),
        channel_mult_emb=int(k["channel_mult_emb"]),
        num_blocks=int(k["num_blocks"]),
        attn_resolutions=tuple(int(v) for v in k["attn_resolutions"]),
        channels_per_head=64,
        dropout=float(k["dropout"]),
        num_classes=int(k["label_dim"]),
        label_dropout=float(k["label_dropout"]),
        augment_dim=int(k["augment_dim"]),
        sigma_data=float(k["sigma_data"]),
        **song,
    )


def _expected_filter(resample_filter):
    f = np.asarray(resample_filter, np.float32)
    return (np.outer(f, f) / np.square(f.sum()))[None, None]


def edm_params(state: dict, like, *, resample_filter=(1, 1), source: str = "state_dict"):
    """Converts an EDMPrecond ``state_dict`` into this library's parameters.

    Args:
      state: EDM names (``model.…``) → arrays, as :func:`read_edm_network` or
        :func:`read_state_dict` return them.
      like: the pure parameter dict (or its shapes) of the model to fill, e.g.
        ``nnx.to_pure_dict(nnx.state(nnx.eval_shape(build), nnx.Param))``.
      resample_filter: the network's 1-D resampling filter (ADM: ``(1, 1)``); EDM stores the
        2-D filters as buffers, which must equal it.
      source: what ``state`` was read from, for messages.

    Returns:
      A pure parameter dict with the structure of ``like``.

    Raises:
      ValueError: a key without counterpart (missing or extra), a shape mismatch, or
        resampling filters that differ; one line naming it.
    """
    shapes = {name: tuple(v.shape) for name, v in flat_params(like).items()}
    flat = {}
    for key, value in state.items():
        value = np.asarray(value)
        if key.endswith(".resample_filter"):
            want = _expected_filter(resample_filter)
            if value.shape != want.shape or not np.allclose(value, want, rtol=0, atol=1e-7):
                raise ValueError(
                    f"{source}: {key} is not the resampling filter "
                    f"{tuple(resample_filter)} (model.resample_filter)"
                )
            continue
        if not key.startswith("model."):
            raise ValueError(
                f"{source}: key {key!r} is not part of an EDMPrecond network "
                "(its keys start with 'model.')"
            )
        name = "backbone/" + key[len("model.") :].replace(".", "/")
        if name not in shapes:
            raise ValueError(
                f"{source}: unexpected key {key!r}: the model has no such "
                "parameter (another architecture?)"
            )
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif value.ndim == 2:
            value = value.T  # [out, in] -> [in, out]
        if value.shape != shapes[name]:
            raise ValueError(
                f"{source}: {key} has shape {tuple(value.shape)} (as ours: "
                f"{shapes[name]} expected); the architecture differs"
            )
        flat[name] = np.asarray(value, np.float32)
    missing = [n for n in shapes if n not in flat]
    if missing:
        key = "model." + missing[0][len("backbone/") :].replace("/", ".")
        raise ValueError(
            f"{source}: missing key {key!r} ({len(missing)} parameters of the model have no value)"
        )
    return unflatten_params(flat, like, source=source)
