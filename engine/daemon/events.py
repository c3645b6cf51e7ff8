"""The engine's event log: numbered events, a bounded backlog for reconnecting clients, subscribers."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from engine.protocol import event

BACKLOG = 20_000


class EventHub:
    """Lives on the asyncio loop; other threads publish through `loop.call_soon_threadsafe`."""

    def __init__(self, backlog: int = BACKLOG):
        self.seq = 0
        self.log: deque[dict[str, Any]] = deque(maxlen=backlog)
        self.subscribers: set[asyncio.Queue] = set()

    def publish(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        message = event(kind, self.seq, **fields)
        self.log.append(message)
        for queue in self.subscribers:
            queue.put_nowait(message)
        return message

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
