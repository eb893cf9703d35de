"""Exceptions a user acts on (the command-line scripts print them as one line).

``SIMPLE_REFLOW_DEBUG=1`` makes the scripts show the full traceback instead, with the
dependency's own error (e.g. the ArrayRecord reader's) chained below the library's.
"""

from __future__ import annotations

import os

__all__ = ["MissingInput", "DamagedInput", "show_traceback", "reason"]


class MissingInput(FileNotFoundError):
    """An input of a job (dataset, snapshot, pair store, weights, statistics) does not exist;
    the message names the path and the command or setting that provides it."""


class DamagedInput(RuntimeError):
    """An input of a job exists but cannot be read as what it should be (corrupt, truncated,
    another run's file); the message names the file and the command that rewrites it.

    Attributes:
      path: the damaged file (or folder).
      repair: the command (or action) that rewrites it.
    """

    def __init__(self, path: str, why: str, repair: str):
        self.path, self.why, self.repair = str(path), why, repair
        super().__init__(f"{self.path} is damaged ({why}): {repair}")


def show_traceback() -> bool:
    """Whether ``SIMPLE_REFLOW_DEBUG`` asks the scripts for full tracebacks."""
    return os.environ.get("SIMPLE_REFLOW_DEBUG", "") not in ("", "0")


def reason(error: BaseException, limit: int = 160) -> str:
    """A dependency's error as a short one-line reason: its type and first line."""
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > limit:
        first = first[: limit - 1] + "…"
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
