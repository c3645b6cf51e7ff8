"""Several workers in one engine (`serve --gpus`): the device list, jobs running side by side, the queue's
order, cancel and kill -9 with two workers, and a lost worker's job going back to the queue once."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engine import protocol as p
from engine.cli.main import main
from engine.client import EngineClient
from engine.daemon.devices import BadGpus, parse_gpus, torch_device_name
from engine.daemon.pool import WorkerPool
from engine.daemon.store import Store
from engine.daemon.worker import JobWorker, WorkerLost
from engine.protocol import EVENT_ADAPTER, JobParams, StatusReply
from landiff_tui.app import LanDiffApp

from .harness import (
    ENGINE_LEAVES_S,
    WAIT_S,
    RunningEngine,
    mounted,
    submit,
    subscribed,
    until,
    until_ended,
    wait_until,
)
from .tui_double import ScriptedLink, job

LONG = 1000  # denoising steps: a job that runs until it is cancelled or killed


# the device list


def test_gpus_name_every_gpu_some_gpus_or_cpu_workers():
    two = lambda: 2  # noqa: E731  (a machine with two CUDA GPUs)
    assert parse_gpus(None, two) == ["auto"]
    assert parse_gpus("all", two) == ["cuda:0", "cuda:1"]
    assert parse_gpus("1", two) == ["cuda:1"]
    assert parse_gpus("1, 0", two) == ["cuda:1", "cuda:0"]
    assert parse_gpus("cpu:3", two) == ["cpu:0", "cpu:1", "cpu:2"]
    assert [torch_device_name(label) for label in ("auto", "cpu:1", "cuda:1")] == [None, "cpu", "cuda:1"]


@pytest.mark.parametrize(
    ("given", "count", "says"),
    [
        ("all", 0, "--gpus all: no CUDA GPU is visible here; use --gpus cpu:N or leave --gpus out"),
        ("0,1,3", 2, "--gpus 0,1,3: there is no GPU 3 (this machine shows 2 GPU(s), 0-1)"),
        ("0", 0, "--gpus 0: there is no GPU 0 (no CUDA GPU is visible here)"),
        ("0,0", 2, "--gpus 0,0: GPU 0 is named twice; name each GPU once"),
        ("cpu:0", 2, "--gpus cpu:0: give between 1 and 64 CPU workers (cpu:2, say)"),
        ("gpu1", 2, "--gpus 'gpu1' is not a device list: give all, GPU indices such as 0,1,3, or cpu:N"),
    ],
)
def test_a_gpus_value_that_cannot_be_served_is_refused_in_one_line(given, count, says):
    with pytest.raises(BadGpus) as refused:
        parse_gpus(given, lambda: count)
    assert str(refused.value) == says


def test_the_cuda_devices_are_counted_without_torch():
    code = "import sys; from engine.daemon.devices import cuda_device_count as count; "
    code += "print(count(), 'torch' in sys.modules)"
    counted = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, torch_loaded = counted.stdout.split()
    assert int(count) >= 0 and torch_loaded == "False"


def test_serve_refuses_a_bad_gpus_value_before_anything_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LANDIFF_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("LANDIFF_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr("engine.daemon.devices.cuda_device_count", lambda: 0)
    assert main(["serve", "--model", "tiny", "--gpus", "all"]) == 2
    assert capsys.readouterr().err == (
        "landiff-engine serve: --gpus all: no CUDA GPU is visible here; "
        "use --gpus cpu:N or leave --gpus out\n"
    )
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def test_several_local_workers_compile_nothing_unless_asked_and_asking_is_refused(
    tmp_path, monkeypatch, capsys
):
    from engine.daemon.config import RunOptions
    from engine.daemon.server import threads_run_options

    assert threads_run_options(2, RunOptions(memory="low")) == RunOptions(memory="low", compile=False)
    assert threads_run_options(1, RunOptions()) == RunOptions()  # one worker: CUDA's default
    assert threads_run_options(2, RunOptions(compile=False)) == RunOptions(compile=False)
    monkeypatch.setenv("LANDIFF_RUNTIME_DIR", str(tmp_path / "run"))
    assert main(["serve", "--model", "tiny", "--gpus", "cpu:2", "--compile"]) == 2
    assert "torch.compile is not thread-safe" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# a lost worker (a Ray actor, a rank process gone): its job goes back to the queue once


def test_a_job_goes_back_to_the_queue_once_then_is_interrupted(tmp_path):
    store = Store(tmp_path / "landiff.db")
    job_id = store.add_job(JobParams(prompt="a").model_dump(), "tiny", "test").id
    assert store.claim_next(worker="cuda:0").worker == "cuda:0"
    assert store.requeue(job_id) is True
    row = store.get(job_id)
    assert (row.status, row.requeues, row.started_at) == ("queued", 1, None)
    assert store.claim_next(worker="cuda:1").id == job_id
    assert store.requeue(job_id) is False  # once only: the caller marks it interrupted
    assert store.get(job_id).status == "running"
    store.update(job_id, status="finished")
    assert store.requeue(job_id) is False  # never a job that is not running


class LostUnderTheJob:
    """A remote pipeline whose worker dies mid-job, after writing a chunk preview."""

    def __init__(self, label: str, started: threading.Event):
        self.label, self.started = label, started

    def run(self, job, on_progress, should_stop, on_chunk, checkpoints=None):
        job.out.parent.mkdir(parents=True, exist_ok=True)
        (job.out.parent / "chunk-000.png").write_bytes(b"\x89PNG preview")
        self.started.set()
        raise WorkerLost(f"the Ray actor on {self.label} died")

    def loaded_models(self) -> list[str]:
        return ["stage1", "stage2"]


def test_a_lost_worker_requeues_its_job_once_then_the_job_is_interrupted(tmp_path):
    store = Store(tmp_path / "landiff.db")
    events: list[dict] = []
    publish = lambda event: events.append(event.model_dump())  # noqa: E731
    outputs = tmp_path / "outputs"
    first_lost = threading.Event()
    workers = [
        JobWorker(store, lambda: LostUnderTheJob("node-a", first_lost), publish, outputs, 600.0, "ray:a"),
    ]
    pool = WorkerPool(store, workers)
    job_id = store.add_job(JobParams(prompt="a snail").model_dump(), "tiny", "test").id
    pool.start()
    pool.notify()
    assert first_lost.wait(WAIT_S)
    wait_until(lambda: not pool.members(), "the lost worker to leave the pool", every=0.02)
    assert pool.members() == [] and pool.view() == []  # the lost worker left the pool
    row = store.get(job_id)
    assert (row.status, row.requeues, row.worker) == ("queued", 1, "ray:a")  # waiting for a worker
    assert not (outputs / job_id).exists()

    second_lost = threading.Event()
    pool.add(
        JobWorker(store, lambda: LostUnderTheJob("node-b", second_lost), publish, outputs, 600.0, "ray:b")
    )
    assert second_lost.wait(WAIT_S)
    pool.join(WAIT_S)
    wait_until(
        lambda: store.get(job_id).status != "queued" and not pool.members(),
        "the job to end and the second lost worker to leave",
        every=0.02,
    )
    row = store.get(job_id)
    assert (row.status, row.requeues, row.worker) == ("interrupted", 1, "ray:b")
    assert row.error == (
        "worker ray:b was lost while running it (the Ray actor on node-b died), "
        "after it had been re-queued once"
    )
    assert not (outputs / job_id).exists()
    kinds = [(event["event"], event.get("worker")) for event in events]
    assert kinds == [
        ("job_started", "ray:a"),
        ("job_requeued", "ray:a"),
        ("job_started", "ray:b"),
        ("job_interrupted", None),
    ]
    for seq, event in enumerate(events, 1):  # each is an event of the protocol
        EVENT_ADAPTER.validate_python({"v": 1, "seq": seq, **event})


# an engine with two CPU workers


class PoolEngine(RunningEngine):
    """An engine subprocess with `serve --gpus cpu:2`."""

    def __init__(self, base: Path, weights: Path):
        super().__init__(base, weights, serve_args=("--gpus", "cpu:2"))


@pytest.fixture(scope="module")
def engine(tmp_path_factory, weights):
    running = PoolEngine(tmp_path_factory.mktemp("pool-engine"), weights).start()
    with running.client() as client:  # both workers have loaded torch: jobs are claimed as they come
        wait_until(lambda: states(client) == ["idle", "idle"], "both workers to be idle")
    yield running
    running.stop()


def states(client: EngineClient) -> list[str]:
    return [worker["state"] for worker in client.request("status")["workers"]]


def until_denoising(client: EngineClient, job_ids: list[str]) -> dict[str, str]:
    """Wait for every job to be denoising; the worker each started on."""
    workers, denoising = {}, set()
    for event in client.events():
        if event.get("job_id") in job_ids:
            if event["event"] == "job_started":
                workers[event["job_id"]] = event["worker"]
            elif event["event"] == "job_progress" and event["stage"] == "denoise":
                denoising.add(event["job_id"])
                if denoising == set(job_ids):
                    return workers
    raise AssertionError("the events stopped")


def test_two_cpu_workers_run_jobs_side_by_side_and_claim_the_queue_oldest_first(engine):
    with subscribed(engine)[0] as client:
        ids = [submit(client, steps, f"#{number}") for number, steps in enumerate((10, 10, 2))]
        events = until_ended(client, ids)
        jobs = [client.request("get_job", job_id=job_id)["job"] for job_id in ids]
        status = StatusReply(**client.request("status"))
    assert [job["status"] for job in jobs] == ["finished"] * 3
    first, second = jobs[:2]  # claimed at once by the two idle workers
    assert {first["worker"], second["worker"]} == {"cpu:0", "cpu:1"}  # each row names its own worker
    assert max(first["started_at"], second["started_at"]) < min(first["finished_at"], second["finished_at"])
    assert sorted(jobs, key=lambda job: job["started_at"]) == jobs  # claimed in the order they were queued
    started = {event["job_id"]: event["worker"] for event in events if event["event"] == "job_started"}
    assert started == {job["id"]: job["worker"] for job in jobs}
    assert [(worker.label, worker.state, worker.models_loaded) for worker in status.workers] == [
        ("cpu:0", "idle", ["stage1", "stage2"]),
        ("cpu:1", "idle", ["stage1", "stage2"]),
    ]


def test_cancel_with_two_workers_stops_the_queued_or_running_job_and_only_it(engine):
    with subscribed(engine)[0] as client:
        first, second = submit(client, LONG, "first"), submit(client, LONG, "second")
        queued = submit(client, 2, "queued")
        assert client.request("cancel", job_id=queued)["status"] == "cancelled"
        workers = until_denoising(client, [first, second])
        assert set(workers.values()) == {"cpu:0", "cpu:1"}
        running = {worker["job_id"]: worker["label"] for worker in client.request("status")["workers"]}
        assert running == workers
        text = engine.cli("status").stdout  # the CLI's status names each worker's job
        assert f"cpu:0: running {running_on(workers, 'cpu:0')}" in text
        assert f"cpu:1: running {running_on(workers, 'cpu:1')}" in text

        assert client.request("cancel", job_id=first)["status"] == "cancelling"
        until_ended(client, [first])
        after = submit(client, 2, "after")  # the freed worker takes it while the other job runs on
        until_ended(client, [after])
        assert client.request("get_job", job_id=second)["job"]["status"] == "running"
        assert client.request("get_job", job_id=after)["job"]["worker"] == workers[first]
        assert client.request("cancel", job_id=second)["status"] == "cancelling"
        until_ended(client, [second])
        statuses = [
            client.request("get_job", job_id=job_id)["job"]["status"] for job_id in (first, second, queued)
        ]
    assert statuses == ["cancelled", "cancelled", "cancelled"]
    outputs = engine.base / "data" / "outputs"
    assert not (outputs / first).exists() and not (outputs / second).exists()


def running_on(workers: dict[str, str], label: str) -> str:
    return next(job_id for job_id, worker in workers.items() if worker == label)


def test_kill_9_with_two_jobs_running_interrupts_both_and_runs_none_twice(engine):
    """The module's engine ends here: killed with a job on each worker and one queued, then restarted."""
    with subscribed(engine)[0] as client:
        doomed = [submit(client, LONG, "doomed 1"), submit(client, LONG, "doomed 2")]
        waiting = submit(client, 2, "waiting")
        until_denoising(client, doomed)
        engine.process.send_signal(signal.SIGKILL)
        engine.process.wait(timeout=ENGINE_LEAVES_S)
    again = PoolEngine(engine.base, engine.weights).start()
    try:
        with again.client() as client:
            client.request("hello", client="tests")
            client.request("subscribe", since=0)  # every event of the new engine
            for job_id in doomed:
                job = client.request("get_job", job_id=job_id)["job"]
                assert job["status"] == "interrupted" and job["error"].startswith("the engine stopped")
            events = until_ended(client, [waiting])
            job = client.request("get_job", job_id=waiting)["job"]
    finally:
        again.stop()
    started = [event["job_id"] for event in events if event["event"] == "job_started"]
    assert started == [waiting] and job["status"] == "finished"  # the interrupted two never ran again
    outputs = engine.base / "data" / "outputs"
    assert not any((outputs / job_id).exists() for job_id in doomed)
    assert [path for path in outputs.rglob("*") if ".partial" in path.name] == []
    assert (engine.base / "data" / "engine.log").read_text().count(f"job {waiting} started") == 1


