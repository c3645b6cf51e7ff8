"""The engine's event log: numbered events, a bounded backlog for reconnecting clients, subscribers."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from engine.protocol import Event

BACKLOG = 20_000


class Publisher(Protocol):
    """What the service, the worker and the weights jobs publish through (EventHub.publish)."""

    def __call__(self, event: Event, /) -> None: ...


class EventHub:
    """Lives on the asyncio loop; any thread may publish.

    `_publish` is the one place an event is numbered. A publish from another thread is
    scheduled on the loop (`call_soon_threadsafe` keeps each thread's order); one from the loop itself
    happens at once, so an event published by a handler precedes that handler's reply.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, backlog: int = BACKLOG):
        self.loop = loop
        self.loop_thread = threading.get_ident()  # the hub is made on its loop
        self.seq = 0
        self.log: deque[dict[str, Any]] = deque(maxlen=backlog)
        self.subscribers: set[asyncio.Queue] = set()
        # called on the loop with each event as numbered (they must not block: serve --on-finish queues)
        self.listeners: list[Callable[[Event], None]] = []

    def publish(self, event: Event, /) -> None:
        """Send `event` (a protocol model, checked as it was made) to every subscriber, numbered."""
        if threading.get_ident() == self.loop_thread:
            self._publish(event)
        else:
            self.loop.call_soon_threadsafe(self._publish, event)

    def _publish(self, event: Event) -> None:
        self.seq += 1
        numbered = event.model_copy(update={"seq": self.seq})
        message = numbered.model_dump(mode="json")
        self.log.append(message)
        for queue in self.subscribers:
            queue.put_nowait(message)
        for listener in self.listeners:
            listener(numbered)

    def latest(self, kind: str, job_id: str) -> dict[str, Any] | None:
        """The newest `kind` event of `job_id` still in the backlog, or None (for a fresh view's status)."""
        for message in reversed(self.log):
            if message["event"] == kind and message.get("job_id") == job_id:
                return message
        return None

    def since(self, seq: int) -> tuple[list[dict[str, Any]], bool]:
        """Events after `seq`, and whether some were already dropped from the backlog (a gap)."""
        missed = [message for message in self.log if message["seq"] > seq]
        oldest = self.log[0]["seq"] if self.log else self.seq + 1
        return missed, seq + 1 < oldest and seq < self.seq

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self.subscribers.discard(queue)
