"""What an attack on the engine found (issue 11), each as a test: a client that never reads, several
engines on one data dir, descriptors running out, requests that used to drop the connection, a full
disk, a socket or dir of another user, a data dir the engine cannot use. Loopback and Unix sockets only;
every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from engine.cli.main import main
from engine.client import EngineClient, EngineUntrusted, RemoteError
from engine.daemon import disk
from engine.daemon.events import EventHub
from engine.daemon.pool import WorkerPool
from engine.daemon.service import REPLY_BUDGET, EngineService, RequestFailed, within_budget
from engine.daemon.store import SCHEMA_VERSION, Store
from engine.daemon.transport import Connection, Transport, read_lines
from engine.daemon.weights_ops import WeightsOperations
from engine.daemon.worker import JobWorker
from engine.paths import NotTrusted, check_owned
from engine.protocol import JobParams, JobQueuedEvent, LogTailReply, SubscribeReply, parse_request
from tests.harness import (
    ENGINE_LEAVES_S,
    ROOT,
    STOP_HINT,
    WAIT_S,
    RunningEngine,
    short_dir,
    until_job_ended,
    wait_until,
    wait_until_async,
)

IS_ROOT = os.getuid() == 0
NOBODY = 65534
HALF_LINE_S = 0.2  # the half-line timeout the transport tests give their reader


# a client that does not read


class BigReplies:
    """Answers log_tail with half a MiB, subscribe with an empty snapshot."""

    def __init__(self, hub: EventHub):
        self.hub = hub

    async def handle(self, request):
        if request.type == "subscribe":
            return SubscribeReply(seq=self.hub.seq, instance="t", missed=[], gap=False, active=[])
        return LogTailReply(path="engine.log", lines=["x" * 100_000] * 5)


async def unread_connection(path: Path, *lines: bytes):
    """A connection with a small receive buffer whose replies the test does not read."""
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(str(path))
    reader, writer = await asyncio.open_unix_connection(sock=raw, limit=2**24)
    writer.write(b"".join(lines))
    await writer.drain()
    return reader, writer


def test_a_client_that_never_reads_its_replies_holds_one_and_others_are_served(tmp_path, monkeypatch):
    """Was: 185 unread replies kept growing the engine (465 MB -> 4.7 GB). Now the engine makes a client's
    next reply only once it has read the last: one 500 kB reply is all it holds (tests/test_slow_clients.py
    has the many-clients case)."""
    peaks: list[int] = []
    send = Connection.send

    def measured(self, line: bytes) -> None:
        send(self, line)
        peaks.append(self.unsent())

    monkeypatch.setattr(Connection, "send", measured)

    async def scenario():
        hub = EventHub(asyncio.get_running_loop())
        transport = Transport(BigReplies(hub), hub, max_queued_bytes=2 * 2**20)
        path = tmp_path / "e.sock"
        server = await transport.listen(path)
        async with server:
            unread = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            unread.connect(str(path))
            unread.sendall(b"".join(b'{"v":1,"id":%d,"type":"log_tail"}\n' % n for n in range(60)))
            await wait_until_async(lambda: peaks, "the first reply")
            for _ in range(20):  # the engine has every chance to make more
                await asyncio.sleep(0.01)
            made = len(peaks)
            # the engine still serves others
            reader, writer = await asyncio.open_unix_connection(str(path), limit=2**24)
            writer.write(b'{"v":1,"id":1,"type":"log_tail"}\n')
            answer = json.loads(await asyncio.wait_for(reader.readline(), WAIT_S))
            writer.close()
            unread.close()
        return made, max(peaks), answer

    made, peak, answer = asyncio.run(scenario())
    assert made == 1 and peak <= 2**20
    assert answer["ok"] is True


def test_a_subscriber_that_never_reads_is_dropped_and_leaves_the_hub(tmp_path):
    """Was: a subscriber that never reads grew the engine by every event (45 MB over 1,800)."""

    async def scenario():
        hub = EventHub(asyncio.get_running_loop())
        transport = Transport(BigReplies(hub), hub, max_queued_bytes=2**20)
        path = tmp_path / "e.sock"
        server = await transport.listen(path)
        async with server:
            reader, writer = await unread_connection(path, b'{"v":1,"id":1,"type":"subscribe"}\n')
            snapshot = json.loads(await asyncio.wait_for(reader.readline(), WAIT_S))
            await wait_until_async(lambda: hub.subscribers, "the subscription")
            for number in range(3000):  # each event about 2 kB: 6 MB in all
                hub.publish(JobQueuedEvent(job_id=f"{number:012x}", prompt="a snail " * 250))
                if number % 100 == 0:
                    await asyncio.sleep(0)
            await wait_until_async(
                lambda: not transport.open and not hub.subscribers, "the subscriber to be dropped"
            )
            writer.close()
        return snapshot

    snapshot = asyncio.run(scenario())
    assert snapshot["ok"] is True  # it resumes with `subscribe since` its last seq, as any reconnect


def test_replies_are_paged_to_a_budget_and_a_replay_too_long_becomes_a_gap(tmp_path, monkeypatch):
    """Was: 105 queued jobs with long prompts made a 1.3 MB snapshot and a page of 500 such jobs ~25 MB."""
    monkeypatch.setattr("engine.daemon.service.REPLY_BUDGET", 64 * 1024)
    store = Store(tmp_path / "landiff.db")
    prompt = "一只蜗牛在绿色的苔藓上爬行。" * 70  # 980 characters, 6 bytes each in JSON
    for _ in range(40):
        store.add_job(JobParams(prompt=prompt).model_dump(), "tiny", "test")

    async def scenario():
        hub = EventHub(asyncio.get_running_loop())
        for number in range(100):
            hub.publish(JobQueuedEvent(job_id=f"{number:012x}", prompt=prompt))
        worker = JobWorker(store, lambda: None, hub.publish, tmp_path / "out", 600.0)
        weights = WeightsOperations("tiny", tmp_path / "weights", hub.publish)
        pool = WorkerPool(store, [worker])
        service = EngineService("tiny", store, hub, pool, weights, lambda: None, tmp_path, tmp_path / "l")
        ask = lambda **fields: service.handle(parse_request(json.dumps({"v": 1, "id": 1, **fields})))  # noqa: E731
        page = await ask(type="list_jobs", limit=500)
        following = await ask(type="list_jobs", limit=500, offset=len(page.jobs))
        snapshot = await ask(type="subscribe", since=0)
        service.close()
        return page, following, snapshot

    page, following, snapshot = asyncio.run(scenario())
    size = len(json.dumps(page.model_dump(mode="json")))
    assert page.total == 40 and 1 <= len(page.jobs) < 40 and size < 2 * 64 * 1024
    ids = {job.id for job in page.jobs} | {job.id for job in following.jobs}
    assert len(ids) == len(page.jobs) + len(following.jobs)  # the next page goes on, no overlap
    assert snapshot.gap is True and snapshot.missed == []  # the client reloads its state
    assert 1 <= len(snapshot.active) < 40
    assert within_budget([{"a": "x" * (REPLY_BUDGET * 2)}]) != []  # one item always goes


# several engines on one data dir


def serve_command() -> list[str]:
    return [sys.executable, "-m", "engine.cli", "serve", "--model", "tiny"]


def test_engines_started_together_on_one_data_dir_leave_exactly_one_serving(tmp_path, weights):
    """Was: two engines both ran jobs, or one died on "table jobs already exists"."""
    engine = RunningEngine(tmp_path, weights)
    errors = [tmp_path / f"stderr-{n}" for n in range(3)]
    processes = [
        subprocess.Popen(serve_command(), env=engine.env, stdout=subprocess.PIPE, stderr=open(err, "wb"))  # noqa: SIM115
        for err in errors
    ]
    try:
        wait_until(lambda: sum(process.poll() is not None for process in processes) >= 2, "two to refuse")
        winner = next(process for process in processes if process.poll() is None)
        assert winner.stdout.readline().startswith(b"ready")
        for process, err in zip(processes, errors, strict=True):
            text = err.read_text()
            assert "already exists" not in text and "Traceback" not in text, text
            if process is not winner:
                assert process.returncode == 2, text
                assert text.splitlines() == [
                    f"landiff-engine serve: another engine (pid {winner.pid}) already serves the data dir "
                    f"{engine.base / 'data'}; {STOP_HINT}"
                ]
        # without its socket the data dir is still held: no second engine marks its jobs interrupted
        engine.socket.unlink()
        late = subprocess.run(serve_command(), env=engine.env, capture_output=True, text=True, timeout=WAIT_S)
        assert late.returncode == 2 and f"(pid {winner.pid})" in late.stderr
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=ENGINE_LEAVES_S)


def test_stores_opened_together_migrate_once(tmp_path):
    """Was: migrations were not one transaction (DDL commits at once in sqlite3), so a second process saw
    half a schema; the built-in presets raced too."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for trial in range(4):
        path = tmp_path / f"{trial}.db"
        processes = [context.Process(target=Store, args=(path,)) for _ in range(4)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(WAIT_S)
        assert [process.exitcode for process in processes] == [0, 0, 0, 0]
        with sqlite3.connect(path) as connection:
            assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


# descriptors


def answers_status(path: Path) -> int | None:
    """The pid in the engine's status reply, or None while it refuses the connection."""
    try:
        with EngineClient(path, timeout=WAIT_S) as client:
            return client.request("status")["pid"]
    except RemoteError:
        return None


def lowered_nofile(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def connect_patiently(path: Path) -> socket.socket:
    """A connection, retried while the listen backlog is full (EAGAIN on a Unix socket)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(WAIT_S)
        try:
            connection.connect(str(path))
            return connection
        except BlockingIOError:
            connection.close()
            assert time.monotonic() < deadline, "the listen backlog stayed full"
            time.sleep(0.01)


def test_descriptors_running_out_refuse_clients_not_the_worker(tmp_path, weights):
    """Was: 1,100 held connections under 1,024 descriptors failed a running job with "Too many open
    files" and wrote 7.4 MB of accept errors. Here: a limit of 256, 400 connections held open."""
    engine = RunningEngine(tmp_path, weights)
    engine.env["LANDIFF_LOG_STDERR"] = "1"
    process = subprocess.Popen(
        serve_command(),
        env=engine.env,
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "stderr", "wb"),  # noqa: SIM115 (closed with the process)
        preexec_fn=lowered_nofile(256),
    )
    held: list[socket.socket] = []
    try:
        assert process.stdout.readline().startswith(b"ready")
        with EngineClient(engine.socket, timeout=WAIT_S) as client:
            client.request("hello", client="tests")
            job = client.request("submit", params={"prompt": "a snail", "steps": 2})["job_id"]
            refused = 0
            for _ in range(400):
                held.append(connect_patiently(engine.socket))
            for connection in held:
                with contextlib.suppress(OSError):  # a refused one is closed already, its refusal unread
                    connection.sendall(b'{"v":1,"id":1,"type":"status"}\n')
            for connection in held:
                answer = json.loads(connection.makefile("rb").readline() or b"{}")
                refused += answer.get("error", {}).get("code") == "too_many_connections"
            status = until_job_ended(client, job)
        print(f"held {400 - refused} of 400 connections under a 256-descriptor limit, refused {refused}")
        assert status == "finished"  # the worker had its descriptors
        assert 0 < 400 - refused < 256 and refused > 144
        for connection in held:
            connection.close()
        held.clear()
        # room again once they left
        wait_until(lambda: answers_status(engine.socket) == process.pid, "a connection to be served again")
    finally:
        for connection in held:
            connection.close()
        process.terminate()
        process.wait(timeout=ENGINE_LEAVES_S)
    log = (tmp_path / "stderr").read_bytes()
    assert len(log) < 64 * 1024 and log.count(b"refused") <= 2  # logged once, not per refusal
    assert b"Too many open files" not in log


def test_a_client_past_the_cap_hears_why_in_one_line(tmp_path):
    async def scenario():
        hub = EventHub(asyncio.get_running_loop())
        transport = Transport(BigReplies(hub), hub, max_connections=1)
        path = tmp_path / "e.sock"
        async with await transport.listen(path):
            first = await asyncio.open_unix_connection(str(path), limit=2**24)
            await wait_until_async(lambda: transport.open, "the first connection")

            def second() -> RemoteError:
                with EngineClient(path, timeout=WAIT_S) as client, pytest.raises(RemoteError) as refused:
                    client.request("hello", client="tests")
                return refused.value

            refusal = await asyncio.to_thread(second)
            first[1].close()
        return refusal

    refusal = asyncio.run(scenario())
    assert refusal.code == "too_many_connections"
    assert "MAX_CONNECTIONS=1" in refusal.message and "close some clients" in refusal.message


def test_a_line_left_half_sent_is_timed_out():
    async def scenario():
        reader = asyncio.StreamReader()
        reader.feed_data(b'{"v":1,"id":1,"type":"status"}\n{"v":1,')
        lines = read_lines(reader, half_line_timeout=HALF_LINE_S)
        first = await anext(lines)
        with pytest.raises(Exception) as raised:
            # a reader that never gives up fails here, not at the test's time limit
            await asyncio.wait_for(anext(lines), 100 * HALF_LINE_S)
        return first, type(raised.value).__name__

    first, error = asyncio.run(scenario())
    assert first.startswith(b'{"v":1,"id":1') and error == "HalfLineTimeout"


# requests that used to drop the connection


def test_deep_nesting_and_huge_offsets_get_an_error_reply_and_the_connection_stays(tmp_path):
    async def scenario():
        hub = EventHub(asyncio.get_running_loop())
        path = tmp_path / "e.sock"
        server = await Transport(BigReplies(hub), hub).listen(path)
        async with server:
            reader, writer = await asyncio.open_unix_connection(str(path), limit=2**24)
            deep = b"[" * 100_000 + b"]" * 100_000
            writer.write(deep + b"\n")
            writer.write(b'{"v":1,"id":2,"type":"list_jobs","offset":%d}\n' % 2**63)
            writer.write(b'{"v":1,"id":3,"type":"log_tail","lines":1}\n')
            answers = [json.loads(await asyncio.wait_for(reader.readline(), WAIT_S)) for _ in range(3)]
            writer.close()
        return answers

    deep, offset, after = asyncio.run(scenario())
    assert deep["ok"] is False and deep["error"]["code"] == "too_deep"
    assert offset["id"] == 2 and offset["error"]["code"] == "invalid"
    assert "offset" in offset["error"]["message"]
    assert after["id"] == 3 and after["ok"] is True


def test_a_submit_on_a_full_disk_is_refused_as_disk_full(tmp_path, weights):
    store = Store(tmp_path / "landiff.db")

    def full(*args, **kwargs):
        raise OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))

    store.add_job = full

    async def scenario():
        hub = EventHub(asyncio.get_running_loop())
        worker = JobWorker(store, lambda: None, hub.publish, tmp_path / "out", 600.0)
        service = EngineService(
            "tiny", store, hub, WorkerPool(store, [worker]), WeightsOperations("tiny", weights, hub.publish),
            lambda: None,
            tmp_path, tmp_path / "l",
        )  # fmt: skip
        request = parse_request(json.dumps({"v": 1, "id": 1, "type": "submit", "params": {"prompt": "a"}}))
        try:
            await service.handle(request)
        finally:
            service.close()

    with pytest.raises(RequestFailed) as refused:
        asyncio.run(scenario())
    assert refused.value.code == "disk_full" and str(tmp_path) in str(refused.value)


