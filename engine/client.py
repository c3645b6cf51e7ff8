"""A blocking client of the engine's socket, and starting the engine when none answers.

Imports only the wire's framing (`engine.wire`) and the standard library, so it is cheap for command-line
use. `call(Status())` returns the reply's model (`engine.protocol`, imported on the first call); events
come as the plain dicts of the wire, which `engine.protocol.parse_event` reads.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.paths import (
    NotTrusted,
    ReadOnlyDir,
    check_engine_socket,
    check_owned,
    console_path,
    lock_holder,
    lock_path,
    log_path,
    private_dir,
    socket_path,
)
from engine.settings import ENGINE_ARGS, LOG_STDERR
from engine.wire import MAX_REPLY_BYTES, RemoteError, decode_line, is_event, reply_result
from engine.wire import request_line as raw_request_line

if TYPE_CHECKING:
    from engine.protocol import AnyEvent, R, Request


class EngineUnavailable(ConnectionError):
    """No engine answers on the socket."""


class EngineUntrusted(EngineUnavailable):
    """What answers on the socket is not this user's engine, or its dir is another user's: never started
    around, never sent a request."""


EngineError = RemoteError  # the one remote-error type, under the name the CLI has used


class EngineClient:
    def __init__(self, path: Path | None = None, timeout: float | None = 30.0):
        self.path = path or socket_path()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            check_owned(self.path.parent, "runtime dir")
            self.sock.connect(str(self.path))
            check_engine_socket(self.sock, self.path)  # before a request (a prompt) goes out
        except NotTrusted as error:
            self.sock.close()
            raise EngineUntrusted(str(error)) from None
        except OSError as error:
            self.sock.close()
            raise EngineUnavailable(f"no engine answers on {self.path} ({error.strerror or error})") from None
        self.reader = self.sock.makefile("rb")
        self.ids = itertools.count(1)
        self.pending_events: deque[dict[str, Any]] = deque()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def __enter__(self) -> EngineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, line: bytes) -> None:
        self.sock.sendall(line)

    def read_message(self) -> dict[str, Any]:
        try:
            line = self.reader.readline(MAX_REPLY_BYTES + 1)
        except ConnectionResetError:
            raise EngineUnavailable("the engine closed the connection (it refused it or stopped)") from None
        if not line:
            raise EngineUnavailable("the engine closed the connection")
        return decode_line(line, MAX_REPLY_BYTES)

    def call(self, request: Request[R]) -> R:
        """The engine's reply to `request` as its reply model; RemoteError when the engine refuses it."""
        from engine.protocol import read_reply, request_line

        request_id = next(self.ids)
        return read_reply(
            request, self.exchange(request_id, request_line(request_id, request)), "landiff-engine"
        )

    def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        """A request as raw fields and its raw result: for tests and tools that speak the wire itself
        (a field of the wrong type, an unknown type); programs use `call`."""
        request_id = next(self.ids)
        return self.exchange(request_id, raw_request_line(request_id, kind, **fields))

    def exchange(self, request_id: int, line: bytes) -> dict[str, Any]:
        try:
            self.send_raw(line)
        except (BrokenPipeError, ConnectionResetError):
            # an engine that refuses a connection (too many, another uid) says why at once and closes:
            # its one line is still here to read
            refusal = self.read_message()
            reply_result(refusal)
            raise EngineUnavailable("the engine closed the connection") from None
        while True:
            answer = self.read_message()
            if is_event(answer):
                self.pending_events.append(answer)
                continue
            if answer.get("id") == request_id:
                return reply_result(answer)
            if answer.get("id") is None and answer.get("ok") is False:
                reply_result(answer)  # the engine's word on the connection itself (refused, timed out)

    def event_models(self) -> Iterator[AnyEvent]:
        """`events()` as their protocol models; one this version cannot read (another version's engine,
        which hello names) is skipped."""
        from pydantic import ValidationError

        from engine.protocol import parse_event

        for message in self.events():
            try:
                yield parse_event(message)
            except ValidationError:
                continue

    def events(self) -> Iterator[dict[str, Any]]:
        """Events of a subscribed connection, in order, forever (until the engine goes away)."""
        while True:
            while self.pending_events:
                yield self.pending_events.popleft()
            message = self.read_message()
            if is_event(message):
                yield message


