"""NVIDIA's EDM checkpoints as this library's models: architecture and weights.

EDM (Karras et al. 2022) publishes its networks as pickles of ``EDMPrecond`` modules
(``edm-cifar10-32x32-{cond,uncond}-{vp,ve}.pkl``, ``edm-{afhqv2,ffhq}-64x64-uncond-{vp,ve}.pkl``,
``edm-imagenet-64x64-cond-adm.pkl``; "vp" = DDPM++, "ve" = NCSN++, "adm" = ADM). This module
reads them without PyTorch (:mod:`simple_reflow.models.torch_files`) and without running the
source code EDM embeds in them:

- :func:`read_edm_network`: the network of a pickle — its constructor arguments (completed
  with the defaults of EDM's ``training/networks.py``) and its ``state_dict``;
- :func:`edm_model_config`: the ``model`` config section of that architecture;
- :func:`edm_params`: the ``state_dict`` as this library's parameters (names map one to one:
  ``model.enc.32x32_conv.weight`` → ``backbone/enc/32x32_conv/weight``; convolutions OIHW →
  HWIO, linear layers ``[out, in]`` → ``[in, out]``), every key and shape checked;
- :func:`import_edm`: all three for a pickle, or for a ``state_dict`` file with the
  architecture taken from a config.

The imported denoiser computes what EDM's ``EDMPrecond.forward`` computes (tested against EDM's
own networks in ``tests/test_edm_import.py``); augment labels are not passed when sampling, as
in EDM's ``generate.py``.
"""

from __future__ import annotations

import dataclasses
import math
import os

import ml_collections
import numpy as np
from flax import nnx

from simple_reflow.models import (
    MODEL_NAMES,
    SONGUNET_VARIANTS,
    build_model,
    check_same_architecture,
    validate_model_config,
)
from simple_reflow.models.params import flat_params, unflatten_params
from simple_reflow.models.torch_files import PersistentObject, load_torch_file, module_state_dict

__all__ = ["EDMNetwork", "read_edm_network", "read_state_dict", "edm_model_config",
           "edm_params", "import_edm"]

# The constructor defaults of EDM's training/networks.py (facts about its pickles: EDM records
# only the arguments that were passed, so missing ones take these values).
_EDM_DEFAULTS = {
    "EDMPrecond": dict(label_dim=0, use_fp16=False, sigma_min=0.0, sigma_max=math.inf,
                       sigma_data=0.5, model_type="DhariwalUNet"),
    "SongUNet": dict(augment_dim=0, model_channels=128, channel_mult=[1, 2, 2, 2],
                     channel_mult_emb=4, num_blocks=4, attn_resolutions=[16], dropout=0.10,
                     label_dropout=0.0, embedding_type="positional", channel_mult_noise=1,
                     encoder_type="standard", decoder_type="standard", resample_filter=[1, 1]),
    "DhariwalUNet": dict(augment_dim=0, model_channels=192, channel_mult=[1, 2, 3, 4],
                         channel_mult_emb=4, num_blocks=3, attn_resolutions=[32, 16, 8],
                         dropout=0.10, label_dropout=0.0),
}
_OTHER_PRECONDS = {
    "VPPrecond": "EDM's VP baseline preconditioning (baseline-*-vp.pkl)",
    "VEPrecond": "EDM's VE baseline preconditioning (baseline-*-ve.pkl)",
    "iDDPMPrecond": "the improved-DDPM preconditioning (baseline-imagenet-64x64-cond-adm.pkl)",
}
_SONG_FIELDS = ("embedding_type", "channel_mult_noise", "encoder_type", "decoder_type",
                "resample_filter")

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
            raise ValueError(f"{source}: EDMPrecond over a {model_type!r} backbone is not "
                             "supported (SongUNet or DhariwalUNet)")
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
    if isinstance(obj, dict) and net is None and obj and all(
            isinstance(v, np.ndarray) for v in obj.values()):
        raise ValueError(f"{path} is a state_dict, which holds no architecture: import it with "
                         "the model section of a config (scripts/import_edm.py --config ...)")
    if not isinstance(net, PersistentObject):
        raise ValueError(f"{path} is not an EDM network pickle (no EDM network under 'ema')")
    if net.class_name in _OTHER_PRECONDS:
        raise ValueError(f"{path} holds a {net.class_name} network, "
                         f"{_OTHER_PRECONDS[net.class_name]}; only EDMPrecond networks (EDM's "
                         "edm-*.pkl checkpoints) can be imported")
    if net.class_name != "EDMPrecond":
        raise ValueError(f"{path} holds a {net.class_name!r} object, not an EDM network "
                         "(EDMPrecond)")
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
        raise ValueError(f"{path} is a network pickle, not a state_dict: import it without "
                         "a config")
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise ValueError(f"{path} is not a state_dict (a mapping of names to tensors)")
    if not any(k.startswith("model.") for k in state):
        state = {f"model.{k}": v for k, v in state.items()}
    return dict(state)


