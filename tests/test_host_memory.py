"""glibc's allocator after ``import simple_reflow``: an XLA:CPU program whose temporary block is
larger than a worker thread's 64 MB malloc heap runs without page faults once warm, and with
``SIMPLE_REFLOW_MALLOC=system`` it faults its temporaries in again on every call."""

import json
import os
import platform
import subprocess
import sys

import pytest

from simple_reflow import host_memory

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the malloc tunables are glibc's",
)

# Two float32 [16384, 1024] temporaries (64 MiB each, 16,384 pages each) feed a dot.
_PROGRAM = """
import json, resource
import simple_reflow
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sin(x).T @ jnp.cos(x))
x = jax.random.normal(jax.random.key(0), (16384, 1024))
for _ in range(5):
    f(x).block_until_ready()
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"set": simple_reflow.host_memory.keep_freed_memory(), "faults": faults}))
"""
_TEMP_PAGES = 2 * 16384 * 1024 * 4 // 4096


def _run(choice):
    env = {**os.environ, "SIMPLE_REFLOW_MALLOC": choice, "JAX_PLATFORMS": "cpu"}
    for name in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"):
        env.pop(name, None)
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_warm_program_takes_no_page_faults_and_system_defaults_do():
    kept, system = _run("keep"), _run("system")
    assert kept["set"] == {"M_ARENA_MAX": 1, "M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": -1}
    assert system["set"] == {}
    # Freed temporaries are reused: a few pages at most (Python's own small allocations).
    assert max(kept["faults"]) < _TEMP_PAGES // 100, kept
    # glibc's defaults map and unmap the temporary block on every call (32,769-34,055 here).
    assert min(system["faults"]) >= _TEMP_PAGES // 2, system


def test_bad_choice_names_the_variable(monkeypatch):
    monkeypatch.setenv("SIMPLE_REFLOW_MALLOC", "tcmalloc")
    with pytest.raises(ValueError, match="SIMPLE_REFLOW_MALLOC='tcmalloc'"):
        host_memory.keep_freed_memory()
