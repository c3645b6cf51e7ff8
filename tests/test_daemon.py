"""The daemon's parts in-process: a cancel against the worker's claim, store calls off the event loop,
the transport's reply and event order. (tests/test_engine.py drives a real engine subprocess.)"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from engine.daemon.events import EventHub
from engine.daemon.pool import WorkerPool
from engine.daemon.service import EngineService, RequestFailed
from engine.daemon.store import Store
from engine.daemon.transport import Transport
from engine.daemon.weights_ops import WeightsOperations
from engine.daemon.worker import JobWorker
from engine.protocol import JobQueuedEvent, LogTailReply, SubscribeReply, parse_request

JOBS = 300


def make_worker(store: Store, tmp_path: Path) -> JobWorker:
    """A worker whose thread is not started: the tests call its claim and cancel themselves."""

    def no_pipeline():
        raise AssertionError("these tests run no job")

    return JobWorker(store, no_pipeline, lambda event: None, tmp_path / "outputs", 600.0)


def exclusivity_problems(store: Store, claimed: list[str], cancelled: list[str]) -> list[str]:
    """A job is either claimed (running) or cancelled, never both, and the store agrees."""
    problems = [f"{job_id} was claimed and cancelled" for job_id in set(claimed) & set(cancelled)]
    problems += [f"{job_id} was cancelled twice" for job_id in set(cancelled) if cancelled.count(job_id) > 1]
    problems += [f"{job_id} was claimed twice" for job_id in set(claimed) if claimed.count(job_id) > 1]
    for job_id in claimed:
        if store.get(job_id).status != "running":
            problems.append(f"{job_id} was claimed but is {store.get(job_id).status}")
    for job_id in cancelled:
        if job_id not in claimed and store.get(job_id).status != "cancelled":
            problems.append(f"{job_id} was cancelled but is {store.get(job_id).status}")
    return problems


@pytest.fixture
def fast_disk(tmp_path):
    """A folder in memory when the machine has one: the race needs many commits, not durable ones."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(dir=shm, prefix="landiff-test-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_many_cancels_against_a_claiming_worker_never_both_win(tmp_path, fast_disk):
    store = Store(fast_disk / "landiff.db")
    worker = make_worker(store, tmp_path)
    ids = [store.add_job({"prompt": f"job {n}"}, "tiny", "test").id for n in range(JOBS)]
    claimed: list[str] = []
    outcomes: dict[str, list[str | None]] = {job_id: [] for job_id in ids}
    cancellers_done = threading.Event()
    start = threading.Barrier(4)

    def claimer() -> None:
        start.wait()
        while True:
            row = worker.claim()
            if row is None:
                if cancellers_done.is_set():
                    return
                time.sleep(0.001)  # nothing queued now: let the cancellers run
                continue
            claimed.append(row.id)
            with worker.lock:  # the job "runs" for a moment, then ends
                worker.current = None

    def canceller(seed: int) -> None:
        order = list(ids)
        random.Random(seed).shuffle(order)
        start.wait()
        for job_id in order:
            outcomes[job_id].append(worker.cancel(job_id))

    threads = [threading.Thread(target=claimer)] + [
        threading.Thread(target=canceller, args=(seed,)) for seed in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads[1:]:
        thread.join()
    cancellers_done.set()
    threads[0].join()

    cancelled = [
        job_id for job_id, results in outcomes.items() for result in results if result == "cancelled"
    ]
    assert exclusivity_problems(store, claimed, cancelled) == []
    assert sorted(set(claimed) | set(cancelled)) == sorted(ids)  # every job went one way
    assert claimed and cancelled  # both sides won some: the race was run, not avoided
    assert all(
        result in (None, "cancelling") for job_id in claimed for result in outcomes[job_id]
    )  # a claimed job is never reported cancelled while queued


def test_the_check_catches_a_read_then_update_cancel(tmp_path):
    """The old cancel (read the status, then update it) loses to a claim in between: the check sees it."""
    store = Store(tmp_path / "landiff.db")
    worker = make_worker(store, tmp_path)
    job_id = store.add_job({"prompt": "x"}, "tiny", "test").id

    assert store.get(job_id).status == "queued"  # the old cancel reads "queued"...
    claimed = [worker.claim().id]  # ...the worker claims the job...
    store.update(job_id, status="cancelled")  # ...and the old cancel writes over the claim
    assert exclusivity_problems(store, claimed, [job_id]) != []

    again = store.add_job({"prompt": "y"}, "tiny", "test").id
    claimed = [worker.claim().id]
    assert worker.cancel(again) == "cancelling"  # the new cancel sees the claim and stops the job instead
    assert exclusivity_problems(store, claimed, []) == []


def test_the_queue_runs_oldest_first_skips_a_cancelled_job_and_a_requeued_one_keeps_its_place(tmp_path):
    """claim_next hands out queued jobs in submission order (by created_at), passing over one cancelled
    while queued; a job re-queued after its worker was lost goes back ahead of those submitted after it."""
    store = Store(tmp_path / "landiff.db")
    jobs = [store.add_job({"prompt": f"job {n}"}, "tiny", "test") for n in range(5)]
    ids = [job.id for job in jobs]
    # the order rests on distinct creation times; a tie would leave it to SQLite
    assert len({job.created_at for job in jobs}) == len(jobs)

    def claim(count: int) -> list[int]:
        return [ids.index(store.claim_next().id) for _ in range(count)]  # as submission numbers

    assert store.cancel_queued(ids[1])
    assert claim(2) == [0, 2]
    assert store.requeue(ids[2])
    assert claim(3) == [2, 3, 4]
    assert store.claim_next() is None


class RecordingStore(Store):
    """A store that notes the thread of every call made to it."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.threads: list[tuple[str, int]] = []
        for name in (
            "add_job",
            "get",
            "update",
            "list_jobs",
            "queued_ids",
            "delete",
            "presets",
            "save_preset",
            "delete_preset",
            "cancel_queued",
            "claim_next",
        ):
            setattr(self, name, self.recorded(name, getattr(self, name)))

    def recorded(self, name, method):
        def call(*args, **kwargs):
            self.threads.append((name, threading.get_ident()))
            return method(*args, **kwargs)

        return call


def test_every_handler_leaves_the_event_loop_for_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("LANDIFF_DATA_DIR", str(tmp_path / "data"))
    store = RecordingStore(tmp_path / "landiff.db")
    worker = make_worker(store, tmp_path)
    requests = [
        {"type": "hello", "client": "test"},
        {"type": "submit", "params": {"prompt": "a snail", "steps": 2}},
        {"type": "submit", "params": {"prompt": "a second snail", "steps": 2}},
        {"type": "list_jobs"},
        {"type": "status"},
        {"type": "subscribe", "since": 0},
        {"type": "list_presets"},
        {"type": "save_preset", "name": "mine", "params": {"steps": 3}},
        {"type": "delete_preset", "name": "mine"},
        {"type": "log_tail", "lines": 5},
    ]

    async def scenario():
        loop_thread = threading.get_ident()
        hub = EventHub(asyncio.get_running_loop())
        weights = WeightsOperations("tiny", tmp_path / "weights", hub.publish)
        pool = WorkerPool(store, [worker])
        service = EngineService(
            "tiny", store, hub, pool, weights, lambda: None, tmp_path / "out", tmp_path / "log"
        )
        results = []
        for number, fields in enumerate(requests):
            results.append(await service.handle(parse_request(json.dumps({"v": 1, "id": number, **fields}))))
        first, second = results[1].job_id, results[2].job_id
        cancel = parse_request(json.dumps({"v": 1, "id": 99, "type": "cancel", "job_id": first}))
        assert (await service.handle(cancel)).status == "cancelled"
        delete = parse_request(json.dumps({"v": 1, "id": 100, "type": "delete_job", "job_id": first}))
        await service.handle(delete)
        with pytest.raises(RequestFailed, match="no job"):
            await service.handle(
                parse_request(json.dumps({"v": 1, "id": 101, "type": "get_job", "job_id": first}))
            )
        service.close()
        return loop_thread, hub, results, second

    loop_thread, hub, results, second = asyncio.run(scenario())
    called = {name for name, _ in store.threads}
    assert {"add_job", "list_jobs", "queued_ids", "presets", "cancel_queued", "delete", "get"} <= called
    assert [name for name, thread in store.threads if thread == loop_thread] == []
    kinds = [message["event"] for message in hub.log]
    assert kinds == ["job_queued", "job_queued", "job_cancelled", "job_deleted"]
    assert [job.id for job in results[5].active] == [results[1].job_id, second]


def connect_and_send(path: Path, *lines: bytes):
    async def exchange():
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"".join(lines))
        await writer.drain()
        return reader, writer

    return exchange()


class SlowSubscribeService:
    """A service whose subscribe publishes an event while it waits on something (as the store read)."""

    def __init__(self, hub: EventHub):
        self.hub = hub

    async def handle(self, request):
        if request.type == "status":
            raise ZeroDivisionError("a bug in a handler")
        seq = self.hub.seq
        self.hub.publish(JobQueuedEvent(job_id="during", prompt="a snail"))
        await asyncio.sleep(0.01)
        return SubscribeReply(seq=seq, instance="test", missed=[], gap=False, active=[])


def test_a_subscriber_gets_its_snapshot_before_the_events_after_it_and_a_bug_fails_one_request(tmp_path):
    async def scenario() -> list[dict]:
        hub = EventHub(asyncio.get_running_loop())
        transport = Transport(SlowSubscribeService(hub), hub)
        path = tmp_path / "s.sock"
        server = await transport.listen(path)
        async with server:
            reader, writer = await connect_and_send(
                path,
                b'{"v": 1, "id": 1, "type": "status"}\n',
                b'{"v": 1, "id": 2, "type": "subscribe"}\n',
            )
            lines = [json.loads(await asyncio.wait_for(reader.readline(), 10)) for _ in range(3)]
            writer.close()
        return lines

    failed, snapshot, event = asyncio.run(scenario())
    assert failed["ok"] is False and failed["error"]["code"] == "internal"
    assert "ZeroDivisionError" in failed["error"]["message"]
    assert snapshot["id"] == 2 and snapshot["result"]["seq"] == 0
    assert event["event"] == "job_queued" and event["seq"] == 1  # after the snapshot it follows


def test_events_from_a_thread_keep_that_threads_order():
    async def scenario() -> list[int]:
        hub = EventHub(asyncio.get_running_loop())

        def publish_many():
            for number in range(500):
                hub.publish(JobQueuedEvent(job_id=str(number), prompt="a snail"))

        await asyncio.to_thread(publish_many)
        await asyncio.sleep(0)  # the scheduled publishes run
        return [int(message["job_id"]) for message in hub.log]

    assert asyncio.run(scenario()) == list(range(500))


def test_a_reply_of_the_wrong_shape_is_an_internal_error_not_a_broken_client(tmp_path):
    """The transport checks that each handler's result is its request type's reply model before it goes
    out (the model checked the fields as it was made)."""

    class WrongShapes:
        async def handle(self, request):
            return LogTailReply(path="engine.log", lines=[])

    async def scenario() -> dict:
        hub = EventHub(asyncio.get_running_loop())
        path = tmp_path / "w.sock"
        server = await Transport(WrongShapes(), hub).listen(path)
        async with server:
            reader, writer = await connect_and_send(path, b'{"v": 1, "id": 7, "type": "subscribe"}\n')
            answer = json.loads(await asyncio.wait_for(reader.readline(), 10))
            writer.close()
        return answer

    answer = asyncio.run(scenario())
    assert answer["id"] == 7 and answer["ok"] is False and answer["error"]["code"] == "internal"
    assert "the reply to subscribe must be a SubscribeReply, not LogTailReply" in answer["error"]["message"]