# a full disk while a job runs


class WritesThenFails:
    """A pipeline that writes a chunk preview, then fails as a full disk makes it fail."""

    def __init__(self, error: Exception):
        self.error = error

    def run(self, job, on_progress, should_stop, on_chunk, checkpoints=None):
        job.out.parent.mkdir(parents=True, exist_ok=True)
        (job.out.parent / "chunk-000.png").write_bytes(b"\x89PNG preview")
        (job.out.parent / ".video.mp4.partial").write_bytes(b"half a video")
        raise self.error


def run_one_job(tmp_path: Path, make_pipeline) -> tuple[Store, str, Path]:
    store = Store(tmp_path / "landiff.db")
    row = store.add_job(JobParams(prompt="a snail").model_dump(), "tiny", "test")
    worker = JobWorker(store, make_pipeline, lambda event: None, tmp_path / "outputs", 600.0)
    claimed = worker.claim()
    worker.run_job(claimed.id, JobParams(**json.loads(claimed.params)), claimed.model)
    return store, row.id, tmp_path / "outputs" / row.id


def test_enospc_fails_the_job_as_no_space_and_removes_every_file_it_wrote(tmp_path):
    full = OSError(errno.ENOSPC, "No space left on device")
    store, job_id, folder = run_one_job(tmp_path, lambda: WritesThenFails(full))
    job = store.get(job_id)
    assert job.status == "failed" and job.error.startswith("no space left on device in ")
    assert not folder.exists()  # the chunk preview and the partial video went with it


