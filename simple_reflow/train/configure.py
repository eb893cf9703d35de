"""The config adapter: config sections as the keyword arguments of the math layer.

Below ``simple_reflow/train/`` every function takes typed arguments and callables; this module
is the one place where a config's ``data``, ``loss``, ``time``, ``coupling``, ``model`` and
``training`` sections become them, and where a bad section is reported naming its field
(``loss.distance='l1' is not one of ...``) before anything is built or compiled.

Where a section's fields are the math function's argument names (``coupling`` →
:func:`~simple_reflow.couplings.make_coupling`, ``model`` →
:func:`~simple_reflow.models.build_model`, ``loss.distance`` →
:func:`~simple_reflow.losses.make_distance`), the function's own check runs and its message,
which starts with the argument, gets the section's name in front.
"""

from __future__ import annotations

import functools
import inspect
import os

import ml_collections

from simple_reflow import losses, losses_mean, time_dist
from simple_reflow.couplings import make_coupling
from simple_reflow.data import IMAGE_DATASETS, SOURCES, TOY_DATASETS, DataSpec
from simple_reflow.data.digits import DIGITS_SPLITS
from simple_reflow.losses_edm import edm_loss
from simple_reflow.models import MODEL_NAMES, SONGUNET_OPTIONS, build_model, model_options

__all__ = [
    "data_spec_from_config",
    "validate_data_config",
    "validate_loss_config",
    "validate_time_config",
    "flow_loss_kwargs",
    "flow_loss_from_config",
    "MEAN_KINDS",
    "MEAN_LOSS_DEFAULTS",
    "mean_loss_kwargs",
    "validate_mean_config",
    "loss_fn_from_config",
    "fit_options",
    "default_coupling_config",
    "coupling_from_config",
    "model_kwargs",
    "validate_model_config",
    "model_from_config",
    "ARCHITECTURE_FIELDS",
    "check_same_architecture",
]

MEAN_KINDS = ("meanflow", "splitmeanflow")
LOSS_KINDS = ("flow", "edm", *MEAN_KINDS)

# The ``loss`` fields of the average-velocity objectives (METHOD.md §9) and their defaults
# (read with ``loss.get``, so a config without them keeps them): ``equal_fraction`` is
# MeanFlow's r = t fraction, ``boundary_fraction`` SplitMeanFlow's; ``norm_p``, ``norm_eps`` the
# adaptive weight's p and c; ``mean_tangent``: MeanFlow's JVP along the target's v ("target") or
# the model's own u(z, t, t) ("model": improved MeanFlow's v-loss); ``distill``: v from the
# teacher instead of x1 − x0; ``cfg_omega``,
# ``cfg_kappa``, ``class_dropout``: guidance folded into the target (class-conditional data).
MEAN_LOSS_DEFAULTS = {
    "equal_fraction": 0.75,
    "boundary_fraction": 0.5,
    "norm_p": 1.0,
    "norm_eps": 1e-3,
    "jvp_mode": "auto",
    "mean_tangent": "target",
    "distill": False,
    "cfg_omega": 1.0,
    "cfg_kappa": 0.0,
    "class_dropout": 0.0,
}


def _check(ok, message):
    if not ok:
        raise ValueError(message)


def _in_section(section, fn, /, *args, **kwargs):
    """``fn(*args, **kwargs)``; a ValueError (which names an argument first) gets ``section.``."""
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        raise ValueError(f"{section}.{e}") from None


# -- data ---------------------------------------------------------------------------------------


def _bad_data(field: str, value, valid: str):
    raise ValueError(f"data.{field}={value!r} {valid}")


