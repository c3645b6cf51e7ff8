"""The TUI driven by Pilot against a real engine serving the tiny model; a few checks use a double."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.client import EngineClient
from engine.wire import RemoteError
from landiff_tui.app import LanDiffApp
from landiff_tui.params import check_form, check_length
from landiff_tui.widgets.preview import UPPER_HALF, HalfBlocks, fit, video_frames

from .fake_hub import FakeHub
from .test_downloads import hub_files as hub_files  # noqa: F401  (the tiny model as the hub holds it)
from .test_engine import RunningEngine
from .test_engine import weights as weights  # noqa: F401  (the module-scoped tiny weights fixture)
from .tui_double import ScriptedLink, job

ROOT = Path(__file__).resolve().parents[1]


ENGINE_ENV = ("LANDIFF_RUNTIME_DIR", "LANDIFF_DATA_DIR", "LANDIFF_HOME", "HF_HUB_OFFLINE")


@pytest.fixture(scope="module")
def shared_engine(tmp_path_factory, weights):  # noqa: F811
    running = RunningEngine(tmp_path_factory.mktemp("tui-engine"), weights).start()
    yield running
    running.stop()


@pytest.fixture
def engine(shared_engine, monkeypatch):
    """The shared engine, with this process pointed at it (the TUI finds it through the same variables)."""
    for name in ENGINE_ENV:
        monkeypatch.setenv(name, shared_engine.env[name])
    if shared_engine.process.poll() is not None:
        shared_engine.start()
    return shared_engine


async def until(pilot, condition, timeout: float = 60.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


class Recorder:
    """Wraps the app's event callback to keep every event (a protocol model) the TUI received."""

    def __init__(self, app: LanDiffApp):
        self.events: list = []
        original = app.engine_event

        def record(event) -> None:
            self.events.append(event)
            original(event)

        app.link.on_event = record

    def of(self, kind: str, job_id: str | None = None) -> list:
        return [e for e in self.events if e.event == kind and job_id in (None, getattr(e, "job_id", None))]


async def connected(pilot) -> Recorder:
    """Records every event from now on, once the app is connected to the engine."""
    events = Recorder(pilot.app)
    await until(pilot, lambda: pilot.app.link.connected, what="the engine connection")
    return events


def read_mp4_frames(path: str) -> list:
    from engine.generation.video import read_mp4

    return list(read_mp4(Path(path))[0])


def engine_job(engine: RunningEngine, job_id: str) -> dict:
    with engine.client() as client:
        return client.request("get_job", job_id=job_id)["job"]


async def type_prompt(pilot, text: str) -> None:
    app = pilot.app
    app.action_show_tab("generate")
    app.query_one("#prompt").load_text(text)
    await pilot.pause()


async def set_field(pilot, name: str, value: str) -> None:
    widget = pilot.app.query_one(f"#param-{name}")
    widget.value = value
    await pilot.pause()