def test_a_garbled_error_on_a_full_disk_still_says_no_space(tmp_path, monkeypatch):
    """Was: "malformed MP4 box b'mdat'" when the disk filled under the video writer."""
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 4096)
    monkeypatch.setattr(disk, "check_room", lambda folder, needed: None)
    monkeypatch.setattr("engine.daemon.worker.check_room", lambda folder, needed: None)
    garbled = RuntimeError("malformed MP4 box b'mdat'")
    store, job_id, folder = run_one_job(tmp_path, lambda: WritesThenFails(garbled))
    assert store.get(job_id).error.startswith("no space left on device in ")


def test_a_job_whose_outputs_would_not_fit_fails_before_any_model_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("LANDIFF_MIN_FREE_MB", str(2**40))  # a reserve no disk has

    def no_models():
        raise AssertionError("the models must not load for a job that cannot fit")

    store, job_id, folder = run_one_job(tmp_path, no_models)
    job = store.get(job_id)
    assert job.status == "failed" and job.error.startswith(f"not enough free space in {tmp_path / 'outputs'}")
    assert "LANDIFF_MIN_FREE_MB" in job.error and not folder.exists()


# another user's socket or dir


def test_a_runtime_dir_that_is_a_symlink_or_a_file_is_not_trusted(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(NotTrusted, match="is not a directory"):
        check_owned(tmp_path / "link", "runtime dir")
    with pytest.raises(EngineUntrusted, match="not a directory"):
        EngineClient(tmp_path / "link" / "engine.sock", timeout=5)


@pytest.mark.skipif(not IS_ROOT, reason="making a dir or a process of another user needs root")
def test_a_client_refuses_another_users_dir_and_another_users_socket(tmp_path):
    theirs = short_dir()
    theirs.mkdir(exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(theirs / "engine.sock"))
        listener.listen()
        os.chown(theirs, NOBODY, NOBODY)
        with pytest.raises(EngineUntrusted, match=f"belongs to uid {NOBODY}"):
            EngineClient(theirs / "engine.sock", timeout=5)
    # ours, but another user's process listens in it (was: it got the prompt); under /tmp, which that
    # user can reach (pytest's own tmp dirs are 0700)
    shared = Path(tempfile.mkdtemp(prefix="landiff-shared-"))
    shared.chmod(0o777)
    ready, heard = os.pipe()
    child = os.fork()
    if child == 0:  # another user's process listening in the shared dir
        try:
            os.setuid(NOBODY)
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(str(shared / "engine.sock"))
            server.listen()
            os.write(heard, b"L")
            connection, _ = server.accept()
            connection.settimeout(2)
            os.write(heard, connection.recv(65536) or b"")
        finally:
            os._exit(0)
    os.close(heard)  # the child's copy alone: a child that fails ends the reads below
    try:
        assert os.read(ready, 1) == b"L"
        with pytest.raises(EngineUntrusted, match=f"runs as uid {NOBODY}, not as you"):
            EngineClient(shared / "engine.sock", timeout=5)
        os.waitpid(child, 0)
        assert os.read(ready, 65536) == b""  # nothing reached it
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(child, 9)
            os.waitpid(child, 0)
        os.close(ready)


# a data dir or runtime dir the engine cannot use


def refused_start(env: dict[str, str]) -> subprocess.CompletedProcess:
    full_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LANDIFF_LOG_STDERR": "1",
        **env,
    }
    return subprocess.run(serve_command(), env=full_env, capture_output=True, text=True, timeout=WAIT_S)


