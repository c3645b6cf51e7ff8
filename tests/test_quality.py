"""The quality probe: its metrics on synthetic clips, the tiny random CLIP, and a real tiny engine that
measures a finished job after its job_finished (store, sidecar, event), with and without the CLIP."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.generation.quality import (
    CLIP_MAX_FRAMES,
    FfmpegTimeout,
    NotARegularFile,
    ProbeStopped,
    clip_scores,
    load_clip,
    measure,
    probe_video,
    sampled_indices,
)
from engine.generation.video import write_mp4
from engine.protocol import JobOutcome, QualityRecord
from engine.weights.layout import CLIP_FOLDER, CLIP_REPO, CLIP_REVISION, clip_files, layout_for
from engine.weights.tiny_clip import write_tiny_clip
from tests.fake_hub import FakeHub
from tests.harness import PROMPT, RunningEngine, subscribed, wait_until

HEIGHT, WIDTH = 48, 64


def textured(frames: int, seed: int = 0) -> np.ndarray:
    """A still, textured picture repeated: [T, H, W, 3] uint8, values in 60-190."""
    picture = np.random.default_rng(seed).integers(60, 190, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    return np.repeat(picture[None], frames, axis=0)


def moving_square(frames: int, step: int = 3) -> np.ndarray:
    clip = np.full((frames, HEIGHT, WIDTH, 3), 100, dtype=np.uint8)
    for t in range(frames):
        clip[t, 16:32, 4 + step * t : 20 + step * t] = 220
    return clip


def test_a_static_clip_has_no_motion_and_no_flicker():
    assert measure(textured(9)) == {"flicker": 0.0, "motion": 0.0}


def test_a_brightness_alternating_clip_flickers_by_the_jump_and_does_not_move():
    clip = textured(9).astype(np.int16)
    clip[1::2] += 30  # every other frame 30 levels brighter
    found = measure(clip.astype(np.uint8))
    assert found["flicker"] == pytest.approx(30.0, abs=1e-3)
    assert found["motion"] < 1e-3  # a global brightness change is flicker, not motion


def test_a_steady_fade_does_not_flicker():
    clip = textured(9).astype(np.int16) + 5 * np.arange(9)[:, None, None, None]
    assert measure(clip.astype(np.uint8))["flicker"] < 1e-3


def test_a_moving_square_moves_without_flicker():
    found = measure(moving_square(9))
    assert found["motion"] > 1.0 and found["flicker"] < 1e-3
    assert measure(moving_square(9, step=6))["motion"] > found["motion"]  # faster, more motion


def test_clip_samples_at_most_32_frames_from_first_to_last():
    assert sampled_indices(9) == list(range(9))
    many = sampled_indices(1297)
    assert len(many) == CLIP_MAX_FRAMES and many[0] == 0 and many[-1] == 1296


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own nice value is Linux's")
def test_the_probe_thread_runs_at_the_lowest_cpu_priority_and_the_others_keep_theirs():
    from engine.daemon.quality_probe import lower_priority

    before = os.getpriority(os.PRIO_PROCESS, 0)
    seen = []

    def probe_thread() -> None:
        lower_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=probe_thread)
    thread.start()
    thread.join()
    assert seen == [19] and os.getpriority(os.PRIO_PROCESS, 0) == before


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip") / CLIP_FOLDER
    write_tiny_clip(folder)
    return folder


def test_the_tiny_random_clip_scores_every_frame_deterministically(tiny_clip):
    frames = torch.from_numpy(moving_square(5))
    clip = load_clip(tiny_clip, "tiny")
    scores, tokens, cut = clip_scores(clip, frames, PROMPT)
    again = clip_scores(load_clip(tiny_clip, "tiny"), frames, PROMPT)[0]
    assert len(scores) == 5 and scores == again and len(set(scores)) == 5
    assert all(-100 <= score <= 100 for score in scores)
    assert tokens == len(PROMPT.replace(" ", "")) + 2 and not cut  # a token a character, start and end
    assert clip_scores(clip, frames, "A red kite at dusk.")[0] != scores
    assert clip_scores(clip, frames, "x" * 300)[1:] == (77, True)


def test_a_video_file_is_probed_with_or_without_clip(tiny_clip, tmp_path):
    video = write_mp4(moving_square(9), tmp_path / "video.mp4", fps=8)
    record = QualityRecord.model_validate(probe_video(video, PROMPT, load_clip(tiny_clip, "tiny")))
    assert record.frames == 9 and record.fps == 8 and record.clip.frames == list(range(9))
    assert len(record.clip.scores) == 9 and record.clip.mean >= record.clip.min == min(record.clip.scores)
    assert record.motion > 1.0 and record.flicker < 1.0  # the codec's noise, not a brightness jump
    bare = QualityRecord.model_validate(probe_video(video, PROMPT, None, "no CLIP here"))
    assert bare.clip is None and bare.skipped == "no CLIP here"
    assert (bare.flicker, bare.motion) == (record.flicker, record.motion)


def test_a_stopping_engine_stops_the_probe_at_the_next_frame(tmp_path):
    """The engine joins the probe when it stops (a thread inside torch at exit aborts the process), so
    the probe must leave a long video at once, unrecorded."""
    video = write_mp4(moving_square(9), tmp_path / "video.mp4", fps=8)
    reads = []

    def stop_after_three() -> bool:
        reads.append(1)
        return len(reads) > 3

    with pytest.raises(ProbeStopped):
        probe_video(video, PROMPT, None, "no CLIP here", should_stop=stop_after_three)
    assert len(reads) == 4


LINUX_PROC = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from /proc")


def gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie nobody reaped has ended too)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def children(pid: int) -> list[str]:
    """The command lines of process `pid`'s live children."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ValueError, IndexError):
            continue
    return found