# the TUI's Queue tab with two workers


class TwoWorkerLink(ScriptedLink):
    """The scripted engine with two GPU workers, each running one of the running jobs."""

    def on_status(self, request: p.Status) -> p.StatusReply:
        running = [j for j in self.jobs if j.status == "running"]
        workers = [
            p.WorkerState(
                label=label,
                device=label,
                state="running" if on else "idle",
                job_id=on.id if on else None,
                models_loaded=["stage1", "stage2"],
                memory_used_bytes=gib * 2**30,
                memory_total_bytes=140 * 2**30,
            )
            for label, on, gib in (
                ("cuda:0", running[0] if running else None, 10),
                ("cuda:1", running[1] if running[1:] else None, 20),
            )
        ]
        return super().on_status(request).model_copy(update={"workers": workers})


def denoising(job_id: str, step: int) -> dict:
    return dict(
        job_id=job_id, stage="denoise", step=step, total=50, chunk=1, chunks=1, rate=4.0, eta_s=1.0,
        frames_written=0, video_seconds=0.0, job_eta_s=9.0,
    )  # fmt: skip


async def test_the_queue_shows_each_running_job_with_its_worker_and_follows_the_one_under_the_cursor():
    first, second = job(1, "running", worker="cuda:0"), job(0, "running", worker="cuda:1")  # first: older
    link = TwoWorkerLink([first, second, job(2, "queued")])
    app = LanDiffApp(link=link)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("f2")
        await until(pilot, lambda: (queue := mounted(app, "QueueView")) and queue.running, what="the jobs")
        queue = app.query_one("QueueView")
        table = queue.query_one("#queue-table")
        rows = [tuple(table.get_row_at(index)[:3]) for index in range(table.row_count)]
        assert rows == [
            ("running", "cuda:0", first.id[:8]),
            ("running", "cuda:1", second.id[:8]),
            ("queued", "", job(2).id[:8]),
        ]
        header = "engine: tiny model, pid 4242, 2 workers: cuda:0, cuda:1"
        await until(pilot, lambda: app.sub_title == header, what="the header to name the workers")
        queue.memory = await link.call(p.Status())  # what its timer asks every few seconds
        queue.draw_workers()
        assert str(queue.query_one("#workers-line").render()) == (
            f"workers: cuda:0 running {first.id[:8]}  ·  cuda:1 running {second.id[:8]}"
        )

        def detail() -> str:
            return str(queue.query_one("#stage-denoise .stage-detail").render())

        def title() -> str:
            return str(queue.query_one("#live-title").render())

        link.publish("job_progress", **denoising(first.id, 10))
        link.publish("job_progress", **denoising(second.id, 30))
        await until(pilot, lambda: detail().startswith("10/50"), what="the first job's progress")
        assert title().startswith(f"running {first.id[:8]} on cuda:0: ") and "+1 running" in title()
        await pilot.pause(0.1)
        assert detail().startswith("10/50")  # the other job's progress does not draw over it

        table.focus()
        table.move_cursor(row=1)  # the second job: the live pane follows it, from its last progress
        await until(pilot, lambda: detail().startswith("30/50"), what="the second job's progress")
        assert title().startswith(f"running {second.id[:8]} on cuda:1: ")
        info = str(queue.query_one("#live-info").render())
        assert "cuda:1 memory 20.0 GiB / 140.0 GiB" in info  # its own GPU's, not the engine's first

        link.publish("job_requeued", job_id=second.id, worker="cuda:1", error="the Ray actor died")
        await until(pilot, lambda: queue.jobs[second.id].status == "queued", what="the re-queued job")
        assert tuple(table.get_row_at(2)[:3]) == ("queued", "", second.id[:8])  # back at its place by age
        assert title().startswith(f"running {first.id[:8]} on cuda:0: ") and "+1" not in title()
        assert any("queued again: its worker cuda:1 was lost" in str(n.message) for n in app._notifications)


