"""B1's few-step leaderboard and budget curves (issue 24), from ``benchmarks/toy2d.py`` records.

- :func:`merge` joins a run's records with earlier result files (``--merge``), each method at
  the solver it is meant to be sampled with (the first of its ``toy2d.METHODS`` entry: Euler
  for the teacher, 2-RF, 2-RF++ and the 1-RFs of other couplings, DPM-Solver-2 for Simple
  ReFlow, the ``"mean"`` solver for the two-time models, ``"euler-boss"`` for Euler on a
  model's BOSS grid, ``"flowturbo"`` for a FlowTurbo plan), and checks that records present in
  both (the teacher, 2-RF of the same task and seed) are equal: a reproducibility check.
- :func:`leaderboard` ranks the methods per task at 1, 2 and 4 NFE: W2 mean over seeds and sets
  ± std over seeds, the coupling error and the average-velocity error (8gaussians), and each
  method against the best W2 by ``toy2d.significance``'s rule (|difference of means| > the
  combined std of the two methods' (seed, set) values).
- :func:`curve_summary` reads the budget-curve records (``"curve": True``) and says per method
  and metric whether the curve has **flattened**: the last doubling of the step count (S/2 → S,
  or the last two curve points where S/2 is not one of them) changes the metric's seed mean by
  less than its seed spread (std over seeds at S). A budget is chosen as the smallest S at
  which 2-RF's and MeanFlow's curves have flattened at 1 and 2 NFE.
- :func:`figures` draws one figure per metric of the leaderboard and one of the budget curves.
"""

from __future__ import annotations

import collections
import os

import numpy as np

from benchmarks import toy2d

__all__ = [
    "LEADERBOARD_BUDGETS",
    "METRICS",
    "own_solver",
    "merge",
    "join",
    "leaderboard",
    "format_leaderboard",
    "curve_summary",
    "format_curves",
    "figures",
    "report",
]

LEADERBOARD_BUDGETS = (1, 2, 4)
# record field -> (label, summary field); W2's summary field is "mean"
METRICS = {
    "w2": ("W2", "mean"),
    "coupling_error": ("coupling error", "coupling"),
    "avg_velocity_error": ("avg-velocity error", "ave"),
}


def own_solver(method):
    """The solver ``method`` is scored with on the leaderboard (None for an unknown method)."""
    spec = toy2d.METHODS.get(method)
    return spec["solvers"][0]["solver"] if spec else None


def _id(r):
    return (r["task"], r["method"], r["seed"], r["solver"], str(r["budget"]))


def merge(records, earlier):
    """A run's records joined with earlier runs' records.

    Args:
      records: this run's records (budget-curve records are kept as they are).
      earlier: lists of records of earlier result files. A (task, method) this run has keeps
        this run's records only (every seed: no leaderboard row mixes two runs); of a (task,
        method) two earlier lists share (their teacher), the first list's are kept.

    Returns:
      ``(merged, checks)``: ``checks`` per (task, method) present in both this run and an
      earlier list, over their common (seed, solver, budget) records: ``{"task", "method",
      "records", "same_sets", "max_w2_diff", "max_coupling_diff", "equal"}``. ``same_sets``:
      both scored the same evaluation sets (equal W2 floors on the sets both have: same
      seeds and sample size); W2 is compared set by set on the sets both have, the coupling
      error (a mean over the sets) only where both have as many sets (else None).
    """
    merged = list(records)
    ours = {_id(r): r for r in records if not r.get("curve")}
    owner = {(r["task"], r["method"]): -1 for r in ours.values()}
    checks = {}
    for i, old in enumerate(earlier):
        for r in old:
            if r.get("curve"):
                continue
            group = (r["task"], r["method"])
            if owner.setdefault(group, i) == i:
                merged.append(r)
                continue
            new = ours.get(_id(r))
            if new is None:
                continue
            _check(checks, group, new, r)
    return merged, _check_rows(checks)