@pytest.fixture
def hanging_ffmpeg(tmp_path, monkeypatch) -> tuple[Path, Path, Path]:
    """(an ffmpeg, the flag that makes it hang, the file its pids go to). While the flag exists, asked to
    read as the probe asks (-noautorotate), it writes its pid and a child's and waits for that child (a
    long sleep); anything else goes to the real ffmpeg. IMAGEIO_FFMPEG_EXE names it, here and for engines
    started from the test's environment. The sleeps left behind, if any, are ended at the test's end."""
    import imageio_ffmpeg

    flag, pids, script = tmp_path / "hang", tmp_path / "ffmpeg.pids", tmp_path / "ffmpeg"
    pids.touch()
    script.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *-noautorotate*) if [ -e "{flag}" ]; then\n'
        f'  echo $$ >> "{pids}"; sleep 120 & echo $! >> "{pids}"; wait; exit 1\n'
        "fi;; esac\n"
        f'exec "{imageio_ffmpeg.get_ffmpeg_exe()}" "$@"\n'
    )
    script.chmod(0o700)
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(script))
    yield script, flag, pids
    for pid in map(int, pids.read_text().split()):
        if not gone(pid):
            os.kill(pid, 9)


def started(pids: Path) -> list[int]:
    return [int(pid) for pid in pids.read_text().split()]


def test_a_fifo_or_a_folder_is_refused_as_a_video_before_any_process_opens_it(tmp_path, hanging_ffmpeg):
    from engine.generation.video_quality import measure_video

    _, flag, pids = hanging_ffmpeg
    flag.touch()  # an ffmpeg started would hang: none is
    fifo = tmp_path / "video.mp4"
    os.mkfifo(fifo)
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "link.mp4").symlink_to(fifo)
    for name, kind in [("video.mp4", "a FIFO"), ("folder.mp4", "a directory"), ("link.mp4", "a FIFO")]:
        with pytest.raises(NotARegularFile, match=f"is not a regular file \\({kind}\\)"):
            probe_video(tmp_path / name, PROMPT, None, "no CLIP here")
        record, _ = measure_video(tmp_path / name, PROMPT, tmp_path, "tiny")
        assert "not a regular file" in record["error"]
    assert started(pids) == []


