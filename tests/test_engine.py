"""A real `landiff-engine serve` (tiny model) on temporary runtime and data dirs, driven via its socket."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.client import EngineError
from engine.generation.video import read_mp4
from engine.paths import lock_holder

from .harness import (
    ENGINE_LEAVES_S,
    PROMPT,
    STOP_HINT,
    WAIT_S,
    RunningEngine,
    subscribed,
    until_job_ended,
    wait_for,
    wait_until,
)


@pytest.fixture(scope="module")
def engine(tmp_path_factory, weights):
    running = RunningEngine(tmp_path_factory.mktemp("engine"), weights).start()
    yield running
    running.stop()


def test_submit_streams_progress_and_finishes_with_a_playable_video(engine):
    client, _ = subscribed(engine)
    with client:
        job_id = client.request("submit", params={"prompt": PROMPT, "steps": 8, "seed": 1})["job_id"]
        events = wait_for(client, job_id)
        job = client.request("get_job", job_id=job_id)["job"]
    kinds = [event["event"] for event in events]
    assert kinds[:2] == ["job_queued", "job_started"] and kinds[-1] == "job_finished"
    stages = [event["stage"] for event in events if event["event"] == "job_progress"]
    assert stages.index("tokens") < stages.index("denoise") < stages.index("decode")
    assert all(b["seq"] > a["seq"] for a, b in zip(events, events[1:], strict=False))
    assert job["status"] == "finished" and job["params"]["steps"] == 8 and job["timings"]["denoise"] > 0
    frames, fps = read_mp4(Path(job["video_path"]))
    assert frames.shape == (9, 64, 96, 3) and fps == 8
    assert Path(job["tokens_path"]).is_file() and job["weights_sha256"]
    assert Path(job["thumbnail_path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_queue_runs_in_order_and_cancels_queued_and_running_jobs(engine):
    client, _ = subscribed(engine)
    with client:
        long = client.request("submit", params={"prompt": PROMPT, "steps": 1000})["job_id"]
        ids = [
            client.request("submit", params={"prompt": f"{PROMPT} {n}", "steps": 3})["job_id"]
            for n in range(3)
        ]
        assert client.request("cancel", job_id=ids[1])["status"] == "cancelled"
        for event in client.events():
            if (
                event.get("job_id") == long
                and event["event"] == "job_progress"
                and event["stage"] == "denoise"
            ):
                break
        assert client.request("cancel", job_id=long)["status"] == "cancelling"
        started = []
        for event in client.events():
            if event["event"] == "job_started":
                started.append(event["job_id"])
            if event["event"] == "job_finished" and event["job_id"] == ids[2]:
                break
        statuses = {
            job_id: client.request("get_job", job_id=job_id)["job"]["status"] for job_id in [long, *ids]
        }
    assert started == [ids[0], ids[2]]
    assert statuses == {long: "cancelled", ids[0]: "finished", ids[1]: "cancelled", ids[2]: "finished"}
    assert not (engine.base / "data" / "outputs" / long / "video.mp4").exists()
    with pytest.raises(EngineError, match="only queued or running jobs cancel"), engine.client() as again:
        again.request("cancel", job_id=ids[0])


def test_three_queued_jobs_run_in_submission_order(engine):
    client, _ = subscribed(engine)
    with client:
        ids = [
            client.request("submit", params={"prompt": f"{PROMPT} #{n}", "steps": 2})["job_id"]
            for n in range(3)
        ]
        started, finished = [], []
        for event in client.events():
            if event.get("job_id") in ids:
                if event["event"] == "job_started":
                    started.append(event["job_id"])
                elif event["event"] == "job_finished":
                    finished.append(event["job_id"])
                    if len(finished) == 3:
                        break
    assert started == ids and finished == ids


def test_reconnecting_client_gets_every_missed_event_and_two_clients_agree(engine):
    watcher, first = subscribed(engine)
    other, _ = subscribed(engine)
    with watcher, other:
        job_id = other.request("submit", params={"prompt": PROMPT, "steps": 30})["job_id"]
        seen = []
        for event in watcher.events():
            seen.append(event)
            if (
                event.get("job_id") == job_id
                and event["event"] == "job_progress"
                and event["stage"] == "denoise"
            ):
                break
        last_seq = seen[-1]["seq"]
        watcher.close()  # the terminal goes away mid-job
        others = wait_for(other, job_id)
        time.sleep(0.2)
        with engine.client() as returning:
            replay = returning.request("subscribe", since=last_seq)
    assert not replay["gap"]
    seen_job = [event["seq"] for event in seen if event.get("job_id") == job_id]
    # the replay may go on past job_finished (the quality probe's record): compare up to it
    missed_job = [
        event["seq"]
        for event in replay["missed"]
        if event.get("job_id") == job_id and event["seq"] <= others[-1]["seq"]
    ]
    assert replay["missed"][-1]["event"] == "job_finished" or missed_job
    assert seen_job + missed_job == [event["seq"] for event in others]  # nothing lost, nothing twice
    assert first["seq"] < missed_job[-1]


def test_list_search_presets_status_and_cli(engine):
    client, _ = subscribed(engine)
    with client:
        for seed in (1, 2):
            job_id = client.request("submit", params={"prompt": f"{PROMPT} seed {seed}", "steps": 2})[
                "job_id"
            ]
            wait_for(client, job_id)
    with engine.client() as client:
        listing = client.request("list_jobs", search="snail", status="finished", sort="oldest", limit=2)
        assert listing["total"] >= 2 and len(listing["jobs"]) == 2
        assert listing["jobs"][0]["created_at"] <= listing["jobs"][1]["created_at"]
        presets = client.request("list_presets")["presets"]
        assert {"reference defaults", "quick draft"} <= set(presets)
        client.request("save_preset", name="mine", params={"steps": 4, "cfg": 5.0})
        with pytest.raises(EngineError, match="built in"):
            client.request("delete_preset", name="quick draft")
        with pytest.raises(EngineError, match="prompt"):
            client.request("save_preset", name="bad", params={"prompt": "x"})
        status = client.request("status")
        assert status["model"] == "tiny" and "stage2" in status["models_loaded"] and status["queue"] == []
        with pytest.raises(EngineError, match="serves the 'tiny' model, not 'landiff'"):
            client.request("hello", model="landiff")
        limits = client.request("hello")["limits"]
        assert limits == status["limits"] and limits["clip_frames"] == 9 and limits["chunk_frames"] == 8
        with pytest.raises(EngineError, match=f"at most {limits['max_frames']} frames"):
            client.request("submit", params={"prompt": PROMPT, "frames": limits["max_frames"] + 1})
    submitted = engine.cli("submit", PROMPT, "--preset", "mine", "--seed", "9", "--wait", "--model", "tiny")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[0]
    shown = json.loads(engine.cli("show", job_id, "--json").stdout)
    assert shown["params"]["steps"] == 4 and shown["params"]["cfg"] == 5.0 and shown["params"]["seed"] == 9
    rerun = engine.cli("rerun", job_id, "--steps", "2", "--wait", "--model", "tiny")
    assert rerun.returncode == 0, rerun.stderr
    again = json.loads(engine.cli("show", rerun.stdout.strip().splitlines()[0], "--json").stdout)
    assert again["params"] == {**shown["params"], "steps": 2}
    listed = json.loads(engine.cli("jobs", "--json", "--search", "snail").stdout)
    assert listed["total"] >= 3
    with engine.client() as client:
        folder = Path(client.request("get_job", job_id=job_id)["job"]["video_path"]).parent
        client.request("delete_job", job_id=job_id, delete_files=True)
        with pytest.raises(EngineError, match="no job"):
            client.request("get_job", job_id=job_id)
        client.request("release_models")
        wait_until(lambda: client.request("status")["models_loaded"] == [], "the models to be released")
    assert not folder.exists()
    wrong = engine.cli("submit", PROMPT, "--model", "landiff")
    assert wrong.returncode == 2 and "serves the 'tiny' model" in wrong.stderr


def test_hostile_input_gets_errors_and_the_engine_keeps_working(engine):
    import random

    rng = random.Random(0)
    lines: list[bytes] = []
    for n in range(1100):
        kind = n % 11
        if kind == 0:
            lines.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))).replace(b"\n", b" "))
        elif kind == 1:
            lines.append(b"{not json")
        elif kind == 2:
            lines.append(json.dumps({"v": 1, "id": n, "type": "explode"}).encode())
        elif kind == 3:
            lines.append(
                json.dumps(
                    {"v": 1, "id": n, "type": "submit", "params": {"prompt": PROMPT, "steps": -5}}
                ).encode()
            )
        elif kind == 4:
            lines.append(
                json.dumps({"v": 1, "id": n, "type": "submit", "params": {"prompt": "x" * 100_000}}).encode()
            )
        elif kind == 5:
            lines.append(
                json.dumps(
                    {"v": 1, "id": n, "type": "submit", "params": {"prompt": PROMPT, "seed": "a"}}
                ).encode()
            )
        elif kind == 6:
            lines.append(json.dumps({"v": 1, "id": n, "type": "status", "surprise": 1}).encode())
        elif kind == 7:
            lines.append(json.dumps({"v": 9, "id": n, "type": "status"}).encode())
        elif kind == 8:
            lines.append(json.dumps([1, 2, 3]).encode())
        elif kind == 9:
            params = {"prompt": "", "steps": 10**9} if n % 2 else {"prompt": PROMPT, "frames": 10**9}
            lines.append(json.dumps({"v": 1, "id": n, "type": "submit", "params": params}).encode())
        else:
            lines.append(json.dumps({"v": 1, "id": {"x": 1}, "type": "get_job", "job_id": None}).encode())
    huge = b'{"v": 1, "id": 1, "type": "status", "pad": "' + b"a" * (2**20 + 10) + b'"}'
    with engine.client() as client:
        client.send_raw(b"\n".join(lines) + b"\n" + huge + b"\n")
        answers = [client.read_message() for _ in range(len(lines) + 1)]
        assert all(answer["ok"] is False for answer in answers)
        codes = {answer["error"]["code"] for answer in answers}
        assert {"bad_json", "unknown_type", "invalid", "bad_version", "line_too_long"} <= codes
        invalid_steps = [a for a in answers if a["id"] == 3 and not a["ok"]][0]
        assert "steps" in invalid_steps["error"]["message"]
        client.request("hello", client="after the storm")
        job_id = client.request("submit", params={"prompt": PROMPT, "steps": 2})["job_id"]
    assert engine.process.poll() is None
    with engine.client() as client:
        client.request("subscribe", since=0)
        assert until_job_ended(client, job_id) == "finished"


def test_a_second_engine_refuses_to_start(engine):
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve", "--model", "tiny"],
        env=engine.env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert result.returncode == 2
    refusal = f"another engine (pid {engine.process.pid}) already serves the data dir {engine.base / 'data'}"
    assert result.stderr.splitlines() == [f"landiff-engine serve: {refusal}; " + STOP_HINT]
    assert engine.socket.exists() and oct(engine.socket.stat().st_mode & 0o777) == "0o600"
    assert oct(engine.socket.parent.stat().st_mode & 0o777) == "0o700"


def test_kill_9_mid_job_then_restart(tmp_path, weights):
    first = RunningEngine(tmp_path, weights).start()
    with first.client() as client:
        client.request("subscribe", since=0)
        doomed = client.request("submit", params={"prompt": PROMPT, "steps": 1000})["job_id"]
        waiting = [
            client.request("submit", params={"prompt": PROMPT, "steps": 2})["job_id"] for _ in range(2)
        ]
        for event in client.events():
            if (
                event.get("job_id") == doomed
                and event["event"] == "job_progress"
                and event["stage"] == "denoise"
            ):
                break
        first.process.kill()
        first.process.wait(timeout=ENGINE_LEAVES_S)
    assert first.socket.exists()  # a stale socket file is left behind
    second = RunningEngine(tmp_path, weights).start()
    try:
        with second.client() as client:
            client.request("subscribe", since=0)
            assert client.request("get_job", job_id=doomed)["job"]["status"] == "interrupted"
            for job_id in waiting:
                wait_for(client, job_id)
            statuses = [client.request("get_job", job_id=job_id)["job"]["status"] for job_id in waiting]
        assert statuses == ["finished", "finished"]
    finally:
        second.stop()
    database = sqlite3.connect(tmp_path / "data" / "landiff.db")
    assert database.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    referenced = [
        row[0] for row in database.execute("SELECT video_path FROM jobs WHERE video_path IS NOT NULL")
    ]
    assert referenced and all(Path(path).is_file() for path in referenced)
    assert not (tmp_path / "data" / "outputs" / doomed / "video.mp4").exists()
    leftovers = [p for p in (tmp_path / "data" / "outputs").rglob("*") if ".partial" in p.name]
    assert leftovers == []


def test_a_connection_from_another_uid_is_refused(tmp_path):
    import asyncio

    from engine.daemon.transport import Transport

    async def scenario() -> dict:
        # the refusal comes before any request could reach the service or the event hub
        transport = Transport(service=None, hub=None, expected_uid=os.getuid() + 1)
        path = tmp_path / "s.sock"
        server = await transport.listen(path)
        async with server:
            reader, writer = await asyncio.open_unix_connection(str(path))
            answer = json.loads(await reader.readline())  # unasked: it is closed at accept, unread
            try:
                rest = await reader.read()
            except ConnectionResetError:
                rest = b""
            assert rest == b""  # and the connection is closed
            writer.close()
            return answer

    answer = asyncio.run(scenario())
    assert answer["ok"] is False and answer["error"]["code"] == "forbidden"


def test_clients_start_a_detached_engine_when_none_answers(tmp_path, weights):
    idle = RunningEngine(tmp_path, weights)  # not started: the CLI must start it
    idle.env["LANDIFF_ENGINE_ARGS"] = f"--idle-release 900 --ckpts '{weights}'"  # the options it gets
    # the data dir's lock held a while by "an engine that is stopping" (its workers can take seconds to
    # leave): the client waits for it to let go, or the engine it starts would be refused the data dir
    (tmp_path / "data").mkdir(mode=0o700)
    stopping = os.open(tmp_path / "data" / "engine.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(stopping, fcntl.LOCK_EX)
    threading.Timer(3.0, os.close, (stopping,)).start()
    try:
        submitted = idle.cli("submit", PROMPT, "--steps", "2", "--wait", "--model", "tiny")
        assert submitted.returncode == 0, submitted.stderr
        with idle.client() as client:
            assert client.request("hello")["options"] == ["--idle-release", "900", "--ckpts", str(weights)]
        status = json.loads(idle.cli("status", "--json").stdout)
        assert status["model"] == "tiny" and status["pid"] > 0
        saved = idle.cli("presets", "--save", "tiny steps", "--steps", "3")
        assert saved.returncode == 0 and "tiny steps" in idle.cli("presets").stdout
    finally:
        stopped = idle.cli("stop")
    # stop returns once the engine has left: its socket gone, the data dir free for the next one
    assert stopped.stdout.splitlines()[-1] == "engine stopped" and not idle.socket.exists()
    assert lock_holder(tmp_path / "data" / "engine.lock") is None
    assert "no engine is running" in idle.cli("stop").stdout  # stop is the one command that starts none
    # each line of the detached engine's log lands once, in its log file; engine.out (its stderr) keeps
    # only what comes before logging starts, here nothing
    log = (tmp_path / "data" / "engine.log").read_text().splitlines()
    assert (tmp_path / "data" / "engine.out").read_text() == ""
    assert len(log) == len(set(log)) and sum("listening on" in line for line in log) == 1
    # and it tells the job's life
    job_id = submitted.stdout.split()[0]
    about_job = [line for line in log if job_id in line]
    for said in ("queued: 9 frames in 1 chunk(s), 2 steps", "started after", "finished in"):
        assert sum(said in line for line in about_job) == 1, (said, about_job)
    finished = next(line for line in about_job if "finished in" in line)
    assert all(stage in finished for stage in ("tokens", "denoise", "decode", "write", "peak memory"))
    assert any("stage 1 (flan-T5" in line and "loaded onto cpu" in line for line in log)
    assert any("is 'landiff-engine cli' (pid" in line for line in log)
    assert any("closed after" in line for line in log) and any("engine stopped" in line for line in log)


def test_weights_status_verification_and_log_tail_through_the_engine(engine):
    client, _ = subscribed(engine)
    with client:
        status = client.request("weights_status", only="llm")
        assert status["model"] == "tiny" and status["root"] == str(engine.weights / "tiny")
        assert status["looked"][0]["rule"] == "$LANDIFF_HOME" and status["looked"][0]["chosen"]
        assert status["files"] and all(f["state"] in ("present", "verified") for f in status["files"])
        started = client.request("verify_weights", only="diffusion")
        assert started["root"] == status["root"]
        kinds = []
        for event in client.events():
            kinds.append(event["event"])
            if event["event"] in ("verify_finished", "verify_failed", "verify_cancelled"):
                break
        # the tiny bundle carries its own checksum list, so every file is really compared
        assert kinds[0] == "verify_started" and kinds[-1] == "verify_finished" and event["mismatched"] == []
        after = client.request("weights_status", only="diffusion")["files"]
        assert event["checked"] == len(after) > 5 and {f["state"] for f in after} == {"verified"}
        with pytest.raises(EngineError, match="no download or verification is running"):
            client.request("cancel_download")
        tail = client.request("log_tail", lines=5)
        assert 1 <= len(tail["lines"]) <= 5 and tail["path"].endswith("engine.log")
        assert any("listening on" in line for line in client.request("log_tail", lines=5000)["lines"])


def test_engine_options_from_the_environment_that_fail_are_named_in_one_line(tmp_path, weights):
    idle = RunningEngine(tmp_path, weights)  # not started: the CLI starts it with LANDIFF_ENGINE_ARGS
    idle.env["LANDIFF_ENGINE_ARGS"] = "--gpus 0,0"
    refused = idle.cli("submit", PROMPT, "--model", "tiny")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    said = "the engine exited at start (status 2) (its options came from LANDIFF_ENGINE_ARGS): "
    assert said in refused.stderr
    assert "--gpus 0,0: GPU 0 is named twice; name each GPU once; see " in refused.stderr
    idle.env["LANDIFF_ENGINE_ARGS"] = "--ckpts '/my weights"
    unsplit = idle.cli("submit", PROMPT, "--model", "tiny")
    assert unsplit.returncode == 2 and unsplit.stderr.strip() == (
        "landiff-engine submit: LANDIFF_ENGINE_ARGS does not split into options (No closing quotation): "
        "quote it as a shell would"
    )