def data_spec_from_config(cfg_data) -> DataSpec:
    """The :class:`~simple_reflow.data.DataSpec` an image ``data`` section describes
    (validated); reads no image (a folder of class sub-folders is listed).

    Fields (``configs/common.py`` and optional ones, read with defaults): ``name`` (a key of
    :data:`~simple_reflow.data.IMAGE_DATASETS`), ``source`` (``""`` = the dataset's default),
    ``tfds_name``, ``image_size`` (0 = native), ``random_flip``, ``conditional`` (bool, None =
    the dataset's default), ``num_classes`` (for ``"tfds"``), ``split``, ``data_dir``,
    ``image_key``, ``label_key``, ``mock_examples``; ``eval_split`` is read by the eval stage.

    Raises:
      ValueError: naming the offending ``data.<field>``, for an unknown dataset or source, a
        bad image size, a missing folder, flips on digits, or a conditional set with no labels.
    """
    get = cfg_data.get
    name = get("name")
    if name not in IMAGE_DATASETS:
        _bad_data("name", name, f"is not one of {sorted(TOY_DATASETS) + sorted(IMAGE_DATASETS)}.")
    default_source, tfds_name, native, channels, classes, cond_default = IMAGE_DATASETS[name]
    source = get("source", "") or default_source
    if source not in SOURCES:
        _bad_data("source", source, f"is not one of {list(SOURCES)} (or '' for the default).")
    tfds_name = get("tfds_name", "") or tfds_name
    if name == "tfds" and not tfds_name:
        _bad_data("tfds_name", tfds_name, "must name a TFDS dataset when data.name='tfds'.")
    classes = int(get("num_classes", 0) or classes)
    size = get("image_size", 0)
    if not isinstance(size, int) or size < 0:
        _bad_data("image_size", size, "must be a non-negative int (0 = the dataset's native size).")
    size = size or native
    if source == "folder" and not size:
        _bad_data("image_size", 0, f"must be set (> 0) for data.name={name!r}.")
    if name == "tfds" and not size and source == "mock":
        _bad_data("image_size", 0, "must be set (> 0) to mock data.name='tfds'.")
    if source == "digits" and name != "digits":
        _bad_data("source", source, f"only serves data.name='digits', not {name!r}.")
    if name == "digits" and source not in ("digits", "mock"):
        _bad_data("source", source, "must be 'digits' (or 'mock') for data.name='digits'.")
    flip = get("random_flip", False)
    if not isinstance(flip, bool):
        _bad_data("random_flip", flip, "must be a bool.")
    if name == "digits" and flip:
        _bad_data("random_flip", flip, "is not allowed for digits (they are not mirror-symmetric).")
    conditional = get("conditional", None)
    conditional = cond_default if conditional is None else conditional
    if not isinstance(conditional, bool):
        _bad_data("conditional", conditional, "must be a bool (or None for the dataset's default).")
    if conditional and not classes and source != "folder":
        _bad_data("conditional", conditional, f"but data.name={name!r} has no class labels.")
    split = get("split", "train")
    if name == "digits" and source == "digits" and split not in DIGITS_SPLITS:
        _bad_data("split", split, f"is not one of {DIGITS_SPLITS} for digits.")
    data_dir = get("data_dir", None)
    if source == "folder":
        if not data_dir:
            _bad_data(
                "data_dir",
                data_dir,
                f"must name a folder of images for data.name={name!r} "
                "(TFDS has no builder for it; unzip EDM's dataset_tool.py output there).",
            )
        if not os.path.isdir(data_dir):
            _bad_data("data_dir", data_dir, "is not an existing directory.")
    if source == "folder" and conditional:
        classes = len([d for d in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, d))])
    mock_examples = int(get("mock_examples", 256))
    if source == "mock" and mock_examples < 1:
        _bad_data("mock_examples", mock_examples, "must be positive.")
    return DataSpec(
        name=name,
        source=source,
        shape=(size, size, channels),
        num_classes=classes if conditional else 0,
        tfds_name=tfds_name,
        image_key=get("image_key", "image") or "image",
        label_key=get("label_key", "label") or "label",
        split=split,
        data_dir=data_dir,
        mock_examples=mock_examples,
    )


def validate_data_config(cfg_data) -> None:
    """Checks a ``data`` section (toy or image); raises ``ValueError`` naming the field."""
    if cfg_data.get("name") in TOY_DATASETS:
        return
    data_spec_from_config(cfg_data)


# -- loss and time ------------------------------------------------------------------------------


def validate_loss_config(loss) -> None:
    """Checks a ``loss`` section; raises ``ValueError`` naming the bad field."""
    kind = loss.get("kind", "flow")
    _check(kind in LOSS_KINDS, f"loss.kind={kind!r} is not one of {LOSS_KINDS}.")
    _in_section(
        "loss",
        losses.make_distance,
        distance=loss.distance,
        hpf_weight=loss.hpf_weight,
        hpf_sigma=loss.hpf_sigma,
    )
    _check(
        loss.space in losses.LOSS_SPACES,
        f"loss.space={loss.space!r} is not one of {losses.LOSS_SPACES}.",
    )
    m = _mean_fields(loss)
    for field in ("equal_fraction", "boundary_fraction"):
        _check(0 <= m[field] <= 1, f"loss.{field}={m[field]!r} must lie in [0, 1].")
    _check(m["norm_p"] >= 0, f"loss.norm_p={m['norm_p']!r} must be >= 0 (0: plain squared error).")
    _check(m["norm_eps"] > 0, f"loss.norm_eps={m['norm_eps']!r} must be > 0.")
    _check(
        m["jvp_mode"] in losses_mean.JVP_MODES,
        f"loss.jvp_mode={m['jvp_mode']!r} is not one of {losses_mean.JVP_MODES}.",
    )
    _check(
        m["mean_tangent"] in losses_mean.MEAN_TANGENTS,
        f"loss.mean_tangent={m['mean_tangent']!r} is not one of {losses_mean.MEAN_TANGENTS}.",
    )
    _check(
        m["mean_tangent"] == "target" or kind == "meanflow",
        f"loss.mean_tangent={m['mean_tangent']!r} is MeanFlow's JVP tangent: loss.kind="
        f"{kind!r} is not 'meanflow'.",
    )
    _check(isinstance(m["distill"], bool), f"loss.distill={m['distill']!r} must be a bool.")
    _check(
        not m["distill"] or kind in MEAN_KINDS,
        f"loss.distill=True distils an average-velocity model: loss.kind={kind!r} is not one "
        f"of {MEAN_KINDS}.",
    )
    _check(
        0 <= m["class_dropout"] < 1,
        f"loss.class_dropout={m['class_dropout']!r} must lie in [0, 1).",
    )


