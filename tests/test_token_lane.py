"""The LLM lane (`serve --llm-device`): stage 1 on its own device, the next jobs' tokens made while a worker
renders, the workers running stage 2 only; the same video as without a lane; cancel and failure."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import protocol as p
from engine.cli.main import main
from engine.daemon.devices import BadGpus, parse_llm_device
from engine.daemon.store import Store
from engine.daemon.token_lane import LaneFailed, TokenLane
from engine.generation.job import JobCancelled, JobSpec
from engine.generation.pipeline import Pipeline, SemanticTokens
from engine.generation.video import read_mp4
from engine.models.llm_sampler import SamplingCancelled
from engine.protocol import StatusReply
from engine.specs import get_spec
from engine.weights.layout import layout_for
from landiff_tui.app import LanDiffApp

from .harness import PROMPT, RunningEngine, mounted, submit, subscribed, until, until_ended, wait_until
from .tui_double import ScriptedLink, job

LONG = 1000  # denoising steps: a job that runs until it is cancelled


def test_the_lane_device_is_a_gpu_index_or_the_cpu():
    assert parse_llm_device("cpu") == "cpu"
    assert parse_llm_device("2", count_cuda=lambda: 4) == "cuda:2"
    assert parse_llm_device("cuda:3", count_cuda=lambda: 4) == "cuda:3"
    with pytest.raises(BadGpus, match=r"there is no GPU 4 \(this machine shows 4 GPU\(s\)\)"):
        parse_llm_device("4", count_cuda=lambda: 4)
    with pytest.raises(BadGpus, match="is not a device: give a GPU index"):
        parse_llm_device("gpu two", count_cuda=lambda: 4)


def test_serve_refuses_the_lane_with_ray_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LANDIFF_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("LANDIFF_DATA_DIR", str(tmp_path / "data"))
    status = main(["serve", "--model", "tiny", "--llm-device", "cpu", "--ray", "auto"])
    err = capsys.readouterr().err
    assert status == 2 and "--llm-device and --ray exclude each other" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_tokens_made_by_another_pipeline_render_the_same_video(pipeline, home, tmp_path):
    lane = Pipeline(get_spec("tiny"), layout_for("tiny", home), device=torch.device("cpu"))
    plain = pipeline.run(JobSpec(PROMPT, tmp_path / "plain.mp4", seed=5, steps=4))
    ahead_job = JobSpec(PROMPT, tmp_path / "ahead.mp4", seed=5, steps=4)
    made = lane.semantic_tokens(ahead_job)
    assert lane.loaded_models() == ["stage1"]  # a lane loads stage 1 only
    events = []
    ahead = pipeline.run(ahead_job, on_progress=events.append, tokens=made)
    assert np.array_equal(np.load(plain.tokens), np.load(ahead.tokens))
    assert np.array_equal(read_mp4(plain.video)[0], read_mp4(ahead.video)[0])
    assert "tokens" not in {event.stage for event in events}  # this pipeline ran stage 2 only
    assert ahead.timings_s["tokens"] == round(made.timings["tokens"], 4)  # the lane's cost is the job's
    record = json.loads(ahead.sidecar.read_text())["stage1"]
    cpu = "eager: the cpu device has no CUDA graphs"  # how the tokens were decoded, both times
    assert made.decoding == cpu
    assert record == {
        "device": "cpu",
        "ahead": True,
        "decoding": cpu,
        "finished_at": round(made.finished_at, 3),
    }
    assert json.loads(plain.sidecar.read_text())["stage1"] == {
        "device": "cpu",
        "ahead": False,
        "decoding": cpu,
    }


class ScriptedStage1:
    """A lane's pipeline that makes tokens when told to (`go`), and fails for a prompt saying "fail"."""

    spec = get_spec("tiny")

    def __init__(self):
        self.go = threading.Event()
        self.stopped: list[str] = []

    def semantic_tokens(self, job, on_progress, should_stop) -> SemanticTokens:
        if "fail" in job.prompt:
            raise ValueError("the language model refused this prompt")
        while not self.go.is_set():
            if should_stop():
                self.stopped.append(job.prompt)
                raise SamplingCancelled("stopped")
            time.sleep(0.01)
        return SemanticTokens(torch.zeros(11, dtype=torch.long), {"tokens": 0.1}, "cpu", time.time())

    def loaded_models(self) -> list[str]:
        return ["stage1"]