def test_a_data_dir_or_database_the_engine_cannot_use_is_one_line_and_status_2(tmp_path):
    (tmp_path / "a-file").write_text("not a dir")
    run = str(short_dir())
    not_a_dir = refused_start({"LANDIFF_DATA_DIR": str(tmp_path / "a-file"), "LANDIFF_RUNTIME_DIR": run})
    assert not_a_dir.returncode == 2 and "Traceback" not in not_a_dir.stderr
    assert f"the data dir {tmp_path / 'a-file'} is not a directory" in not_a_dir.stderr
    data = tmp_path / "data"
    (data / "landiff.db").mkdir(parents=True)  # a database that does not open
    broken = refused_start({"LANDIFF_DATA_DIR": str(data), "LANDIFF_RUNTIME_DIR": run})
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    assert f"cannot use the job database {data / 'landiff.db'}" in broken.stderr


def test_a_runtime_dir_too_long_for_a_socket_is_one_line_and_status_2(tmp_path):
    """Was: the engine died on bind with "AF_UNIX path too long" and a traceback."""
    deep = tmp_path / ("a-runtime-dir-named-at-length-" * 4)
    refused = refused_start({"LANDIFF_DATA_DIR": str(tmp_path / "data"), "LANDIFF_RUNTIME_DIR": str(deep)})
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    said = (
        f"the engine's socket {deep / 'engine.sock'} is {len(str(deep / 'engine.sock'))} bytes long, over the"
    )
    assert said in refused.stderr and "set LANDIFF_RUNTIME_DIR to a shorter directory" in refused.stderr
    assert not deep.exists()  # refused before anything was made


