"""The TUI's connection to the engine: requests, the event stream, reconnection and catch-up.

Runs on Textual's asyncio loop. Frames lines with `engine.wire`; replies and events arrive as the models
of `engine.protocol`, which (with pydantic) is imported on the first connection, after the first paint.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.paths import NotTrusted, check_engine_socket, lock_holder, lock_path, log_path, socket_path
from engine.wire import (
    LEAVES_WITHIN_S,
    MAX_REPLY_BYTES,
    RemoteError,
    decode_line,
    is_event,
    reply_result,
)

if TYPE_CHECKING:
    from engine.protocol import AnyEvent, HelloReply, R, Request, SubscribeReply

RETRY_S = 1.0

# states reported to the UI besides `connected` (which comes with the engine's hello): starting one,
# the connection dropped (it comes back by itself), no engine answers (`start_engine` brings one), and a
# refusal or a failed start
STARTING, LOST, ABSENT, STOPPED = "starting", "lost", "absent", "stopped"
# a refusal that retrying cannot mend: another model served, or an engine of another protocol version
FINAL = ("wrong_model", "bad_reply")


class EngineLink:
    """One long-lived connection that comes back by itself when the engine does.

    `on_event(event)` gets every engine event once, in order, as its protocol model, including the ones
    missed while disconnected (replayed by sequence number). `on_connected(hello, caught_up)` gets each
    (re)connection with the engine's hello and subscribe replies; `on_state(state, message)` gets
    starting, lost, absent and stopped. Requests return their reply model; made while disconnected,
    they fail at once with a RemoteError.
    """

    def __init__(
        self,
        on_event: Callable[[AnyEvent], None],
        on_connected: Callable[[HelloReply, SubscribeReply], None],
        on_state: Callable[[str, str], None],
        model: str | None = None,
        autostart: bool = True,
        path: Path | None = None,
    ):
        self.on_event, self.on_connected, self.on_state = on_event, on_connected, on_state
        self.model, self.autostart = model, autostart
        self.path = path or socket_path()
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.writer: asyncio.StreamWriter | None = None
        self.last_seq = 0
        self.instance: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self.starting = False
        self.held: list[AnyEvent] | None = None  # live events that came while catching up (see session)
        # the last engine's `serve` options (its hello's): an engine this link starts gets them; None
        # before any engine answered (LANDIFF_ENGINE_ARGS then)
        self.options: list[str] | None = None

    @property
    def connected(self) -> bool:
        return self.writer is not None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def close(self) -> None:
        self.closing = True
        if self.writer is not None:
            self.writer.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    async def run(self) -> None:
        first, absent_told = True, False
        while not self.closing:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.path), limit=MAX_REPLY_BYTES)
            except OSError:
                if first and self.autostart:
                    first = False
                    await self.start_engine()
                    continue
                first = False
                if not absent_told and not self.starting:  # once an outage: the header keeps saying it
                    absent_told = True
                    self.on_state(ABSENT, "no engine is running")
                await asyncio.sleep(RETRY_S)
                continue
            first, absent_told = False, False
            try:  # before anything is sent: our own runtime dir, and an engine that runs as us
                check_engine_socket(writer.get_extra_info("socket"), self.path)
            except NotTrusted as error:
                writer.close()
                self.closing = True
                self.on_state(STOPPED, str(error))
                return
            await self.session(reader, writer)
            if not self.closing:
                self.on_state(LOST, "the engine went away; waiting for it to come back")
                await asyncio.sleep(RETRY_S)

    async def start_engine(self, model: str | None = None, verb: str = "starting") -> None:
        """Start a detached engine (it outlives the TUI); reports `starting`, then the outcome (the run
        loop connects to it as soon as it answers)."""
        from engine.client import EngineUnavailable, start_engine  # spawning one: not needed to connect

        model = model or self.model or "landiff"
        self.starting = True
        self.on_state(STARTING, f"{verb} the engine ({model} model)...")
        try:
            client = await asyncio.to_thread(start_engine, model, None, options=self.options)
            client.close()
        except EngineUnavailable as error:
            self.on_state(STOPPED, str(error))
        finally:
            self.starting = False

    async def restart(self, model: str | None = None) -> None:
        """Bring an engine serving `model` (default: the one asked for before): stop the running one (it
        finishes cleanly, marking a running job interrupted) and start another; with none running, only
        start one. Raises RemoteError when the engine refuses to stop."""
        if self.starting:
            raise RemoteError("starting", "the engine is already starting; it connects when it answers")
        model = model or self.model
        verb = "starting"
        if self.connected:
            verb = "restarting"
            from engine.protocol import Shutdown

            await self.call(Shutdown())
        # the old engine holds its lock until it has left: a new one started before then refuses to
        # serve; its workers may take a while (one inside a torch import cannot be hurried)
        self.starting = True
        try:
            loop, told = asyncio.get_running_loop(), False
            deadline = loop.time() + LEAVES_WITHIN_S
            while self.connected or lock_holder(lock_path()) is not None:
                if loop.time() > deadline:
                    self.on_state(STOPPED, f"the engine did not stop; see its log {log_path()}")
                    return
                if not self.connected and not told:  # after the link's own "went away"
                    told = True
                    self.on_state(STARTING, "waiting for the engine to stop...")
                await asyncio.sleep(0.1)
        finally:
            self.starting = False
        self.model = model
        await self.start_engine(model, verb)

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from engine.protocol import Hello, Subscribe

        self.writer = writer
        listener = asyncio.get_running_loop().create_task(self.listen(reader))
        try:
            hello = await self.call(Hello(client="landiff-tui", model=self.model))
            self.options = hello.options
            if self.instance is None:  # first contact: the state comes with `active`, not old events
                self.instance, self.last_seq = hello.instance, hello.seq
            elif hello.instance != self.instance:  # a restarted engine numbers events anew
                self.instance, self.last_seq = hello.instance, 0
            # live events can follow the subscribe reply in the same read, and the listener reads on before
            # this resumes: they wait here, so the missed ones (older) are not taken for already seen
            self.held = []
            caught_up = await self.call(Subscribe(since=self.last_seq))
            for missed in caught_up.missed:
                self.deliver(missed)
            self.on_connected(hello, caught_up)  # the state as of the reply, before the events after it
            held, self.held = self.held, None
            for event in held:
                self.deliver(event)
            await listener
        except RemoteError as error:  # e.g. the engine serves another model
            if error.code != "disconnected":  # gone mid-request: a fresh connection, as below
                self.on_state(STOPPED, str(error))
                self.closing = error.code in FINAL
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # ValueError: a line that is not JSON; drop the connection and make a fresh one
        finally:
            self.writer, self.held = None, None
            listener.cancel()
            writer.close()
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(RemoteError("disconnected", "the engine went away"))
            self.pending.clear()

    async def listen(self, reader: asyncio.StreamReader) -> None:
        from pydantic import ValidationError

        from engine.protocol import parse_event

        # a request still waiting when the connection ends gets the reason, so the session never waits on a
        # reply that cannot come (the socket dropped between hello and its answer, say)
        ended = RemoteError("disconnected", "the engine went away; it reconnects when the engine is back")
        try:
            while line := await reader.readline():
                message = decode_line(line, MAX_REPLY_BYTES)
                if is_event(message):
                    with contextlib.suppress(ValidationError):  # another version's engine: hello says
                        event = parse_event(message)
                        if self.held is None:
                            self.deliver(event)
                        else:
                            self.held.append(event)
                    continue
                if message.get("id") is None and not message.get("ok", True):
                    reply_result(message)  # the engine's word on this connection (too many, a timeout)
                request_id = message.get("id")
                future = self.pending.pop(request_id, None) if isinstance(request_id, int) else None
                if future is None or future.done():
                    continue
                try:
                    future.set_result(reply_result(message))
                except RemoteError as error:
                    future.set_exception(error)
        except RemoteError as error:
            ended = error
            raise
        finally:
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(ended)

    def deliver(self, event: AnyEvent) -> None:
        if event.seq <= self.last_seq:
            return  # already seen (replay overlapping the live stream)
        self.last_seq = event.seq
        self.on_event(event)

    async def call(self, request: Request[R]) -> R:
        """The engine's reply as the request's reply model; RemoteError when it refuses or is away (made
        while disconnected, at once)."""
        from engine.protocol import read_reply, request_line

        if self.writer is None:
            raise RemoteError("disconnected", "the engine is not connected; it is starting or was stopped")
        request_id = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        try:
            self.writer.write(request_line(request_id, request))
            await self.writer.drain()
        except (ConnectionError, OSError):
            self.pending.pop(request_id, None)
            raise RemoteError(
                "disconnected", "the engine went away; it reconnects when the engine is back"
            ) from None
        return read_reply(request, await future, "landiff-tui")
