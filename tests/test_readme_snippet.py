"""The README's notebook example, run exactly as written in a fresh interpreter."""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Appended to the snippet: distances of 1000 samples to the teacher's accurate solve from the
# same noise (Heun, 64 steps), for the trained student, the teacher at the student's budget and
# the untrained network. Imports nothing before ml_collections is looked up.
_CHECK = """
import json as _json
import sys as _sys

_ml_collections = "ml_collections" in _sys.modules
_ref, _ = sampler.sample(teacher, noise, grids.uniform_grid(64), solver="heun")


def _err(x):
    return float(jax.numpy.mean(jax.numpy.sum((x - _ref) ** 2, axis=1)))


def _err_of(fn, grid, solver):
    return _err(sampler.sample(fn, noise, grid, solver=solver)[0])


print(_json.dumps({
    "ml_collections": _ml_collections, "nfe": int(nfe), "student": _err(samples),
    "teacher": _err_of(teacher, grids.sigmoid_grid(2), "dpm2"),
    "untrained": _err_of(model_def.denoiser(params), grids.sigmoid_grid(2), "dpm2"),
    "student_1": _err_of(student, grids.uniform_grid(1), "euler"),
    "teacher_1": _err_of(teacher, grids.uniform_grid(1), "euler"),
}))
"""


def _snippet():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme.split("\n## Use it from a notebook\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow  # ~10 s: 500 train steps and the pairs, on the CPU
def test_readme_notebook_snippet_trains_a_student_without_ml_collections():
    code = _snippet()
    assert "ml_collections" not in code and "range(500)" in code
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    res = subprocess.run(
        [sys.executable, "-c", code + _CHECK],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["ml_collections"] is False  # nothing the snippet imports needs it
    # ReFlow straightens the teacher's paths: at the same 2 NFE the student lands far closer to
    # the teacher's accurate map than the teacher itself (measured ~0.3 vs ~1.7; 1 NFE: ~0.5 vs
    # ~16), and training moved it away from the untrained network (~8).
    assert out["student"] < 0.5 * out["teacher"], out
    assert out["student_1"] < 0.2 * out["teacher_1"], out
    assert out["student"] < 0.2 * out["untrained"], out


def _page_blocks(page):
    with open(os.path.join(ROOT, "docs", page)) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_getting_started_shows_the_tested_snippet_and_a_tour_that_runs():
    """The docs' copy of the notebook example is the README's (which the test above runs), and
    the short tour before it runs and spends the NFE its comment states."""
    tour, training = _page_blocks("getting-started.md")
    assert training == _snippet()
    scope = {}
    exec(compile(tour, "getting-started.md", "exec"), scope)  # noqa: S102
    assert int(scope["nfe"]) == 8 and scope["x0"].shape == (1000, 2)
    assert scope["x0_hat"].shape == (512, 2)