@LINUX_PROC
def test_an_ffmpeg_past_its_bound_is_killed_with_its_process_group(tmp_path, hanging_ffmpeg, monkeypatch):
    from engine.generation import quality

    _, flag, pids = hanging_ffmpeg
    video = write_mp4(moving_square(9), tmp_path / "video.mp4", fps=8)
    flag.touch()
    monkeypatch.setattr(quality, "FFMPEG_START_S", 0.1)  # the real bounds are minutes
    monkeypatch.setattr(quality, "FFMPEG_S_PER_MIB", 0.0)

    def hung_past_the_bound() -> bool:  # asked while the probe waits: once ffmpeg hangs, its bound passes
        wait_until(lambda: len(started(pids)) == 2, "ffmpeg to hang")
        time.sleep(2 * quality.FFMPEG_START_S)
        return False

    with pytest.raises(FfmpegTimeout, match=r"ffmpeg took over 0 s counting the frames of .*video.mp4"):
        probe_video(video, PROMPT, None, "no CLIP here", should_stop=hung_past_the_bound)
    wait_until(lambda: all(map(gone, started(pids))), "ffmpeg and its child to be gone")


@LINUX_PROC
def test_a_stopping_probe_kills_the_ffmpeg_it_waits_for(tmp_path, hanging_ffmpeg):
    _, flag, pids = hanging_ffmpeg
    video = write_mp4(moving_square(9), tmp_path / "video.mp4", fps=8)
    flag.touch()

    def stopping() -> bool:  # the engine stops once ffmpeg hangs (its pid and its child's are written)
        return len(started(pids)) == 2

    with pytest.raises(ProbeStopped):
        probe_video(video, PROMPT, None, "no CLIP here", should_stop=stopping)
    wait_until(lambda: all(map(gone, started(pids))), "ffmpeg and its child to be gone")


def test_the_clip_downloads_on_request_checked_by_the_hubs_digests(tiny_clip, tmp_path):
    from engine.cli.main import build_parser
    from engine.generation.video_quality import clip_absence
    from engine.weights.downloads import Downloader, file_states, planned_files, verify

    assert build_parser().parse_args(["weights", "download", "--clip"]).clip
    assert not build_parser().parse_args(["weights", "download"]).clip  # only when asked
    release = planned_files(tmp_path, "all", {})
    assert planned_files(tmp_path, "all", {}, clip=True) == release + clip_files()
    assert not any(item.optional for item in release) and all(item.optional for item in clip_files())
    assert clip_absence(tmp_path).startswith("CLIP weights absent")
    repo = {path.name: path.read_bytes() for path in tiny_clip.iterdir()}
    with FakeHub({CLIP_REPO: repo}) as hub:
        report = Downloader(tmp_path, endpoint=hub.endpoint).download(clip_files())
    assert report.failed == {} and len(report.fetched) == len(clip_files())
    assert all(f"/resolve/{CLIP_REVISION}/" in path for _, path, *_ in hub.log)  # the safetensors commit
    states = file_states(tmp_path, clip_files())
    assert {state.state for state in states} == {"verified"} and all(state.optional for state in states)
    assert clip_absence(tmp_path) is None
    weights = tmp_path / CLIP_FOLDER / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"x")  # same size, other content
    assert verify(tmp_path, clip_files())[f"{CLIP_FOLDER}/model.safetensors"] is False
    assert "failed their check" in clip_absence(tmp_path)


@pytest.fixture(scope="module")
def engine(tmp_path_factory, home):
    running = RunningEngine(tmp_path_factory.mktemp("engine"), home)
    running.env["LANDIFF_QUALITY_PROBE"] = "on"  # the suite's engines run without it (tests/conftest.py)
    running.start()
    yield running
    running.stop()