def edm_model_config(net: EDMNetwork, *, dtype: str = "float32") -> ml_collections.ConfigDict:
    """The ``model`` config section (``configs/backbones.py`` fields) of an EDM network.

    SongUNets with DDPM++'s or NCSN++'s options are named ``ddpmpp`` / ``ncsnpp``, other
    SongUNets ``songunet``; DhariwalUNets ``adm`` (EDM's 64 channels per attention head).
    """
    k = net.kwargs
    c = ml_collections.ConfigDict()
    c.resolution = int(k["img_resolution"])
    c.model_channels = int(k["model_channels"])
    c.channel_mult = tuple(int(v) for v in k["channel_mult"])
    c.channel_mult_emb = int(k["channel_mult_emb"])
    c.num_blocks = int(k["num_blocks"])
    c.attn_resolutions = tuple(int(v) for v in k["attn_resolutions"])
    c.channels_per_head = 64
    c.dropout = float(k["dropout"])
    c.num_classes = int(k["label_dim"])
    c.label_dropout = float(k["label_dropout"])
    c.augment_dim = int(k["augment_dim"])
    c.sigma_data = float(k["sigma_data"])
    c.dtype = dtype
    c.conv_grad = "auto"
    song = {f: k.get(f, _EDM_DEFAULTS["SongUNet"][f]) for f in _SONG_FIELDS}
    song["resample_filter"] = tuple(int(v) for v in song["resample_filter"])
    song["channel_mult_noise"] = int(song["channel_mult_noise"])
    c.update(song)
    if k["model_type"] == "DhariwalUNet":
        c.name = "adm"
    else:
        c.name = next((n for n, v in SONGUNET_VARIANTS.items() if v == song), "songunet")
    return c


def _expected_filter(resample_filter):
    f = np.asarray(resample_filter, np.float32)
    return (np.outer(f, f) / np.square(f.sum()))[None, None]