def test_a_worker_waiting_for_its_tokens_can_be_cancelled_and_a_failure_is_the_jobs(tmp_path):
    store = Store(tmp_path / "jobs.db")
    stage1 = ScriptedStage1()
    lane = TokenLane(store, lambda: stage1, "cpu", tmp_path, idle_release_s=600, ahead=2)
    lane.start()
    try:
        waiting = store.add_job({"prompt": "a slow one"}, "tiny", "test")
        failing = store.add_job({"prompt": "please fail"}, "tiny", "test")
        assert store.claim_next(worker="cpu:0").id == waiting.id  # as a worker claims it
        lane.notify()

        def cancelled() -> bool:  # the worker's cancel, once the lane is making the job's tokens
            return lane.view()["job_id"] == waiting.id

        with pytest.raises(JobCancelled, match="stopped while its tokens were being made"):
            lane.take(waiting.id, lambda event: None, cancelled)
        wait_until(lambda: stage1.stopped == ["a slow one"], "the making to stop too")
        with pytest.raises(LaneFailed, match="the language model refused this prompt"):
            lane.take(failing.id, lambda event: None, lambda: False)
        stage1.go.set()
        assert lane.view()["ready"] == []  # nothing made is left for a job nobody will take
    finally:
        lane.stop()
        lane.join(10)


class LaneEngine(RunningEngine):
    """An engine subprocess with one CPU worker and an LLM lane on the CPU."""

    def __init__(self, base: Path, weights: Path):
        super().__init__(base, weights, serve_args=("--gpus", "cpu:1", "--llm-device", "cpu"))


@pytest.fixture(scope="module")
def engine(tmp_path_factory, weights):
    running = LaneEngine(tmp_path_factory.mktemp("lane-engine"), weights).start()
    yield running
    running.stop()


def lane_state(client) -> dict:
    return client.request("status")["llm_lane"]


def test_the_lane_makes_the_next_jobs_tokens_while_the_worker_renders(engine):
    with subscribed(engine)[0] as client:
        rendering = submit(client, LONG, "rendering")
        nxt, dropped = submit(client, 2, "next"), submit(client, 2, "dropped")
        wait_until(lambda: lane_state(client)["ready"] == [nxt, dropped], "both ahead")  # while...
        assert client.request("get_job", job_id=rendering)["job"]["status"] == "running"
        assert client.request("cancel", job_id=dropped)["status"] == "cancelled"
        assert lane_state(client)["ready"] == [nxt]  # a cancelled job's tokens are forgotten
        text = engine.cli("status").stdout
        assert "  LLM lane: cpu, idle, tokens ready for 1 job(s), models stage1" in text
        assert "   options: --gpus cpu:1 --llm-device cpu" in text  # what it was started with
        assert client.request("cancel", job_id=rendering)["status"] == "cancelling"
        events = until_ended(client, [rendering, nxt])
        status = StatusReply(**client.request("status"))
        jobs = {job_id: client.request("get_job", job_id=job_id)["job"] for job_id in (rendering, nxt)}
    assert jobs[nxt]["status"] == "finished"
    record = json.loads(Path(jobs[nxt]["sidecar_path"]).read_text())
    assert record["stage1"]["ahead"] and record["stage1"]["device"] == "cpu"
    made_at = record["stage1"]["finished_at"]
    assert jobs[rendering]["started_at"] < made_at < jobs[nxt]["started_at"]  # made while the other rendered
    stages = [e["stage"] for e in events if e["event"] == "job_progress" and e["job_id"] == nxt]
    assert stages.index("tokens") < stages.index("denoise")  # the lane's stages reach the job's followers
    assert [(worker.label, worker.models_loaded) for worker in status.workers] == [("cpu:0", ["stage2"])]
    assert status.llm_lane is not None and status.llm_lane.models_loaded == ["stage1"]
    assert status.llm_lane.ready == [] and status.models_loaded == ["stage1", "stage2"]


class LaneLink(ScriptedLink):
    """The scripted engine with an LLM lane on cuda:2, making one queued job's tokens, another's made."""

    def on_status(self, request: p.Status) -> p.StatusReply:
        lane = p.LaneState(
            label="cuda:2", state="making", job_id=job(2).id, ready=[job(3).id], models_loaded=["stage1"]
        )
        options = ["--gpus", "0,1", "--llm-device", "2"]
        return super().on_status(request).model_copy(update={"llm_lane": lane, "options": options})


async def test_the_engine_tab_shows_the_llm_lane_and_what_it_makes():
    app = LanDiffApp(link=LaneLink([job(1, "running"), job(2, "queued"), job(3, "queued")]))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f5")

        def shown() -> str:
            status = mounted(app, "#engine-status")
            return "" if status is None else str(status.render())

        await until(pilot, lambda: "LLM lane" in shown(), what="the engine's status")
        assert f"LLM lane cuda:2 making {job(2).id[:8]}, 1 ahead, models stage1" in shown()
        assert "started with: --gpus 0,1 --llm-device 2 (R keeps them)" in shown()
        await pilot.press("f2")  # the Queue tab's workers line names the lane too
        queue = app.query_one("QueueView")
        queue.memory = await app.link.call(p.Status())  # what its timer asks every few seconds
        queue.draw_workers()
        assert str(queue.query_one("#workers-line").render()) == (
            f"workers: cpu running {job(1).id[:8]}  ·  LLM lane cuda:2 making {job(2).id[:8]}, 1 ahead"
        )
