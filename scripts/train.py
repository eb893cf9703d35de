"""Runs one job of simple_reflow from an ml_collections config.

  python scripts/train.py --config configs/toy2d.py --workdir runs/toy2d
  python scripts/train.py --config configs/cifar10.py:reflow --workdir runs/c10_reflow \
      --config.training.batch_size=256

``config.stage`` picks the job: "pipeline" (toy 2-D: teacher → pairs → student → evaluation)
or one image stage ("teacher", "pairs", "reflow", "boss", "eval"). The resolved config is written to
``workdir/config.json``; a job restarted with the same workdir resumes. SIGTERM (preemption) or
Ctrl-C saves a checkpoint and exits with status 143 / 130; a non-finite loss stops with
status 1, keeping the last good checkpoint. A missing or damaged input (snapshot, pair store
shard, FID statistics, Inception weights) stops with status 2 and one line naming the file and
the command that makes or repairs it; ``SIMPLE_REFLOW_DEBUG=1`` shows the full traceback.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() (one process per host)."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    import jax

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO

    if _MULTIHOST.value:
        jax.distributed.initialize()
    from simple_reflow.errors import DamagedInput, MissingInput, show_traceback
    from simple_reflow.pair_store import StoreMismatch
    from simple_reflow.train.loop import NonFiniteLoss, TrainingInterrupted
    from simple_reflow.train.stages import resolve, run_stage

    cfg = _CONFIG.value
    workdir = _WORKDIR.value
    start = time.perf_counter()
    try:
        run = resolve(cfg)  # validated once: fails in well under a second, naming the bad field
        os.makedirs(workdir, exist_ok=True)
        if jax.process_index() == 0:
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write(cfg.to_json_best_effort(indent=1, sort_keys=True))
        logging.info("stage %s, %d devices, workdir %s", cfg.stage, jax.device_count(), workdir)
        summary = run_stage(run, workdir)
    except TrainingInterrupted as e:  # SIGTERM / Ctrl-C: checkpoint saved, resumable
        print(f"stopped: {e}", flush=True)
        return 143 if "SIGTERM" in str(e) else 130
    except NonFiniteLoss as e:
        print(f"stopped: {e}", file=sys.stderr, flush=True)
        return 1
    except MissingInput as e:  # a missing input: one line saying what creates it
        print(f"missing input: {e}", file=sys.stderr, flush=True)
        return 2
    except DamagedInput as e:  # a damaged file: one line naming it and its repair
        if show_traceback():
            raise
        print(f"damaged input: {e}", file=sys.stderr, flush=True)
        return 2
    except StoreMismatch as e:  # pairs of another teacher / shape / grid: one line
        print(f"pair store mismatch: {e}", file=sys.stderr, flush=True)
        return 2
    if jax.process_index() == 0 and summary:
        print(summary)
        print(f"done in {time.perf_counter() - start:.1f}s; outputs in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