# a cancel that the engine acknowledged ("cancelling") wins, even when the job's last step had just ended


class CancelledAsItEnds:
    """A pipeline whose job is cancelled after its last step checked for a stop: it returns a whole
    result, with the cancel already acknowledged."""

    def __init__(self):
        self.worker: JobWorker | None = None
        self.answer: str | None = None

    def run(self, job, on_progress, should_stop, on_chunk, checkpoints=None):
        from engine.generation.job import JobResult

        job.out.parent.mkdir(parents=True, exist_ok=True)
        job.out.write_bytes(b"a whole video")
        assert self.worker is not None and self.worker.current is not None
        self.answer = self.worker.cancel(self.worker.current)
        folder = job.out.parent
        made = {"tokens": folder / "t.npy", "sidecar": folder / "s.json", "thumbnail": folder / "p.png"}
        return JobResult(video=job.out, fps=8, **made)


def test_a_cancel_answered_cancelling_wins_over_a_job_that_ends_at_that_moment(tmp_path):
    """Was: with --gpus cpu:2, 2 of 8 cancels answered "cancelling" ended as finished."""
    store = Store(tmp_path / "landiff.db")
    row = store.add_job(JobParams(prompt="a snail").model_dump(), "tiny", "test")
    events: list[p.Event] = []
    pipeline = CancelledAsItEnds()
    worker = JobWorker(store, lambda: pipeline, events.append, tmp_path / "outputs", 600.0)
    pipeline.worker = worker
    claimed = worker.claim()
    assert claimed is not None
    worker.run_job(claimed.id, JobParams(prompt="a snail"), claimed.model)
    assert pipeline.answer == "cancelling"
    assert store.get(row.id).status == "cancelled"
    assert [type(event).__name__ for event in events][-1] == "JobCancelledEvent"
    assert not (tmp_path / "outputs" / row.id).exists()
    assert worker.cancel(row.id) is None  # and a cancel after that is told it is no longer running