def _mean_fields(loss) -> dict:
    return {k: loss.get(k, v) for k, v in MEAN_LOSS_DEFAULTS.items()}


def _guided(m) -> bool:
    return m["class_dropout"] > 0 or m["cfg_omega"] != 1.0 or m["cfg_kappa"] != 0.0


def validate_time_config(time) -> None:
    """Checks a ``time`` section; raises ``ValueError`` naming the bad field."""
    _check(
        time.dist in time_dist.TIME_DISTS,
        f"time.dist={time.dist!r} is not one of {time_dist.TIME_DISTS}.",
    )
    _check(
        time.dist != "u_shape" or time.u_shape_a > 0,
        f"time.u_shape_a={time.u_shape_a!r} must be > 0.",
    )
    t_max = time.get("t_max", 1.0)
    _check(0 < t_max <= 1, f"time.t_max={t_max!r} must lie in (0, 1].")
    _check(
        time.dist != "logit_normal" or time.logit_std > 0,
        f"time.logit_std={time.logit_std!r} must be > 0.",
    )


def _time_fn(time):
    return functools.partial(
        time_dist.sample_time,
        dist=time.dist,
        a=time.u_shape_a,
        mean=time.logit_mean,
        std=time.logit_std,
    )


def flow_loss_kwargs(loss, time) -> dict:
    """The keyword arguments of :func:`~simple_reflow.losses.flow_loss` that ``loss`` and
    ``time`` describe (validated)."""
    validate_loss_config(loss)
    validate_time_config(time)
    return dict(
        distance_fn=losses.make_distance(
            loss.distance, hpf_weight=loss.hpf_weight, hpf_sigma=loss.hpf_sigma
        ),
        time_fn=_time_fn(time),
        normalize=loss.normalize,
        space=loss.space,
        t_max=time.get("t_max", 1.0),
    )


def flow_loss_from_config(loss, time):
    """``loss_fn(model, batch, key) -> (loss, metrics)``: the flow-matching loss (METHOD.md §3)
    that ``loss`` and ``time`` describe, whatever ``loss.kind`` (the toy pipeline's)."""
    return functools.partial(losses.flow_loss, **flow_loss_kwargs(loss, time))


def validate_mean_config(loss, model, sampler, *, num_classes=0) -> None:
    """Checks that ``loss``, ``model`` and ``sampler`` agree on two-time networks: an
    average-velocity objective and the ``"mean"`` solver need ``model.two_time=True``, and
    guidance in the target needs class labels. Raises ``ValueError`` naming the field."""
    kind = loss.get("kind", "flow")
    two_time = model.get("two_time", False)
    _check(isinstance(two_time, bool), f"model.two_time={two_time!r} must be a bool.")
    _check(
        two_time or kind not in MEAN_KINDS,
        f"model.two_time=False, but loss.kind={kind!r} trains a two-time network "
        "u(z, r, t): set model.two_time=True.",
    )
    _check(
        two_time or sampler.solver != "mean",
        "model.two_time=False, but sampler.solver='mean' steps a two-time network: set "
        "model.two_time=True or another solver.",
    )
    m = _mean_fields(loss)
    if kind in MEAN_KINDS and _guided(m):
        field = "class_dropout" if m["class_dropout"] > 0 else "cfg_omega"
        _check(
            num_classes > 0,
            f"loss.{field}={m[field]!r} folds classifier-free guidance into the target, "
            "which needs class-conditional data (num_classes = 0 here).",
        )