def events_until_quality(client, job_id: str) -> list[dict]:
    seen = []
    for event in client.events():
        if event.get("job_id") == job_id:
            seen.append(event)
            if event["event"] in ("job_quality", "job_failed"):
                return seen
    return seen


def test_an_engine_measures_a_finished_job_and_again_without_clip_weights(engine, home):
    client, _ = subscribed(engine)
    with client:
        job_id = client.request("submit", params={"prompt": PROMPT, "steps": 2, "seed": 3})["job_id"]
        events = events_until_quality(client, job_id)
        job = client.request("get_job", job_id=job_id)["job"]
    kinds = [event["event"] for event in events]
    assert kinds[-2:] == ["job_finished", "job_quality"], kinds
    found = events[-1]["quality"]
    sidecar = json.loads(Path(job["sidecar_path"]).read_text())
    assert job["quality"] == found and sidecar["quality"] == found
    outcome = set(JobOutcome.model_fields)  # one record: the summary and the sidecar say the same
    assert {key: sidecar[key] for key in outcome} == {key: job[key] for key in outcome}
    assert found["frames"] == 9 and found["skipped"] is None and found["error"] is None
    assert found["clip"]["frames"] == list(range(9)) and "random tiny CLIP" in found["clip"]["model"]
    assert "CLIP score: mean" in engine.cli("show", job_id[:8]).stdout

    shutil.rmtree(layout_for("tiny", home).root / CLIP_FOLDER)  # the optional CLIP weights are gone
    again = engine.cli("quality", job_id[:8], "--json")
    assert again.returncode == 0, again.stderr
    bare = json.loads(again.stdout)
    assert bare["clip"] is None and "landiff-engine weights download --clip" in bare["skipped"]
    assert (bare["flicker"], bare["motion"]) == (found["flicker"], found["motion"])  # no weights needed
    with engine.client() as client:
        assert client.request("get_job", job_id=job_id)["job"]["quality"] == bare
        status = client.request("weights_status")
    assert json.loads(Path(job["sidecar_path"]).read_text())["quality"] == bare
    clip_files = [item for item in status["files"] if item["local"].startswith(CLIP_FOLDER)]
    assert clip_files and all(item["optional"] and item["state"] == "missing" for item in clip_files)
    assert status["complete"]  # the optional CLIP's absence leaves the weights complete


def test_measuring_a_job_without_a_video_is_refused_in_one_line(engine):
    with engine.client() as client:
        client.request("hello", client="tests")
        # long enough to be still queued or running when the command asks (cancelled then)
        job_id = client.request("submit", params={"prompt": PROMPT, "steps": 1000})["job_id"]
        refused = engine.cli("quality", job_id)  # queued or running: no video yet
        client.request("cancel", job_id=job_id)
    assert refused.returncode != 0 and "no video to measure" in refused.stderr
    assert "Traceback" not in refused.stderr


async def test_the_job_detail_shows_the_findings_and_updates_when_they_arrive():
    from landiff_tui.app import LanDiffApp
    from tests.harness import until
    from tests.tui_double import ScriptedLink, job

    shown = job(0)
    link = ScriptedLink([shown])
    app = LanDiffApp(link=link)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("f3")
        await until(pilot, lambda: app.query_one("GalleryView").rows, what="the gallery")
        await pilot.press("enter")
        await until(
            pilot, lambda: type(app.screen).__name__ == "JobDetail" and app.screen.job, what="details"
        )

        def body() -> str:
            return str(app.screen.query_one("#detail-body").render())

        assert "quality: being measured" in body()
        clip = {"model": "tiny", "mean": 27.5, "min": 21.25, "frames": [0, 4, 8]}
        clip |= {"scores": [30.0, 31.25, 21.25], "prompt_tokens": 12, "prompt_truncated": False}
        found = {"frames": 9, "fps": 8.0, "flicker": 0.75, "motion": 4.5, "clip": clip, "seconds": 0.4}
        link.publish("job_quality", job_id=shown.id, quality=found)
        await until(pilot, lambda: "CLIP score: mean 27.50, min 21.25" in body(), what="the findings")
        assert "flicker: 0.75 luma levels" in body() and "30.0 31.2 21.2" in body()
        bare = {**found, "clip": None, "skipped": "CLIP weights absent: get them"}
        link.publish("job_quality", job_id=shown.id, quality=bare)
        await until(pilot, lambda: "skipped: CLIP weights absent: get them" in body(), what="the skip")


