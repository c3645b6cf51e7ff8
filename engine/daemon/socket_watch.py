"""The engine keeps its socket: a path removed (`rm engine.sock`, a cleaner of the runtime dir) is bound
again, and a path taken by something else ends the engine.

Every SOCKET_CHECK_S the event loop looks at the path (one lstat) and compares it with the socket the
engine bound there (its device and inode). Removed, with its folder or alone: the engine binds a new
socket there (owner-only, as at start), logs it, and goes on with its jobs and its open connections;
clients reach it again at once. Replaced (another engine bound it, someone put a file or a link there),
or its folder now another user's: the engine cannot be reached and does not take the path from whoever
holds it, so it stops as on SIGTERM (its running jobs marked interrupted), saying why. At its stop it
removes the path only while it is still its own socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from engine.paths import NotTrusted, check_owned, private_dir

log = logging.getLogger(__name__)
# how soon a removed socket is bound again (a client that found none retries within it): one lstat a period
SOCKET_CHECK_S = 2.0


class Closable(Protocol):
    def close(self) -> None: ...


def identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the socket at `path`, None when there is none (or something else is there)."""
    try:
        status = os.lstat(path)
    except OSError:
        return None
    return (status.st_dev, status.st_ino) if stat.S_ISSOCK(status.st_mode) else None


def describe(path: Path) -> str:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "nothing"
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISSOCK(mode):
        return "another socket"
    return "a folder" if stat.S_ISDIR(mode) else "a file"


class SocketWatch:
    """Holds the engine's listener on `path`: `bind` makes one (Transport.listen), `give_up` stops the
    engine. `listen()` binds and starts the periodic check; `close()` ends both; `remove()` removes the
    path while it is still this engine's socket."""

    def __init__(
        self,
        path: Path,
        bind: Callable[[Path], Awaitable[Closable]],
        give_up: Callable[[], object],
        every: float = SOCKET_CHECK_S,
    ):
        self.path, self.bind, self.give_up, self.every = path, bind, give_up, every
        self.listener: Closable | None = None
        self.bound: tuple[int, int] | None = None
        self.task: asyncio.Task | None = None
        self.failure: str | None = None  # why the socket could not be made again (logged once)

    async def listen(self) -> None:
        """Bind the socket (the first time, or again) and watch it from now on."""
        listener = await self.bind(self.path)
        previous, self.listener = self.listener, listener
        self.bound = identity(self.path)
        if previous is not None:
            previous.close()  # bound to the removed path: no client can reach it; open connections stay
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.run(), name="socket-watch")

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                if not await self.check():
                    return
            except Exception:  # the watch outlives a surprise (a folder it may not read): it looks again
                log.exception("cannot check the engine's socket %s; looking again", self.path)

    async def check(self) -> bool:
        """One look at the path: bound again when removed; False once the engine gives up its place."""
        try:
            status: os.stat_result | None = os.lstat(self.path)
        except (FileNotFoundError, NotADirectoryError):  # gone, or its folder with it
            status = None
        if status is not None:
            if stat.S_ISSOCK(status.st_mode) and (status.st_dev, status.st_ino) == self.bound:
                return True  # still this engine's socket
            self.stop_for(
                f"the engine's socket {self.path} was replaced by {describe(self.path)}, which is not this "
                "engine's: it can no longer be reached there and leaves the path to its holder"
            )
            return False
        folder = self.path.parent
        try:
            check_owned(folder, "runtime dir")
            private_dir(folder, "runtime dir")  # removed with its folder: made again, owner-only
            check_owned(folder, "runtime dir")
            await self.listen()
        except NotTrusted as error:  # the folder is now another user's, or a link: not a place to serve
            self.stop_for(f"the engine's socket {self.path} was removed and {error}")
            return False
        except OSError as error:  # taken meanwhile (the next look says by what), or cannot be made yet
            if str(error) != self.failure:
                log.warning(
                    "the engine's socket %s was removed and cannot be made again: %s", self.path, error
                )
            self.failure = str(error)
            return True
        self.failure = None
        log.warning("the engine's socket %s was removed: listening on a new one there", self.path)
        return True

    def stop_for(self, why: str) -> None:
        log.error("%s; stopping (its running jobs are marked interrupted)", why)
        self.bound = None
        self.give_up()

    def ours(self) -> bool:
        return self.bound is not None and identity(self.path) == self.bound

    def close(self) -> None:
        """Stop watching and close the listener: no client connects from now on (the path stays)."""
        if self.task is not None:
            self.task.cancel()
        if self.listener is not None:
            self.listener.close()

    def remove(self) -> None:
        """Remove the socket, only while the path is still this engine's (never another's)."""
        if self.ours():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