def _check(checks, group, new, r):
    """Adds one pair of records of the same id to ``checks[group]``."""
    c = checks.setdefault(group, {"records": 0, "same_sets": True, "w2": 0.0, "coupling": 0.0})
    c["records"] += 1
    k = min(len(new["w2_sets"]), len(r["w2_sets"]))
    floors = (new.get("w2_floor_sets") or [])[:k], (r.get("w2_floor_sets") or [])[:k]
    c["same_sets"] &= floors[0] == floors[1]
    d = np.abs(np.subtract(new["w2_sets"][:k], r["w2_sets"][:k]))
    c["w2"] = max(c["w2"], float(d.max()))
    if len(new["w2_sets"]) != len(r["w2_sets"]):
        c["coupling"] = None
    elif c["coupling"] is not None and new.get("coupling_error") is not None:
        diff = abs(new["coupling_error"] - (r.get("coupling_error") or 0.0))
        c["coupling"] = max(c["coupling"], diff)


def _check_rows(checks):
    return [
        {
            "task": task,
            "method": method,
            "records": c["records"],
            "same_sets": c["same_sets"],
            "max_w2_diff": c["w2"],
            "max_coupling_diff": c["coupling"],
            "equal": c["same_sets"] and c["w2"] == 0.0 and not c["coupling"],
        }
        for (task, method), c in sorted(checks.items())
    ]


def join(lists):
    """One record file from several runs (e.g. one run per task, and a run of the
    sampling-time rows that retrains the teacher and 2-RF): each (task, method) with its
    budget curves from the first list that has it, and :func:`merge`'s checks that the lists
    repeating it reproduce it. Returns ``(records, checks)``."""
    merged, owner, first, checks = [], {}, {}, {}
    for i, records in enumerate(lists):
        for r in records:
            group = (r["task"], r["method"])
            if owner.setdefault(group, i) == i:
                merged.append(r)
                if not r.get("curve"):
                    first[_id(r)] = r
            elif not r.get("curve") and _id(r) in first:
                _check(checks, group, first[_id(r)], r)
    return merged, _check_rows(checks)


def leaderboard(records, budgets=LEADERBOARD_BUDGETS):
    """Per task, the methods at their own solver (:func:`own_solver`) ranked by W2 at the
    first budget.

    Returns:
      ``{task: [row]}``, row = ``{"method", "solver", "seeds", "by_budget": {budget:
      {"w2", "w2_std", "coupling", "coupling_std", "ave", "ave_std", "best", "significant",
      "paired_t"}}}`` (FlowTurbo rows add ``"plans": {budget: (plan, refiner calls)}``):
      means over seeds (and sets) ± std over seeds; ``best``: the lowest W2 of the task at
      that budget; ``significant``: W2 differs from the best's by more than the combined std
      (``toy2d.significance``); ``paired_t``: and the paired t-test on equal seeds passes.
    """
    keep = [
        r
        for r in records
        if not r.get("curve")
        and r["budget"] in budgets
        and r["solver"] == (own_solver(r["method"]) or r["solver"])
    ]
    summary = toy2d.summarize(keep)
    pairs = {}
    for row in toy2d.significance(summary):
        a, b = row["a"].split("/")[0], row["b"].split("/")[0]
        pairs[(row["task"], row["budget"], frozenset((a, b)))] = row
    seeds = collections.defaultdict(set)
    for r in keep:
        seeds[(r["task"], r["method"])].add(r["seed"])
    table = collections.defaultdict(dict)
    for (task, method, solver, budget), v in summary.items():
        row = table[task].setdefault(
            method,
            {
                "method": method,
                "solver": solver,
                "seeds": len(seeds[(task, method)]),
                "by_budget": {},
            },
        )
        row["by_budget"][int(budget)] = {
            "w2": v["mean"],
            "w2_std": v["seed_std"],
            "coupling": v["coupling"],
            "coupling_std": v["coupling_std"],
            "ave": v["ave"],
            "ave_std": v["ave_std"],
        }
    for r in keep:  # FlowTurbo: the plan and its refiner calls (never free) per budget
        if "plan" in r:
            row = table[r["task"]][r["method"]]
            row.setdefault("plans", {})[int(r["budget"])] = (r["plan"], r["refiner_calls"])
    out = {}
    for task, rows in table.items():
        for b in budgets:
            entries = [r for r in rows.values() if b in r["by_budget"]]
            if not entries:
                continue
            best = min(entries, key=lambda r: r["by_budget"][b]["w2"])["method"]
            for r in entries:
                cell = r["by_budget"][b]
                cell["best"] = r["method"] == best
                sig = pairs.get((task, str(b), frozenset((best, r["method"]))))
                cell["significant"] = bool(sig and sig["significant"])
                cell["paired_t"] = bool(sig and sig["paired_t"])
        first = budgets[0]
        out[task] = sorted(
            rows.values(),
            key=lambda r: r["by_budget"].get(first, {}).get("w2", float("inf")),
        )
    return out


