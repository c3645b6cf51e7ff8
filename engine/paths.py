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


def config_dir() -> Path:
    """The user's own settings (the TUI's config.toml): read, never written, by the project."""
    from platformdirs import user_config_dir

    return settings.CONFIG_DIR.path() or Path(user_config_dir("landiff"))


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


class ReadOnlyDir(PermissionError):
    """A folder its owner may not write or enter (mode bits): the user's choice, which no one here undoes."""


def check_owner_may_write(path: Path, what: str = "folder") -> None:
    """ReadOnlyDir unless the owner's mode bits allow read, write and enter (root writes through them, so
    the bits are read, not tried)."""
    import stat

    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o700 != 0o700:
        raise ReadOnlyDir(
            f"the {what} {path} is not writable (mode {mode:04o}): give it back to yourself (chmod u+rwx) "
            "or choose another folder; its permissions are yours to change, not the engine's"
        )


def private_dir(path: Path, what: str = "folder") -> Path:
    """Create `path` (and parents) readable by the owner only. An existing one loses what others may do
    with it and gains nothing: one its owner made read-only is refused (ReadOnlyDir), not opened up."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_owner_may_write(path, what)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        path.chmod(mode & 0o700)
    return path


RENDEZVOUS = "parallel-*.store"  # a parallel group's rendezvous files (torch's FileStore), in the runtime dir


def rendezvous_path(folder: Path, pid: int, token: str) -> Path:
    """The rendezvous file of a group that process `pid` leads (`token` tells its groups apart)."""
    return folder / RENDEZVOUS.replace("*", f"{pid}-{token}")


def lock_path() -> Path:
    """The data dir's lock file: the engine holds an exclusive flock on it for its whole life."""
    return data_dir() / "engine.lock"


# Standard library only below: the blocking client and the TUI's link call these at start-up.


class NotTrusted(PermissionError):
    """A runtime dir, data dir or engine socket that belongs to another user: one line says which."""


def check_owned(path: Path, what: str) -> None:
    """Refuse `path` unless it is a real directory (no symlink) owned by this user."""
    import os

    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return
    import stat

    if stat.S_ISLNK(status.st_mode) or not stat.S_ISDIR(status.st_mode):
        raise NotTrusted(f"the {what} {path} is not a directory; remove it or point the variable elsewhere")
    if status.st_uid != os.getuid():
        raise NotTrusted(
            f"the {what} {path} belongs to uid {status.st_uid}, not to you (uid {os.getuid()}); "
            f"use a directory of your own ({settings.RUNTIME_DIR.name} / {settings.DATA_DIR.name})"
        )


def peer_uid(connection) -> tuple[int, int]:
    """The pid and uid of the process at the other end of a connected Unix socket (SO_PEERCRED)."""
    import socket
    import struct

    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", credentials)
    return pid, uid


def check_engine_socket(connection, path: Path) -> None:
    """What a client checks before it sends anything: the socket's dir is its own, and the process that
    answers runs as its user (another user's socket planted in a shared dir would read its prompts).
    NotTrusted otherwise. One call for the blocking client and the TUI's link."""
    import os

    check_owned(path.parent, "runtime dir")
    pid, uid = peer_uid(connection)
    if uid != os.getuid():
        raise NotTrusted(
            f"the process answering on {path} (pid {pid}) runs as uid {uid}, not as you (uid {os.getuid()}); "
            "it is not your engine: remove the socket or set "
            f"{settings.RUNTIME_DIR.name} to a directory of your own"
        )


def lock_holder(path: Path) -> int | None:
    """The pid written in a held engine lock file, None when the file is absent, unreadable or unheld."""
    import fcntl
    import os

    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0  # held, by an unknown pid
        return None
    finally:
        os.close(descriptor)
