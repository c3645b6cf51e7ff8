"""Many clients that ask for big pages and never read (issue 25, point 1): was 206 -> 2,823 MB for 100
clients x 5 `list_jobs limit=500`, a `status` waited behind them, and the memory stayed after they left.
Now a client holds at most one page until it reads, all clients together at most MAX_UNSENT_BYTES, and
the memory goes back when they close. The figures come from bench/slow_clients.py, which this runs."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import sys

import pytest

from engine.daemon.events import EventHub
from engine.daemon.transport import Transport
from engine.protocol import LogTailReply
from tests.harness import ROOT, WAIT_S, wait_until_async

pytestmark = pytest.mark.timeout(600)


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_slow_clients", ROOT / "bench" / "slow_clients.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_a_hundred_clients_that_never_read_cost_a_bounded_amount_given_back_when_they_go(tmp_path, weights):
    figures = bench_module().slow_clients(tmp_path, weights, clients=100, requests=5, jobs=600, wait_s=WAIT_S)
    print(figures)
    assert figures.page_bytes > 2**19  # the pages are big: the scenario means something
    # one page each while they do not read, and 64 MiB in all: not 500 pages (2.6 GB before)
    assert figures.peak_mb - figures.baseline_mb < 300, figures
    assert figures.after_close_mb - figures.baseline_mb < 64, figures


class Pages:
    """A service whose every reply is a page of `size` bytes; counts the pages it made."""

    def __init__(self, size: int):
        self.made, self.size = 0, size

    async def handle(self, request):
        self.made += 1
        return LogTailReply(path="engine.log", lines=["x" * 1000] * (self.size // 1000))


def unread_client(path, lines: bytes) -> socket.socket:
    """A client that sends and does not read (an asyncio reader would read into its buffer at once)."""
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(str(path))
    raw.sendall(lines)
    return raw


def test_a_client_that_does_not_read_gets_its_next_reply_made_only_when_it_reads(tmp_path):
    async def scenario():
        hub = EventHub(asyncio.get_running_loop())
        service = Pages(2**20)  # a page more than the socket's buffer holds
        transport = Transport(service, hub)
        path = tmp_path / "e.sock"
        async with await transport.listen(path):
            raw = unread_client(path, b"".join(b'{"v":1,"id":%d,"type":"log_tail"}\n' % n for n in range(8)))
            await wait_until_async(lambda: service.made, "the first page")
            for _ in range(20):  # the engine has every chance to make more
                await asyncio.sleep(0.01)
            made_unread = service.made
            reader, writer = await asyncio.open_unix_connection(sock=raw, limit=2**24)
            replies = [json.loads(await asyncio.wait_for(reader.readline(), WAIT_S)) for _ in range(8)]
            writer.close()
        return made_unread, replies

    made_unread, replies = asyncio.run(scenario())
    assert made_unread == 1  # was 8: every page made and queued for a client that did not read
    assert [reply["id"] for reply in replies] == list(range(8))  # and all of them come once it reads


def test_past_the_engines_total_the_clients_holding_most_are_dropped_and_others_are_served(tmp_path):
    async def scenario():
        hub = EventHub(asyncio.get_running_loop())
        service = Pages(400_000)
        transport = Transport(service, hub, max_unsent_bytes=2**20)
        path = tmp_path / "e.sock"
        held = []
        async with await transport.listen(path):
            for _ in range(30):  # 30 clients x 400 kB, less what the socket buffers take, against 1 MiB
                held.append(unread_client(path, b'{"v":1,"id":1,"type":"log_tail"}\n'))
            await wait_until_async(lambda: service.made == 30, "a page for each")
            unsent = sum(connection.unsent() for connection in transport.open)
            still_open = len(transport.open)
            reader, writer = await asyncio.open_unix_connection(str(path), limit=2**24)
            writer.write(b'{"v":1,"id":7,"type":"log_tail"}\n')
            answer = json.loads(await asyncio.wait_for(reader.readline(), WAIT_S))
            writer.close()
            for raw in held:
                raw.close()
        return unsent, still_open, answer

    unsent, still_open, answer = asyncio.run(scenario())
    assert unsent <= 2**20 and still_open < 30
    assert answer["id"] == 7 and answer["ok"] is True


def test_a_client_that_leaves_with_requests_unanswered_frees_its_connection(tmp_path):
    """Its other requests are not answered into a closed socket, and its slot and memory are freed."""

    async def scenario():
        hub = EventHub(asyncio.get_running_loop())
        service = Pages(2**20)
        transport = Transport(service, hub)
        path = tmp_path / "e.sock"
        async with await transport.listen(path) as listener:
            raw = unread_client(path, b"".join(b'{"v":1,"id":%d,"type":"log_tail"}\n' % n for n in range(5)))
            await wait_until_async(lambda: service.made, "the first page")
            raw.close()
            await wait_until_async(lambda: not transport.open and not listener.tasks, "the connection to end")
        return service.made, transport.serving

    made, serving = asyncio.run(scenario())
    assert made == 1 and serving == 0
