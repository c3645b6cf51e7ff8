"""The TUI's connection to the engine: requests, the event stream, reconnection and catch-up.

Runs on Textual's asyncio loop. Speaks the wire format of `engine.protocol` (no torch there).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.client import EngineUnavailable, start_engine
from engine.paths import socket_path
from engine.wire import MAX_LINE_BYTES, PROTOCOL_VERSION

RETRY_S = 1.0

# states reported to the UI
STARTING, CONNECTED, LOST, STOPPED = "starting", "connected", "lost", "stopped"


class RequestError(Exception):
    """The engine refused a request; the message says why, in words for the user."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class EngineLink:
    """One long-lived connection that comes back by itself when the engine does.

    `on_event(event)` gets every engine event once, in order, including the ones missed while
    disconnected (replayed by sequence number). `on_state(state, detail)` gets starting,
    connected, lost and stopped. Requests made while disconnected fail at once with a RequestError.
    """

    def __init__(
        self,
        on_event: Callable[[dict[str, Any]], None],
        on_state: Callable[[str, dict[str, Any]], None],
        model: str | None = None,
        autostart: bool = True,
        path: Path | None = None,
    ):
        self.on_event, self.on_state = on_event, on_state
        self.model, self.autostart = model, autostart
        self.path = path or socket_path()
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.writer: asyncio.StreamWriter | None = None
        self.last_seq = 0
        self.instance: str | None = None
        self.hello: dict[str, Any] = {}
        self.task: asyncio.Task | None = None
        self.closing = False

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
        first = True
        while not self.closing:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.path), limit=MAX_LINE_BYTES)
            except OSError:
                if first and self.autostart:
                    first = False
                    await self.start_engine()
                    continue
                first = False
                await asyncio.sleep(RETRY_S)
                continue
            first = False
            await self.session(reader, writer)
            if not self.closing:
                self.on_state(LOST, {"message": "the engine went away; waiting for it to come back"})
                await asyncio.sleep(RETRY_S)

    async def start_engine(self, model: str | None = None) -> None:
        """Start a detached engine (it outlives the TUI); reports `starting`, then the outcome."""
        model = model or self.model or "landiff"
        self.on_state(STARTING, {"message": f"starting the engine ({model} model)"})
        try:
            client = await asyncio.to_thread(start_engine, model, None)
            client.close()
        except EngineUnavailable as error:
            self.on_state(STOPPED, {"message": str(error)})

    async def restart(self, model: str) -> None:
        """Stop the engine (it finishes cleanly, marking a running job interrupted), then start one serving
        `model`; raises RequestError when the engine refuses to stop."""
        await self.request("shutdown")
        for _ in range(150):  # the old engine removes its socket as it exits
            if not self.connected and not self.path.exists():
                break
            await asyncio.sleep(0.1)
        self.model = model
        await self.start_engine(model)

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        listener = asyncio.get_running_loop().create_task(self.listen(reader))
        try:
            self.hello = await self.request("hello", client="landiff-tui", model=self.model)
            if self.instance is None:  # first contact: the state comes with `active`, not old events
                self.instance, self.last_seq = self.hello.get("instance"), self.hello.get("seq", 0)
            elif self.hello.get("instance") != self.instance:  # a restarted engine numbers events anew
                self.instance, self.last_seq = self.hello.get("instance"), 0
            caught_up = await self.request("subscribe", since=self.last_seq)
            for missed in caught_up["missed"]:
                self.deliver(missed)
            self.on_state(CONNECTED, {**self.hello, "active": caught_up["active"], "gap": caught_up["gap"]})
            await listener
        except RequestError as error:  # e.g. the engine serves another model
            self.on_state(STOPPED, {"message": str(error), "code": error.code})
            self.closing = error.code == "wrong_model"
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # ValueError: a line that is not JSON; drop the connection and make a fresh one
        finally:
            self.writer = None
            listener.cancel()
            writer.close()
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(RequestError("disconnected", "the engine went away"))
            self.pending.clear()

    async def listen(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            message = json.loads(line)
            if "event" in message:
                self.deliver(message)
                continue
            future = self.pending.pop(message.get("id"), None)
            if future is None or future.done():
                continue
            if message.get("ok"):
                future.set_result(message.get("result", {}))
            else:
                error = message.get("error", {})
                future.set_exception(
                    RequestError(error.get("code", "error"), error.get("message", "refused"))
                )

    def deliver(self, event: dict[str, Any]) -> None:
        if event["seq"] <= self.last_seq:
            return  # already seen (replay overlapping the live stream)
        self.last_seq = event["seq"]
        self.on_event(event)

    async def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        if self.writer is None:
            raise RequestError("disconnected", "the engine is not connected; it is starting or was stopped")
        request_id = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        message = {"v": PROTOCOL_VERSION, "id": request_id, "type": kind, **fields}
        try:
            self.writer.write((json.dumps(message) + "\n").encode())
            await self.writer.drain()
        except (ConnectionError, OSError):
            self.pending.pop(request_id, None)
            raise RequestError(
                "disconnected", "the engine went away; it reconnects when the engine is back"
            ) from None
        return await future