async def test_the_gallery_shows_each_jobs_clip_score_and_updates_it_when_measured():
    from landiff_tui.app import LanDiffApp
    from tests.harness import until
    from tests.tui_double import ScriptedLink, job

    clip = {"model": "tiny", "mean": 27.46, "min": 21.25, "frames": [0], "scores": [27.46]}
    clip |= {"prompt_tokens": 12, "prompt_truncated": False}
    measured = {"frames": 9, "fps": 8.0, "flicker": 0.75, "motion": 4.5, "clip": clip, "seconds": 0.4}
    without = {**measured, "clip": None, "skipped": "CLIP weights absent: get them"}
    jobs = [job(0, quality=measured), job(1, quality=without), job(2)]
    link = ScriptedLink(jobs)
    app = LanDiffApp(link=link)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f3")
        await until(pilot, lambda: len(app.query_one("GalleryView").rows) == 3, what="the gallery")
        table = app.query_one("#gallery-table")

        def clip_cells() -> list[str]:
            return [
                str(table.get_cell_at((index, table.get_column_index("clip"))))
                for index in range(table.row_count)
            ]

        assert clip_cells() == ["27.5", "-", ""]  # measured; measured without CLIP; not measured yet
        link.publish("job_quality", job_id=jobs[2].id, quality=measured)
        await until(pilot, lambda: clip_cells()[2] == "27.5", what="the new score")


@LINUX_PROC
def test_a_fifo_video_gets_its_error_the_probe_goes_on_and_a_stop_kills_its_ffmpeg(
    tmp_path, home, hanging_ffmpeg
):
    """A job whose video became a FIFO: its quality error comes at once, the next job is measured, and an
    engine stopped while its probe waits for a hung ffmpeg stops without waiting for it, the ffmpeg killed
    (not left to pid 1)."""
    _, flag, pids = hanging_ffmpeg
    engine = RunningEngine(tmp_path / "engine", home)
    engine.env["LANDIFF_QUALITY_PROBE"] = "on"
    engine.start()
    try:
        client, _ = subscribed(engine)
        with client:
            first = client.request("submit", params={"prompt": PROMPT, "steps": 2, "seed": 1})["job_id"]
            assert events_until_quality(client, first)[-1]["quality"]["error"] is None
            video = Path(client.request("get_job", job_id=first)["job"]["video_path"])
            video.unlink()
            os.mkfifo(video)
            refused = engine.cli("quality", first, "--json")
            assert refused.returncode != 0 and "is not a regular file (a FIFO)" in refused.stdout, refused
            second = client.request("submit", params={"prompt": PROMPT, "steps": 2, "seed": 2})["job_id"]
            assert events_until_quality(client, second)[-1]["quality"]["error"] is None  # the probe goes on
            assert not [line for line in children(engine.process.pid) if "ffmpeg" in line]
            flag.touch()
            client.request("probe_quality", job_id=second)
            wait_until(lambda: len(started(pids)) == 2, "the probe's ffmpeg to hang")
    finally:
        engine.stop()
    assert engine.process.returncode == 0
    wait_until(lambda: all(map(gone, started(pids))), "ffmpeg and its child to be gone")
    log = (tmp_path / "engine" / "data" / "engine.log").read_text()
    assert f"quality probe of job {second} left for the next start" in log
    assert "the quality probe did not stop" not in log