async def test_submit_watch_find_rerun_edit_and_delete(engine):
    app = LanDiffApp(model="tiny")
    async with app.run_test(size=(100, 32)) as pilot:
        events = await connected(pilot)
        await type_prompt(pilot, "A heron standing in shallow water.")
        await set_field(pilot, "steps", "3")
        await set_field(pilot, "seed", "7")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: events.of("job_finished"), what="the job to finish")
        job_id = events.of("job_finished")[0].job_id
        assert app.query_one("TabbedContent").active == "queue"
        denoise = [e for e in events.of("job_progress", job_id) if e.stage == "denoise"]
        assert denoise and denoise[-1].step == denoise[-1].total == 3
        assert engine_job(engine, job_id)["params"]["seed"] == 7

        await pilot.press("f3")
        gallery = app.query_one("GalleryView")
        app.query_one("#search").value = "heron"
        await until(pilot, lambda: [r.id for r in gallery.rows] == [job_id], what="the search result")
        app.query_one("#gallery-table").focus()
        await pilot.press("r")
        await until(pilot, lambda: len(events.of("job_finished")) == 2, what="the re-run")
        rerun_id = events.of("job_finished")[1].job_id
        assert engine_job(engine, rerun_id)["params"] == engine_job(engine, job_id)["params"]

        await until(pilot, lambda: len(gallery.rows) == 2, what="the gallery to show the re-run")
        app.query_one("#gallery-table").focus()
        await pilot.press("e")
        assert app.query_one("TabbedContent").active == "generate"
        assert app.query_one("#prompt").text == "A heron standing in shallow water."
        await set_field(pilot, "seed", "8")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: len(events.of("job_finished")) == 3, what="the edited re-run")
        edited = engine_job(engine, events.of("job_finished")[2].job_id)["params"]
        assert edited == {**engine_job(engine, job_id)["params"], "seed": 8}

        await pilot.press("f3")
        await until(pilot, lambda: len(gallery.rows) == 3, what="three jobs in the gallery")
        app.query_one("#gallery-table").focus()
        await pilot.press("enter")  # the detail view: a frame, then the video playing
        await until(pilot, lambda: type(app.screen).__name__ == "JobDetail" and app.screen.job, 10, "details")
        assert app.screen.job.id == gallery.rows[0].id
        await pilot.press("p")
        preview = app.screen.query_one("FramePreview")
        assert preview.playing and len(preview.frames) == len(read_mp4_frames(app.screen.job.video_path))
        await pilot.press("escape")
        folder = Path(engine_job(engine, job_id)["video_path"]).parent
        app.query_one("#gallery-table").focus()
        index = [r.id for r in gallery.rows].index(job_id)
        app.query_one("#gallery-table").move_cursor(row=index)
        await pilot.press("d")
        await pilot.press("y")
        await until(pilot, lambda: events.of("job_deleted"), what="the deletion")
        with engine.client() as client, pytest.raises(RemoteError, match="no job"):
            client.request("get_job", job_id=job_id)
        assert not folder.exists()
        await until(pilot, lambda: job_id not in [r.id for r in gallery.rows], what="the gallery refresh")


async def test_cancel_a_running_job_after_confirming(engine):
    app = LanDiffApp(model="tiny")
    async with app.run_test(size=(80, 24)) as pilot:
        events = await connected(pilot)
        await type_prompt(pilot, "A long one to cancel.")
        await set_field(pilot, "steps", "1000")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: events.of("job_started"), what="the job to start")
        job_id = events.of("job_started")[0].job_id
        app.query_one("#queue-table").focus()
        await pilot.press("x")
        await pilot.press("n")  # said no: nothing happens
        await pilot.pause(0.2)
        assert engine_job(engine, job_id)["status"] == "running"
        await pilot.press("x")
        await pilot.press("y")
        await until(pilot, lambda: events.of("job_cancelled", job_id), what="the cancellation")
        assert engine_job(engine, job_id)["status"] == "cancelled"
        await until(pilot, lambda: not app.query_one("QueueView").jobs, what="the queue to empty")


async def test_engine_killed_then_restarted_the_tui_shows_it_and_reconnects(engine):
    app = LanDiffApp(model="tiny")
    async with app.run_test(size=(80, 24)) as pilot:
        events = await connected(pilot)
        engine.process.send_signal(signal.SIGKILL)
        engine.process.wait(10)
        await until(pilot, lambda: "lost" in app.sub_title, what="the TUI to show the engine is gone")
        assert not app.link.connected
        engine.start()
        # connected is true from the socket's open; the header changes once hello and subscribe answered
        await until(
            pilot, lambda: app.link.connected and "tiny model" in app.sub_title, 60, "the reconnection"
        )
        with engine.client() as client:  # a job submitted from elsewhere shows up in the TUI
            job_id = client.request("submit", params={"prompt": "From the CLI.", "steps": 2})["job_id"]
        await until(pilot, lambda: events.of("job_finished", job_id), what="the CLI job's events")
        await pilot.press("f3")
        gallery = app.query_one("GalleryView")
        await until(pilot, lambda: job_id in [r.id for r in gallery.rows], what="the job in the gallery")

        old_pid = app.engine_info.pid  # restart from the Engine tab: a new, detached engine answers
        await pilot.press("f5")
        await pilot.press("R")
        try:
            await until(pilot, lambda: app.link.connected and app.engine_info.pid != old_pid, 90, "a restart")
        finally:
            with engine.client() as client:
                client.request("shutdown")


