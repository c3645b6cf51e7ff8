"""What a first hour with the command line trips over (issue 26): output piped into `head`, commands that
only look starting engines, a job accepted that cannot run, outputs refused only after stage 1, an
explicit --model ignored by rerun, no `delete`, two ways of writing a duration, pydantic's words."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli.client_commands import describe_status
from engine.cli.main import main
from engine.cli.output import EXIT_OUTPUT_CLOSED
from engine.durations import duration_text
from engine.generation.progress import prior_costs
from engine.paths import lock_holder

from .harness import ENGINE_LEAVES_S, PROMPT, ROOT, WAIT_S, RunningEngine, short_dir, wait_until

START_HINT = "`landiff-engine serve` runs one here"


def database(engine: RunningEngine) -> Path:
    return Path(engine.env["LANDIFF_DATA_DIR"]) / "landiff.db"


def engine_runs(engine: RunningEngine) -> bool:
    return lock_holder(Path(engine.env["LANDIFF_DATA_DIR"]) / "engine.lock") is not None


def with_output_closed(engine: RunningEngine, *args: str) -> subprocess.CompletedProcess:
    """The command with its stdout a pipe whose reader left before it wrote (as `| head -1` leaves)."""
    command = [sys.executable, "-m", "engine.cli", *args]
    process = subprocess.Popen(
        command, env=engine.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    )
    assert process.stdout is not None
    process.stdout.close()  # the only reader: the command's first write meets a closed pipe
    _, stderr = process.communicate(timeout=WAIT_S)
    return subprocess.CompletedProcess(command, process.returncode, "", stderr.decode())


def test_output_into_a_closed_pipe_ends_quietly_with_status_141(no_engine):
    # no engine: the history answers (presets, jobs)
    for args in (["presets"], ["jobs", "--json"]):
        result = with_output_closed(no_engine, *args)
        assert result.returncode == EXIT_OUTPUT_CLOSED == 141, (args, result.stderr)
        assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
        assert "Exception ignored" not in result.stderr
    helped = with_output_closed(no_engine, "--help")  # argparse drops a failed write itself: status 0
    assert helped.returncode in (0, 141) and helped.stderr == ""
    no_engine.start()
    try:
        for args in (["status"], ["jobs", "--json"], ["presets"], ["jobs"]):  # the engine answers
            result = with_output_closed(no_engine, *args)
            assert result.returncode == 141 and result.stderr == "", (args, result.stderr)
    finally:
        no_engine.stop()


def test_reading_commands_start_no_engine_and_read_the_history(no_engine):
    data = Path(no_engine.env["LANDIFF_DATA_DIR"])
    status = no_engine.cli("status")
    assert status.returncode == 1 and "engine: not running" in status.stdout and START_HINT in status.stdout
    assert "history: none yet" in status.stdout
    listed = no_engine.cli("jobs", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == {"jobs": [], "total": 0}
    assert "no engine is running" in listed.stderr and len(listed.stderr.splitlines()) == 1
    presets = no_engine.cli("presets")
    assert presets.returncode == 0 and "quick draft" in presets.stdout
    shown = no_engine.cli("show", "abcd1234")
    assert shown.returncode == 2 and shown.stderr.count("\n") == 1 and "no job 'abcd1234'" in shown.stderr
    cancelled = no_engine.cli("cancel", "abcd1234")  # no engine: no job runs, and none is started
    assert cancelled.returncode == 1 and "no engine is running, so no job is running" in cancelled.stderr
    assert "no job 'abcd1234'" in cancelled.stderr, cancelled.stderr
    assert not data.exists() and not no_engine.socket.exists()  # nothing started, nothing created

    submitted = no_engine.cli("submit", PROMPT, "--steps", "2", "--model", "tiny", "--wait")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[0]
    assert no_engine.cli("stop").returncode == 0
    costs = prior_costs("tiny", "cpu", database(no_engine))  # what the next engine's first ETA starts from
    assert set(costs) == {"denoise_step_s", "chunk_finish_s", "text_s", "tokens_segment_s"}, costs
    with sqlite3.connect(database(no_engine)) as connection:
        before = connection.execute("PRAGMA user_version").fetchone()[0]
    status = no_engine.cli("status")
    assert status.returncode == 1 and "history: 1 job(s)" in status.stdout, status.stdout
    listed = no_engine.cli("jobs", "--json")
    assert [job["id"] for job in json.loads(listed.stdout)["jobs"]] == [job_id]
    table = no_engine.cli("jobs")
    assert table.returncode == 0 and "1 of 1 job(s)" in table.stdout
    shown = no_engine.cli("show", job_id[:6], "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == "finished"
    assert f"read from the job history {database(no_engine)}" in shown.stderr
    cancelled = no_engine.cli("cancel", job_id[:6])
    assert cancelled.returncode == 1 and f"job {job_id} is finished" in cancelled.stderr, cancelled.stderr
    assert not engine_runs(no_engine) and not no_engine.socket.exists()

    with sqlite3.connect(database(no_engine)) as connection:  # an older engine's history: left as it is
        assert connection.execute("PRAGMA user_version").fetchone()[0] == before
        connection.execute(f"PRAGMA user_version = {before - 1}")
    older = no_engine.cli("jobs")
    assert (
        older.returncode == 2 and "older landiff-engine's" in older.stderr and "Traceback" not in older.stderr
    )
    with sqlite3.connect(database(no_engine)) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == before - 1


def test_a_submit_without_the_weights_is_refused_at_once_naming_both_ways_out(no_engine):
    # the release's weights are not in `home` (only the tiny model's): an engine started for it refuses
    started = time.monotonic()
    refused = no_engine.cli("submit", PROMPT)
    assert refused.returncode == 2, refused.stderr
    error = refused.stderr.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error
    assert error.startswith("landiff-engine submit: the landiff model's weights are not here")
    assert "`landiff-engine weights download`" in error and "`--model tiny`" in error
    assert "missing" in error and time.monotonic() - started < WAIT_S
    # the engine this submit started for nothing has gone: the way out it names works at once
    wait_until(lambda: not engine_runs(no_engine), "the refused engine to leave", ENGINE_LEAVES_S)
    tiny = no_engine.cli("submit", PROMPT, "--model", "tiny", "--steps", "2", "--wait")
    assert tiny.returncode == 0, tiny.stderr
    listed = json.loads(no_engine.cli("jobs", "--json").stdout)
    assert listed["total"] == 1  # the refused job was never queued


def test_a_running_release_engine_refuses_the_job_with_its_code(tmp_path, home):
    engine = RunningEngine(tmp_path / "engine", home, ())
    command = [sys.executable, "-m", "engine.cli", "serve", "--model", "landiff"]
    engine.process = subprocess.Popen(command, env=engine.env, stdout=subprocess.PIPE, text=True)
    try:
        assert engine.process.stdout is not None and engine.process.stdout.readline().startswith("ready")
        with engine.client() as client:
            client.request("hello", client="test")
            from engine.wire import RemoteError

            with pytest.raises(RemoteError) as refusal:
                client.request("submit", params={"prompt": PROMPT})
            assert refusal.value.code == "no_weights" and "LanDiff/" in refusal.value.message
            assert client.request("list_jobs")["total"] == 0
        refused = engine.cli("submit", PROMPT)  # an engine that runs is left running
        assert refused.returncode == 2 and "weights download" in refused.stderr
        assert engine.process.poll() is None
    finally:
        with engine.client() as client:
            client.request("shutdown")
        engine.stop()


@pytest.mark.parametrize("out", ["/proc/nope/x.mp4", "/sys/x.mp4", "/proc/1/x.mp4"])
def test_an_output_where_nothing_can_be_made_is_refused_before_any_work(tmp_path, capsys, monkeypatch, out):
    top = Path("/", Path(out).parts[1])
    if not top.is_dir():
        pytest.skip(f"no {top} here")
    monkeypatch.setenv("LANDIFF_HOME", str(tmp_path / "weights"))
    started = time.perf_counter()
    assert main(["generate", PROMPT, "--model", "tiny", "--out", out]) == 2
    assert time.perf_counter() - started < 5  # no model was loaded, nothing written
    error = capsys.readouterr().err
    assert error.startswith(f"landiff-engine generate: --out {out} cannot be written: making a ")
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error
    assert not (tmp_path / "weights").exists()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".landiff-write-check")]


def test_a_writable_output_leaves_no_trace_of_the_check(tmp_path):
    from engine.cli.main import check_writable

    check_writable(tmp_path / "new" / "deeper" / "v.mp4", "--out")
    check_writable(tmp_path / "v.mp4", "--out")
    assert os.listdir(tmp_path) == []


def test_rerun_with_an_explicit_model_uses_it(no_engine):
    no_engine.cli("status", "--model", "tiny")  # an explicit --model starts that engine
    submitted = no_engine.cli("submit", PROMPT, "--steps", "2", "--wait")
    job_id = submitted.stdout.split()[0]
    with sqlite3.connect(database(no_engine)) as connection:  # as if it had run on the release
        connection.execute("UPDATE jobs SET model = 'landiff' WHERE id = ?", (job_id,))
    rerun = no_engine.cli("rerun", job_id, "--model", "tiny", "--steps", "2", "--wait")
    assert rerun.returncode == 0, rerun.stderr
    assert f"job {job_id} ran on the 'landiff' model; re-running it on 'tiny'" in rerun.stderr
    refused = no_engine.cli("rerun", job_id)  # without --model: the job's own model, which this one lacks
    assert refused.returncode == 2 and "`--model tiny` re-runs it on this one" in refused.stderr


def test_rerun_without_an_engine_starts_one_for_the_jobs_model(no_engine):
    submitted = no_engine.cli("submit", PROMPT, "--steps", "2", "--model", "tiny", "--wait")
    job_id = submitted.stdout.split()[0]
    assert no_engine.cli("stop").returncode == 0
    rerun = no_engine.cli("rerun", job_id[:8], "--steps", "2")  # not the release: the job's tiny
    assert rerun.returncode == 0, rerun.stderr
    assert "model: tiny" in no_engine.cli("status").stdout
    unknown = no_engine.cli("rerun", "ffffffff")
    assert unknown.returncode == 2 and "no job 'ffffffff'" in unknown.stderr


def test_delete_removes_a_finished_job_and_refuses_a_running_one(no_engine):
    submitted = no_engine.cli("submit", PROMPT, "--steps", "2", "--model", "tiny", "--wait")
    job_id = submitted.stdout.split()[0]
    folder = Path(json.loads(no_engine.cli("show", job_id, "--json").stdout)["video_path"]).parent
    assert folder.is_dir()
    deleted = no_engine.cli("delete", job_id[:8], "--files")
    assert deleted.returncode == 0 and deleted.stdout.strip() == f"deleted job {job_id} and its files"
    assert not folder.exists()
    gone = no_engine.cli("show", job_id)
    assert gone.returncode == 2 and f"no job '{job_id}'" in gone.stderr
    with no_engine.client() as client:
        client.request("hello", client="test")
        busy = client.request("submit", params={"prompt": PROMPT, "steps": 1000})["job_id"]
        refused = no_engine.cli("delete", busy)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.strip().endswith("; cancel it before deleting")
        client.request("cancel", job_id=busy)


def test_jobs_options_have_help(capsys):
    with pytest.raises(SystemExit):
        main(["jobs", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--limit LIMIT list at most this many, newest first (default 50)" in shown
    assert "--format {table,tsv,json}" in shown and "--json the same as --format json" in shown
    with pytest.raises(SystemExit):
        main(["delete", "--help"])
    assert "--files" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (59.9, "59 s"), (297, "4 min 57 s"), (3725, "1 h 2 min"), (90061, "1 d 1 h"), (-3, "0 s")],
)
def test_one_duration_format(seconds, text):
    assert duration_text(seconds) == text


def test_status_says_its_uptime_in_the_shared_format():
    from engine.protocol import StatusReply

    limits = {"fps": 8, "overlap": 1, "clip_frames": 13, "chunk_frames": 12, "max_frames": 97}
    status = StatusReply.model_validate(
        {
            "model": "tiny",
            "engine_version": "0.1.0",
            "pid": 7,
            "uptime_s": 297.4,
            "running": None,
            "queue": [],
            "models_loaded": [],
            "downloading": False,
            "seq": 0,
            "limits": {**limits, "max_seconds": 12.1, "max_chunks": 8},
            "device": "cpu",
            "memory_used_bytes": None,
            "memory_total_bytes": None,
        }
    )
    assert dict(describe_status(status))["engine"] == "0.1.0, pid 7, up 4 min 57 s"


def test_refused_values_read_as_plain_words_before_any_engine_starts(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    monkeypatch.setenv("LANDIFF_DATA_DIR", str(data))
    monkeypatch.setenv("LANDIFF_RUNTIME_DIR", str(short_dir()))
    for args, said in [
        (["show", "x" * 65], "landiff-engine show: job id: at most 64 characters"),
        (["delete", "x" * 65], "landiff-engine delete: job id: at most 64 characters"),
        (["jobs", "--limit", "0"], "landiff-engine jobs: limit: at least 1 (got 0)"),
        (["jobs", "--status", "done"], "landiff-engine jobs: status: one of 'queued', 'running', "),
    ]:
        assert main(args) == 2
        error = capsys.readouterr().err
        assert error.startswith(said) and len(error.strip().splitlines()) == 1, error
        assert "Input should" not in error and "String should" not in error
    assert not data.exists()
