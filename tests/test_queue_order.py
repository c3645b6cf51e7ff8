"""The queue's own order and its pause (engine/daemon/store.py): what workers and the LLM lane take next."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from engine.daemon.store import Store
from engine.daemon.token_lane import TokenLane
from engine.protocol import JobParams, MoveJob, parse_request

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "landiff.db")


def queue_of(store: Store, count: int) -> list[str]:
    return [store.add_job(JobParams(prompt=f"job {n}").model_dump(), "tiny", "test").id for n in range(count)]


def claims(store: Store) -> list[str]:
    taken = []
    while (row := store.claim_next("cpu")) is not None:
        taken.append(row.id)
    return taken


def test_workers_take_jobs_in_the_order_they_were_moved_to(store):
    a, b, c, d = queue_of(store, 4)
    assert store.move_queued(d, "top")
    assert store.queued_ids() == [d, a, b, c]
    assert store.move_queued(a, "down") and store.move_queued(c, "up")
    assert store.queued_ids() == [d, b, c, a]
    assert store.move_queued(d, "bottom") and store.move_queued(c, 0)
    assert store.queued_ids() == [c, b, a, d]
    assert store.move_queued(b, 99) and store.move_queued(c, "up")  # past either end: stays there
    assert store.queued_ids() == [c, a, d, b]
    assert [row.id for row in store.list_jobs(status="queued", sort="queue")[0]] == [c, a, d, b]
    assert claims(store) == [c, a, d, b]


def test_a_new_job_joins_at_the_end_and_a_requeued_one_keeps_its_place(store):
    a, b = queue_of(store, 2)
    store.move_queued(b, "top")
    running = store.claim_next("cpu")
    assert running is not None and running.id == b
    (c,) = queue_of(store, 1)
    assert store.requeue(b)
    assert store.queued_ids() == [b, a, c]


def test_only_a_queued_job_moves(store):
    a, b = queue_of(store, 2)
    assert store.claim_next("cpu").id == a
    assert not store.move_queued(a, "bottom")
    assert not store.move_queued("0123456789ab", "top")
    assert store.queued_ids() == [b]


def test_a_paused_queue_starts_nothing_until_resumed_even_after_a_restart(store, tmp_path):
    a, b = queue_of(store, 2)
    store.pause_queue(True)
    assert store.claim_next("cpu") is None and store.queue_paused()
    again = Store(tmp_path / "landiff.db")  # the engine restarted: still paused
    assert again.queue_paused() and again.claim_next("cpu") is None
    again.pause_queue(False)
    assert not store.queue_paused()
    assert claims(store) == [a, b]


def test_the_lane_makes_no_tokens_ahead_while_the_queue_is_paused(store, tmp_path):
    def no_pipeline():
        raise AssertionError("next_job loads nothing")

    lane = TokenLane(store, no_pipeline, "cpu", tmp_path, idle_release_s=60.0, ahead=2)
    a, b = queue_of(store, 2)
    store.move_queued(b, "top")
    assert lane.next_job().id == b  # ahead, in the queue's order
    store.pause_queue(True)
    assert lane.next_job() is None


def test_a_move_and_a_claim_never_lose_or_double_a_job(store):
    ids = queue_of(store, 30)
    taken: list[str] = []

    def worker() -> None:
        taken.extend(claims(store))

    thread = threading.Thread(target=worker)
    thread.start()
    for job_id in reversed(ids):
        store.move_queued(job_id, "top")
    thread.join(timeout=30)
    taken += claims(store)
    assert sorted(taken) == sorted(ids)


def test_a_move_by_an_unknown_word_or_a_negative_place_is_refused_at_the_wire():
    for to in ("sideways", -1):
        with pytest.raises(Exception, match="to"):
            parse_request(json.dumps({"v": 1, "id": 1, "type": "move_job", "job_id": "a", "to": to}))
    assert MoveJob(job_id="a", to="top").to == "top" and MoveJob(job_id="a", to=3).to == 3


def test_a_version_4_database_keeps_its_queue_in_the_order_jobs_came(tmp_path):
    path = tmp_path / "v4.db"
    first = Store(path)
    a, b, c = queue_of(first, 3)
    with sqlite3.connect(path) as db:  # as schema 4 left it: no queue rank, no engine state
        db.execute("DROP INDEX ix_jobs_queue_rank")
        db.execute("ALTER TABLE jobs DROP COLUMN queue_rank")
        db.execute("DROP TABLE engine_state")
        db.execute("PRAGMA user_version = 4")
    store = Store(Path(path))
    assert store.queued_ids() == [a, b, c] and not store.queue_paused()
    store.move_queued(c, "top")
    assert claims(store) == [c, a, b]


def test_the_cli_pauses_reorders_and_resumes_the_queue_which_stays_paused_across_a_restart(tmp_path, home):
    from .harness import PROMPT, RunningEngine

    engine = RunningEngine(tmp_path / "engine", home).start()
    try:
        paused = engine.cli("queue", "pause", "--json")
        assert paused.returncode == 0 and json.loads(paused.stdout) == {"paused": True, "queue": []}
        with engine.client() as client:
            a, b, c = (
                client.request("submit", params={"prompt": PROMPT, "steps": 2})["job_id"] for _ in "abc"
            )
        moved = engine.cli("move", c[:6], "--to", "1")
        assert moved.returncode == 0, moved.stderr
        assert (
            moved.stdout.splitlines()[0]
            == "queue paused: no job starts until `landiff-engine queue resume`; 3 job(s) waiting"
        )
        assert [line.split()[1] for line in moved.stdout.splitlines()[1:]] == [c, a, b]
        shown = engine.cli("show", a)
        assert "waiting: the queue is paused: `landiff-engine queue resume`" in shown.stdout, shown.stdout
        refused = engine.cli("move", a, "--to", "0")
        assert refused.returncode == 2 and "give a place from 1 (next)" in refused.stderr
        engine.stop()
        read = engine.cli("queue", "--json")  # no engine: the history answers, and starts none
        assert read.returncode == 0 and json.loads(read.stdout) == {"paused": True, "queue": [c, a, b]}
        assert "no engine is running" in read.stderr and not engine.socket.exists()
        engine.start()  # still paused: nothing of the queue starts
        assert json.loads(engine.cli("queue", "--json").stdout) == {"paused": True, "queue": [c, a, b]}
        resumed = engine.cli("queue", "resume", "--json")
        assert resumed.returncode == 0 and json.loads(resumed.stdout)["paused"] is False
    finally:
        engine.stop()
