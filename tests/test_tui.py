"""The TUI driven by Pilot against a real engine serving the tiny model; a few checks use a double."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import protocol as p
from engine.client import EngineClient
from engine.paths import lock_holder, lock_path
from engine.wire import RemoteError
from landiff_tui.app import LanDiffApp
from landiff_tui.params import check_form, check_length
from landiff_tui.widgets.preview import UPPER_HALF, HalfBlocks, fit, video_frames

from .fake_hub import FakeHub
from .harness import ENGINE_LEAVES_S, ROOT, WAIT_S, RunningEngine, mounted, short_dir, until
from .tui_double import ScriptedLink, job

ENGINE_ENV = ("LANDIFF_RUNTIME_DIR", "LANDIFF_DATA_DIR", "LANDIFF_HOME", "HF_HUB_OFFLINE")


@pytest.fixture(scope="module")
def shared_engine(tmp_path_factory, weights):
    # with a serve option of its own, which an engine the TUI restarts must get too
    running = RunningEngine(tmp_path_factory.mktemp("tui-engine"), weights, ("--idle-release", "900")).start()
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
    """Records every event from now on, once the app is connected to the engine and subscribed (the link
    counts as connected from the socket's open; `engine_info` is set once hello and subscribe answered)."""
    events = Recorder(pilot.app)
    app = pilot.app
    await until(
        pilot, lambda: app.link.connected and app.engine_info is not None, what="the engine connection"
    )
    return events


def read_mp4_frames(path: str) -> list:
    from engine.generation.video import read_mp4

    return list(read_mp4(Path(path))[0])


def engine_job(engine: RunningEngine, job_id: str) -> dict:
    with engine.client() as client:
        return client.request("get_job", job_id=job_id)["job"]


async def answer_yes(pilot) -> None:
    """Yes to the question on the screen, once it counts (a yes right after the key that asked is no
    answer: `screens.confirm.GUARD_S`)."""
    app = pilot.app
    await until(
        pilot,
        lambda: type(app.screen).__name__ == "Confirm" and not app.screen.guarded,
        what="the question to take a yes",
    )
    await pilot.press("y")


def laid_out(app, selector: str) -> bool:
    """The widget is mounted and has its place on the screen (a click finds it there)."""
    widget = mounted(app, selector)
    return widget is not None and bool(widget.region.width)


def screen_text(app) -> str:
    """What the terminal shows now, as text (the top screen, with what a dialog leaves visible beneath)."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


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
        assert app.query_one("#tabs").active == "queue"
        assert app.query_one("#prompt").text == ""  # a second ctrl+s queues no duplicate
        denoise = [e for e in events.of("job_progress", job_id) if e.stage == "denoise"]
        assert denoise and denoise[-1].step == denoise[-1].total == 3
        assert engine_job(engine, job_id)["params"]["seed"] == 7

        await pilot.press("f3")
        gallery = app.query_one("GalleryView")
        app.query_one("#search").value = "heron"
        await until(pilot, lambda: [r.id for r in gallery.rows] == [job_id], what="the search result")
        table = app.query_one("#gallery-table")
        assert table.get_cell(job_id, "length") == "1.1 s"  # the tiny model's one clip: 9 frames at 8 fps
        await pilot.press("ctrl+r")
        await until(pilot, lambda: len(events.of("job_finished")) == 2, what="the re-run")
        rerun_id = events.of("job_finished")[1].job_id
        assert engine_job(engine, rerun_id)["params"] == engine_job(engine, job_id)["params"]

        await until(pilot, lambda: len(gallery.rows) == 2, what="the gallery to show the re-run")
        await pilot.press("ctrl+e")
        assert app.query_one("#tabs").active == "generate"
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
        await until(
            pilot, lambda: type(app.screen).__name__ == "JobDetail" and app.screen.job, what="details"
        )
        assert app.screen.job.id == gallery.rows[0].id
        await pilot.press("ctrl+g")  # the Gallery's key for it too
        preview = app.screen.query_one("FramePreview")
        assert preview.playing and len(preview.frames) == len(read_mp4_frames(app.screen.job.video_path))
        await pilot.press("escape")
        folder = Path(engine_job(engine, job_id)["video_path"]).parent
        app.query_one("#gallery-table").focus()
        index = [r.id for r in gallery.rows].index(job_id)
        app.query_one("#gallery-table").move_cursor(row=index)
        await pilot.press("ctrl+d")
        await answer_yes(pilot)
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
        await answer_yes(pilot)
        await until(pilot, lambda: events.of("job_cancelled", job_id), what="the cancellation")
        assert engine_job(engine, job_id)["status"] == "cancelled"
        await until(pilot, lambda: not app.query_one("QueueView").jobs, what="the queue to empty")


async def test_engine_killed_then_restarted_the_tui_shows_it_and_reconnects(engine):
    app = LanDiffApp(model="tiny")
    async with app.run_test(size=(80, 24)) as pilot:
        events = await connected(pilot)
        engine.process.send_signal(signal.SIGKILL)
        engine.process.wait(ENGINE_LEAVES_S)
        await until(pilot, lambda: not app.link.connected, what="the TUI to see the engine is gone")
        await until(pilot, lambda: "no engine is running: R" in app.sub_title, what="the header to say so")
        engine.start()
        # connected is true from the socket's open; the header changes once hello and subscribe answered
        await until(
            pilot, lambda: app.link.connected and "tiny model" in app.sub_title, what="the reconnection"
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
        assert type(app.screen).__name__ == "Confirm"
        await answer_yes(pilot)
        try:
            await until(pilot, lambda: "restarting the engine (tiny" in app.sub_title, what="the header")
            await until(
                pilot, lambda: app.link.connected and app.engine_info.pid != old_pid, what="a restart"
            )
            assert app.engine_info.options == ["--idle-release", "900"]  # the new engine's own hello
            # stopped (S here, or `landiff-engine stop` elsewhere): the header says so, and R starts one
            old_pid = app.engine_info.pid
            await pilot.press("S")
            await answer_yes(pilot)
            await until(pilot, lambda: "no engine is running: R" in app.sub_title, what="the stop")
            await pilot.press("R")
            assert type(app.screen).__name__ != "Confirm"  # nothing to interrupt: no question
            await until(pilot, lambda: "starting the engine (tiny model)" in app.sub_title, what="the header")
            await until(pilot, lambda: app.link.connected and app.engine_info.pid != old_pid, what="a start")
            assert app.engine_info.options == ["--idle-release", "900"]
        finally:
            with engine.client() as client:
                client.request("shutdown")
            # the next test's engine needs the data dir: wait until this one has let go of it
            deadline = time.monotonic() + ENGINE_LEAVES_S
            while lock_holder(lock_path()) is not None and time.monotonic() < deadline:
                await pilot.pause(0.1)


async def test_first_run_without_weights_offers_the_tiny_model(tmp_path, monkeypatch, weights):
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
            await until(pilot, lambda: laid_out(app, "#banner-tiny"), what="the first-run offer")
            assert await pilot.click("#banner-tiny")
            await until(
                pilot,
                lambda: app.link.connected and app.engine_info.model == "tiny",
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
        assert not link.sent(p.Submit)
        await set_field(pilot, "frames", "100000")  # beyond the tiny model's token budget: says its maximum
        assert "at most 2825 frames" in str(app.query_one("#form-errors").render())
        await set_field(pilot, "frames", "10")
        assert "10 frames rounded up to 17" in str(app.query_one("#length-note").render())
        await set_field(pilot, "cfg", "9")
        await set_field(pilot, "top_p", "")
        assert not app.query_one("#submit").disabled
        await pilot.press("ctrl+s")
        await pilot.pause(0.1)
        submitted = link.sent(p.Submit)
        assert submitted and submitted[0].params.cfg == 9.0 and submitted[0].params.top_p is None
        assert submitted[0].params.frames == 10  # the engine rounds it up, and records that it did


async def test_prompt_history_recalls_earlier_prompts_with_up_and_down():
    app = LanDiffApp(link=ScriptedLink([job(0), job(1), job(2)]))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: len(app.query_one("GenerateView").history) == 3, what="the history")
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
        await until(pilot, lambda: mounted(app, "QueueView") and app.query_one("QueueView").running)
        await pilot.press("ctrl+q")
        assert type(app.screen).__name__ == "Confirm"
        assert "continues in the engine" in str(app.screen.query_one("Static").render())
        await answer_yes(pilot)
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
            "cache": "0",
            "fps": "16",
        },
    )
    assert (
        errors == {}
        and params["fps"] == 16
        and params["cache"] == 0
        and params["prompt"] == "A cat."
        and params["top_p"] == 0.9
        and "top_k" not in params
    )
    _, errors = check_form(
        " ",
        {
            "cfg": "-1",
            "seed": "-1",
            "steps": "x",
            "motion_score": "11",
            "temperature": "1",
            "cache": "0",
            "fps": "8",
        },
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
    link = ScriptedLink([job(2)], refusals={p.VerifyWeights: busy})
    app = LanDiffApp(link=link)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: mounted(app, "#param-seed") and app.query_one("#param-seed").value)
        await until(pilot, lambda: len(app.views) == 5, what="the other tabs")  # the palette acts on them
        seed = app.query_one("#param-seed").value
        await pilot.press("ctrl+p")
        await pilot.press(*"random seed")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: app.query_one("#param-seed").value != seed, what="a new seed")
        await pilot.press("ctrl+p")
        await pilot.press(*"verify the weights")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: app.query_one("#tabs").active == "weights", what="Weights")
        # the engine refuses: its words arrive as a notification
        await until(pilot, lambda: any(busy.message in str(n.message) for n in app._notifications))


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

                def states() -> set[str]:  # of the release's files (the quality probe's CLIP is optional)
                    cells = {table.get_row_at(index)[0] for index in range(table.row_count)}
                    return {cell for cell in cells if not cell.endswith("(optional)")}

                await until(pilot, lambda: states() == {"missing"}, what="the missing files listed")
                await pilot.press("d")
                assert type(app.screen).__name__ == "Confirm"  # gigabytes for the release: it asks first
                await answer_yes(pilot)
                await until(pilot, lambda: events.of("download_finished"), what="the download")
                assert events.of("download_started") and events.of("download_progress")
                assert events.of("download_finished")[0].failed == {}
                await until(pilot, lambda: states() <= {"verified", "present"}, what="the refreshed table")
                assert "complete" in str(app.query_one("#weights-root").render())
        finally:
            running.stop()


async def test_engine_events_reach_the_views_as_typed_messages_and_progress_coalesces():
    link = ScriptedLink([job(2)])
    app = LanDiffApp(link=link)
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: len(app.query("QueueView")) == 1 and link.connected, what="the queue tab")
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
        await until(pilot, lambda: drawn and drawn[-1] == ("denoise", 100), what="the last step drawn")
        assert ("text", 2) in drawn  # another stage's last step is never replaced
        assert len(drawn) < 101
        assert queue.running is not None and queue.running.id == "j1"
        assert str(queue.query_one("#stage-denoise .stage-detail").render()).startswith("100/100")
        link.publish("job_cancelled", job_id="j1", partial=True, status="cancelled_partial", video="/v.mp4")
        await until(pilot, lambda: not queue.jobs, what="the queue to empty")
        await until(pilot, lambda: any("shorter video" in str(n.message) for n in app._notifications))


# issue 12: what a first hour trips over


def notified(app, text: str) -> bool:
    return any(text in str(n.message) for n in app._notifications)


async def test_typing_in_the_gallery_searches_and_no_letter_runs_an_action():
    link = ScriptedLink([job(0), job(1), job(2)])
    app = LanDiffApp(link=link)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("f3")
        await until(pilot, lambda: len(app.query_one("GalleryView").rows) == 3, what="the gallery")
        await pilot.press(*"red")  # once the keys of re-run, edit and delete
        assert app.query_one("#search").value == "red"
        await pilot.press("down")  # into the list: its letters move, sort, mark; none runs an action
        assert app.focused.id == "gallery-table"
        await pilot.press(*"dyrex")
        assert app.query_one("#search").value == "red" and app.focused.id == "gallery-table"
        assert type(app.screen).__name__ == "Screen" and app.query_one("#tabs").active == "gallery"
        assert not link.sent(p.Submit) and not link.sent(p.DeleteJob)
        await pilot.press("slash", "y")  # / goes to the search box, as in lazygit and k9s
        assert app.query_one("#search").value == "redy" and app.focused.id == "search"
        await pilot.press("escape")  # no marks: escape clears the search
        assert app.query_one("#search").value == ""
        await until(pilot, lambda: len(app.query_one("GalleryView").rows) == 3, what="the whole list again")
        await pilot.press("ctrl+d")  # deleting takes a chord and asks first
        assert type(app.screen).__name__ == "Confirm"
        await pilot.press("n")
        await pilot.press("ctrl+r")  # the chord re-runs the highlighted job
        await until(pilot, lambda: link.sent(p.Submit), what="the re-run")
        rerun = link.sent(p.Submit)[0].params
        assert rerun.model_dump(include=set(job(0).params)) == job(0).params
        assert not link.sent(p.DeleteJob)


async def test_a_past_job_whose_parameters_make_no_request_is_not_rerun_and_the_app_says_why():
    old = job(0, params={**job(0).params, "steps": "30"})  # a value of another type: the protocol refuses it
    link = ScriptedLink([old])
    app = LanDiffApp(link=link)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("f3")
        await until(pilot, lambda: app.query_one("GalleryView").rows, what="the gallery")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: notified(app, "params.steps: Input should be a valid integer"), what="why")
        assert not link.sent(p.Submit) and app.is_running


async def test_keys_typed_right_after_launch_land_in_the_prompt():
    app = LanDiffApp(link=ScriptedLink([job(0)]))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press(*"A fox")  # before anything settled: no pause, no F1
        assert app.focused is app.query_one("#prompt")
        assert app.query_one("#prompt").text == "A fox"


async def test_restart_asks_while_an_engine_answers_and_starts_one_when_none_does():
    link = ScriptedLink([job(0, "running")])
    app = LanDiffApp(link=link)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: link.connected and app.engine_info is not None, what="the connection")
        await pilot.press("f5", "R")
        assert type(app.screen).__name__ == "Confirm"
        assert "running job 00000000 is marked interrupted" in str(app.screen.query_one("Static").render())
        await pilot.press("n")
        assert link.restarts == []
        link.connected = False
        app.engine_state("absent", "no engine is running")
        await pilot.pause()
        assert app.sub_title == "no engine is running: R on the Engine tab (F5) starts one"
        await pilot.press("S")
        assert notified(app, "no engine is connected; R starts one")
        await pilot.press("R")  # no question: nothing runs to interrupt
        await until(pilot, lambda: link.restarts == ["tiny"] and link.connected, what="a start")


async def test_the_tiny_models_weights_show_as_generated_and_d_makes_them_after_asking():
    link = ScriptedLink([job(0)], weights_complete=False)
    link.generated, link.model = True, "tiny"
    app = LanDiffApp(link=link)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("f4")
        table = app.query_one("#weights-table")
        await until(pilot, lambda: table.row_count == 3, what="the files")
        assert {table.get_row_at(i)[0] for i in range(3)} == {"to generate"}
        assert "random, made on this machine; not written yet (d: generate them)" in str(
            app.query_one("#weights-root").render()
        )
        await pilot.press("d")  # cheap and local, but written over what is there: it asks first
        assert type(app.screen).__name__ == "Confirm"
        assert "3 files (none is there yet)" in str(app.screen.query_one("Static").render())
        await pilot.press("n")
        assert not link.sent(p.DownloadWeights)
        await pilot.press("d")
        await answer_yes(pilot)
        await until(pilot, lambda: link.sent(p.DownloadWeights), what="the request")
        assert notified(app, "writing the tiny model's random weights")


async def test_downloading_the_release_asks_first_from_either_source():
    link = ScriptedLink([job(0)], weights_complete=False)  # the release, missing
    app = LanDiffApp(link=link)
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: app.query("#weights-banner"), what="the first-run offer")
        await pilot.press("f4")
        await until(pilot, lambda: app.query_one("WeightsView").status is not None, what="the states")
        await pilot.press("d")
        assert type(app.screen).__name__ == "Confirm"
        assert "25 GB" in str(app.screen.query_one("Static").render())
        await pilot.press("n")
        assert not link.sent(p.DownloadWeights)
        await pilot.press("D")  # the second source: named in the question, sent with the request
        assert "from ModelScope (MODELSCOPE_ENDPOINT)" in str(app.screen.query_one("Static").render())
        await answer_yes(pilot)
        await until(pilot, lambda: link.sent(p.DownloadWeights), what="the download from ModelScope")
        assert [request.source for request in link.sent(p.DownloadWeights)] == ["modelscope"]


# issue 26: the first hour


async def test_a_prompt_typed_while_the_first_run_offer_appears_keeps_every_key_and_downloads_nothing():
    """No weights: the engine answers a few seconds after launch, while the user types. A dialog there took
    the d of "dog" as Download and the rest of the prompt was lost; the offer is a banner that takes no
    key."""
    link = ScriptedLink([], weights_complete=False)
    link.start = lambda: None  # the engine answers once "a red " is typed (the test connects it)
    app = LanDiffApp(link=link)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: (field := mounted(app, "#param-cfg")) and field.value, what="the form")
        await pilot.press(*"a red ")
        link.connect()
        offered = lambda: app.query("#weights-banner") or len(app.screen_stack) > 1  # noqa: E731
        await until(pilot, offered, what="the first-run offer")  # (once a dialog: now a banner)
        await pilot.press(*"dog, yes: a ready dog")
        await pilot.pause(0.6)  # a pause, then more: still the prompt's
        await pilot.press(*" yes")
        prompt = app.query_one("#prompt")
        assert prompt.text == "a red dog, yes: a ready dog yes"
        assert app.focused is prompt and type(app.screen).__name__ == "Screen"
        assert not link.sent(p.DownloadWeights) and link.restarts == []
        offer = "The LanDiff weights are not (all) in"
        await until(pilot, lambda: offer in screen_text(app), timeout=30, what="the offer in view")
        assert await pilot.click("#banner-download")  # chosen: it asks, with the size
        assert type(app.screen).__name__ == "Confirm"
        assert "25 GB" in str(app.screen.query_one("Static").render())
        await pilot.press("n")
        assert await pilot.click("#banner-later")
        await until(pilot, lambda: not app.query("#weights-banner"), what="the offer to go")
        assert not link.sent(p.DownloadWeights)


async def test_a_question_takes_no_yes_typed_on_right_after_the_key_that_asked(monkeypatch):
    """Typing "ready" into the Weights tab by mistake: its d asks to download 25 GB and the y typed right
    after is not an answer; a y once the question has been read is."""
    from landiff_tui.screens import confirm

    guard = getattr(confirm, "GUARD_S", 0)
    # here long enough that however loaded this machine is, the y typed right after the d falls inside it
    monkeypatch.setattr(confirm, "GUARD_S", 30.0, raising=False)
    link = ScriptedLink([job(0)], weights_complete=False)
    link.model = "tiny"  # an engine serving the tiny model: no first-run offer
    app = LanDiffApp(link=link)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("f4")
        await until(
            pilot,
            lambda: (
                (tab := mounted(app, "WeightsView"))
                and tab.status
                and app.focused is tab.query_one("#weights-table")
            ),
            what="the Weights tab and its states",
        )
        await pilot.press(*"ready")
        assert type(app.screen).__name__ == "Confirm"
        assert not link.sent(p.DownloadWeights)
        monkeypatch.setattr(confirm, "GUARD_S", 0.2)  # a while later: read
        await pilot.pause(0.3)
        await pilot.press("y")
        await until(pilot, lambda: link.sent(p.DownloadWeights), what="the download, asked for")
    assert guard >= 0.3  # longer than between two keys of a word


async def test_one_keymap_the_job_page_takes_the_gallerys_keys_and_question_mark_works_in_the_list():
    link = ScriptedLink([job(0), job(1)])
    app = LanDiffApp(link=link)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("f3")
        await until(pilot, lambda: len(app.query_one("GalleryView").rows) == 2, what="the gallery")
        await pilot.press("down")  # the list: no text field, so ? is the key list's, as everywhere
        assert app.focused.id == "gallery-table"
        await pilot.press("question_mark")
        assert type(app.screen).__name__ == "Keys" and app.query_one("#search").value == ""
        listed = str(app.screen.query_one("#keys-list").render())
        for names in ("F1", "F5", "ctrl+p", "ctrl+q", "F12 / ?", "ctrl+g", "ctrl+d / del", "y", "n / esc"):
            assert f"  {names:<16} " in listed, names
        assert "Job detail" in listed and "Questions" in listed and "Everywhere" in listed
        await pilot.press("escape", "enter")
        await until(pilot, lambda: type(app.screen).__name__ == "JobDetail" and app.screen.job, what="detail")
        await pilot.press("e", "d", "c")  # the list's keys are chords; letters do nothing here
        assert type(app.screen).__name__ == "JobDetail"
        assert not notified(app, "clipboard")
        await pilot.press("ctrl+d")
        assert type(app.screen).__name__ == "Confirm"
        await pilot.press("n", "ctrl+e")
        await until(pilot, lambda: app.query_one("#tabs").active == "generate", what="the form")
        assert app.query_one("#prompt").text == job(0).prompt
        assert not link.sent(p.DeleteJob)
    from landiff_tui.keymap import JOB_KEYS, KEYMAP

    for action, keys in JOB_KEYS.items():  # the same keys for the same action, both places
        assert KEYMAP["gallery"][action].keys == KEYMAP["detail"][action].keys == keys.keys, action


async def test_the_engine_log_follows_its_newest_line_unless_scrolled_up():
    link = ScriptedLink([job(0)])
    link.log_lines = [f"line {index}" for index in range(100)]
    app = LanDiffApp(link=link)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: len(app.views) == 5 and link.connected, what="the tabs")
        await pilot.press("f5")
        view, log = app.query_one("EngineView"), app.query_one("#engine-log")

        async def more(*lines: str) -> None:
            link.log_lines += lines
            await view.action_refresh()
            await pilot.pause(0.1)
            await pilot.wait_for_scheduled_animations()

        def at_end() -> bool:
            return log.max_scroll_y > 0 and log.scroll_y == log.max_scroll_y

        async def showing(line: str, count: int) -> None:  # at the end, the line on the screen
            condition = lambda: log.line_count == count and at_end() and line in screen_text(app)  # noqa: E731
            await until(pilot, condition, timeout=30, what=f"{line} shown at the end")

        await showing("line 99", 100)
        await more("line 100", "line 101")
        await showing("line 101", 102)
        assert app.focused is log
        await pilot.press("pageup")  # the user reads further up: new lines leave them there
        await pilot.wait_for_scheduled_animations()
        where = log.scroll_y
        assert where < log.max_scroll_y
        await more("line 102")
        assert log.line_count == 103 and log.scroll_y == where
        await pilot.press("end")  # back at the end: it follows again
        await pilot.wait_for_scheduled_animations()
        await more("line 103", "line 104")
        await showing("line 104", 105)
        await pilot.press("f1", "f5")  # shown again: still at the newest line
        await more("line 105")
        await showing("line 105", 106)


async def test_ctrl_q_asks_once_and_the_question_is_on_the_screen():
    link = ScriptedLink([job(0, "running")])
    app = LanDiffApp(link=link)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: mounted(app, "QueueView") and app.query_one("QueueView").running)
        for step in range(1, 4):  # the running job reports while the user quits
            link.publish("job_progress", **progress("denoise", step, 50, chunk=1))
        await pilot.press("ctrl+q")
        for step in range(4, 8):
            link.publish("job_progress", **progress("denoise", step, 50, chunk=1))
        await pilot.press("ctrl+q")  # again: the question stays, alone
        await pilot.pause()

        def questions() -> list:
            return [screen for screen in app.screen_stack if type(screen).__name__ == "Confirm"]

        assert len(questions()) == 1 and app.screen is questions()[0]
        drawn = "A job is running. It continues in the engine"
        await until(pilot, lambda: drawn in screen_text(app), timeout=30, what="the question drawn")
        await pilot.press("n")
        await pilot.press("f3")
        await until(pilot, lambda: app.query_one("GalleryView").rows, what="the gallery")
        await pilot.press("ctrl+d")  # another question open: ctrl+q takes its place
        await until(pilot, lambda: "Delete job" in screen_text(app), timeout=30, what="the other question")
        await pilot.press("ctrl+q")
        await until(pilot, lambda: "Quit?" in screen_text(app), timeout=30, what="the quit question drawn")
        assert len(questions()) == 1 and "Delete job" not in screen_text(app)
        await answer_yes(pilot)
        await pilot.pause(0.1)
    assert app.return_code == 0 and not app.is_running and not link.sent(p.DeleteJob)


def partial_job(index: int = 0) -> p.JobSummary:
    """A tiny-model job of 40 frames (5 chunks, 41 frames) cancelled after its second chunk."""
    chunks = [p.ChunkTiming(index=i, denoise_s=1.0, decode_s=0.5, write_s=0.1) for i in range(2)]
    params = {**job(index).params, "frames": 40, "top_k": None, "top_p": 0.9, "cache": 0.0}
    return job(index, "cancelled_partial", params=params, chunk_timings=chunks)


async def test_the_gallery_fits_80_columns_and_gives_the_prompt_the_room():
    jobs = [partial_job(0), job(1), job(2, "interrupted"), job(3, "failed", error="out of memory")]
    app = LanDiffApp(link=ScriptedLink(jobs))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f3")
        await until(pilot, lambda: len(app.query_one("GalleryView").rows) == 4, what="the gallery")
        table = app.query_one("#gallery-table")

        def columns() -> dict[str, int]:
            return {str(column.label): column.get_render_width(table) for column in table.columns.values()}

        await pilot.pause()
        shown = columns()
        assert sum(shown.values()) <= table.scrollable_content_region.width, shown  # no sideways scrolling
        assert shown["prompt"] >= 32 and shown["status"] <= 10, shown
        statuses = [str(table.get_row_at(index)[1]) for index in range(4)]  # [0]: the marks
        assert statuses == ["kept 2/5", "done", "intr", "failed"]
        assert str(table.get_cell(jobs[0].id, "length")) == "2.1 s"  # what it kept: 17 frames at 8 fps
        count = str(app.query_one("#gallery-count").render())
        assert "kept n/m: cancelled, n of m chunks kept" in count and "intr: interrupted" in count
        await pilot.resize_terminal(120, 40)  # wider: every column, the prompt still the widest
        await until(pilot, lambda: len(columns()) == 9, what="every column")
        shown = columns()
        assert sum(shown.values()) <= table.scrollable_content_region.width
        assert shown["prompt"] == max(shown.values())


async def test_the_job_page_words_its_parameters_and_what_a_cancelled_job_kept():
    app = LanDiffApp(link=ScriptedLink([partial_job(0)]))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f3")
        await until(pilot, lambda: app.query_one("GalleryView").rows, what="the gallery")
        await pilot.press("enter")
        await until(pilot, lambda: type(app.screen).__name__ == "JobDetail" and app.screen.job, what="detail")
        body = str(app.screen.query_one("#detail-body").render())
        assert "None" not in body and "cancelled_partial" not in body and "top_k" not in body
        assert "cancelled, part kept" in body.splitlines()[0]
        for line in (
            "length: 5.1 s: 41 frames at 8 fps in 5 chunks (asked for 40, rounded up to a chunk boundary)",
            "kept: 2 of 5 chunks, 2.1 s (17 frames) as a shorter video",
            "LLM CFG: 7.5 (default)",
            "top-k: off (default)",
            "top-p: 0.9",
            "step cache: off (default)",
            "overlap: 1 latent frame (the model's default)",
            "fps: 8 fps",
        ):
            assert line in body, line


def progress(stage: str, step: int, total: int, chunk: int, chunks: int = 3) -> dict:
    return dict(
        job_id=job(0).id,
        stage=stage,
        step=step,
        total=total,
        chunk=chunk,
        chunks=chunks,
        rate=4.0,
        eta_s=1.0,
        frames_written=0,
        video_seconds=0.0,
        job_eta_s=9.0,
    )


async def test_the_queue_shows_only_the_running_jobs_present_state(tmp_path):
    link = ScriptedLink([job(0, "running")])
    app = LanDiffApp(link=link)
    frame = tmp_path / "chunk-000.png"
    Image.new("RGB", (24, 16), (200, 10, 10)).save(frame)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("f2")
        await until(pilot, lambda: (queue := mounted(app, "QueueView")) and queue.running, what="the job")
        queue = app.query_one("QueueView")

        def detail(stage: str) -> str:
            return str(queue.query_one(f"#stage-{stage} .stage-detail").render())

        for stage, total in (("text", 2), ("tokens", 17), ("denoise", 4), ("decode", 3), ("write", 1)):
            link.publish("job_progress", **progress(stage, total, total, chunk=1))
        link.publish(
            "chunk_finished",
            job_id=job(0).id,
            index=0,
            chunks=3,
            first_frame=0,
            last_frame=48,
            frames_written=49,
            video_seconds=6.1,
            preview=str(frame),
            video_partial="/v.mp4",
            timings_s={},
        )
        link.publish("job_progress", **progress("denoise", 1, 4, chunk=2))
        await until(pilot, lambda: detail("denoise").startswith("1/4"), what="chunk 2 denoising")
        assert detail("decode") == detail("write") == ""  # chunk 1's decode is not chunk 2's
        assert detail("tokens").startswith("17/17")
        assert detail("chunk") == "chunk 2 of 3, 1/3 done"
        link.publish("job_progress", **progress("denoise", 1, 4, chunk=3))
        await until(pilot, lambda: detail("chunk") == "chunk 3 of 3, 2/3 done", what="the third chunk")
        assert queue.query_one("#stage-chunk ProgressBar").progress == 2  # not full while it runs

        # a fresh connection mid-job: the engine's status says where the job is
        link.progress = link.publish("job_progress", **progress("decode", 2, 3, chunk=3))
        link.last_chunk = None
        queue.clear_live()
        link.connect()
        await until(pilot, lambda: detail("decode").startswith("2/3"), what="the caught-up stage")
        assert detail("text") == detail("tokens") == detail("denoise") == "done" and detail("write") == ""

        link.jobs = []
        link.publish("job_finished", job_id=job(0).id, video="/v.mp4", frames=25, fps=8)
        await until(pilot, lambda: queue.running is None, what="the job to end")
        assert not queue.query_one("#stage-chunk").display and not queue.query_one("#chunk-preview").display
        assert all(detail(stage) == "" for stage in ("text", "tokens", "denoise", "decode", "write"))
        assert str(queue.query_one("#live-title").render()) == "nothing is running"


async def test_a_preset_sets_only_its_fields_and_the_box_forgets_it_after_an_edit():
    app = LanDiffApp(link=ScriptedLink([job(0)]))
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: app.query_one("GenerateView").presets, what="the presets")
        await set_field(pilot, "seed", "7")
        box = app.query_one("#preset")
        box.value = "quick draft"  # steps 20, no seed
        await pilot.pause(0.1)
        assert app.query_one("#param-steps").value == "20" and app.query_one("#param-seed").value == "7"
        assert box.value == "quick draft"
        await set_field(pilot, "cfg", "9")  # a field the preset leaves alone: it still names the fields
        await pilot.pause(0.1)
        assert box.value == "quick draft"
        await set_field(pilot, "steps", "30")  # one it sets: the box no longer says what the fields hold
        await pilot.pause(0.1)
        assert box.is_blank() and app.query_one("#param-cfg").value == "9"
        box.value = "reference defaults"  # one that does set the seed
        await pilot.pause(0.1)
        assert app.query_one("#param-seed").value == "42" and box.value == "reference defaults"


async def test_filling_the_form_from_a_job_checks_it_once_not_once_per_field(monkeypatch):
    from landiff_tui.views.generate import GenerateView

    app = LanDiffApp(link=ScriptedLink([job(0)]))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: (field := mounted(app, "#param-cfg")) and field.value, what="the form")
        await pilot.pause(0.2)
        await pilot.pause()  # and what the form's mount posted is handled
        checks = []
        original = GenerateView.check
        monkeypatch.setattr(GenerateView, "check", lambda view: checks.append(1) or original(view))
        params = {**job(1).params, "cfg": 9.5, "steps": 30, "seed": 5, "motion_score": 0.4}
        app.query_one(GenerateView).fill(params, job(1).prompt)
        await pilot.pause()  # what the fill posted is handled
        assert app.query_one("#param-steps").value == "30" and not app.query_one("#submit").disabled
        assert len(checks) == 1, f"{len(checks)} checks for one fill: its fields' changes were checked too"


async def test_a_submitted_prompt_clears_and_up_brings_it_back():
    link = ScriptedLink([])
    app = LanDiffApp(link=link)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: (field := mounted(app, "#param-cfg")) and field.value, what="the form")
        await pilot.press(*"A heron")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: app.query_one("#prompt").text == "", what="the prompt to clear")
        await pilot.press("ctrl+s")  # a second one: nothing to submit
        assert len(link.sent(p.Submit)) == 1
        await pilot.press("f1", "up")
        assert app.query_one("#prompt").text == "A heron"


def palette_names(app) -> list[str]:
    from landiff_tui.commands import entries

    return [entry.name for entry in entries(app) if entry.applies(app)]


async def test_the_palette_has_every_action_of_every_tab_where_it_applies():
    from landiff_tui.commands import entries
    from landiff_tui.keymap import KEYMAP, TABS
    from landiff_tui.views.base import View

    link = ScriptedLink([job(0, "queued", thumbnail_path=None), job(1)])
    app = LanDiffApp(link=link)
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: len(app.query(View)) == 5 and app.engine_info, what="the tabs")
        await pilot.press("f3")
        await until(pilot, lambda: app.query_one("GalleryView").rows, what="the gallery")
        offered = {(entry.tab, entry.action) for entry in entries(app)}
        for tab, _ in TABS:
            for action in KEYMAP[tab]:
                assert (tab, action) in offered, f"{tab}: {action} is not in the palette"
        names = palette_names(app)
        assert "Switch the engine to the tiny model" not in names  # it serves tiny
        assert "Switch the engine to the landiff model" in names
        assert any(name.startswith("Re-run job 00000000") for name in names)
        assert "Cancel the download or verification" not in names  # none runs
        assert "Delete the selected preset" not in names  # none chosen
        assert "Restart the engine" in names and "Start the engine" not in names
        link.connected = False
        app.engine_state("absent", "no engine is running")
        names = palette_names(app)
        assert "Start the engine" in names and "Stop the engine" not in names
        link.connect()
        await pilot.press("ctrl+p", *"re-run job", "enter")  # runs it
        await until(pilot, lambda: link.sent(p.Submit), what="the re-run")


async def test_a_key_changed_in_the_keymap_changes_the_bindings_the_palette_and_the_key_list(monkeypatch):
    from dataclasses import replace

    from textual.binding import Binding
    from textual.command import CommandList

    from landiff_tui import keymap
    from landiff_tui.screens.confirm import Confirm
    from landiff_tui.screens.job_detail import JobDetail
    from landiff_tui.views.engine_view import EngineView
    from landiff_tui.views.gallery import GalleryView
    from landiff_tui.views.generate import GenerateView
    from landiff_tui.views.queue import QueueView
    from landiff_tui.views.weights import WeightsView
    from landiff_tui.widgets.lists import ListTable

    bound = {"app": LanDiffApp, "generate": GenerateView, "queue": QueueView, "gallery": GalleryView}
    bound |= {"weights": WeightsView, "engine": EngineView, "detail": JobDetail, "confirm": Confirm}
    bound |= {"list": ListTable}
    assert set(bound) == set(keymap.KEYMAP)
    for scope, owner in bound.items():  # each binds its keys from the keymap
        assert keymap.bindings(scope) == owner.BINDINGS, scope
    cancel = keymap.KEYMAP["queue"]["cancel_job"]
    assert cancel.keys == ("x",)
    monkeypatch.setitem(keymap.KEYMAP["queue"], "cancel_job", replace(cancel, keys=("c",)))
    made = [b for b in keymap.bindings("queue") if isinstance(b, Binding) and b.action == "cancel_job"]
    assert [binding.key for binding in made] == ["c"]

    app = LanDiffApp(link=ScriptedLink([job(0, "queued")]))
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: len(app.views) == 5 and app.query_one("QueueView").jobs, what="the queue")
        await pilot.press("ctrl+p", *"cancel a queued")

        def shown() -> list[str]:
            found = app.screen.query(CommandList)
            if not found:
                return []
            commands = found.first()
            return [str(commands.get_option_at_index(i).prompt) for i in range(commands.option_count)]

        await until(pilot, lambda: "Cancel a queued or running job  [c]" in shown(), what="the palette's hit")
        await pilot.press("escape", "f12")
        await until(pilot, lambda: type(app.screen).__name__ == "Keys", what="the key list")
        listed = str(app.screen.query_one("#keys-list").render())
        assert f"  {'c':<16} Cancel job" in listed and f"  {'x':<16} Cancel job" not in listed


async def test_keys_lists_every_key_and_the_footer_fits_the_tabs_keys_at_80x24():
    from landiff_tui.screens.keys import sections

    app = LanDiffApp(link=ScriptedLink([job(0)]))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: len(app.query("View")) == 5, what="the tabs")
        wanted_keys = {"f1": "Submit", "f2": "Cancel job", "f3": "Re-run", "f4": "Download", "f5": "Stop"}
        for tab, wanted in wanted_keys.items():
            await pilot.press(tab)
            await pilot.pause(0.1)
            keys = [key for key in app.screen.query("FooterKey") if key.region.width]
            shown = [key.description for key in keys]
            assert wanted in shown and "Keys" in shown, (tab, shown)
            palette = next(key for key in keys if key.description == "palette")
            assert max(key.region.right for key in keys if key is not palette) <= palette.region.x, shown
        await pilot.press("f3", "question_mark")  # from the search box it types
        assert app.query_one("#search").value == "?"
        await pilot.press("f12")
        assert type(app.screen).__name__ == "Keys"
        listed = str(app.screen.query_one("#keys-list").render())
        assert listed.index("Gallery") < listed.index("Generate")  # the tab shown first
        for _, _, keys in sections():
            for names, what in keys:
                assert f"{names:<16} {what}" in listed


async def test_a_failed_jobs_detail_shows_its_error_and_copy_says_where_it_went():
    app = LanDiffApp(link=ScriptedLink([job(0, "failed", error="CUDA out of memory", video_path=None)]))
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("f3")
        await until(pilot, lambda: app.query_one("GalleryView").rows, what="the gallery")
        await pilot.press("enter")
        await until(
            pilot, lambda: type(app.screen).__name__ == "JobDetail" and app.screen.job, what="details"
        )
        body = str(app.screen.query_one("#detail-body").render())
        assert "failed: CUDA out of memory" in body.splitlines()[2]  # at the top, not at the end
        assert str(app.screen.query_one("#detail-preview").render()).startswith("no video: the job failed")
        await pilot.press("ctrl+t")  # the Gallery's key for it
        assert notified(app, "prompt sent to the terminal's clipboard (OSC 52")


def test_no_color_leaves_no_colour(tmp_path):
    """NO_COLOR on a real pseudo-terminal: every colour the first screens write is a grey."""
    import pty
    import re
    import select

    env = {**os.environ, "LANDIFF_RUNTIME_DIR": str(short_dir()), "NO_COLOR": "1", "COLORTERM": "truecolor"}
    env.update(TERM="xterm-256color", COLUMNS="80", LINES="24")
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.execvpe(sys.executable, [sys.executable, "-m", "landiff_tui.app", "--no-start"], env)
    out = b""
    deadline = time.monotonic() + WAIT_S
    try:
        while b"Submit" not in out and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                out += os.read(fd, 1 << 16)
        os.write(fd, b"\x1b[13~")  # F3: the Gallery's table and its zebra stripes
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            if select.select([fd], [], [], 0.1)[0]:
                out += os.read(fd, 1 << 16)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    assert b"Submit" in out
    coloured = []
    for sgr in re.findall(rb"\x1b\[([0-9;:]*)m", out):
        parts = [int(part) for part in re.split(rb"[;:]", sgr) if part]
        while parts:
            code = parts.pop(0)
            if code in (38, 48, 58) and parts and parts[0] == 2:
                red, green, blue = parts[1:4]
                del parts[:4]
                if not red == green == blue:
                    coloured.append((red, green, blue))
            elif code in (38, 48, 58) and parts and parts[0] == 5:
                if not (parts[1] in (0, 7, 8, 15, 16, 231) or parts[1] >= 232):
                    coloured.append(("256", parts[1]))
                del parts[:2]
            elif 31 <= code <= 36 or 41 <= code <= 46 or 91 <= code <= 96 or 101 <= code <= 106:
                coloured.append(("ansi", code))
    assert not coloured


async def test_the_link_refuses_an_engine_socket_in_a_runtime_dir_that_is_not_its_own(tmp_path):
    """Nothing is sent to a socket reached through a symlinked runtime dir (another user could plant one)."""
    from landiff_tui.client import STOPPED, EngineLink

    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    received: list[bytes] = []

    async def answer(reader, writer):
        received.append(await reader.read(100))
        writer.close()

    server = await asyncio.start_unix_server(answer, path=str(real / "engine.sock"))
    (tmp_path / "link").symlink_to(real)
    states: list[tuple[str, str]] = []
    link = EngineLink(
        on_event=lambda event: None,
        on_connected=lambda hello, caught_up: None,
        on_state=lambda state, message: states.append((state, message)),
        autostart=False,
        path=tmp_path / "link" / "engine.sock",
    )
    async with server:
        await asyncio.wait_for(link.run(), WAIT_S)
        await asyncio.sleep(0.1)
    assert states and states[-1][0] == STOPPED and "link" in states[-1][1]
    assert received in ([], [b""])  # the engine heard nothing


async def test_a_restart_waits_until_the_old_engine_has_left(tmp_path, monkeypatch):
    """A new engine is started only once the old one lets go of the data dir's lock (an engine stopping
    waits for a worker inside a torch import: on a loaded machine that took over 20 s, and a new engine
    started before then refused to serve)."""
    import fcntl
    import os

    from engine import settings
    from engine.paths import lock_path
    from landiff_tui.client import STARTING, EngineLink

    monkeypatch.setenv(settings.DATA_DIR.name, str(tmp_path))
    held = os.open(lock_path(), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)
    states: list[tuple[str, str]] = []
    link = EngineLink(lambda event: None, lambda hello, caught: None, lambda *state: states.append(state))
    started: list[float] = []

    async def start_engine(model=None, verb="starting"):
        started.append(asyncio.get_running_loop().time())

    link.start_engine = start_engine
    restart = asyncio.create_task(link.restart("tiny"))
    await asyncio.sleep(1.5)
    assert not started and (STARTING, "waiting for the engine to stop...") in states
    released = asyncio.get_running_loop().time()
    os.close(held)
    await asyncio.wait_for(restart, WAIT_S)
    assert started and started[0] >= released and link.model == "tiny"


async def test_missed_events_are_not_lost_to_live_ones_in_the_same_read(tmp_path):
    """The subscribe reply and a live event after it can arrive in one read: the link delivers the replayed
    events first, then the state, then the live one (it took the live one's number as seen, and dropped
    the replayed job_finished: the dropped-connection test failed so on a loaded machine)."""
    import json

    from engine.generation.lengths import limits, rules_for
    from engine.protocol import PROTOCOL_VERSION
    from landiff_tui.client import EngineLink

    def line(message: dict) -> bytes:
        return (json.dumps({"v": PROTOCOL_VERSION, **message}) + "\n").encode()

    hello = {"protocol": PROTOCOL_VERSION, "engine_version": "x", "model": "tiny", "instance": "i", "pid": 1}
    hello |= {"seq": 1, "limits": limits(rules_for("tiny"))}

    async def answer(reader, writer):
        while request := await reader.readline():
            request = json.loads(request)
            if request["type"] == "hello":
                writer.write(line({"id": request["id"], "ok": True, "result": hello}))
            elif request["type"] == "subscribe":
                finished = {"event": "job_finished", "job_id": "a", "video": "a.mp4", "frames": 13, "fps": 8}
                missed = [{"v": 1, "seq": 2, **finished}]
                reply = {"seq": 2, "instance": "i", "missed": missed, "gap": False, "active": []}
                live = {"seq": 3, "event": "job_deleted", "job_id": "a"}
                writer.write(line({"id": request["id"], "ok": True, "result": reply}) + line(live))
            await writer.drain()

    run = short_dir()
    run.mkdir(mode=0o700, exist_ok=True)
    server = await asyncio.start_unix_server(answer, path=str(run / "engine.sock"))
    order: list[str] = []
    link = EngineLink(
        on_event=lambda event: order.append(event.event),
        on_connected=lambda hello, caught_up: order.append("connected"),
        on_state=lambda state, message: order.append(message),
        autostart=False,
        path=run / "engine.sock",
    )
    link.instance, link.last_seq = "i", 1  # reconnecting: seen up to 1
    async with server:
        link.start()
        for _ in range(100):
            if len(order) == 3:
                break
            await asyncio.sleep(0.05)
        await link.close()
    assert order == ["job_finished", "connected", "job_deleted"]


# issue 26, point 9: the progress lines


async def test_stage_twos_text_report_keeps_the_tokens_bar_and_a_notification_leaves_the_lines_visible():
    link = ScriptedLink([job(0, "running")])
    app = LanDiffApp(link=link)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await until(pilot, lambda: len(app.query("QueueView")) == 1 and link.connected, what="the queue tab")
        await pilot.press("f2")
        queue = app.query_one("QueueView")
        fields = dict(job_id=job(0).id, chunk=1, chunks=1, rate=4.0, frames_written=0, video_seconds=0.0)

        def bar(stage: str):
            return queue.query_one(f"#stage-{stage} ProgressBar")

        link.publish("job_progress", stage="text", step=1, total=2, eta_s=1.0, job_eta_s=None, **fields)
        link.publish("job_progress", stage="tokens", step=17, total=17, eta_s=0.0, job_eta_s=None, **fields)
        await until(pilot, lambda: bar("tokens").progress == 17, what="the tokens bar full")
        info = queue.query_one("#live-info")
        assert "tokens ETA 0:00" in str(info.render())  # the stage's own, named so: no job ETA yet
        link.publish("job_progress", stage="text", step=2, total=2, eta_s=0.0, job_eta_s=95.0, **fields)
        await until(pilot, lambda: "2/2" in str(queue.query_one("#stage-text .stage-detail").render()))
        assert bar("tokens").progress == bar("tokens").total == 17  # stage 2's text encoder empties nothing
        assert bar("denoise").progress == 0
        assert "   ETA 1:35" in str(info.render())
        link.publish("job_progress", stage="denoise", step=20, total=50, eta_s=7.5, job_eta_s=95.0, **fields)
        await until(pilot, lambda: bar("denoise").progress == 20, what="the denoising bar")

        app.notify("job 12345678 cancelling: a notification long enough to take its two lines", title="t")
        await until(pilot, lambda: any(t.region for t in app.screen.query("Toast")), what="the toast")
        toasts = [toast.region for toast in app.screen.query("Toast")]
        lines = [
            widget.region for widget in queue.query(".stage, .stage-detail, #live-info") if widget.display
        ]
        assert len(lines) >= 11 and all(line.right <= 80 for line in lines)
        assert not [(t, line) for t in toasts for line in lines if t.overlaps(line)], (toasts, lines)


async def test_the_release_files_of_one_name_are_told_apart_at_80_columns(monkeypatch):
    """Issue 26, point 14: three special_tokens_map.json (the release's T5's, flan-T5's, CLIP's), each a
    file of its own: their folders show within the table, not past its right edge."""
    from engine.weights.downloads import planned_files

    from . import tui_double

    files = planned_files(Path("/nonexistent"), "all", clip=True)
    plain = tui_double.weights_status

    def release_status(complete: bool) -> p.WeightsStatusReply:
        states = [
            p.WeightFileState(
                local=item.local, state="missing", size=None, path=item.local, optional=item.optional
            )
            for item in files
        ]
        return plain(complete).model_copy(update={"files": states})

    monkeypatch.setattr(tui_double, "weights_status", release_status)
    link = ScriptedLink([job(0)], weights_complete=False)
    app = LanDiffApp(link=link)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f4")
        table = app.query_one("#weights-table")
        await until(pilot, lambda: table.row_count == len(files), what="the files")
        keys = [key.value for key in table.rows]
        assert sorted(keys) == sorted(item.local for item in files)  # each file once
        column = list(table.columns.values())
        start = sum(col.get_render_width(table) for col in column[:2]) + 1  # the file's text begins here
        named = [table.get_row_at(index)[2] for index in range(table.row_count)]
        same = [text for text in named if text.endswith("/special_tokens_map.json")]
        assert len(same) == 3 and len(set(same)) == 3, named
        assert {text.split("/")[0] for text in same} == {"LanDiff", "flan-t5-xxl", "clip-vit-base-patch32"}
        assert "t5-v1_1-xxl/special_tokens_map.json" in " ".join(same)
        assert all(start + len(text) <= table.scrollable_content_region.width for text in same), (start, same)


async def test_the_queue_moves_the_chosen_job_and_pauses_and_resumes_with_keys():
    link = ScriptedLink([job(0, "running"), job(1, "queued"), job(2, "queued"), job(3, "queued")])
    app = LanDiffApp(link=link)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("f2")
        await until(pilot, lambda: (queue := mounted(app, "QueueView")) and len(queue.jobs) == 4, what="jobs")
        queue = app.query_one("QueueView")
        table = queue.query_one("#queue-table")

        def rows() -> list[str]:
            return [str(row.value) for row in table.rows]

        assert rows() == [job(n).id for n in (0, 1, 2, 3)]
        table.move_cursor(row=3)
        await pilot.press("t")  # job 3 runs next
        await until(pilot, lambda: rows() == [job(n).id for n in (0, 3, 1, 2)], what="job 3 moved to the top")
        assert (link.sent(p.MoveJob)[-1].job_id, link.sent(p.MoveJob)[-1].to) == (job(3).id, "top")
        assert table.cursor_row == 1  # the cursor went with it
        await pilot.press("J")  # and one place down again
        await until(pilot, lambda: rows() == [job(n).id for n in (0, 1, 3, 2)], what="job 3 moved down")
        table.move_cursor(row=0)
        await pilot.press("t")  # the running job has left the queue: nothing is asked
        await pilot.pause()
        assert len(link.sent(p.MoveJob)) == 2
        await pilot.press("p")
        await until(pilot, lambda: queue.paused, what="the queue paused")
        await pilot.press("p")
        await until(pilot, lambda: not queue.paused, what="the queue resumed")
        assert [request.paused for request in link.sent(p.PauseQueue)] == [True, False]


async def test_a_queued_jobs_page_says_why_it_waits():
    from landiff_tui.screens.job_detail import JobDetail

    link = ScriptedLink([job(0, "running"), job(1, "queued"), job(2, "queued")])
    app = LanDiffApp(link=link)
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: link.connected, what="the engine")

        async def page(job_id: str) -> str:
            app.push_screen(JobDetail(job_id))
            await until(pilot, lambda: isinstance(app.screen, JobDetail) and app.screen.job, what="the page")
            body = str(app.screen.query_one("#detail-body").render())
            app.pop_screen()
            await pilot.pause()
            return body

        assert "waiting: 1 job(s) ahead of it in the queue" in await page(job(2).id)
        link.paused = True
        assert "waiting: the queue is paused" in await page(job(1).id)
        assert "waiting" not in await page(job(0).id)  # running


# issue 28: lists as in lazygit and k9s


async def test_j_k_g_G_move_in_both_lists_and_question_mark_opens_the_keys_outside_a_text_field():
    link = ScriptedLink([job(0, "running"), job(1, "queued"), job(2, "queued"), job(3)])
    app = LanDiffApp(link=link)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("f2")
        await until(pilot, lambda: (queue := mounted(app, "QueueView")) and len(queue.jobs) == 3, what="jobs")
        table = app.query_one("#queue-table")
        await pilot.press("j", "j")
        assert table.cursor_row == 2
        await pilot.press("k", "G")
        assert table.cursor_row == 2
        await pilot.press("g")
        assert table.cursor_row == 0 and not link.sent(p.MoveJob)  # J / K move jobs, j / k the cursor
        await pilot.press("question_mark")
        assert type(app.screen).__name__ == "Keys"
        await pilot.press("escape", "f3")
        gallery = app.query_one("GalleryView")
        await until(pilot, lambda: len(gallery.rows) == 4, what="the gallery")
        await pilot.press("down", "G")
        table = app.query_one("#gallery-table")
        assert table.cursor_row == 3 and app.focused is table
        await pilot.press("k", "k", "j")
        assert table.cursor_row == 2
        await pilot.press("g", "k")  # k on the first row stays in the list (up goes to the search box)
        assert table.cursor_row == 0 and app.focused is table
        await pilot.press("question_mark")
        assert type(app.screen).__name__ == "Keys"
        listed = str(app.screen.query_one("#keys-list").render())
        assert "Lists (Queue, Gallery, Weights)" in listed and f"  {'G':<16} Last row" in listed
        await pilot.press("escape", "slash", "question_mark")  # in the search box, ? is a character
        assert app.focused.id == "search" and app.query_one("#search").value == "?"
        assert type(app.screen).__name__ == "Screen"


def seeded(index: int, seed: int) -> p.JobSummary:
    return job(index, params={**job(index).params, "seed": seed})


async def test_the_gallery_sorts_by_a_clicked_header_or_s_and_shows_the_direction():
    jobs = [seeded(0, 5), seeded(1, 1), seeded(2, 3)]  # newest first
    link = ScriptedLink(jobs)
    app = LanDiffApp(link=link)
    async with app.run_test(size=(120, 32)) as pilot:
        await pilot.press("f3")
        gallery = app.query_one("GalleryView")
        await until(pilot, lambda: len(gallery.rows) == 3, what="the gallery")
        table = app.query_one("#gallery-table")

        def order() -> list[int]:
            return [jobs.index(next(j for j in jobs if j.id == row.value)) for row in table.rows]

        def headers() -> list[str]:
            return [str(column.label) for column in table.ordered_columns]

        assert order() == [0, 1, 2] and "created▼" in headers()
        await pilot.press("down")
        table.move_cursor(row=2)  # the cursor stays on its job through every sort
        x = 1 + sum(c.get_render_width(table) for c in table.ordered_columns[: headers().index("seed")])
        await pilot.click("#gallery-table", offset=(x, 0))  # seed's header: by seed, the smallest first
        await until(pilot, lambda: order() == [1, 2, 0], what="sorted by seed")
        assert "seed▲" in headers() and "created" in headers() and table.cursor_row == 1
        await pilot.click("#gallery-table", offset=(x, 0))  # again: the other way
        await until(pilot, lambda: order() == [0, 2, 1], what="sorted by seed, largest first")
        assert "seed▼" in headers()
        await pilot.press("S")  # the sort key's reverse
        assert order() == [1, 2, 0] and "seed▲" in headers()
        gallery.sort_by("length", False)
        await pilot.press("s", "s")  # the next column, and the next: past length, fps, then seed
        assert "seed▲" in headers() and order() == [1, 2, 0]
        assert not link.sent(p.Submit) and not link.sent(p.DeleteJob)
        gallery.sort_by("created", True)
        await until(pilot, lambda: order() == [0, 1, 2], what="newest first")
        table.move_cursor(row=0)
        await pilot.press("S")  # created is the engine's: the oldest first, asked of it
        await until(pilot, lambda: order() == [2, 1, 0], what="oldest first")
        assert link.sent(p.ListJobs)[-1].sort == "oldest" and "created▲" in headers()
        assert table.cursor_row == 2  # still on job 0


async def test_marked_jobs_are_rerun_and_deleted_together_after_one_question():
    jobs = [job(index) for index in range(4)]
    link = ScriptedLink(jobs)
    app = LanDiffApp(link=link)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("f3")
        gallery = app.query_one("GalleryView")
        await until(pilot, lambda: len(gallery.rows) == 4, what="the gallery")
        table = app.query_one("#gallery-table")

        def marks() -> list[str]:
            return [str(table.get_row_at(index)[0]) for index in range(table.row_count)]

        await pilot.press("down", "space", "j", "space")  # space marks and moves down: jobs 0 and 2
        assert marks() == ["✓", "", "✓", ""] and table.cursor_row == 3
        assert "2 marked" in str(app.query_one("#gallery-count").render())
        await pilot.press("ctrl+r")
        await until(pilot, lambda: "Re-run the 2 marked jobs?" in screen_text(app), what="one question")
        await answer_yes(pilot)
        await until(pilot, lambda: len(link.sent(p.Submit)) == 2, what="two re-runs")
        assert [r.params.seed for r in link.sent(p.Submit)] == [
            jobs[0].params["seed"],
            jobs[2].params["seed"],
        ]
        await until(pilot, lambda: marks() == [""] * 4, what="the marks cleared")
        await pilot.press("ctrl+a")  # every job; escape clears them, the search stays where it is
        assert marks() == ["✓"] * 4
        await pilot.press("escape")
        assert marks() == [""] * 4 and app.focused is table
        await pilot.press("g", "space", "space")
        await pilot.press("delete")
        await until(pilot, lambda: "Delete the 2 marked jobs and their files?" in screen_text(app))
        await answer_yes(pilot)
        await until(pilot, lambda: len(link.sent(p.DeleteJob)) == 2, what="two deletions")
        assert [(r.job_id, r.delete_files) for r in link.sent(p.DeleteJob)] == [
            (jobs[0].id, True),
            (jobs[1].id, True),
        ]
        assert len(link.sent(p.Submit)) == 2 and gallery.marked == set()


# real pixels (kitty / sixel through textual-image), the job's frame strip, OSC 8 links (issue 28, point 7)


def test_the_renderer_is_decided_once_half_blocks_unless_the_terminal_said_kitty_or_sixel(monkeypatch):
    from landiff_tui.widgets import terminal_image

    monkeypatch.setattr(terminal_image, "_detected", None)
    assert terminal_image.renderer() == "halfblocks"  # not asked at start: half blocks
    assert terminal_image.detect(tty=False) == "halfblocks"  # no terminal: the library is not even asked
    with monkeypatch.context() as missing:  # textual-image not installed
        missing.setitem(sys.modules, "textual_image", None)
        missing.setitem(sys.modules, "textual_image.renderable", None)
        assert terminal_image.detect(tty=True) == "halfblocks"
    renderable = pytest.importorskip("textual_image.renderable")
    for answer, kind in ((renderable.TGPImage, "kitty"), (renderable.SixelImage, "sixel")):
        monkeypatch.setattr(renderable, "Image", answer)  # what the terminal answered at import
        assert terminal_image.detect(tty=True) == kind and terminal_image.renderer() == kind
    monkeypatch.setattr(renderable, "Image", renderable.HalfcellImage)
    assert terminal_image.detect(tty=True) == "halfblocks"


async def test_a_pilot_run_draws_half_blocks_and_a_forced_renderer_draws_with_textual_image(
    monkeypatch, tmp_path
):
    import importlib.util

    from textual.app import App

    from landiff_tui.widgets import terminal_image
    from landiff_tui.widgets.preview import FramePreview

    monkeypatch.setattr(terminal_image, "_detected", "kitty")  # the terminal said kitty at start...
    picture = tmp_path / "frame.png"
    Image.new("RGB", (30, 20), (200, 30, 40)).save(picture)

    class Previews(App):
        def compose(self):
            yield FramePreview(id="auto", cells=(12, 4))
            if importlib.util.find_spec("textual_image") is not None:
                yield FramePreview(id="kitty", cells=(12, 4), renderer="kitty")
                yield FramePreview(id="sixel", cells=(12, 4), renderer="sixel")

    app = Previews()
    async with app.run_test(size=(40, 20)) as pilot:
        auto = app.query_one("#auto", FramePreview)
        auto.show_image(picture)  # ...but a headless (Pilot) run has no terminal to draw pixels in
        assert auto.renderer == "halfblocks" and not auto.pixels and isinstance(auto.content, HalfBlocks)
        assert (auto.content.pixels == (200, 30, 40)).all()
        if importlib.util.find_spec("textual_image") is None:
            return
        from textual_image.widget import SixelImage, TGPImage

        for kind, widget in (("kitty", TGPImage), ("sixel", SixelImage)):
            preview = app.query_one(f"#{kind}", FramePreview)
            preview.show_image(picture)
            await pilot.pause()
            assert preview.pixels and isinstance(preview.image, widget)
            assert preview.image.image.size == (30, 20) and preview.image.display
            assert preview.image.image.getpixel((3, 3)) == (200, 30, 40)
            preview.update("no preview yet")  # words in place of the picture
            await pilot.pause()
            assert not preview.image.display and preview.text.display


async def test_the_job_detail_shows_a_strip_of_the_videos_frames_each_with_its_time(tmp_path):
    import imageio_ffmpeg

    from landiff_tui.screens.job_detail import JobDetail
    from landiff_tui.widgets.preview import FramePreview, FrameStrip, time_words

    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250), (250, 0, 250)]
    colours += [(250, 250, 250), (0, 0, 0)]  # 8 frames at 4 fps, one colour each
    path = tmp_path / "video.mp4"
    writer = imageio_ffmpeg.write_frames(str(path), (64, 48), fps=4, macro_block_size=16)
    writer.send(None)
    for colour in colours:
        writer.send(np.full((48, 64, 3), colour, np.uint8).tobytes())
    writer.close()
    link = ScriptedLink([job(0, video_path=str(path))])
    app = LanDiffApp(link=link)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: mounted(app, "#param-seed"), what="the first frame")
        app.push_screen(JobDetail(job(0).id))
        await until(pilot, lambda: isinstance(app.screen, JobDetail) and app.screen.job, what="the detail")
        strip = app.screen.query_one(FrameStrip)
        await until(
            pilot,
            lambda: (
                len(pictures := strip.query(FramePreview)) == 5
                and all(hasattr(picture.content, "pixels") for picture in pictures)
            ),
            what="the strip's five frames drawn",
        )
        assert strip.display and strip.shown == [0, 2, 4, 5, 7]  # first, last, evenly between: 5 at 100 wide
        times = [str(label.render()) for label in strip.query(".strip-time")]
        assert times == [time_words(i / 4) for i in (0, 2, 4, 5, 7)] and times[-1] == "0:01.8"
        for picture, index in zip(strip.query(FramePreview), strip.shown, strict=True):
            pixels = picture.content.pixels.reshape(-1, 3).astype(int)
            assert np.abs(pixels.mean(axis=0) - colours[index]).max() < 40, index
    assert [FrameStrip().count_for(width) for width in (20, 44, 60, 200)] == [2, 3, 4, 5]


def test_the_job_details_paths_are_osc8_links_naming_this_host():
    import socket

    from textual.content import Content

    from landiff_tui.screens.job_detail import describe

    shown = job(0, tokens_path="/data/outputs/0/tokens 1.npy", sidecar_path="/data/outputs/0/job.json")
    content = Content.from_markup(describe(shown))
    links = {seg.text: seg.style.link for seg in content.render_segments() if seg.style and seg.style.link}
    host = socket.gethostname()
    assert links == {
        "/data/outputs/00000000/video.mp4": f"file://{host}/data/outputs/00000000/video.mp4",
        "/data/outputs/0/tokens 1.npy": f"file://{host}/data/outputs/0/tokens%201.npy",
        "/data/outputs/0/job.json": f"file://{host}/data/outputs/0/job.json",
    }


def test_only_a_terminal_that_names_itself_a_graphics_one_is_asked_at_start():
    from landiff_tui.widgets.terminal_image import graphics_hinted

    for env in (
        {"TERM": "xterm-kitty"},
        {"KITTY_WINDOW_ID": "1"},
        {"TERM_PROGRAM": "WezTerm"},
        {"TERM": "foot"},
    ):
        assert graphics_hinted(env), env
    for env in ({"TERM": "xterm-256color"}, {"TERM": "screen", "TERM_PROGRAM": "tmux"}, {}):
        assert not graphics_hinted(env), env
