"""scikit-learn's digits (8×8×1, offline): teacher → pairs → reflow → samples on a CPU.

Run the stages in order (the default workdirs chain them with no extra flags)::

  python scripts/train.py --config configs/digits.py:teacher --workdir runs/digits/teacher
  python scripts/train.py --config configs/digits.py:pairs --workdir runs/digits/pairs
  python scripts/train.py --config configs/digits.py:reflow --workdir runs/digits/reflow
  python scripts/train.py --config configs/digits.py:eval --workdir runs/digits/reflow

(``,smoke`` after the stage for a seconds-long run of the same stage). BOSS (METHOD.md §9):
``:boss`` saves the Bellman-optimal Euler grids beside ``runs/digits/reflow/ema.npz`` and the
teacher's, and with ``--config.boss.straighten_steps=500`` straightens the student into its
workdir; then score it::

  python scripts/train.py --config configs/digits.py:boss --workdir runs/digits/boss \
      --config.boss.straighten_steps=500
  python scripts/train.py --config configs/digits.py:eval --workdir runs/digits/boss_eval \
      --config.eval.model_dir=runs/digits/boss --config.sampler.grid=boss \
      --config.sampler.solver=euler

FlowTurbo (METHOD.md §9): ``:flowturbo`` trains a velocity refiner for the plan ``H1P3R2`` of
``runs/digits/reflow``'s student into its workdir; the eval stage samples the plan with it::

  python scripts/train.py --config configs/digits.py:flowturbo --workdir runs/digits/flowturbo
  python scripts/train.py --config configs/digits.py:eval --workdir runs/digits/flowturbo_eval \
      --config.eval.model_dir=runs/digits/reflow --config.sampler.solver=flowturbo \
      --config.eval.refiner_dir=runs/digits/flowturbo

Data: the 1,500-image ``train`` split, evaluated against the 297 held-out ``test`` images with
the pixel-space Fréchet distance (floor, train vs test: 0.563). Native 8×8 (see
``simple_reflow/data/digits.py``), no flips.

Model: a small DDPM++ (16 channels, levels 8/4/2, 2 blocks, attention at 4×4; 441k
parameters). Measured on this 2-core CPU (``/tmp`` scratch script of the data engineer, EDM
loss, batch 128): 172 ms per training step, 153 ms per forward pass at batch 512. A 1,500-step
teacher (batch 128, lr 1e-3, 200-step warm-up) reached pixel FD 1.23 (raw weights) / 2.16
(EMA 0.999, which lags in so short a run; hence EMA 0.995 here) at Heun 18 steps, with
digit-like samples. Measured end to end with the four commands above on a 2-core CPU
(2026-11-29, matmul peak ~480 GFLOP/s): teacher 185 s, pairs 53 s, reflow 135 s (1,000 steps),
eval 33 s — 6 min 46 s in all; pixel FD (uint8-quantised samples, index-seeded) at 1 / 3 / 9
NFE: student 0.965 / 0.940 / 0.970, teacher 15.50 / 2.954 / 1.538. (An earlier machine, before
the uint8 quantisation: 11 min 21 s; student 1.263, teacher 1.742 at 9 NFE.)
"""

from __future__ import annotations

from configs import backbones
from configs.image_stages import ImageRecipe, image_config, parse_arg, recipe_options


def digits_model(dropout: float = 0.1):
    """The digits DDPM++ preset (16 channels, levels 8/4/2, 2 blocks, attention at 4×4)."""
    c = backbones.ddpmpp_smoke(dropout=dropout)
    c.model_channels = 16
    c.channel_mult = (1, 2, 2)
    c.num_blocks = 2
    c.attn_resolutions = (4,)
    return c


RECIPE = ImageRecipe(
    name="digits",
    model_fn=digits_model,
    smoke_model_fn=backbones.ddpmpp_smoke,
    teacher_dropout=0.1,
    teacher_batch=128,
    teacher_lr=1e-3,
    teacher_mimg=1500 * 128 / 1e6,  # 1,500 steps
    teacher_ema_halflife_mimg=0.0177,  # 138 steps of 128: β = 0.995 per step
    teacher_warmup_mimg=200 * 128 / 1e6,  # 200 steps
    teacher_flip=False,  # digits are not mirror-symmetric
    num_backward=4096,
    num_forward=1500,  # every training image
    pair_steps=18,
    reflow_dropout=0.05,
    reflow_batch=128,
    reflow_steps=1000,
    reflow_lr=5e-4,
    reflow_ema=0.995,
    rho=0.4,
    hpf_weight=10.0,
    guidance="none",
    guidance_w=0.0,
    eval_split="test",
    eval_samples=2000,
)


def get_config(arg: str = ""):
    """``arg``: ``teacher`` (default) | ``pairs`` | ``reflow`` | ``boss`` | ``flowturbo`` |
    ``eval``, plus ``,smoke``."""
    c = image_config(RECIPE, arg, default_stage="teacher")
    smoke = parse_arg(arg, default="teacher", options=recipe_options(RECIPE))[1]
    c.data.split = "train"
    c.teacher.workdir = "runs/digits/teacher"
    c.pairs.dir = "runs/digits/pairs"
    c.training.log_every = 100
    c.training.ckpt_every = 500
    c.pairs.chunk = 512
    if c.stage in ("boss", "flowturbo"):  # the reflow student of the default chain
        c.eval.model_dir = "runs/digits/reflow"
    if smoke:
        c.data.source = "digits"  # the real digits are already tiny
        c.model.num_blocks = 1
        c.training.num_steps = 2
        c.pairs.num_backward = 8
        c.pairs.num_forward = 4
    return c