def edm_params(state: dict, model_cfg, *, data_shape, source: str = "state_dict"):
    """Converts an EDMPrecond ``state_dict`` into this library's parameters for ``model_cfg``.

    Args:
      state: EDM names (``model.…``) → arrays, as :func:`read_edm_network` or
        :func:`read_state_dict` return them.
      model_cfg: the model section the parameters are for.
      data_shape: one image's shape ``[H, W, C]``.
      source: what ``state`` was read from, for messages.

    Returns:
      The pure parameter dict of ``build_model(model_cfg, data_shape=data_shape)``.

    Raises:
      ValueError: a key without counterpart (missing or extra), a shape mismatch, or
        resampling filters that differ from ``model.resample_filter``; one line naming it.
    """
    validate_model_config(model_cfg, data_shape=data_shape)
    model = nnx.eval_shape(lambda: build_model(model_cfg, data_shape=data_shape,
                                               rngs=nnx.Rngs(0)))
    like = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    shapes = {name: tuple(v.shape) for name, v in flat_params(like).items()}
    filters = (1, 1) if model_cfg.name == "adm" else tuple(model_cfg.resample_filter)
    flat = {}
    for key, value in state.items():
        value = np.asarray(value)
        if key.endswith(".resample_filter"):
            want = _expected_filter(filters)
            if value.shape != want.shape or not np.allclose(value, want, rtol=0, atol=1e-7):
                raise ValueError(f"{source}: {key} is not the resampling filter of "
                                 f"model.resample_filter={filters}")
            continue
        if not key.startswith("model."):
            raise ValueError(f"{source}: key {key!r} is not part of an EDMPrecond network "
                             "(its keys start with 'model.')")
        name = "backbone/" + key[len("model."):].replace(".", "/")
        if name not in shapes:
            raise ValueError(f"{source}: unexpected key {key!r}: model.name={model_cfg.name!r} "
                             "with this config has no such parameter (another architecture?)")
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif value.ndim == 2:
            value = value.T  # [out, in] -> [in, out]
        if value.shape != shapes[name]:
            raise ValueError(f"{source}: {key} has shape {tuple(value.shape)} (as ours: "
                             f"{shapes[name]} expected); the config's architecture differs")
        flat[name] = np.asarray(value, np.float32)
    missing = [n for n in shapes if n not in flat]
    if missing:
        key = "model." + missing[0][len("backbone/"):].replace("/", ".")
        raise ValueError(f"{source}: missing key {key!r} ({len(missing)} parameters of "
                         f"model.name={model_cfg.name!r} have no value)")
    return unflatten_params(flat, like, source=source)


def import_edm(path: str, *, model_cfg=None, data_shape=None, dtype: str = "float32"):
    """Reads an EDM pickle or ``state_dict`` file as ``(model config, parameters)``.

    Args:
      path: an ``edm-*.pkl`` / ``network-snapshot-*.pkl`` pickle, or a state_dict file
        (``torch.save(net.state_dict())`` or ``.npz``).
      model_cfg: the config's model section. For a pickle it is optional and, if given, must
        have the pickle's architecture (else a ValueError names the field); for a state_dict
        it is required (a state_dict holds no architecture).
      data_shape: one image's shape; default ``[resolution, resolution, img_channels]``.
      dtype: compute dtype of the returned config when none is given.

    Returns:
      ``(model ConfigDict, pure parameter dict)`` ready for ``build_model`` / the stages.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no EDM checkpoint at {path!r}")
    try:
        net = read_edm_network(path)
    except ValueError as e:
        if "is a state_dict" not in str(e) and not str(path).endswith(".npz"):
            raise
        net = None
    if net is None:
        if model_cfg is None:
            raise ValueError(f"{path} is a state_dict: give the architecture as a config's "
                             "model section (scripts/import_edm.py --config FILE)")
        if model_cfg.name not in MODEL_NAMES or model_cfg.name == "mlp":
            raise ValueError(f"model.name={model_cfg.name!r} is not an EDM architecture")
        if data_shape is None:
            if not model_cfg.resolution:
                raise ValueError("model.resolution must be set to import a state_dict")
            data_shape = (model_cfg.resolution, model_cfg.resolution, 3)
        return model_cfg, edm_params(read_state_dict(path), model_cfg, data_shape=data_shape,
                                     source=str(path))
    cfg = edm_model_config(net, dtype=dtype)
    if model_cfg is not None:
        check_same_architecture(cfg, model_cfg, what=f"the checkpoint {path}")
        cfg = model_cfg
    size, channels = int(net.kwargs["img_resolution"]), int(net.kwargs["img_channels"])
    native = (size, size, channels)
    if data_shape is not None and tuple(data_shape) != native:
        raise ValueError(f"{path} is a {size}x{size}x{channels} network; the data config gives "
                         f"images of shape {tuple(data_shape)}")
    return cfg, edm_params(net.state, cfg, data_shape=native, source=str(path))