def connect(model: str | None = None) -> EngineClient:
    client = EngineClient()
    try:
        from engine.protocol import Hello

        client.call(Hello(client="landiff-engine cli", model=model))
    except BaseException:
        client.close()
        raise
    return client


DEFAULT_MODEL = "landiff"


def last_line(path: Path) -> str | None:
    """The last line a detached engine wrote to its console (a refusal is one line), if any."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return None
    return lines[-1][:500] if lines else None


def engine_args() -> list[str]:
    """LANDIFF_ENGINE_ARGS split as a shell would; a value that does not split is refused in one line."""
    import shlex

    try:
        return shlex.split(ENGINE_ARGS.raw() or "")
    except ValueError as error:
        raise EngineUnavailable(
            f"{ENGINE_ARGS.name} does not split into options ({error}): quote it as a shell would"
        ) from None


def running_engine(model: str | None = None, timeout: float = 120.0) -> EngineClient | None:
    """The engine that runs, connected (`model`: it must serve that one, else RemoteError "wrong_model");
    None when none runs. Starts nothing: for the commands that only read (status, jobs, show)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return connect(model)
        except EngineUntrusted:
            raise
        except EngineUnavailable:
            pass
        # an engine that holds the data dir's lock but does not answer is starting or stopping (a stop
        # waits for its workers, seconds when one is inside a torch import): one started now would be
        # refused, so wait until it answers or lets go
        holder = lock_holder(lock_path())
        if holder is None:
            return None
        if time.monotonic() > deadline:
            raise EngineUnavailable(
                f"an engine (pid {holder}) holds the data dir {lock_path().parent} but did not answer "
                f"within {timeout:.0f}s; see {log_path()}"
            )
        time.sleep(0.2)


def start_engine(
    model: str | None, ckpts: Path | None, timeout: float = 120.0, options: list[str] | None = None
) -> EngineClient:
    """Connect to the engine, starting one in the background (detached) if none answers.

    `model`: the model the engine must serve (a running engine serving another refuses); None takes
    whichever engine runs, and starts one serving the release when none does. `options`: the new
    engine's other `serve` options (a restarted engine's own); None: those of LANDIFF_ENGINE_ARGS."""
    running = running_engine(model, timeout)
    if running is not None:
        return running
    try:
        private_dir(log_path().parent, "data dir")
    except ReadOnlyDir as error:
        raise EngineUnavailable(f"cannot start an engine: {error}") from None
    command = [sys.executable, "-m", "engine.cli", "serve", "--model", model or DEFAULT_MODEL]
    given = engine_args() if options is None else options
    command += given
    whence = f" (its options came from {ENGINE_ARGS.name})" if options is None and given else ""
    if ckpts is not None:
        command += ["--ckpts", str(ckpts)]
    # The engine logs to its own rotating file; told so, it logs nothing to stderr, which keeps only what
    # happens before its log starts (a crash at import), from this start alone.
    console = console_path()
    with open(console, "wb") as output:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=output,
            start_new_session=True,
            env={**os.environ, LOG_STDERR.name: "0"},
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            try:  # another client may have started one first: ours then refuses and exits
                return connect(model)
            except EngineUntrusted:
                raise
            except EngineUnavailable:
                if lock_holder(lock_path()) is not None:  # that one holds the data dir: still starting
                    time.sleep(0.2)
                    continue
                said = last_line(console)
                raise EngineUnavailable(
                    f"the engine exited at start (status {process.returncode}){whence}"
                    + (f": {said}" if said else "")
                    + f"; see {console}"
                ) from None
        try:
            return connect(model)
        except EngineUntrusted:
            raise
        except EngineUnavailable:
            time.sleep(0.2)
    raise EngineUnavailable(f"the engine did not answer within {timeout:.0f}s; see {log_path()}")