def mean_loss_kwargs(loss, time, *, num_classes=0, teacher_fn=None) -> dict:
    """The keyword arguments of :func:`~simple_reflow.losses_mean.meanflow_loss` or
    :func:`~simple_reflow.losses_mean.splitmeanflow_loss` (``loss.kind``) that ``loss`` and
    ``time`` describe (validated).

    Args:
      loss, time: the sections (fields: :data:`MEAN_LOSS_DEFAULTS`, ``time.dist``, ...).
      num_classes: the data's class count; guidance (``loss.class_dropout``, ``cfg_*``) uses
        ``num_classes`` as the null label.
      teacher_fn: the one-time teacher denoiser ``loss.distill=True`` distils from.
    """
    validate_loss_config(loss)
    validate_time_config(time)
    kind, m = loss.kind, _mean_fields(loss)
    _check(kind in MEAN_KINDS, f"loss.kind={kind!r} is not one of {MEAN_KINDS}.")
    _check(
        not m["distill"] or teacher_fn is not None,
        "loss.distill=True needs a teacher (teacher.workdir for image data).",
    )
    kw = dict(
        time_fn=_time_fn(time),
        teacher_fn=teacher_fn if m["distill"] else None,
        norm_p=m["norm_p"],
        norm_eps=m["norm_eps"],
        t_max=time.get("t_max", 1.0),
    )
    if _guided(m):
        _check(
            num_classes > 0,
            f"loss.class_dropout={m['class_dropout']!r} / loss.cfg_omega={m['cfg_omega']!r} "
            "guide the target, which needs class-conditional data.",
        )
        kw["guidance"] = losses_mean.TrainingGuidance(
            null_class=num_classes,
            omega=m["cfg_omega"],
            kappa=m["cfg_kappa"],
            class_dropout=m["class_dropout"],
        )
    if kind == "meanflow":
        return dict(
            kw,
            equal_fraction=m["equal_fraction"],
            jvp_mode=m["jvp_mode"],
            tangent=m["mean_tangent"],
        )
    return dict(kw, boundary_fraction=m["boundary_fraction"])


def loss_fn_from_config(loss, time, *, sigma_data=None, num_classes=0, teacher_fn=None):
    """``loss_fn(model, batch, key) -> (loss, metrics)`` of ``loss.kind``: EDM's loss
    (``"edm"``, EDM eq. 2), the flow-matching loss (``"flow"``, METHOD.md §3), or an
    average-velocity objective (``"meanflow"``, ``"splitmeanflow"``, METHOD.md §9:
    :func:`mean_loss_kwargs`, whose ``num_classes`` and ``teacher_fn`` are passed on).

    ``sigma_data`` is the model's (``model.sigma_data``, the one source of σ_data: EDM's loss
    weighting must use the σ_data of the preconditioning it trains)."""
    validate_loss_config(loss)
    kind = loss.get("kind", "flow")
    if kind in MEAN_KINDS:
        fn = losses_mean.meanflow_loss if kind == "meanflow" else losses_mean.splitmeanflow_loss
        kw = mean_loss_kwargs(loss, time, num_classes=num_classes, teacher_fn=teacher_fn)
        return functools.partial(fn, **kw)
    if loss.get("kind", "flow") == "edm":
        if sigma_data is None:
            raise ValueError("loss.kind='edm' needs the model's σ_data (model.sigma_data).")
        return functools.partial(
            edm_loss, p_mean=loss.p_mean, p_std=loss.p_std, sigma_data=sigma_data
        )
    return flow_loss_from_config(loss, time)


# -- coupling -----------------------------------------------------------------------------------


def default_coupling_config() -> ml_collections.ConfigDict:
    """The ``coupling`` section: :func:`~simple_reflow.couplings.make_coupling`'s keyword
    arguments and their defaults (documented there)."""
    params = inspect.signature(make_coupling).parameters
    return ml_collections.ConfigDict(
        {k: p.default for k, p in params.items() if k not in ("data_shape", "num_data")}
    )


def coupling_from_config(coupling, *, data_shape, num_data=None):
    """The :class:`~simple_reflow.couplings.Coupling` a ``coupling`` section describes.

    Args:
      coupling: the section (fields: :func:`default_coupling_config`).
      data_shape: per-sample shape of ``x0``.
      num_data: dataset size; required by ``coupling.name='loom'``.
    """
    return _in_section(
        "coupling", make_coupling, **coupling, data_shape=data_shape, num_data=num_data
    )


# -- model --------------------------------------------------------------------------------------