async def test_first_run_without_weights_offers_the_tiny_model(tmp_path, monkeypatch, weights):  # noqa: F811
    running = RunningEngine(tmp_path / "engine", tmp_path / "no-weights")
    for name in ENGINE_ENV:
        monkeypatch.setenv(name, running.env[name])
    monkeypatch.setenv("LANDIFF_HOME", str(weights))  # the tiny weights exist there; the release does not
    running.env["LANDIFF_HOME"] = str(weights)
    command = [sys.executable, "-m", "engine.cli", "serve", "--model", "landiff"]
    running.process = subprocess.Popen(command, env=running.env, stdout=subprocess.PIPE, text=True)
    assert running.process.stdout.readline().startswith("ready")
    app = LanDiffApp()
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: type(app.screen).__name__ == "NoWeights", what="the first-run dialog")
            await pilot.press("t")
            await until(
                pilot,
                lambda: app.link.connected and app.engine_info.model == "tiny",
                timeout=90,
                what="a tiny engine",
            )
    finally:
        with EngineClient(running.socket) as client:
            client.request("shutdown")
        running.stop()


async def test_invalid_values_are_shown_inline_and_nothing_is_sent():
    link = ScriptedLink([job(2)])
    app = LanDiffApp(link=link)
    async with app.run_test(size=(80, 24)) as pilot:
        await type_prompt(pilot, "A fox.")
        await set_field(pilot, "cfg", "60")
        await set_field(pilot, "top_p", "abc")
        errors = str(app.query_one("#form-errors").render())
        assert "cfg must be between 0 and 50, got 60" in errors and "top_p must be a number" in errors
        assert app.query_one("#param-cfg").has_class("-invalid")
        assert app.query_one("#submit").disabled
        await pilot.press("ctrl+s")
        assert not [kind for kind, _ in link.requests if kind == "submit"]
        await set_field(pilot, "frames", "100000")  # beyond the tiny model's token budget: says its maximum
        assert "at most 2825 frames" in str(app.query_one("#form-errors").render())
        await set_field(pilot, "frames", "10")
        assert "10 frames rounded up to 17" in str(app.query_one("#length-note").render())
        await set_field(pilot, "cfg", "9")
        await set_field(pilot, "top_p", "")
        assert not app.query_one("#submit").disabled
        await pilot.press("ctrl+s")
        await pilot.pause(0.1)
        submitted = [fields for kind, fields in link.requests if kind == "submit"]
        assert submitted and submitted[0]["params"]["cfg"] == 9.0 and "top_p" not in submitted[0]["params"]
        assert submitted[0]["params"]["frames"] == 10  # the engine rounds it up, and records that it did


async def test_prompt_history_recalls_earlier_prompts_with_up_and_down():
    app = LanDiffApp(link=ScriptedLink([job(0), job(1), job(2)]))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        await app.workers.wait_for_complete()
        area = app.query_one("#prompt")
        area.focus()
        area.load_text("my draft")
        await pilot.press("up")
        assert area.text == job(0).prompt  # the newest job first
        await pilot.press("up")
        assert area.text == job(1).prompt
        await pilot.press("down", "down")
        assert area.text == "my draft"


