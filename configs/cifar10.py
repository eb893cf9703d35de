"""CIFAR10 32×32 (unconditional): EDM DDPM++ teacher, pairs and Simple ReFlow's best settings.

Run (each stage in its own workdir; ``,smoke`` runs a few CPU steps on mock data)::

  python scripts/train.py --config configs/cifar10.py:teacher --workdir runs/cifar10/teacher
  python scripts/train.py --config configs/cifar10.py:pairs --workdir runs/cifar10/pairs \\
      --config.teacher.workdir runs/cifar10/teacher
  python scripts/train.py --config configs/cifar10.py:reflow --workdir runs/cifar10/reflow \\
      --config.teacher.workdir runs/cifar10/teacher --config.pairs.dir runs/cifar10/pairs
  python scripts/train.py --config configs/cifar10.py:boss --workdir runs/cifar10/boss \
      --config.teacher.workdir runs/cifar10/teacher --config.eval.model_dir runs/cifar10/reflow \
      --config.boss.straighten_steps 1000
  python scripts/train.py --config configs/cifar10.py:eval --workdir runs/cifar10/boss_eval \
      --config.teacher.workdir runs/cifar10/teacher --config.eval.model_dir runs/cifar10/boss \
      --config.sampler.grid boss --config.sampler.solver euler
  python scripts/train.py --config configs/cifar10.py:flowturbo --workdir runs/cifar10/flowturbo \
      --config.teacher.workdir runs/cifar10/teacher --config.eval.model_dir runs/cifar10/reflow
  python scripts/train.py --config configs/cifar10.py:eval --workdir runs/cifar10/flowturbo_eval \
      --config.teacher.workdir runs/cifar10/teacher --config.eval.model_dir runs/cifar10/reflow \
      --config.sampler.solver flowturbo --config.eval.refiner_dir runs/cifar10/flowturbo
  python scripts/train.py --config configs/cifar10.py:teacher,smoke --workdir /tmp/smoke

``boss``: BOSS grids (K = 2, 4, 6 Euler steps) of the reflow student and the teacher saved
beside their snapshots, and the student straightened along its 4-step grid into the workdir;
the ``eval`` line after it scores the straightened student and the teacher on their own grids
(``configs/image_stages.py``, ``simple_reflow.train.boss_stage``).
``flowturbo``: a light velocity refiner (FlowTurbo, METHOD.md §9) trained for the plan
``H1P3R2`` of the reflow student on EDM's ρ = 7 grid; the ``eval`` line after it samples the
student with that plan (5 NFE and 3 refiner calls, reported apart) and scores the teacher with
Heun at each ``eval.nfe`` budget (``simple_reflow.train.flowturbo_stage``).

Data: TFDS ``cifar10`` read through ``tfds.data_source`` (prepare it once with
``tfds build cifar10 --file_format=array_record``; ``--config.data.data_dir`` if not in
``~/tensorflow_datasets``).

Teacher (EDM, ``--cond=0 --arch=ddpmpp``): batch 512, Adam lr 1e-3 with a 10 Mimg linear
warm-up, dropout 0.13, 200 Mimg (390,625 steps), EMA half-life 0.5 Mimg (β = 0.99929 per
step). EDM's augmentation pipe (p = 0.12) is replaced by random horizontal flips [recon].

Pairs (METHOD.md §2, §7): 1M backward + 50k forward, EDM Heun 18 steps (35 NFE).

ReFlow (METHOD.md §7, the paper's best CIFAR10 settings): HPF loss λ = 10 normalised,
10^t time distribution, dropout 0.09, ρ = 0.4, Adam 2e-4, EMA 0.9999, 200k iterations at batch
512; DPM-Solver-2 r = 0.4 on the sigmoid grid κ = 20; AutoGuidance w = 0.6 (set
``--config.guidance.bad_workdir`` to the weaker model). Target FID at 9 NFE: 2.23 / 1.98.
"""

from __future__ import annotations

from configs import backbones
from configs.image_stages import ImageRecipe, image_config

RECIPE = ImageRecipe(
    name="cifar10",
    model_fn=backbones.ddpmpp_cifar10,
    smoke_model_fn=backbones.ddpmpp_smoke,
    variants=(("ve", backbones.ncsnpp_cifar10),),
    cond_classes=10,
    teacher_dropout=0.13,
    teacher_batch=512,
    teacher_lr=1e-3,
    teacher_mimg=200.0,
    teacher_ema_halflife_mimg=0.5,
    num_backward=1_000_000,
    num_forward=50_000,
    pair_steps=18,
    reflow_dropout=0.09,
    reflow_batch=512,
    reflow_steps=200_000,
    rho=0.4,
    hpf_weight=10.0,
    guidance="autoguidance",
    guidance_w=0.6,
)


def get_config(arg: str = ""):
    """``arg``: ``teacher`` | ``pairs`` | ``reflow`` (default) | ``boss`` | ``flowturbo`` |
    ``eval``, plus
    ``,smoke``, ``,ve`` (NCSN++ instead of DDPM++) and ``,cond`` (class-conditional, 10 classes)."""
    return image_config(RECIPE, arg)
