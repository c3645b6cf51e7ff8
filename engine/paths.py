"""Where the engine keeps its socket, database, outputs and logs."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_data_dir, user_runtime_dir

RUNTIME_ENV = "LANDIFF_RUNTIME_DIR"
DATA_ENV = "LANDIFF_DATA_DIR"


def runtime_dir() -> Path:
    return Path(os.environ.get(RUNTIME_ENV) or user_runtime_dir("landiff"))


def data_dir() -> Path:
    return Path(os.environ.get(DATA_ENV) or user_data_dir("landiff"))


def socket_path() -> Path:
    return runtime_dir() / "engine.sock"


def database_path() -> Path:
    return data_dir() / "landiff.db"


def outputs_dir() -> Path:
    return data_dir() / "outputs"


def log_path() -> Path:
    return data_dir() / "engine.log"


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) readable by the owner only."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path
