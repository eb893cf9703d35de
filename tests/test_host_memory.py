"""glibc's allocator after ``import simple_reflow`` with ``SIMPLE_REFLOW_MALLOC=keep``: a thread
that allocates, writes and frees a block larger than its arena's heaps (what XLA:CPU does with
each execution's temporaries) gets the same pages back each time, as it does with
``host_memory.ENVIRONMENT`` set for glibc; by default (``system``) every round faults the whole
block in again."""

import json
import os
import subprocess
import sys

import pytest

from simple_reflow import host_memory

pytestmark = pytest.mark.skipif(not host_memory.glibc(), reason="the tunables are glibc's")

# What XLA:CPU does each step: a worker thread allocates a block larger than its arena's 64 MB
# heaps (1.48 GB for the DDPM++ train step), writes it, frees it; then the next step again.
_PROGRAM = """
import ctypes, json, resource, threading
import simple_reflow
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
SIZE = 256 << 20
faults = []
def step():
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    block = libc.malloc(SIZE)
    ctypes.memset(block, 1, SIZE)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
worker = threading.Thread(target=lambda: [step() for _ in range(4)])
worker.start(); worker.join()
print(json.dumps({"set": simple_reflow.host_memory.keep_freed_memory(), "faults": faults[1:]}))
"""
_PAGES = (256 << 20) // 4096


def _run(choice, malloc_env=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for name in ("SIMPLE_REFLOW_MALLOC", *host_memory.ENVIRONMENT):
        env.pop(name, None)
    if choice is not None:
        env["SIMPLE_REFLOW_MALLOC"] = choice
    env.update(malloc_env or {})
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_reused_block_takes_no_page_faults_and_system_defaults_do():
    kept, system = _run("keep"), _run(None)
    from_env = _run("system", host_memory.ENVIRONMENT)  # the same settings, as glibc reads them
    assert kept["set"] == {"M_ARENA_MAX": 1, "M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": -1}
    assert system["set"] == {}
    # The freed block is reused: a few pages at most.
    assert max(kept["faults"]) < _PAGES // 100, kept
    assert max(from_env["faults"]) < _PAGES // 100, from_env
    # glibc's defaults (the library's default) map and unmap the block on every step.
    assert min(system["faults"]) >= _PAGES // 2, system


def test_bad_choice_names_the_variable(monkeypatch):
    monkeypatch.setenv("SIMPLE_REFLOW_MALLOC", "tcmalloc")
    with pytest.raises(ValueError, match="SIMPLE_REFLOW_MALLOC='tcmalloc'"):
        host_memory.keep_freed_memory()