def test_a_read_only_data_dir_is_one_line_and_status_2_and_stays_read_only(tmp_path, monkeypatch, capsys):
    """Refused by its mode bits (root writes through them), by `serve` and by a client's autostart, and
    left as its owner set it (was: `submit` and the TUI's autostart chmod-ed it to 0700)."""
    data = tmp_path / "data"
    data.mkdir(mode=0o500)
    refused = refused_start({"LANDIFF_DATA_DIR": str(data), "LANDIFF_RUNTIME_DIR": str(short_dir())})
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"the data dir {data} is not writable (mode 0500)" in refused.stderr
    monkeypatch.setenv("LANDIFF_DATA_DIR", str(data))
    monkeypatch.setenv("LANDIFF_RUNTIME_DIR", str(short_dir()))
    assert main(["submit", "a heron", "--model", "tiny"]) == 2
    said = capsys.readouterr().err
    assert f"cannot start an engine: the data dir {data} is not writable" in said and "Traceback" not in said
    assert data.stat().st_mode & 0o777 == 0o500


@pytest.mark.skipif(not IS_ROOT, reason="a dir of another user needs root to make")
def test_a_runtime_dir_of_another_user_is_one_line_and_status_2(tmp_path):
    theirs = short_dir()
    theirs.mkdir(exist_ok=True)
    os.chown(theirs, NOBODY, NOBODY)
    refused = refused_start({"LANDIFF_DATA_DIR": str(tmp_path / "data"), "LANDIFF_RUNTIME_DIR": str(theirs)})
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"the runtime dir {theirs} belongs to uid {NOBODY}" in refused.stderr
    assert theirs.stat().st_mode & 0o777 != 0o700 or theirs.stat().st_uid == NOBODY  # left as it was