def _cell(mean, std, digits=3):
    if mean is None:
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _w2_cell(c):
    text = _cell(c["w2"], c["w2_std"])
    if c["best"]:
        return f"**{text}**"
    return text if c["significant"] else f"{text} ≈"


def format_leaderboard(board, checks=(), budgets=LEADERBOARD_BUDGETS):
    """Markdown: one table per task (rows ranked by W2 at the first budget) and the
    reproducibility check of :func:`merge`."""
    lines = [
        "## Few-step leaderboard",
        "",
        "Each method at its own solver (Euler: teacher, 2-RF, 2-RF++, OT-/LOOM-/W-CFM; "
        "DPM-Solver-2 on the sigmoid grid: Simple ReFlow; one average-velocity step per "
        "interval of the uniform grid: MeanFlow / SplitMeanFlow; euler-boss: Euler on the "
        "model's BOSS grid; euler-boss-straight: the same after straightening the model along "
        "that grid; flowturbo: a FlowTurbo plan, NFE = network calls, its light-"
        "refiner calls listed below the table). W2: mean over seeds and "
        "evaluation sets ± std over seeds of each seed's set mean; **bold**: the task's best at "
        "that NFE; ≈: not significantly worse than the best (|difference| ≤ the combined std "
        "√(s_a² + s_b²) of the two methods' (seed, set) values, `toy2d.significance`); no mark: "
        "significantly worse. Coupling error ‖x̂0(x1) − x0*(x1)‖² and average-velocity error "
        "(module docstring of `benchmarks/toy2d.py`): 8gaussians only, mean ± std over seeds.",
    ]
    heads = [f"W2 @{b}" for b in budgets]
    heads += [f"coupling @{b}" for b in budgets] + [f"avg-vel @{b}" for b in budgets]
    for task, rows in board.items():
        lines += [
            "",
            f"### {task}",
            "",
            "| method | solver | seeds | " + " | ".join(heads) + " |",
            "|---|---|---|" + "---|" * len(heads),
        ]
        for r in rows:
            bb = r["by_budget"]
            cells = [_w2_cell(bb[b]) if b in bb else "–" for b in budgets]
            for field in ("coupling", "ave"):
                cells += [
                    _cell(bb[b][field], bb[b][f"{field}_std"], 4) if b in bb else "–"
                    for b in budgets
                ]
            lines.append(
                f"| {r['method']} | {r['solver']} | {r['seeds']} | " + " | ".join(cells) + " |"
            )
        plans = [
            f"{r['method']} @{b}: {p} ({c} refiner call{'s' if c != 1 else ''})"
            for r in rows
            for b, (p, c) in sorted(r.get("plans", {}).items())
        ]
        if plans:
            lines += ["", "FlowTurbo plans (NFE = network calls): " + ", ".join(plans)]
        t_rows = [
            (r["method"], b)
            for r in rows
            for b in budgets
            if b in r["by_budget"]
            and not r["by_budget"][b]["best"]
            and r["by_budget"][b]["paired_t"]
            and not r["by_budget"][b]["significant"]
        ]
        if t_rows:
            lines += [
                "",
                "worse than the best by the paired t-test on equal seeds only (≈ above): "
                + ", ".join(f"{m} @{b}" for m, b in t_rows),
            ]
    if checks:
        lines += [
            "",
            "### Reproducibility: this run against the merged files",
            "",
            "Records of the same task, method, seed, solver and budget in this run and in a "
            "merged file (the leaderboard shows this run's). Same sets: equal W2 floors, i.e. "
            "the same evaluation sets (seed, sample size); W2 compared set by set, the "
            "coupling error where both have as many sets.",
            "",
            "| task | method | records | same sets | max abs W2 difference (per set) | "
            "max abs coupling-error difference | equal |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in checks:
            ce = "–" if c["max_coupling_diff"] is None else f"{c['max_coupling_diff']:.3g}"
            lines.append(
                f"| {c['task']} | {c['method']} | {c['records']} | "
                f"{'yes' if c['same_sets'] else 'no'} | {c['max_w2_diff']:.3g} | {ce} | "
                f"{'yes' if c['equal'] else 'no'} |"
            )
    return "\n".join(lines)


def _std(v):
    return float(np.std(v, ddof=1)) if len(v) > 1 else None


def curve_summary(records):
    """The budget curves: ``(points, verdicts)``.

    ``points``: ``{(task, method, budget): {step: {metric: (mean, std over seeds, seeds)}}}``
    for the metrics of :data:`METRICS` present (W2 is each seed's mean over its sets).
    ``verdicts``: per (task, method, budget, metric) ``{"from", "to", "change", "spread",
    "flattened"}`` for the last doubling (module docstring); ``flattened`` is None with one
    seed (no spread).
    """
    groups = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in records:
        if r.get("curve"):
            g = groups[(r["task"], r["method"], r["budget"])][r["step"]]
            g.append(r)
    points, verdicts = {}, []
    for key, by_step in sorted(groups.items()):
        pts = {}
        for step, rs in sorted(by_step.items()):
            pts[step] = {}
            for metric in METRICS:
                field = "w2_mean" if metric == "w2" else metric
                vals = [r[field] for r in rs if r.get(field) is not None]
                if vals:
                    pts[step][metric] = (float(np.mean(vals)), _std(vals), len(vals))
        points[key] = pts
        steps = sorted(pts)
        if len(steps) < 2:
            continue
        last = steps[-1]
        prev = last // 2 if last // 2 in pts else steps[-2]
        for metric, (mean, spread, _) in pts[last].items():
            if metric not in pts[prev]:
                continue
            change = mean - pts[prev][metric][0]
            verdicts.append(
                {
                    "task": key[0],
                    "method": key[1],
                    "budget": key[2],
                    "metric": metric,
                    "from": prev,
                    "to": last,
                    "change": change,
                    "spread": spread,
                    "flattened": None if spread is None else abs(change) < spread,
                }
            )
    return points, verdicts


def format_curves(records):
    """Markdown: the budget curves (metric per step, mean ± std over seeds) and the verdicts."""
    points, verdicts = curve_summary(records)
    if not points:
        return ""
    n = sorted({r.get("num_samples") for r in records if r.get("curve")})
    lines = [
        "## Budget curves",
        "",
        f"Each method's EMA snapshot at the listed training steps (one run, trained in chunks "
        f"that resume the checkpoint: bit-identical to training in one go), scored on "
        f"{', '.join(map(str, n))} points of the first evaluation sets; mean ± std over seeds. "
        "Flattened: the last doubling of the steps changes the seed mean by less than the seed "
        "spread (std over seeds at the last step).",
        "",
        "| task | method | NFE | metric | " + "steps → values | flattened (last doubling) |",
        "|---|---|---|---|---|---|",
    ]
    verdict = {(v["task"], v["method"], v["budget"], v["metric"]): v for v in verdicts}
    for (task, method, budget), pts in points.items():
        for metric, (label, _) in METRICS.items():
            vals = [
                f"{s}: {_cell(p[metric][0], p[metric][1] or 0.0)}"
                for s, p in pts.items()
                if metric in p
            ]
            if not vals:
                continue
            v = verdict.get((task, method, budget, metric))
            if v is None:
                flat = "–"
            else:
                word = {True: "yes", False: "no", None: "– (one seed)"}[v["flattened"]]
                spread = "–" if v["spread"] is None else f"{v['spread']:.3f}"
                flat = f"{word} ({v['from']} → {v['to']}: {v['change']:+.3f}, spread {spread})"
            lines.append(f"| {task} | {method} | {budget} | {label} | {'; '.join(vals)} | {flat} |")
    return "\n".join(lines)


def figures(board, records, stem, budgets=LEADERBOARD_BUDGETS):
    """``{stem}_{metric}.png`` per metric of the leaderboard (one panel per task: metric vs NFE,
    one line per method, seed-std error bars, log scale) and ``{stem}_curves.png`` (metric vs
    training step per task, W2 and coupling error at 1 and 2 NFE); returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = sorted({r["method"] for rows in board.values() for r in rows})
    names += sorted({r["method"] for r in records if r.get("curve")} - set(names))
    cmap = plt.get_cmap("tab20")
    style = {
        m: {
            "color": cmap(i % 20),
            "marker": "os^Dv<>"[i % 7],
            "linestyle": "--" if toy2d.METHODS.get(m, {}).get("kind") == "mean" else "-",
        }
        for i, m in enumerate(names)
    }

    def plain(ax):  # 0.35, not 3.5 × 10⁻¹, on the log y axis; minor labels within a decade
        lo, hi = ax.get_ylim()
        wide = lo <= 0 or hi / lo > 10
        if wide:  # 1, 2, 5 per decade
            ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
        ax.yaxis.set_minor_formatter(
            matplotlib.ticker.NullFormatter()
            if wide
            else matplotlib.ticker.FormatStrFormatter("%.3g")
        )

    def legend(fig, axes):
        handles = {}
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(lab, h)
        fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=8)
        fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig.get_figwidth(), 1))  # 2 inches: the legend

    paths = []
    for metric, (label, _) in METRICS.items():
        field = {"w2": "w2", "coupling_error": "coupling", "avg_velocity_error": "ave"}[metric]
        tasks = [
            t
            for t, rows in board.items()
            if any(c.get(field) is not None for r in rows for c in r["by_budget"].values())
        ]
        if not tasks:
            continue
        fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks) + 2, 4), squeeze=False)
        for ax, task in zip(axes[0], tasks, strict=True):
            for r in board[task]:
                bs = [b for b in budgets if r["by_budget"].get(b, {}).get(field) is not None]
                if not bs:
                    continue
                y = [r["by_budget"][b][field] for b in bs]
                e = [r["by_budget"][b][f"{field}_std"] or 0.0 for b in bs]
                ax.errorbar(bs, y, yerr=e, capsize=3, label=r["method"], **style[r["method"]])
            ax.set(title=task, xlabel="NFE", ylabel=label, xscale="log", yscale="log")
            ax.set_xticks(list(budgets), [str(b) for b in budgets], minor=False)
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            plain(ax)
        legend(fig, axes)
        path = f"{stem}_{metric}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    points, _ = curve_summary(records)
    if points:
        tasks = sorted({k[0] for k in points})
        panels = [(m, b) for m in ("w2", "coupling_error") for b in toy2d.CURVE_BUDGETS]
        fig, axes = plt.subplots(
            len(tasks),
            len(panels),
            figsize=(4.5 * len(panels) + 2, 3.3 * len(tasks)),
            squeeze=False,
        )
        for i, task in enumerate(tasks):
            for j, (metric, budget) in enumerate(panels):
                ax = axes[i][j]
                drawn, ticks = False, set()
                for (t, method, b), pts in points.items():
                    steps = [s for s, p in pts.items() if metric in p]
                    if t != task or b != budget or not steps:
                        continue
                    y = [pts[s][metric][0] for s in steps]
                    e = [pts[s][metric][1] or 0.0 for s in steps]
                    ax.errorbar(steps, y, yerr=e, capsize=3, label=method, **style[method])
                    ticks.update(steps)
                    drawn = True
                if not drawn:
                    ax.axis("off")
                    continue
                ax.set(
                    title=f"{task}: {METRICS[metric][0]} @ {budget} NFE",
                    xlabel="training steps",
                    yscale="log",
                )
                positive = [s for s in ticks if s > 0]
                if 0 in ticks and positive:  # step 0 (the initial weights) on a log axis
                    ax.set_xscale("symlog", linthresh=min(positive))
                else:
                    ax.set_xscale("log")
                ax.set_xticks(sorted(ticks), [str(s) for s in sorted(ticks)], minor=False)
                ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
                plain(ax)
        legend(fig, axes)
        path = f"{stem}_curves.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def report(records, stem, *, earlier=(), old=None, checks=None):
    """The Markdown report of a run (``toy2d.format_table``, the leaderboard merged with
    ``earlier`` record lists, the budget curves) and its figures next to ``stem``; returns
    the Markdown. ``checks``: :func:`join`'s, reported beside the merge's."""
    merged, merge_checks = merge(records, earlier)
    checks = [*(checks or ()), *merge_checks]
    board = leaderboard(merged)
    parts = [toy2d.format_table(records, old), format_leaderboard(board, checks)]
    curves = format_curves(records)
    if curves:
        parts.append(curves)
    paths = figures(board, records, stem)
    parts.append("Figures: " + ", ".join(f"`{os.path.basename(p)}`" for p in paths))
    return "\n\n".join(parts)
