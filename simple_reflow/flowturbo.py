"""FlowTurbo sampling plans (Zhao, Shi, Yu, Zhou, Lu, NeurIPS 2024; METHOD.md §9).

A plan is a string of blocks, a letter and a step count: ``H`` Heun steps (two network calls
each), ``P`` pseudo-corrector steps (Heun whose first velocity is the previous step's second:
one call each, :func:`simple_reflow.sampler.sample` with ``solver="pseudo_heun"``) and ``R``
velocity-refiner steps (no call of the network, two of the light refiner), e.g. ``"H1P5R3"``.
The authors' assembled sampler (``models_assemble.FlowTurboAssemble``, ``shiml20/FlowTurbo``)
runs the blocks in the order H, P, R and its refiner takes (x_i, t_i, v_prev), the input
concatenated with the previous velocity along the channels; their integrator
(``transport/integrators.py``) accepts any order of steps. Here any order parses, but a plan
may not start with ``R`` (a refiner step needs a previous velocity).
"""

from __future__ import annotations

import re

__all__ = ["BLOCKS", "parse_plan", "plan_calls"]

BLOCKS = ("H", "P", "R")
"""Heun, pseudo-corrector, refiner."""

_TOKEN = re.compile(r"[A-Za-z]+\d*|\d+|[^A-Za-z\d]+")


def parse_plan(plan: str):
    """Parses a plan such as ``"H2P3R2"`` into ``(("H", 2), ("P", 3), ("R", 2))``.

    Letters are case-insensitive; each block is one of :data:`BLOCKS` followed by a positive
    step count. Raises ``ValueError`` naming the offending token.
    """
    if not isinstance(plan, str) or not plan:
        raise ValueError(f"a sampling plan must be a non-empty string like 'H2P3', got {plan!r}.")
    blocks = []
    for token in _TOKEN.findall(plan):
        m = re.fullmatch(r"([A-Za-z])(\d+)", token)
        if m is None or m.group(1).upper() not in BLOCKS or int(m.group(2)) < 1:
            raise ValueError(
                f"plan {plan!r}: bad block {token!r}; each block is one of {BLOCKS} followed by "
                "a step count ≥ 1, e.g. 'H2P3R2'."
            )
        blocks.append((m.group(1).upper(), int(m.group(2))))
    if blocks[0][0] == "R":
        raise ValueError(
            f"plan {plan!r}: the first block {blocks[0][0] + str(blocks[0][1])!r} is a refiner "
            "block, which needs the velocity of an earlier H or P step."
        )
    return tuple(blocks)


def plan_calls(plan):
    """``(nfe, refiner_calls)`` of a plan: network calls and light-refiner calls.

    H: 2 calls per step; P: 1 per step, plus 1 to start when the plan opens with P (the
    pseudo-corrector then has no previous velocity); R: 2 refiner calls per step (the authors'
    refiner block evaluates the refiner at x_i and at the predictor point), no network call.
    """
    blocks = parse_plan(plan) if isinstance(plan, str) else tuple(plan)
    nfe = 1 if blocks[0][0] == "P" else 0
    nfe += sum(2 * n if b == "H" else n for b, n in blocks if b != "R")
    return nfe, sum(2 * n for b, n in blocks if b == "R")