def test_an_edited_job_id_never_names_a_path(tmp_path):
    """A queued row whose id was edited to climb out of the outputs folder (write access to the database)
    is refused as the store reads it: it fails, no worker runs it, and the one function that names a
    job's folder refuses such an id wherever it comes from (was: the worker wrote the video outside)."""
    from engine.daemon.store import FOREIGN_ID, ForeignJobId, job_folder

    store = Store(tmp_path / "landiff.db")
    edited = store.add_job({"prompt": "a snail"}, "tiny", "test").id
    kept = store.add_job({"prompt": "a heron"}, "tiny", "test").id
    climbing = "../../../../tmp/x"
    with sqlite3.connect(tmp_path / "landiff.db") as connection:
        connection.execute("UPDATE jobs SET id = ? WHERE id = ?", (climbing, edited))
    claimed = store.claim_next("cpu")
    assert claimed is not None and claimed.id == kept  # the queue goes on past it
    refused = store.get(climbing)
    assert refused.status == "failed" and refused.error == FOREIGN_ID
    assert store.claim_next("cpu") is None
    outputs = tmp_path / "outputs"
    assert job_folder(outputs, kept) == outputs / kept
    for bad in (climbing, "/etc", "ABCDEF123456", kept + "/.."):
        with pytest.raises(ForeignJobId):
            job_folder(outputs, bad)


def test_rendezvous_files_a_killed_engine_left_are_removed_at_start(tmp_path, weights):
    """A parallel group's rendezvous file outlives a kill -9 of its engine; the next engine on the runtime
    dir removes such files as it starts, and nothing else there."""
    from engine.paths import rendezvous_path

    engine = RunningEngine(tmp_path, weights)
    engine.runtime.mkdir(mode=0o700, exist_ok=True)
    stale = rendezvous_path(engine.runtime, 4242, "0123456789ab")
    stale.write_bytes(b"torch FileStore")
    other = engine.runtime / "notes.txt"
    other.write_text("not the engine's")
    engine.start()
    try:
        assert not stale.exists() and other.read_text() == "not the engine's"
    finally:
        engine.stop()
