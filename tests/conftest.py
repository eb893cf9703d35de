"""Shared test setup: CPU only, strict dtype and rank promotion, a run-time call counter.

Strict promotion (as diffrax's ``test/conftest.py``): ``jax_numpy_dtype_promotion = "strict"``
turns every implicit dtype promotion (float32 with float64, int with float, bfloat16 with
float32) into an error, and ``jax_numpy_rank_promotion = "raise"`` turns every implicit
broadcast between arrays of different ranks into one, so a test fails where library code would
silently compute in the wrong precision or broadcast by accident. It is set when this file is
imported, before any test module, for every test in this process. A test that drives code we do
not own and that is not clean under it (a third-party library's internals) opts out with
``@pytest.mark.loose_promotion(reason=...)`` naming what breaks; nothing opts out silently.
Subprocess tests (``scripts/*.py`` run by ``subprocess``) run with JAX's defaults.

One persistent XLA compilation cache serves the whole session: a fresh temporary folder named
by ``JAX_COMPILATION_CACHE_DIR`` (kept if the caller already set one), set here before JAX is
imported, so the test processes (pytest-xdist's workers inherit the environment) and every
subprocess a test starts (they copy ``os.environ``) reuse each other's compiled programs; most
of the suite's time is XLA compiling the same small programs again. It changes no result: a
cached executable is the one XLA compiled for the same program, devices and flags, and JAX
skips the cache for programs with host callbacks. The folder is removed at the end.

XLA compiles the test programs with LLVM's optimisation off (:data:`TEST_XLA_FLAGS`, added to
``XLA_FLAGS`` before JAX is imported and inherited by every subprocess; a subprocess that sets
its device count takes :func:`xla_flags`): the programs are small and run briefly, so compiling
them is most of the suite's time (the CIFAR10 MeanFlow smoke test: 106 s with XLA's defaults,
66 s with these flags, measured back to back). HLO-level transformations (fusion, layouts) are
unchanged; only the machine code is less optimised, and whether a multiply-add is contracted
into an FMA may differ, which moves float32 results by an ulp. ``SIMPLE_REFLOW_TEST_XLA_OPT=full``
runs the suite with XLA's default optimisation instead.

The slow tests run longest first (:data:`LONGEST_FIRST`, measured): pytest-xdist hands out tests
in collection order, and a long test that starts last keeps one worker busy after the others
have finished.
"""

import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_OWN_CACHE = None
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _OWN_CACHE = tempfile.mkdtemp(prefix="simple_reflow_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    # Every program, not only those taking over a second: most here take 0.05-0.5 s.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# Compile time over run time (module docstring): LLVM at -O0, and without its costly passes.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if os.environ.get("SIMPLE_REFLOW_TEST_XLA_OPT", "") != "full":
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()


def xla_flags(devices: int) -> str:
    """``XLA_FLAGS`` for a subprocess on ``devices`` virtual CPU devices, with the session's."""
    return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"


import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
# In case a plugin imported JAX before this file (it reads the environment variables then).
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
if os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs",
        float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
    )


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:  # the process that made the cache folder (xdist's controller)
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook; without xdist, never called
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one pytest-xdist worker per CPU this process may run on (its affinity mask,
    capped by a cgroup v2 CPU quota), not psutil's count of physical cores, which is 1 on a
    2-vCPU VM whose vCPUs are hyperthreads of one core."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        if quota != "max":
            n = min(n, max(1, round(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n or 1)


# The slowest tests (of the slow tier, measured with --durations on a 2-core CPU), slowest
# first; every other test keeps its collection order after them. In the fast tier, the
# toy pipeline's plain run (the longest fast test) also starts first.
LONGEST_FIRST = (
    "tests/test_docs.py::test_strict_build_renders_every_public_name",
    "tests/test_image_smoke.py::test_imagenet64_smoke_stages_and_pairs_on_8_devices",
    "tests/test_mean_stages.py::test_cifar10_mean_smoke_stages",
    "tests/test_image_smoke.py::test_cifar10_smoke_stages_with_projected_pairs",
    "tests/test_fid.py::test_fid_is_independent_of_device_and_host_count",
    "tests/test_reflow_store.py",  # one worker runs the module (xdist_group): ~150 s in all
    "tests/test_image_smoke.py::test_teacher_boss_straightening_and_eval_smoke_stages",
    "tests/test_toy_pipeline.py::test_student_beats_the_analytic_teacher_at_2_nfe",
    "tests/test_digits_leaderboard.py",  # one worker runs the module (xdist_group)
    "tests/test_scaling.py::test_eight_devices_train_like_one",
    "tests/test_scaling.py::test_two_processes_train_like_one",
    "tests/test_toy_pipeline.py::test_loom_cfm_pipeline_trains_its_1rf_with_the_coupling",
    "tests/test_scaling.py::test_pair_stores_and_reflow_are_the_same_on_8_devices_and_2_processes",
    "tests/test_mean_flow.py::test_meanflow_loss_trains_through_a_unet_with_reverse_only_layers",
    "tests/test_compile_options.py::test_fusion_barriers_stop_recomputation_and_change_no_result",
    "tests/test_mixed_precision.py::test_bfloat16_train_step_keeps_float32_params",
    "tests/test_edm_import.py::test_imported_teacher_feeds_pairs_and_reflow",
    "tests/test_couplings_devices.py::test_identical_pairs_on_1_and_8_virtual_devices",
    "tests/test_train.py::test_sigterm_saves_a_checkpoint_and_the_restart_resumes_exactly",
    "tests/test_image_smoke.py::test_loom_cfm_trains_an_image_1rf_through_the_cli",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        return next(
            (i for i, p in enumerate(LONGEST_FIRST) if item.nodeid.startswith(p)),
            len(LONGEST_FIRST),
        )

    items.sort(key=rank)  # stable: the rest keep their order


def pytest_configure(config):
    if (getattr(config.option, "numprocesses", None) or 0) > 1:  # xdist's controller
        # One BLAS thread per worker (set before the workers start; they inherit it): the
        # workers already use every core, and OpenBLAS threads spin-waiting for a busy core
        # make the 2048-d matrix test of tests/test_fid.py ~5× slower.
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")
    config.addinivalue_line(
        "markers",
        "loose_promotion(reason): run with JAX's standard dtype promotion and rank "
        "broadcasting, because code the test drives and we do not own is not clean under the "
        "strict setting (the reason says what)",
    )


@pytest.fixture(autouse=True)
def _promotion_opt_out(request):
    """Standard promotion for a test marked ``loose_promotion``; strict for every other."""
    marker = request.node.get_closest_marker("loose_promotion")
    if marker is None:
        yield
        return
    if not marker.kwargs.get("reason"):
        raise ValueError(
            f"{request.node.nodeid}: loose_promotion needs reason=... naming the "
            "code that is not clean under strict promotion."
        )
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


def count_calls(denoise_fn):
    """``(fn, counter)``: ``fn`` is ``denoise_fn`` and counts its *executed* calls on the host
    (a ``jax.debug.callback`` per call, so calls inside ``lax.scan`` or a while loop count once
    per iteration, unlike trace-time counting)."""
    counter = {"calls": 0}

    def bump():
        counter["calls"] += 1

    def fn(x_t, t, cond=None):
        jax.debug.callback(bump, ordered=False)
        return denoise_fn(x_t, t, cond)

    return fn, counter
