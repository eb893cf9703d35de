"""Checks pair stores against their manifests and says what a resume would regenerate.

  python scripts/verify_pairs.py runs/cifar10/pairs            # every store under a pairs dir
  python scripts/verify_pairs.py runs/cifar10/pairs/backward   # one store
  python scripts/verify_pairs.py runs/cifar10/pairs --repair   # delete corrupt shards

Every expected shard must exist, hold its index range, have files of the recorded size and
SHA-256 (``--fast``: sizes only). Corrupt shards are named with the file and the reason;
``--repair`` deletes them so that rerunning the pairs stage regenerates exactly those. Exit
status 0 when every store is complete and sound, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from simple_reflow.errors import DamagedInput, show_traceback  # noqa: E402
from simple_reflow.pair_store import read_manifest, verify_store  # noqa: E402


def _stores(path):
    if os.path.exists(os.path.join(path, "manifest.json")):
        return [path]
    found = [
        os.path.join(path, name)
        for name in sorted(os.listdir(path))
        if os.path.exists(os.path.join(path, name, "manifest.json"))
    ]
    if not found:
        raise SystemExit(
            f"verify_pairs: {path} holds no pair store (no manifest.json in it or "
            "in its sub-folders)."
        )
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", help="a pair store, or a pairs workdir holding several")
    parser.add_argument("--fast", action="store_true", help="check sizes, not checksums")
    parser.add_argument("--repair", action="store_true", help="delete corrupt shards")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.path):
        raise SystemExit(f"verify_pairs: {args.path} does not exist.")
    sound = True
    for store in _stores(args.path):
        try:
            m = read_manifest(store)
            report = verify_store(store, checksums=not args.fast, repair=args.repair)
        except DamagedInput as e:  # the manifest itself: one line naming it and the repair
            if show_traceback():
                raise
            print(f"{store}: DAMAGED: {e}")
            sound = False
            continue
        state = "complete" if report.complete else "INCOMPLETE"
        print(f"{store}: {m['num']} pairs in shards of {m['chunk']}, {state}: {report.summary()}")
        for name in report.missing[:20]:
            print(f"  missing   {name}")
        for file, why in report.corrupt:
            print(f"  corrupt   {file}: {why}" + ("  (deleted)" if args.repair else ""))
        for name in report.unexpected:
            print(
                f"  unexpected {name} (not a shard of this manifest; a killed writer's "
                "temporary folder is removed by the next run)"
            )
        sound &= report.complete
        if report.regenerate:
            workdir = os.path.dirname(os.path.normpath(store)) or "."
            print(
                f"  to repair: {'' if args.repair else 'rerun with --repair, then '}rerun the "
                f"pairs stage with --workdir {workdir} (it regenerates only these shards)"
            )
    return 0 if sound else 1


if __name__ == "__main__":
    sys.exit(main())
