"""ImageNet 64×64 (class-conditional): EDM ADM teacher, pairs and Simple ReFlow with CFG.

Run (TFDS ``imagenet_resized/64x64``, the labelled box-downsampled ImageNet, prepared once with
``tfds build imagenet_resized/64x64 --file_format=array_record``)::

  python scripts/train.py --config configs/imagenet64.py:teacher --workdir runs/in64/teacher
  python scripts/train.py --config configs/imagenet64.py:pairs --workdir runs/in64/pairs \\
      --config.teacher.workdir runs/in64/teacher
  python scripts/train.py --config configs/imagenet64.py:reflow --workdir runs/in64/reflow \\
      --config.teacher.workdir runs/in64/teacher --config.pairs.dir runs/in64/pairs
  python scripts/train.py --config configs/imagenet64.py:teacher,smoke --workdir /tmp/smoke

Teacher (EDM, ``--cond=1 --arch=adm --duration=2500 --batch=4096 --lr=1e-4 --ema=50
--dropout=0.10 --augment=0``): 2500 Mimg (610,352 steps), 10 Mimg warm-up, EMA half-life
50 Mimg (β = 0.999943 per step), no flips (EDM used none). Unlike EDM we train the teacher with
label dropout 0.1 too, so it has a null class for classifier-free guidance.

Pairs (METHOD.md §2, §7, as 2-RF++): 8M backward + 4M forward, EDM Heun 40 steps (79 NFE).

ReFlow (METHOD.md §7): batch 1024, Adam 2e-4, EMA 0.9999, 500k iterations, label dropout 0.1,
classifier-free guidance (METHOD.md §5). [recon]: dropout 0.07 (EDM's 0.10 scaled by CIFAR10's
0.09/0.13), HPF λ = 10, ρ = 0.4, CFG w = 0.6. Target FID at 9 NFE: 3.49 / 1.74.
"""

from __future__ import annotations

from configs import backbones
from configs.image_stages import ImageRecipe, image_config

RECIPE = ImageRecipe(
    name="imagenet64",
    model_fn=lambda: backbones.adm_imagenet64(dropout=0.10, label_dropout=0.1),
    smoke_model_fn=lambda: backbones.adm_smoke(num_classes=10, label_dropout=0.1),
    teacher_dropout=0.10,
    teacher_batch=4096,
    teacher_lr=1e-4,
    teacher_mimg=2500.0,
    teacher_ema_halflife_mimg=50.0,
    teacher_flip=False,
    num_backward=8_000_000,
    num_forward=4_000_000,
    pair_steps=40,
    reflow_dropout=0.07,
    reflow_batch=1024,
    reflow_steps=500_000,
    rho=0.4,
    hpf_weight=10.0,
    guidance="cfg",
    guidance_w=0.6,
    label_dropout=0.1,
)


def get_config(arg: str = ""):
    """``arg``: ``teacher`` | ``pairs`` | ``reflow`` (default) | ``boss`` | ``flowturbo`` |
    ``eval``, plus
    ``,smoke``."""
    return image_config(RECIPE, arg)
