"""EDM checkpoints as a config's model section and parameters (the config adapter of
:mod:`simple_reflow.models.edm_import`)."""

from __future__ import annotations

import os

import ml_collections
from flax import nnx

from simple_reflow.models import MODEL_NAMES
from simple_reflow.models.edm_import import (
    EDMNetwork,
    edm_architecture,
    edm_params,
    read_edm_network,
    read_state_dict,
)
from simple_reflow.train.configure import check_same_architecture, model_from_config

__all__ = ["edm_model_config", "model_params", "import_edm"]


def edm_model_config(net: EDMNetwork, *, dtype: str = "float32") -> ml_collections.ConfigDict:
    """The ``model`` config section of an EDM network (fields of ``configs/backbones.py``)."""
    return ml_collections.ConfigDict(
        {**edm_architecture(net), "dtype": dtype, "conv_algorithm": "auto"}
    )


def model_params(state: dict, model_cfg, *, data_shape, source: str = "state_dict"):
    """An EDM ``state_dict`` as the parameters of ``model_from_config(model_cfg, ...)``."""
    model = nnx.eval_shape(
        lambda: model_from_config(model_cfg, data_shape=data_shape, rngs=nnx.Rngs(0))
    )
    like = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    filters = (1, 1) if model_cfg.name == "adm" else tuple(model_cfg.resample_filter)
    return edm_params(state, like, resample_filter=filters, source=source)


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
      ``(model ConfigDict, pure parameter dict)`` ready for ``model_from_config`` / the
      stages.
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
            raise ValueError(
                f"{path} is a state_dict: give the architecture as a config's "
                "model section (scripts/import_edm.py --config FILE)"
            )
        if model_cfg.name not in MODEL_NAMES or model_cfg.name == "mlp":
            raise ValueError(f"model.name={model_cfg.name!r} is not an EDM architecture")
        if data_shape is None:
            if not model_cfg.resolution:
                raise ValueError("model.resolution must be set to import a state_dict")
            data_shape = (model_cfg.resolution, model_cfg.resolution, 3)
        return model_cfg, model_params(
            read_state_dict(path), model_cfg, data_shape=data_shape, source=str(path)
        )
    cfg = edm_model_config(net, dtype=dtype)
    if model_cfg is not None:
        check_same_architecture(cfg, model_cfg, what=f"the checkpoint {path}")
        cfg = model_cfg
    size, channels = int(net.kwargs["img_resolution"]), int(net.kwargs["img_channels"])
    native = (size, size, channels)
    if data_shape is not None and tuple(data_shape) != native:
        raise ValueError(
            f"{path} is a {size}x{size}x{channels} network; the data config gives "
            f"images of shape {tuple(data_shape)}"
        )
    return cfg, model_params(net.state, cfg, data_shape=native, source=str(path))