_MLP_FIELDS = ("hidden", "depth", "dropout")
_IMAGE_FIELDS = (
    "model_channels",
    "channel_mult",
    "channel_mult_emb",
    "num_blocks",
    "attn_resolutions",
    "dropout",
    "num_classes",
    "label_dropout",
    "augment_dim",
    "sigma_data",
    "dtype",
)
# Every image preset of configs/backbones.py has these (conv_algorithm is optional).
_REQUIRED_IMAGE_FIELDS = ("resolution", *_IMAGE_FIELDS, "channels_per_head", *SONGUNET_OPTIONS)

# Fields that define the function a snapshot computes (dropout, dtype and conv_algorithm do not).
ARCHITECTURE_FIELDS = (
    "name",
    "resolution",
    "model_channels",
    "channel_mult",
    "channel_mult_emb",
    "num_blocks",
    "attn_resolutions",
    "num_classes",
    "augment_dim",
    "sigma_data",
    "channels_per_head",
    *SONGUNET_OPTIONS,
)


def model_kwargs(model) -> dict:
    """The options of :func:`~simple_reflow.models.build_model` a ``model`` section sets."""
    name = model.get("name")
    if name == "mlp":
        fields = _MLP_FIELDS
    else:
        fields = (
            *_IMAGE_FIELDS,
            "conv_algorithm",
            *(("channels_per_head",) if name == "adm" else SONGUNET_OPTIONS),
        )
    return {k: model[k] for k in (*fields, "two_time") if k in model}


def validate_model_config(model, *, data_shape) -> None:
    """Checks a ``model`` section against the data, in pure Python (no compilation).

    Args:
      model: the section (fields in ``configs/backbones.py``).
      data_shape: one example's shape, ``[H, W, C]`` for images, ``[dim]`` for vectors.

    Raises:
      ValueError: naming the offending field (``model.name``, ``model.dropout``,
        ``model.resolution``, ``model.channel_mult``, ...) and what would be valid.
    """
    name = model.get("name")
    _check(
        "conv_grad" not in model,
        "model.conv_grad is now model.conv_algorithm (same values, plus 'winograd')",
    )
    if name in MODEL_NAMES and name != "mlp":
        for field in _REQUIRED_IMAGE_FIELDS:
            _check(
                field in model,
                f"model.{field} is missing for model.name={name!r}; start "
                "from a preset in configs/backbones.py",
            )
        res = model.resolution
        if res and len(data_shape) == 3 and data_shape[0] == data_shape[1] != res:
            size = data_shape[0]
            raise ValueError(
                f"model.resolution={res} does not match the data's image size "
                f"{size}; use a preset for {size}x{size} or set model.resolution"
            )
    _in_section("model", model_options, name, data_shape=data_shape, **model_kwargs(model))


def model_from_config(model, *, data_shape, rngs, two_time=None):
    """The denoiser a ``model`` section describes (validated first; see ``build_model``);
    ``two_time`` overrides ``model.two_time`` (a distilled student's one-time teacher)."""
    validate_model_config(model, data_shape=data_shape)
    kw = model_kwargs(model)
    if two_time is not None:
        kw["two_time"] = two_time
    return build_model(model.name, data_shape=data_shape, rngs=rngs, **kw)


def check_same_architecture(expected, model, *, what: str) -> None:
    """Raises a ValueError naming the first architecture field where ``model`` differs.

    Args:
      expected: the model section a snapshot was made with (a ConfigDict or dict).
      model: the config's model section.
      what: where ``expected`` comes from, for the message (a path, a config field).
    """

    def norm(v):
        return tuple(norm(x) for x in v) if isinstance(v, (list, tuple)) else v

    adm = expected.get("name") == "adm"
    fields = [
        f
        for f in ARCHITECTURE_FIELDS
        if not (f in SONGUNET_OPTIONS and adm) and not (f == "channels_per_head" and not adm)
    ]
    for field in fields:
        want = norm(expected.get(field))
        got = norm(model.get(field)) if field in model else None
        if field == "resolution" and not got:
            continue  # 0 = any size; the data shape is checked when the model is built
        if want != got:
            raise ValueError(
                f"model.{field}={got!r} does not match {what}, which has model.{field}={want!r}"
            )


# -- training ------------------------------------------------------------------------------------


def fit_options(training) -> dict:
    """:func:`~simple_reflow.train.fit.fit`'s loop options from a ``training`` section."""
    return dict(
        ema_decay=training.ema_decay,
        ema_rampup=training.get("ema_rampup", 0.0),
        steps_per_call=training.get("steps_per_call", 1),
        log_every=training.log_every,
        ckpt_every=training.ckpt_every,
        keep=training.keep_checkpoints,
        batch_size=training.batch_size,
    )
