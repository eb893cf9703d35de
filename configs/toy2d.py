"""Toy-2D ReFlow: teacher → pairs → Simple ReFlow student → evaluation, on a laptop CPU.

Run:
  python scripts/train.py --config configs/toy2d.py --workdir runs/toy2d
  python scripts/train.py --config configs/toy2d.py --workdir runs/moons --config.data.name=moons
  python scripts/train.py --config configs/toy2d.py:smoke --workdir /tmp/toy_smoke
  python scripts/train.py --config configs/toy2d.py:ot-cfm --workdir runs/ot  # or loom-cfm, w-cfm
  python scripts/train.py --config configs/toy2d.py:meanflow --workdir runs/meanflow
  python scripts/train.py --config configs/toy2d.py:splitmeanflow,distill --workdir runs/smf_d
  python scripts/train.py --config configs/toy2d.py:boss --workdir runs/boss  # or boss,smoke
  python scripts/train.py --config configs/toy2d.py:flowturbo --workdir runs/ft  # or ,smoke

``8gaussians`` uses the analytic teacher (METHOD.md §6); ``moons`` and ``checkerboard`` first
train a 1-rectified flow teacher. The student uses Simple ReFlow's techniques that apply to
non-image data: loss normalisation, the 10^t time distribution, forward pairs with ρ = 0.4 and
DPM-Solver-2 (r = 0.4) on the sigmoid grid (κ = 20). The coupling projection (METHOD.md §3) is
off by default; ``--config.pairs.projection.fraction=0.2`` makes a fifth of each batch projected
pairs (``--config.pairs.projection.lam=search`` picks λ by Algorithm 2).

``meanflow`` / ``splitmeanflow`` train a two-time MLP (METHOD.md §9) instead of the ReFlow
student, on data batches paired with noise by the configured coupling (independent by default;
add ``ot-cfm``, ``loom-cfm`` or ``w-cfm``), and score it per NFE with the ``"mean"`` solver on
the uniform grid beside the teacher (Euler on the same grid). ``distill`` takes the instantaneous
velocity from the teacher instead of x1 − x0: on 8gaussians the analytic teacher, which has no
weights, so the student starts from scratch; elsewhere the trained 1-RF, whose weights the
student starts from (``models.two_time.init_from_one_time``: at step 0 it samples exactly as the
teacher does with Euler). ``meanflow`` with ``--config.loss.mean_tangent=model`` trains with
improved MeanFlow's v-loss (the JVP along the model's own u(z, t, t); ``losses_mean``).

``boss`` adds BOSS (METHOD.md §9) after the evaluation: each model's Bellman-optimal K-step
Euler grid (K = 2, 4, 6; saved beside the snapshots that exist, ``boss_grid.json``), the student
straightened along its 4-step grid into ``workdir/student_boss`` (``--config.boss.lora_rank=4``
for adapters only; ``--config.boss.straighten_steps=0`` for grids only), and a second table: W2
of K Euler steps on the uniform, sigmoid and BOSS grids (``eval/<model>/euler_<grid>/w2@nfe=K``
in ``eval_metrics.json``).

``flowturbo`` adds FlowTurbo (METHOD.md §9) after the evaluation: for the teacher and the
student, a 32-wide, 2-layer MLP refiner trained for the plan ``H1P3R2`` on the uniform grid
(1,000 steps on the plan run from 4,096 noises) into ``workdir/<model>_flowturbo``, and a third
table: W2 of the plan with it, of the plan with a zero refiner (each R step reuses the carried
velocity), and of the pseudo-corrector and Heun at the plan's 5 NFE
(``eval/<model>/flowturbo_refiner/w2@nfe=5``, ... in ``eval_metrics.json``).
"""

from configs import common
from configs.common import DISTILL, MEAN_METHODS, apply_mean_method, base_config

# 1-RF teachers trained with another coupling (BENCHMARKS.md B1's contenders); the pipeline
# then evaluates that 1-RF as "teacher" and reflows it.
COUPLINGS = {k: v for k, v in common.COUPLINGS.items() if k != "i-cfm"}  # i-CFM: the default
LOOM_NUM_EXAMPLES = 16_384  # LOOM-CFM keeps per-example state: a fixed training set


