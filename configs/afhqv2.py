"""AFHQv2 64×64 (unconditional): EDM DDPM++ teacher, pairs and Simple ReFlow.

Run (``--config.data.data_dir`` is required: TFDS 4.9.10 has no AFHQ builder, so the images
come from a folder, e.g. EDM's ``dataset_tool.py`` output ``afhqv2-64x64.zip`` unzipped)::

  python scripts/train.py --config configs/afhqv2.py:teacher --workdir runs/afhqv2/teacher \\
      --config.data.data_dir data/afhqv2-64x64
  python scripts/train.py --config configs/afhqv2.py:pairs --workdir runs/afhqv2/pairs \\
      --config.data.data_dir data/afhqv2-64x64 --config.teacher.workdir runs/afhqv2/teacher
  python scripts/train.py --config configs/afhqv2.py:reflow --workdir runs/afhqv2/reflow \\
      --config.data.data_dir data/afhqv2-64x64 --config.teacher.workdir runs/afhqv2/teacher \\
      --config.pairs.dir runs/afhqv2/pairs
  python scripts/train.py --config configs/afhqv2.py:teacher,smoke --workdir /tmp/smoke

Teacher (EDM, ``--cond=0 --arch=ddpmpp --batch=256 --cres=1,2,2,2 --lr=2e-4 --dropout=0.25
--augment=0.15``): 200 Mimg (781,250 steps), 10 Mimg warm-up, EMA half-life 0.5 Mimg; random
flips stand in for EDM's augmentation pipe [recon].

Pairs (METHOD.md §7): 1M backward + 13.5k forward, EDM Heun 18 steps (35 NFE).

ReFlow (METHOD.md §7): batch 256, Adam 2e-4, EMA 0.9999, 200k iterations. The paper gives its
exact dropout, λ, ρ and guidance weight only for CIFAR10; here [recon]: dropout 0.17 (EDM's
0.25 scaled by CIFAR10's 0.09/0.13), HPF λ = 10, ρ = 0.4, AutoGuidance w = 0.6.
Target FID at 9 NFE: 2.30 / 1.91.
"""

from __future__ import annotations

from configs import backbones
from configs.image_stages import ImageRecipe, image_config

RECIPE = ImageRecipe(
    name="afhqv2",
    model_fn=lambda: backbones.ddpmpp_64(dropout=0.25),
    smoke_model_fn=backbones.ddpmpp_smoke,
    variants=(("ve", lambda: backbones.ncsnpp_64(dropout=0.25)),),
    teacher_dropout=0.25,
    teacher_batch=256,
    teacher_lr=2e-4,
    teacher_mimg=200.0,
    teacher_ema_halflife_mimg=0.5,
    num_backward=1_000_000,
    num_forward=13_500,
    pair_steps=18,
    reflow_dropout=0.17,
    reflow_batch=256,
    reflow_steps=200_000,
    rho=0.4,
    hpf_weight=10.0,
    guidance="autoguidance",
    guidance_w=0.6,
)


def get_config(arg: str = ""):
    """``arg``: ``teacher`` | ``pairs`` | ``reflow`` (default) | ``boss`` | ``flowturbo`` |
    ``eval``, plus
    ``,smoke`` and ``,ve`` (NCSN++ instead of DDPM++)."""
    return image_config(RECIPE, arg)
