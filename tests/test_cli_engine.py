"""What a first hour with the command line trips over (issue 12): every client command starts the engine
alike, a re-run uses its job's model, outputs that cannot be written are refused before any work, progress
speaks each stage's unit, status reads as text."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from pathlib import Path

import pytest

from engine.cli.client_commands import describe_status
from engine.cli.main import main

from .harness import PROMPT, RunningEngine, short_dir


def test_every_client_command_starts_the_engine_alike_and_stop_says_when_none_runs(no_engine):
    stopped = no_engine.cli("stop")
    assert stopped.returncode == 0 and "no engine is running" in stopped.stdout
    listed = no_engine.cli("jobs", "--json", "--model", "tiny")  # starts one, serving tiny
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["jobs"] == []
    for command in (["status"], ["presets"], ["jobs"]):  # no --model: whichever engine runs
        result = no_engine.cli(*command)
        assert result.returncode == 0, (command, result.stderr)
    status = no_engine.cli("status")
    assert "model: tiny" in status.stdout and "{" not in status.stdout  # readable text, not a Python repr


def test_submit_without_a_model_uses_the_running_engines_and_rerun_its_jobs(no_engine):
    no_engine.cli("status", "--model", "tiny")
    submitted = no_engine.cli("submit", PROMPT, "--steps", "2", "--wait")  # the engine serves tiny
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[0]
    rerun = no_engine.cli("rerun", job_id, "--steps", "3", "--wait")
    assert rerun.returncode == 0, rerun.stderr
    refused = no_engine.cli("submit", PROMPT, "--model", "landiff")  # only an explicit other model
    assert refused.returncode == 2 and "serves the 'tiny' model" in refused.stderr


def test_a_rerun_of_a_job_from_another_model_says_how(no_engine):
    no_engine.cli("status", "--model", "tiny")
    db = Path(no_engine.env["LANDIFF_DATA_DIR"]) / "landiff.db"
    submitted = no_engine.cli("submit", PROMPT, "--steps", "2", "--wait")
    job_id = submitted.stdout.split()[0]
    with sqlite3.connect(db) as connection:  # as if it had run on an engine serving the release
        connection.execute("UPDATE jobs SET model = 'landiff' WHERE id = ?", (job_id,))
    result = no_engine.cli("rerun", job_id)
    assert result.returncode == 2
    assert "ran on the 'landiff' model and this engine serves 'tiny'" in result.stderr
    assert "landiff-engine stop" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["generate", "tokens"])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    started = time.perf_counter()
    code = main([command, PROMPT, "--model", "tiny", "--out", str(blocker / "out" / "video.mp4")])
    assert code == 2 and time.perf_counter() - started < 5  # no model was loaded
    error = capsys.readouterr().err
    assert "--out" in error and "cannot be written" in error and len(error.strip().splitlines()) == 1
    if not os.access("/proc/1", os.W_OK):  # a folder this user cannot write, even as root
        assert main([command, PROMPT, "--model", "tiny", "--out", "/proc/1/video.mp4"]) == 2


def test_generate_speaks_each_stages_unit(home, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LANDIFF_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "v.mp4"
    assert main(["generate", PROMPT, "--model", "tiny", "--steps", "3", "--out", str(out)]) == 0
    shown = capsys.readouterr().err
    assert re.search(r"^tokens\s+━+ \d+/\d+", shown, re.MULTILINE), shown  # the token positions' bar
    assert "tok/s" not in shown.split("denoising")[1].split("\n")[0]
    lines = {line.split()[0]: line for line in shown.splitlines() if line.strip()}
    assert "steps/s" in lines.get("denoising", "") or "3/3" in lines.get("denoising", "")
    assert "tok/s" not in lines.get("text", "") and "tok/s" not in lines.get("VAE", "")


def test_status_as_text_names_what_matters():
    from engine.protocol import StatusReply

    status = StatusReply.model_validate(
        {
            "model": "tiny",
            "engine_version": "0.1.0",
            "pid": 7,
            "uptime_s": 3725.0,
            "running": None,
            "queue": ["a", "b"],
            "models_loaded": [],
            "downloading": False,
            "seq": 0,
            "limits": {
                "fps": 8,
                "overlap": 1,
                "clip_frames": 13,
                "chunk_frames": 12,
                "max_frames": 97,
                "max_seconds": 12.1,
                "max_chunks": 8,
            },
            "device": "cpu",
            "memory_used_bytes": 2**30,
            "memory_total_bytes": None,
        }
    )
    lines = dict(describe_status(status))
    assert lines["engine"] == "0.1.0, pid 7, up 1 h 2 min" and lines["queue"] == "2 job(s): a, b"
    assert lines["device"] == "cpu, memory 1.0 GiB" and lines["running"] == "nothing"
    assert lines["options"] == "none (serve's defaults)"
    with_options = status.model_copy(update={"options": ["--ckpts", "/my w"]})
    assert dict(describe_status(with_options))["options"] == "--ckpts '/my w'"
    paused = dict(describe_status(status.model_copy(update={"queue_paused": True})))["queue"]
    assert paused == "2 job(s): a, b; paused: none starts until `landiff-engine queue resume`"


def test_weights_status_ends_with_one_summary_line_and_the_next_command():
    from engine.cli.weights_commands import weights_summary
    from engine.protocol import WeightFileState

    def states(*names):
        return [
            WeightFileState(local=f"f{i}", state=name, size=None, path=f"/w/f{i}")
            for i, name in enumerate(names)
        ]

    line = weights_summary(states("verified", "missing", "partial", "present"))
    assert line.startswith("1 of 4 file(s) verified; 1 present but not checked; 1 missing, 1 partly")
    assert line.endswith("Next: `landiff-engine weights download` fetches them (a partial file resumes)")
    assert weights_summary(states("verified", "present")).endswith(
        "Next: `landiff-engine weights verify` checks them"
    )
    assert weights_summary(states("verified")) == "1 of 1 file(s) verified. Next: ready"


def test_a_request_the_model_refuses_is_one_line_naming_the_field_before_any_engine_starts(
    tmp_path, monkeypatch, capsys
):
    data = tmp_path / "data"
    monkeypatch.setenv("LANDIFF_DATA_DIR", str(data))
    monkeypatch.setenv("LANDIFF_RUNTIME_DIR", str(short_dir()))
    assert main(["jobs", "--limit", "0"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("landiff-engine jobs: limit: at least 1 (got 0)")
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error
    assert not data.exists()  # refused here: no engine was started to refuse it


def test_the_short_ids_the_tui_shows_work_in_show_cancel_and_rerun(no_engine):
    no_engine.cli("status", "--model", "tiny")
    submitted = no_engine.cli("submit", PROMPT, "--steps", "2", "--wait")
    job_id = submitted.stdout.split()[0]
    shown = no_engine.cli("show", job_id[:8], "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == job_id
    assert no_engine.cli("rerun", job_id[:4], "--steps", "2").returncode == 0
    too_short = no_engine.cli("show", job_id[:3])
    assert too_short.returncode == 2 and "at least its first 4 characters" in too_short.stderr
    with no_engine.client() as client:  # two jobs that share a prefix: the candidates are listed
        second = client.request("submit", params={"prompt": PROMPT, "steps": 2})["job_id"]
    db = Path(no_engine.env["LANDIFF_DATA_DIR"]) / "landiff.db"
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE jobs SET id = ? WHERE id = ?", (job_id[:6] + "ffffff", second))
    ambiguous = no_engine.cli("cancel", job_id[:6])
    assert ambiguous.returncode == 2 and "several jobs" in ambiguous.stderr and job_id in ambiguous.stderr


def test_a_tiny_engine_reports_its_weights_as_generated_and_a_download_writes_them(tmp_path):
    running = RunningEngine(tmp_path / "engine", tmp_path / "empty-home").start()
    try:
        with running.client() as client:
            client.request("hello", client="test")
            before = client.request("weights_status")
            assert before["generated"] and not before["complete"]
            assert {f["state"] for f in before["files"]} == {"missing"}
            since = client.request("subscribe", since=0)["seq"]
            started = client.request("download_weights", only="all")
            assert started["generated"] is True
            for event in client.events():
                if event["seq"] > since and event["event"] in ("download_finished", "download_failed"):
                    break
            assert event["event"] == "download_finished" and event["failed"] == {}
            assert event["generated"] and event["written"] and event["fetched"] == []  # made, not fetched
            after = client.request("weights_status")
            assert after["complete"] and after["generated"]
    finally:
        running.stop()


def test_status_says_where_the_running_job_stands(tmp_path, home):
    running = RunningEngine(tmp_path / "engine", home).start()
    try:
        with running.client() as client:
            client.request("hello", client="test")
            since = client.request("subscribe", since=0)["seq"]
            job_id = client.request("submit", params={"prompt": PROMPT, "steps": 1000})["job_id"]
            for event in client.events():
                if event["seq"] > since and event["event"] == "job_progress" and event["stage"] == "denoise":
                    break
            status = client.request("status")
            assert status["running"] == job_id and status["progress"]["job_id"] == job_id
            assert status["progress"]["stage"] == "denoise" and status["progress"]["seq"] >= event["seq"]
            assert status["last_chunk"] is None  # no chunk finished yet
            client.request("cancel", job_id=job_id)
    finally:
        running.stop()
