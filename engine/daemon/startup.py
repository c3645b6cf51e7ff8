"""What the engine makes sure of before it serves: it is the only engine on its data dir (an exclusive
flock held for its life, taken before the socket is bound), its dirs are its own and writable, and its
database opens. Each refusal is one line (`StartRefused`) that `landiff-engine serve` prints before
exiting with status 2.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

from engine import settings
from engine.paths import NotTrusted, ReadOnlyDir, check_owned, check_owner_may_write, lock_holder

LOCK_RETRY_S = 0.5  # a client probing the lock (paths.lock_holder) holds it for microseconds
# the longest path a Unix socket can be bound to: sun_path less its closing NUL (108 on Linux, 104 on BSDs)
SOCKET_PATH_MAX = 107 if sys.platform.startswith("linux") else 103


class StartRefused(RuntimeError):
    """The engine cannot start; the message says why and what to do, in one line."""


class EngineAlreadyRunning(StartRefused):
    pass


def hold_engine_lock(path: Path) -> int:
    """Take the exclusive lock on `path` for this process's life (the descriptor stays open; the kernel
    drops the lock when the process ends, however it ends). The file then holds this engine's pid."""
    writable_dir(path.parent, "data dir", settings.DATA_DIR.name)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise StartRefused(f"cannot open the engine's lock file {path}: {error.strerror}") from None
    deadline = time.monotonic() + LOCK_RETRY_S
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            os.close(descriptor)
            holder = lock_holder(path)
            who = f"pid {holder}" if holder else "another process"
            raise EngineAlreadyRunning(
                f"another engine ({who}) already serves the data dir {path.parent}; "
                "use it (landiff-engine status) or stop it first (landiff-engine stop)"
            ) from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    return descriptor


def writable_dir(path: Path, what: str, variable: str) -> Path:
    """`path` exists (made if need be), belongs to this user and can be written, or StartRefused."""
    try:
        check_owned(path, what)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        check_owned(path, what)
    except NotTrusted as error:
        raise StartRefused(str(error)) from None
    except OSError as error:
        raise StartRefused(
            f"cannot create the {what} {path} ({error.strerror}); set {variable} to a writable directory"
        ) from None
    try:
        check_owner_may_write(path, what)
    except ReadOnlyDir as error:
        raise StartRefused(f"{error}; or set {variable} to a writable directory") from None
    probe = path / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise StartRefused(
            f"the {what} {path} is not writable ({error.strerror}); "
            f"fix its permissions or set {variable} to a writable directory"
        ) from None
    return path


def database_refusal(path: Path, error: Exception) -> StartRefused:
    """A database that does not open or migrate, as one line (no SQLite traceback)."""
    cause = getattr(error, "orig", None) or error
    return StartRefused(
        f"cannot use the job database {path} ({cause}); check that it and its folder are writable "
        f"and the disk has room, or set {settings.DATA_DIR.name} to another directory"
    )


def check_socket_path(path: Path) -> None:
    """A socket path the kernel cannot bind (too long) is refused in one line naming the variable to set."""
    length = len(os.fsencode(path))
    if length > SOCKET_PATH_MAX:
        raise StartRefused(
            f"the engine's socket {path} is {length} bytes long, over the {SOCKET_PATH_MAX} a Unix socket "
            f"allows; set {settings.RUNTIME_DIR.name} to a shorter directory"
        )
