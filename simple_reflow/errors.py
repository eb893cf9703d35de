"""Exceptions a user acts on (the command-line scripts print them as one line)."""

from __future__ import annotations

__all__ = ["MissingInput"]


class MissingInput(FileNotFoundError):
    """An input of a job (dataset, snapshot, pair store, weights, statistics) does not exist;
    the message names the path and the command or setting that provides it."""