def get_config(arg: str = ""):
    tokens = [t for t in arg.split(",") if t]
    known = ["smoke", "boss", "flowturbo", *COUPLINGS, *MEAN_METHODS, DISTILL]
    unknown = [t for t in tokens if t not in known]
    if unknown:
        raise ValueError(f"config argument {unknown[0]!r} is not one of {known} (comma-separated).")
    methods = [t for t in tokens if t in MEAN_METHODS]
    if len(methods) > 1:
        raise ValueError(f"config argument {arg!r} names more than one of {MEAN_METHODS}.")
    if DISTILL in tokens and not methods:
        raise ValueError(f"config argument {arg!r}: 'distill' needs one of {MEAN_METHODS}.")
    if "boss" in tokens and methods:
        raise ValueError(
            f"config argument {arg!r}: 'boss' chooses Euler steps of a one-time flow; "
            f"{methods[0]} trains a two-time model."
        )
    if "flowturbo" in tokens and methods:
        raise ValueError(
            f"config argument {arg!r}: 'flowturbo' steps the velocity of a one-time flow; "
            f"{methods[0]} trains a two-time model."
        )
    c = base_config()
    c.stage = "pipeline"
    c.data.name = "8gaussians"
    # Where the teacher comes from: "analytic" (the Gaussian mixture's exact flow, METHOD.md §6),
    # "train" (a 1-RF trained here with the configured coupling) or "auto" (analytic for
    # 8gaussians, else train).
    c.teacher.kind = "auto"
    c.teacher.num_steps = 4000

    # Used where a 1-RF is trained (moons, checkerboard); --config.coupling.name=ot|loom|wcfm
    # trains it with OT-CFM, LOOM-CFM (needs --config.data.num_examples) or W-CFM. κ = 8 was the
    # best W-CFM temperature on these sets (benchmarks/toy2d.py, mean W2 at 2 and 4 NFE).
    c.coupling.kappa = 8.0

    c.model.name = "mlp"
    c.model.hidden = 256
    c.model.depth = 3

    # Simple ReFlow on non-image data: normalised squared ℓ2, 10^t times, forward pairs.
    c.loss.distance = "l2"
    c.loss.normalize = True
    c.time.dist = "exp10"

    c.pairs.num_backward = 20_000
    c.pairs.num_forward = 5_000
    c.pairs.rho = 0.4
    c.pairs.solver = "heun"
    c.pairs.grid = "uniform"
    c.pairs.steps = 32
    c.pairs.t_max = 1.0
    c.pairs.t_min = 1e-3

    c.sampler.solver = "dpm2"
    c.sampler.grid = "sigmoid"
    c.sampler.kappa = 20.0
    c.sampler.r = 0.4
    c.sampler.t_max = 1.0

    c.optim.lr = 1e-3
    c.training.batch_size = 256
    c.training.num_steps = 4000
    c.training.ema_decay = 0.999
    c.training.ema_rampup = 0.0  # EDM's EMA ramp-up ratio (configs/common.py); 0 = none
    c.training.log_every = 500
    c.training.ckpt_every = 2000
    c.training.steps_per_call = 50

    c.eval.nfe = (1, 2, 4, 9)
    c.eval.num_samples = 5000
    c.eval.accurate_steps = 100  # the reference solve: Heun on a uniform grid of this many steps

    coupling = [t for t in tokens if t in COUPLINGS]
    if len(coupling) > 1:
        raise ValueError(f"config argument {arg!r} names more than one coupling.")
    if coupling:
        c.teacher.kind = "train"
        c.coupling.update(COUPLINGS[coupling[0]])
        if coupling[0] == "loom-cfm":
            c.data.num_examples = LOOM_NUM_EXAMPLES

    if methods:
        apply_mean_method(c, methods[0], distill=DISTILL in tokens)

    # BOSS after the evaluation (the `boss` token; METHOD.md §9): the settings of
    # benchmarks/boss_toy.py — 100 uniform candidate intervals, 1,024 reference noises, 4 Heun
    # substeps; the student straightened along its 4-step grid for 1,000 steps (Adam 1e-4,
    # batch 512, EMA 0.99) on 4,096 fresh reference trajectories.
    c.boss.enabled = "boss" in tokens
    c.boss.candidates = 100
    c.boss.num_noises = 1024
    c.boss.substeps = 4
    c.boss.batch_size = 1024
    c.boss.num_steps = (2, 4, 6)
    c.boss.straighten_steps = 1000
    c.boss.straighten_k = 4
    c.boss.straighten_noises = 4096
    c.boss.straighten_batch = 512
    c.boss.lr = 1e-4
    c.boss.ema_decay = 0.99

    # FlowTurbo after the evaluation (the `flowturbo` token; METHOD.md §9): a refiner per model
    # for H1P3R2 on the uniform grid, trained as tests/test_flowturbo.py's (Adam 3e-3, batch
    # 256) for 1,000 steps on the plan run from 4,096 noises [recon].
    c.flowturbo.enabled = "flowturbo" in tokens
    c.flowturbo.plan = "H1P3R2"
    c.flowturbo.grid = "uniform"
    c.flowturbo.width = 32
    c.flowturbo.depth = 2
    c.flowturbo.num_noises = 4096
    c.flowturbo.batch_size = 4096
    c.flowturbo.num_steps = 1000
    c.flowturbo.train_batch = 256
    c.flowturbo.lr = 3e-3
    c.flowturbo.ema_decay = 0.99

    if "smoke" in tokens:
        c.teacher.num_steps = 200
        c.pairs.num_backward = 2000
        c.pairs.num_forward = 500
        c.pairs.projection.num = 500
        c.pairs.steps = 8
        c.training.num_steps = 200
        c.training.ema_decay = 0.9  # an EMA over the last ~10 of 200 steps
        c.training.log_every = 100
        c.training.ckpt_every = 100
        c.eval.num_samples = 500
        c.eval.accurate_steps = 16
        c.boss.candidates = 20
        c.boss.num_noises = 256
        c.boss.batch_size = 256
        c.boss.substeps = 2
        c.boss.straighten_steps = 100
        c.boss.straighten_noises = 512
        c.boss.straighten_batch = 256
        c.flowturbo.num_noises = 1024
        c.flowturbo.batch_size = 1024
        c.flowturbo.num_steps = 200
    return c
