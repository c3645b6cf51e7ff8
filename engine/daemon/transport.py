"""The engine's socket: a Unix-domain listener, the peer's uid check, JSON-lines framing, one send loop
per connection, and event forwarding to subscribed connections.

It hands each parsed request to the service and knows nothing of what the requests do. A handler's
result becomes a reply in one place, `Connection.answer`; an event becomes a line in one place,
`Connection.forward`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any, NamedTuple

from engine.daemon.events import EventHub
from engine.daemon.service import EngineService, RequestFailed
from engine.protocol import (
    MAX_LINE_BYTES,
    Hello,
    ProtocolError,
    Subscribe,
    WireShapeError,
    encode,
    encode_reply,
    error_reply,
    parse_request,
)

log = logging.getLogger(__name__)
READ_CHUNK = 64 * 1024


class Peer(NamedTuple):
    pid: int
    uid: int


def peer_credentials(connection: socket.socket) -> Peer:
    """The pid and uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", credentials)
    return Peer(pid, uid)


def socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


async def read_lines(reader: asyncio.StreamReader):
    """Yield each received line (without its newline); an over-long line yields None once and is skipped."""
    buffer = bytearray()
    skipping = False
    while True:
        chunk = await reader.read(READ_CHUNK)
        if not chunk:
            return
        buffer += chunk
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                if len(buffer) > MAX_LINE_BYTES:
                    if not skipping:
                        yield None
                    skipping = True
                    buffer.clear()
                break
            line = bytes(buffer[:newline])
            del buffer[: newline + 1]
            if skipping:
                skipping = False
                continue
            yield None if len(line) > MAX_LINE_BYTES else line


class Transport:
    def __init__(self, service: EngineService, hub: EventHub, expected_uid: int | None = None):
        self.service, self.hub = service, hub
        self.expected_uid = os.getuid() if expected_uid is None else expected_uid
        self.numbers = itertools.count(1)

    async def listen(self, path: Path) -> asyncio.AbstractServer:
        """Listen on `path`, a socket only its owner may open (0600, created so: no window of 0644)."""
        previous = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(self.connection, path=str(path), limit=MAX_LINE_BYTES)
        finally:
            os.umask(previous)
        path.chmod(0o600)
        return server

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = next(self.numbers)
        try:
            peer = peer_credentials(writer.get_extra_info("socket"))
        except OSError:
            peer = Peer(-1, -1)
        if peer.uid != self.expected_uid:
            log.warning("connection %d refused: pid %d runs as uid %d, not the owner's", number, *peer)
            writer.write(error_reply(None, "forbidden", "this engine only serves its owner's user id"))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return
        await Connection(self, number, peer, writer).run(reader)


class Connection:
    def __init__(self, transport: Transport, number: int, peer: Peer, writer: asyncio.StreamWriter):
        self.service, self.hub = transport.service, transport.hub
        self.number, self.peer, self.writer = number, peer, writer
        self.client = "a client"  # what its hello calls it
        self.outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.subscription: asyncio.Queue | None = None
        self.forwarder: asyncio.Task | None = None
        self.requests = 0

    async def run(self, reader: asyncio.StreamReader) -> None:
        opened = time.monotonic()
        log.info("connection %d opened by pid %d", self.number, self.peer.pid)
        sender = asyncio.create_task(self.send_loop())
        try:
            async for line in read_lines(reader):
                await self.receive(line)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if self.subscription is not None:
                self.hub.unsubscribe(self.subscription)
            if self.forwarder is not None:
                self.forwarder.cancel()
            self.outgoing.put_nowait(None)
            with contextlib.suppress(Exception):
                await sender
            log.info(
                "connection %d (%s, pid %d) closed after %.1f s and %d request(s)",
                self.number,
                self.client,
                self.peer.pid,
                time.monotonic() - opened,
                self.requests,
            )

    async def receive(self, line: bytes | None) -> None:
        if line is None:
            self.refuse(None, "line_too_long", f"lines are limited to {MAX_LINE_BYTES} bytes")
            return
        if not line.strip():
            return
        try:
            request = parse_request(line)
        except ProtocolError as error:
            self.refuse(error.request_id, error.code, error.message)
            return
        self.requests += 1
        if isinstance(request, Hello):
            self.client = repr(request.client) if request.client else "an unnamed client"
            log.info("connection %d is %s (pid %d)", self.number, self.client, self.peer.pid)
        log.debug("connection %d: %s #%s", self.number, request.type, request.id)
        if isinstance(request, Subscribe) and self.subscription is None:
            # subscribed before the snapshot is taken: every later event is in this queue, and is
            # forwarded only once the snapshot's reply is on its way
            self.subscription = self.hub.subscribe()
        try:
            result = await self.service.handle(request)
        except Exception as error:
            self.fail(request, error)
            if self.forwarder is None and self.subscription is not None:
                self.hub.unsubscribe(self.subscription)  # the subscribe failed: no events follow
                self.subscription = None
            return
        self.answer(request, result)
        if self.subscription is not None and self.forwarder is None:
            self.forwarder = asyncio.create_task(self.forward(self.subscription))

    def answer(self, request, result: dict[str, Any]) -> None:
        """The one place a handler's result is encoded as a reply, checked against its reply model."""
        try:
            line = encode_reply(request.type, request.id, result)
        except WireShapeError as error:  # the engine's bug: the client hears of it, the log has it
            self.fail(request, error)
            return
        self.outgoing.put_nowait(line)

    def fail(self, request, error: Exception) -> None:
        if isinstance(error, RequestFailed):
            self.refuse(request.id, error.code, str(error))
            return
        # a handler's bug fails its request, never the connection or the engine
        log.error(
            "connection %d: the %s request #%s failed", self.number, request.type, request.id, exc_info=error
        )
        self.refuse(
            request.id,
            "internal",
            f"the engine failed on this {request.type} request ({type(error).__name__}: {error}); "
            "its log has the details",
        )

    def refuse(self, request_id: int | str | None, code: str, message: str) -> None:
        self.outgoing.put_nowait(error_reply(request_id, code, message))

    async def forward(self, subscription: asyncio.Queue) -> None:
        """The one place an event is encoded for the wire."""
        while True:
            self.outgoing.put_nowait(encode(await subscription.get()))

    async def send_loop(self) -> None:
        try:
            while (message := await self.outgoing.get()) is not None:
                self.writer.write(message)
                await self.writer.drain()
        except ConnectionError:
            pass
        finally:
            self.writer.close()
