"""The ablation runner (benchmarks/ablate.py) at tiny sizes: the plan's nesting and paper order,
one record per (variant, seed, NFE), the table and figures, reruns that skip done work, and
the verdict rule on numbers whose answer is known."""

import json
import os

import pytest

from benchmarks import ablate, ablate_plan, ablate_report

TINY = dict(
    ablate_plan.FULL,
    size=4,
    pretrain_steps=4,
    steps=4,
    batch=8,
    pairs=32,
    forward=16,
    eval_samples=48,
    network="mlp",
    seeds=(0, 1),
)
SWITCHES = ["norm", "dpm2", "autoguidance"]


def test_cumulative_variants_are_nested_in_paper_order():
    p = ablate_plan.plan()
    names = p["modes"]["cumulative"]
    assert names == ["base"] + ["+" + s for s in ablate_plan.PAPER_ORDER]
    for prev, name, switch in zip(names, names[1:], ablate_plan.PAPER_ORDER, strict=False):
        # each variant is the previous one with exactly this switch's delta applied
        assert p["variants"][name] == {**p["variants"][prev], **ablate_plan.SWITCHES[switch]}
        changed = {k for k in ablate_plan.BASE if p["variants"][name][k] != p["variants"][prev][k]}
        assert changed == set(ablate_plan.SWITCHES[switch])
        assert p["refs"][name] == (prev, switch)
    assert p["variants"]["+autoguidance"] == p["variants"]["simple_reflow"]
    for name in p["modes"]["one-at-a-time"][1:]:
        s = name.removeprefix("base+")
        assert p["variants"][name] == {**ablate_plan.BASE, **ablate_plan.SWITCHES[s]}
    # 17 trained students: 7 cumulative, 7 more one-at-a-time, 2-RF++, OT-CFM, LOOM-CFM
    trained = {ablate_plan.student_id(c) for c in p["variants"].values() if c["coupling"] != "init"}
    assert len(trained) == 17


def test_verdict_rule():
    ref = {0: 1.0, 1: 2.0, 2: 3.0}
    # every seed lower by 0.5 ± 0.01: t ≈ −87 → helps
    assert ablate_report.verdict({0: 0.5, 1: 1.51, 2: 2.49}, ref)[0] == "helps"
    assert ablate_report.verdict({0: 1.5, 1: 2.49, 2: 3.51}, ref)[0] == "hurts"
    # same sign in every seed, differences −0.1, −0.1, −1.0: t = −1.33, |t| < 4.30 → no effect
    label, rel, wins, n = ablate_report.verdict({0: 0.9, 1: 1.9, 2: 2.0}, ref)
    assert (label, wins, n) == ("no effect", 3, 3)
    assert rel == pytest.approx(-0.4 / 2.0)  # mean difference / mean of the reference
    assert ablate_report.verdict({0: 0.5}, {0: 1.0})[0] is None  # one seed: no verdict
    assert ablate_report.verdict({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})[0] == "identical"


@pytest.mark.slow
def test_runner_writes_one_record_per_variant_seed_nfe_and_reruns_skip(tmp_path):
    out = str(tmp_path / "out" / "ablate.json")
    work = str(tmp_path / "work")
    kw = dict(modes=("cumulative",), sizes=TINY, switches=SWITCHES, workdir=work, log=print)
    stats = ablate.run(out, **kw)
    names = ["base", "+norm", "+dpm2", "+autoguidance"]
    # two students per seed (base, +norm); the sampler switches train nothing
    assert sorted(stats["trained"]) == [(s, i) for s in (0, 1) for i in ("base", "normalize=True")]
    with open(out) as f:
        records = json.load(f)
    keys = [(r["variant"], r["seed"], r["budget"]) for r in records]
    assert sorted(keys) == sorted((v, s, n) for v in names for s in (0, 1) for n in (1, 2, 4, 9))
    for r in records:
        assert {"solver", "nfe", "fd", "sw2", "coupling_error"} <= set(r)
        assert r["nfe"] <= r["budget"] and r["calls"] == r["nfe"] * (2 if r["guidance"] else 1)
    dpm2 = {r["budget"]: r["nfe"] for r in records if r["variant"] == "+dpm2"}
    assert dpm2 == {1: 1, 2: 1, 4: 3, 9: 9}  # 2N − 1 NFE from t_max < 1
    # the sampler switches reuse their predecessor's student
    student = {r["variant"]: r["student"] for r in records}
    assert student["+norm"] == student["+dpm2"] == student["+autoguidance"] != student["base"]
    with open(out.replace(".json", ".meta.json")) as f:
        meta = json.load(f)
    assert meta["config"]["modes"]["cumulative"] == names and meta["git_commit"]
    for metric in ablate_report.METRICS:
        assert os.path.getsize(out.replace(".json", f"_{metric}.png")) > 1000
    with open(out.replace(".json", ".md")) as f:
        md = f.read()
    for metric in ablate_report.METRICS:  # one row per variant in each table
        section = md.split("## Tables")[1].split(f"### cumulative: {metric}\n")[1]
        table = section.strip().split("\n\n")[0].splitlines()
        assert table[0].startswith("| variant | config |") and table[1].startswith("|---")
        assert [r.split(" | ")[0].removeprefix("| ") for r in table[2:]] == names
    assert "### cumulative: coupling_error" in md.split("## Verdicts")[1]
    # a rerun trains and evaluates nothing and writes the same records
    again = ablate.run(out, **kw)
    assert again == {"trained": [], "evaluated": []}
    with open(out) as f:
        assert json.load(f) == records
