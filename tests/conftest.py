"""Shared test setup: CPU only, quiet logs, stub-free imports."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
