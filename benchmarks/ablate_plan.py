"""The ablation's plan on B2: the base config (2-RF), the named switches, the paper's order and
the variants of each mode, with the budgets (:data:`FULL`, :data:`QUICK`).

What each switch and mode means, and why the budget is what it is: ``benchmarks/ablate.py``,
which trains and evaluates the variants. This module only says *which* variants exist; a
variant's training keys (:data:`TRAIN_KEYS`) name the student it trains (:func:`student_id`),
its sampler keys how that student is sampled (:func:`sampler_id`).
"""

from __future__ import annotations

__all__ = [
    "BASE",
    "TRAIN_KEYS",
    "SWITCHES",
    "PAPER_ORDER",
    "ALTERNATIVES",
    "MODES",
    "FULL",
    "QUICK",
    "RUN_KEYS",
    "plan",
    "student_id",
    "sampler_id",
]

BASE = {
    # training: the student (2-RF from the pretrained network, backward pairs)
    "normalize": False,
    "time": "uniform",
    "distance": "l2",
    "dropout": 0.13,
    "rho": 0.0,
    "projection": 0.0,
    "coupling": "teacher",  # teacher pairs | "ot" | "loom" (1-RF on exact samples) | "init"
    # sampling
    "grid": "uniform",
    "solver": "euler",
    "guidance": 0.0,
}
TRAIN_KEYS = ("normalize", "time", "distance", "dropout", "rho", "projection", "coupling")
SWITCHES = {
    "norm": {"normalize": True},
    "exp10": {"time": "exp10"},
    "hpf": {"distance": "hpf"},
    "dropout": {"dropout": 0.09},
    "forward": {"rho": 0.4},
    "projection": {"projection": 0.2},
    "sigmoid": {"grid": "sigmoid"},
    "dpm2": {"solver": "dpm2"},
    "autoguidance": {"guidance": 0.6},
    "u_shape": {"time": "u_shape"},
    "pseudo_huber": {"distance": "pseudo_huber"},
    "heun": {"solver": "heun"},
}
PAPER_ORDER = (
    "norm",
    "exp10",
    "hpf",
    "dropout",
    "forward",
    "projection",
    "sigmoid",
    "dpm2",
    "autoguidance",
)
ALTERNATIVES = ("u_shape", "pseudo_huber", "heun")
MODES = ("cumulative", "one-at-a-time", "contenders")
NATIVE_EULER = {"grid": "uniform", "solver": "euler", "guidance": 0.0}
CROSS_DPM2 = {"grid": "sigmoid", "solver": "dpm2", "guidance": 0.0}

FULL = dict(
    size=16,
    pretrain_steps=800,
    steps=350,
    batch=32,
    pairs=2048,
    forward=1024,
    eval_samples=768,
    lr=2e-4,
    ema_fraction=0.1,
    network="ddpmpp",  # B2's student; "mlp" (2×64, for tests) compiles in a second
    seeds=(0, 1, 2),
)
QUICK = dict(FULL, size=8, pretrain_steps=60, steps=30, batch=16, pairs=256, forward=128)
QUICK.update(eval_samples=256, seeds=(0, 1))
RUN_KEYS = tuple(k for k in FULL if k != "seeds")  # what the cached work depends on


def plan(modes=MODES, switches=None):
    """The variants of ``modes``: ``{"variants": {name: config}, "modes": {mode: [names]},
    "refs": {name: (reference variant, what changed)}}`` (``refs`` feeds the verdicts).

    ``switches`` restricts the switches (kept in :data:`PAPER_ORDER`); None = all.
    """
    bad = set(modes) - set(MODES)
    if bad:
        raise ValueError(f"modes {sorted(bad)} are not among {MODES}.")
    chosen = [s for s in (*PAPER_ORDER, *ALTERNATIVES) if switches is None or s in switches]
    unknown = set(switches or ()) - set(SWITCHES)
    if unknown:
        raise ValueError(f"switches {sorted(unknown)} are not among {sorted(SWITCHES)}.")
    variants, by_mode, refs = {"base": dict(BASE)}, {}, {}
    if "cumulative" in modes:
        names, cfg = ["base"], dict(BASE)
        for s in (s for s in chosen if s in PAPER_ORDER):
            cfg = {**cfg, **SWITCHES[s]}
            variants["+" + s] = cfg
            refs["+" + s] = (names[-1], s)
            names.append("+" + s)
        by_mode["cumulative"] = names
    if "one-at-a-time" in modes:
        names = ["base"]
        for s in chosen:
            variants["base+" + s] = {**BASE, **SWITCHES[s]}
            refs["base+" + s] = ("base", s)
            names.append("base+" + s)
        by_mode["one-at-a-time"] = names
    if "contenders" in modes:
        full = dict(BASE)
        for s in PAPER_ORDER:
            full.update(SWITCHES[s])
        own = {
            "1rf_init": {**BASE, "coupling": "init"},
            "2rf": dict(BASE),
            "2rf++": {**BASE, "time": "u_shape", "distance": "pseudo_huber"},
            "simple_reflow": full,
            "ot_cfm": {**BASE, "coupling": "ot"},
            "loom_cfm": {**BASE, "coupling": "loom"},
        }
        names = []
        for name, cfg in own.items():
            cross = ("@dpm2", CROSS_DPM2) if cfg["solver"] == "euler" else ("@euler", NATIVE_EULER)
            extra = [(name, cfg), (name + cross[0], {**cfg, **cross[1]})]
            if name == "simple_reflow":
                extra.append((name + "@dpm2", {**cfg, **CROSS_DPM2}))
            for n, c in extra:
                variants[n] = c
                names.append(n)
        for n in names:  # each against 2-RF with the same sampler (2rf@dpm2 against 2rf)
            if n != "2rf":
                ref = "2rf@dpm2" if n.endswith("@dpm2") and n != "2rf@dpm2" else "2rf"
                refs[n] = (ref, "vs " + ref)
        by_mode["contenders"] = names
    used = {n for names in by_mode.values() for n in names}
    return {
        "variants": {n: c for n, c in variants.items() if n in used},
        "modes": by_mode,
        "refs": refs,
    }


def student_id(cfg):
    """A readable name of a variant's training config: its differences from the base."""
    diff = [f"{k}={cfg[k]}" for k in TRAIN_KEYS if cfg[k] != BASE[k]]
    return "+".join(diff) or "base"


def sampler_id(cfg):
    g = f"/ag{cfg['guidance']:g}" if cfg["guidance"] else ""
    return f"{cfg['solver']}/{cfg['grid']}{g}"
