"""Where the engine keeps its socket, database, outputs and logs (the variables: engine/settings.py)."""

from __future__ import annotations

from pathlib import Path

from engine import settings


def runtime_dir() -> Path:
    from platformdirs import user_runtime_dir

    return settings.RUNTIME_DIR.path() or Path(user_runtime_dir("landiff"))


def data_dir() -> Path:
    from platformdirs import user_data_dir

    return settings.DATA_DIR.path() or Path(user_data_dir("landiff"))


def socket_path() -> Path:
    return runtime_dir() / "engine.sock"


def database_path() -> Path:
    return data_dir() / "landiff.db"


def outputs_dir() -> Path:
    return data_dir() / "outputs"


def log_path() -> Path:
    return data_dir() / "engine.log"


def console_path() -> Path:
    """A detached engine's stdout and stderr: only what it prints before its log starts (a crash)."""
    return data_dir() / "engine.out"


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) readable by the owner only."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path