async def test_quitting_while_a_job_runs_says_it_continues():
    app = LanDiffApp(link=ScriptedLink([job(0, "running")]))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("ctrl+q")
        assert type(app.screen).__name__ == "Confirm"
        assert "continues in the engine" in str(app.screen.query_one("Static").render())
        await pilot.press("y")
        await pilot.pause(0.1)
    assert app.return_code == 0 and not app.is_running


def test_the_tui_never_imports_torch_and_loads_pydantic_only_after_the_first_paint():
    code = "import sys, landiff_tui.app; sys.exit('torch' in sys.modules or 'pydantic' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ}).returncode == 0


def test_form_checks_and_lengths():
    params, errors = check_form(
        "  A cat.  ",
        {
            "cfg": "7.5",
            "seed": "3",
            "steps": "10",
            "motion_score": "0.2",
            "temperature": "1",
            "top_k": "",
            "top_p": "0.9",
        },
    )
    assert errors == {} and params["prompt"] == "A cat." and params["top_p"] == 0.9 and "top_k" not in params
    _, errors = check_form(
        " ", {"cfg": "-1", "seed": "-1", "steps": "x", "motion_score": "11", "temperature": "1"}
    )
    assert set(errors) == {"prompt", "cfg", "seed", "steps", "motion_score"}
    assert (
        check_length("6s") == (48, None)
        and check_length("97") == (97, None)
        and check_length("") == (None, None)
    )
    assert check_length("-3")[1] and "seconds" in check_length("abc")[1]


def test_half_blocks_put_the_upper_pixel_in_front_and_the_lower_behind():
    pixels = np.array([[[255, 0, 0], [0, 0, 255]], [[0, 255, 0], [10, 20, 30]]], np.uint8)
    segments = [s for s in HalfBlocks(pixels).__rich_console__(None, None) if s.text == UPPER_HALF]
    assert [s.style.color.triplet for s in segments] == [(255, 0, 0), (0, 0, 255)]
    assert [s.style.bgcolor.triplet for s in segments] == [(0, 255, 0), (10, 20, 30)]
    assert fit(720, 480, 40, 12) == (36, 24)
    image = HalfBlocks.of_image(Image.new("RGB", (90, 60), (1, 2, 3)), 40, 12)
    assert image.pixels.shape == (24, 36, 3) and (image.pixels == (1, 2, 3)).all()


def test_video_frames_are_read_small_through_ffmpeg(tmp_path):
    import imageio_ffmpeg

    path = tmp_path / "clip.mp4"
    writer = imageio_ffmpeg.write_frames(str(path), (64, 48), fps=8, macro_block_size=16)
    writer.send(None)
    for value in (0, 120, 250):
        writer.send(np.full((48, 64, 3), value, np.uint8).tobytes())
    writer.close()
    frames = video_frames(path, 16, 6)
    assert len(frames) == 3 and frames[0].shape == (12, 16, 3)
    assert abs(int(frames[2].mean()) - 250) < 8 and int(frames[0].mean()) < 8


async def test_the_command_palette_runs_view_actions_and_engine_errors_become_notifications(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    busy = RemoteError(
        "busy", "a weights download or verification is running; follow its events or cancel it"
    )
    link = ScriptedLink([job(2)], refusals={"verify_weights": busy})
    app = LanDiffApp(link=link)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        seed = app.query_one("#param-seed").value
        await pilot.press("ctrl+p")
        await pilot.press(*"random seed")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: app.query_one("#param-seed").value != seed, timeout=5, what="a new seed")
        await pilot.press("ctrl+p")
        await pilot.press(*"verify the weights")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(
            pilot, lambda: app.query_one("TabbedContent").active == "weights", timeout=5, what="Weights"
        )
        # the engine refuses: its words arrive as a notification
        await until(pilot, lambda: any(busy.message in str(n.message) for n in app._notifications), 5)


async def test_a_dropped_connection_comes_back_with_every_event_it_missed(engine):
    app = LanDiffApp(model="tiny")
    async with app.run_test(size=(80, 24)) as pilot:
        events = await connected(pilot)
        app.link.writer.transport.abort()  # the socket drops (a network hiccup, a suspended laptop)
        with engine.client() as client:  # meanwhile a job runs to the end
            job_id = client.request("submit", params={"prompt": "While away.", "steps": 2})["job_id"]
            client.request("subscribe", since=client.request("status")["seq"])
            for event in client.events():
                if event["event"] == "job_finished" and event["job_id"] == job_id:
                    break
        await until(pilot, lambda: events.of("job_finished", job_id), what="the replayed events")
        seqs = [event.seq for event in events.events]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # nothing lost, nothing twice
        assert events.of("job_queued", job_id) and events.of("job_started", job_id)


async def test_the_weights_tab_downloads_through_the_engine(tmp_path, monkeypatch, hub_files):
    repos, checksums = hub_files
    listing = tmp_path / "CHECKSUM.md5"
    listing.write_text("".join(f"{md5}  {path}\n" for path, md5 in checksums.items()))
    running = RunningEngine(tmp_path / "engine", tmp_path / "empty-home")
    with FakeHub(repos) as hub:
        running.env.update(HF_ENDPOINT=hub.endpoint, LANDIFF_CHECKSUMS=str(listing))
        running.env.pop("HF_HUB_OFFLINE")
        for name in ENGINE_ENV:
            monkeypatch.setenv(name, running.env.get(name, ""))
        monkeypatch.delenv("HF_HUB_OFFLINE")
        running.start()
        try:
            app = LanDiffApp(model="tiny")
            async with app.run_test(size=(100, 32)) as pilot:
                events = await connected(pilot)
                await pilot.press("f4")
                table = app.query_one("#weights-table")

                def states() -> set[str]:
                    return {table.get_row_at(index)[0] for index in range(table.row_count)}

                await until(pilot, lambda: states() == {"missing"}, 10, "the missing files listed")
                await pilot.press("d")
                await until(pilot, lambda: events.of("download_finished"), 60, "the download")
                assert events.of("download_started") and events.of("download_progress")
                assert events.of("download_finished")[0].failed == {}
                await until(pilot, lambda: states() <= {"verified", "present"}, 10, "the refreshed table")
                assert "complete" in str(app.query_one("#weights-root").render())
        finally:
            running.stop()


async def test_engine_events_reach_the_views_as_typed_messages_and_progress_coalesces():
    link = ScriptedLink([job(2)])
    app = LanDiffApp(link=link)
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: len(app.query("QueueView")) == 1 and link.connected, 10, "the queue tab")
        queue = app.query_one("QueueView")
        drawn: list[tuple[str, int]] = []
        original = queue.show_progress
        queue.show_progress = lambda event: (drawn.append((event.stage, event.step)), original(event))
        link.publish("job_queued", job_id="j1", prompt="A fox.")
        link.publish("job_started", job_id="j1")
        fields = dict(
            job_id="j1", chunk=1, chunks=1, rate=9.0, eta_s=1.0, frames_written=0, video_seconds=0.0
        )
        link.publish("job_progress", stage="text", step=2, total=2, job_eta_s=None, **fields)
        for step in range(1, 101):  # faster than the view draws: the newest step of a stage supersedes
            link.publish("job_progress", stage="denoise", step=step, total=100, job_eta_s=3.0, **fields)
        await until(pilot, lambda: drawn and drawn[-1] == ("denoise", 100), 10, "the last step drawn")
        assert ("text", 2) in drawn  # another stage's last step is never replaced
        assert len(drawn) < 101
        assert queue.running is not None and queue.running.id == "j1"
        assert str(queue.query_one("#stage-denoise .stage-detail").render()).startswith("100/100")
        link.publish("job_cancelled", job_id="j1", partial=True, status="cancelled_partial", video="/v.mp4")
        await until(pilot, lambda: not queue.jobs, 10, "the queue to empty")
        await until(pilot, lambda: any("shorter video" in str(n.message) for n in app._notifications), 5)
