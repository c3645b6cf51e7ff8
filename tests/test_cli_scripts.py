"""The command line for scripts (issue 28): `logs [-n N] [-f]`, `watch JOB`, `jobs --format tsv|json`,
`presets --export/--import`, each run as a real command against a real tiny engine (or none), and the
desktop notification `watch` ends with, read from the terminal it runs in (a pty)."""

from __future__ import annotations

import json
import logging
import os
import pty
import signal
import subprocess
import sys
import threading
from logging.handlers import RotatingFileHandler
from pathlib import Path

import pytest

from engine.cli.output import EXIT_OUTPUT_CLOSED
from engine.cli.script_commands import follow_file
from engine.paths import lock_holder

from .harness import PROMPT, ROOT, WAIT_S, RunningEngine, wait_until
from .test_cli_first_hour import with_output_closed

TERMINAL_ENV = ("TMUX", "STY", "KITTY_WINDOW_ID", "LC_TERMINAL", "ITERM_SESSION_ID", "WEZTERM_PANE")
TERMINAL_ENV += ("VTE_VERSION", "TERM_PROGRAM")
OSC9 = b"\x1b]9;LanDiff: job finished: "


@pytest.fixture
def engine(tmp_path, home):
    running = RunningEngine(tmp_path / "engine", home).start()
    yield running
    running.stop()


def engine_runs(engine: RunningEngine) -> bool:
    return lock_holder(Path(engine.env["LANDIFF_DATA_DIR"]) / "engine.lock") is not None


def in_a_terminal(engine: RunningEngine, *args: str, when: tuple[bytes, object] | None = None):
    """The command with its stderr a terminal (a pty) as iTerm2's, stdout a pipe: (status, stdout, what
    the terminal got). `when`: (text, action): the action runs once the terminal has shown the text."""
    env = {name: value for name, value in engine.env.items() if name not in TERMINAL_ENV}
    env.update(TERM="xterm-256color", TERM_PROGRAM="iTerm.app")
    master, slave = pty.openpty()
    command = [sys.executable, "-m", "engine.cli", *args]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=slave, cwd=ROOT)
    os.close(slave)
    shown = bytearray()
    seen = threading.Event()

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the command closed the terminal
                return
            if not chunk:
                return
            shown.extend(chunk)
            if when is not None and when[0] in shown:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if when is not None:
        assert seen.wait(WAIT_S), bytes(shown)
        when[1]()
    stdout, _ = process.communicate(timeout=WAIT_S)
    reader.join(WAIT_S)
    os.close(master)
    return process.returncode, stdout.decode(), bytes(shown)


def test_watch_follows_a_job_to_its_end_says_how_it_ended_and_notifies_the_terminal(engine):
    assert engine.cli("queue", "pause").returncode == 0
    job_id = engine.cli("submit", PROMPT, "--steps", "2").stdout.strip()
    resumed = []
    status, stdout, shown = in_a_terminal(  # queued when watched: it ends while the command waits
        engine,
        "watch",
        job_id[:6],
        when=(b"the queue is paused", lambda: resumed.append(engine.cli("queue", "resume"))),
    )
    assert resumed[0].returncode == 0
    assert status == 0 and stdout == "", shown
    assert f"job {job_id} is queued".encode() in shown and b"finished: " in shown
    assert OSC9 + job_id[:8].encode() + b" " + PROMPT.encode() + b"\x07" in shown

    again = engine.cli("watch", job_id)  # ended before: said at once; piped output gets no escape
    assert again.returncode == 0 and f"job {job_id} has ended: finished" in again.stderr
    assert "\x1b" not in again.stderr + again.stdout

    engine.cli("queue", "pause")
    doomed = engine.cli("submit", PROMPT, "--steps", "2").stdout.strip()
    status, _, shown = in_a_terminal(
        engine,
        "watch",
        doomed,
        "--no-notify",
        when=(b"the queue is paused", lambda: engine.cli("cancel", doomed)),
    )
    assert status == 1 and b"cancelled" in shown and b"\x1b]9;" not in shown, shown
    engine.cli("queue", "resume")

    status, _, shown = in_a_terminal(engine, "submit", PROMPT, "--steps", "2", "--wait")  # ends with one too
    assert status == 0 and OSC9 in shown, shown

    engine.cli("queue", "pause")
    waiting = engine.cli("submit", PROMPT, "--steps", "2").stdout.strip()
    engine.stop()
    from_history = engine.cli("watch", job_id[:6])
    assert from_history.returncode == 0 and f"job {job_id} has ended: finished" in from_history.stderr
    cancelled = engine.cli("watch", doomed)
    assert cancelled.returncode == 1 and "has ended: cancelled" in cancelled.stderr
    queued = engine.cli("watch", waiting)
    assert queued.returncode == 2 and "no engine is running" in queued.stderr
    assert f"job {waiting} (queued in the history) cannot end" in queued.stderr
    logs = engine.cli("logs", "-n", "2")  # the log's file, read with no engine running
    assert logs.returncode == 0 and len(logs.stdout.splitlines()) == 2 and " INFO engine" in logs.stdout
    assert not engine_runs(engine)  # neither starts an engine


def test_jobs_as_tsv_one_job_a_line_nothing_cut_and_json_as_before(engine):
    prompt = "A kite\tover a beach,\nat dusk \\ windy, above the long sands far away"  # over 60 chars
    submitted = engine.cli("submit", prompt, "--steps", "2", "--wait")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    listed = engine.cli("jobs", "--format", "tsv")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split("\t") == [
        "id",
        "status",
        "created",
        "model",
        "steps",
        "seed",
        "frames",
        "video_path",
        "prompt",
    ]
    assert len(rows) == 1
    fields = rows[0].split("\t")
    assert fields[:2] == [job_id, "finished"] and fields[3:5] == ["tiny", "2"]
    assert fields[2][:4].isdigit() and fields[2][10] == "T" and fields[2][-6] in "+-"  # ISO 8601, offset
    assert fields[7].endswith(".mp4") and Path(fields[7]).is_file()
    stored = json.loads(engine.cli("jobs", "--json").stdout)["jobs"][0]["prompt"]
    assert "\t" in stored and "\n" in stored and "\\" in stored
    assert fields[8] == stored.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
    assert json.loads(engine.cli("jobs", "--json").stdout)["jobs"][0]["id"] == job_id
    assert json.loads(engine.cli("jobs", "--format", "json").stdout)["total"] == 1
    assert with_output_closed(engine, "jobs", "--format", "tsv").returncode == EXIT_OUTPUT_CLOSED


def test_presets_export_and_import_check_each_preset_and_refuse_to_overwrite(engine, tmp_path):
    assert engine.cli("presets", "--save", "fast", "--steps", "4", "--seed", "7").returncode == 0
    exported = tmp_path / "presets.json"
    said = engine.cli("presets", "--export", str(exported))
    assert said.returncode == 0 and "exported 1 saved preset(s)" in said.stdout
    data = json.loads(exported.read_text())
    assert data["presets"] == {"fast": {"steps": 4, "seed": 7}}
    everything = json.loads(engine.cli("presets", "--export", "-", "--all").stdout)["presets"]
    assert "quick draft" in everything and "fast" in everything

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**data, "presets": {"ok": {"steps": 3}, "broken": {"steps": 0}}}))
    refused = engine.cli("presets", "--import", str(bad))
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "preset 'broken': steps must be between 1 and 1000, got 0" in refused.stderr
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({**data, "presets": {"odd": {"stepz": 3}}}))
    refused = engine.cli("presets", "--import", str(unknown))
    assert refused.returncode == 2 and "preset 'odd': unknown job parameter(s): stepz" in refused.stderr
    assert "ok" not in engine.cli("presets", "--export", "-").stdout  # all or nothing

    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps({**data, "presets": {"fast": {"steps": 5}, "slow": {"steps": 90}}}))
    refused = engine.cli("presets", "--import", str(changed))
    assert refused.returncode == 2 and "'fast' already saved with other parameters" in refused.stderr
    assert "--replace" in refused.stderr
    builtin = tmp_path / "builtin.json"
    builtin.write_text(json.dumps({**data, "presets": {"quick draft": {"steps": 3}}}))
    refused = engine.cli("presets", "--import", str(builtin), "--replace")
    assert refused.returncode == 2 and "built-in preset(s) 'quick draft'" in refused.stderr
    replaced = engine.cli("presets", "--import", str(changed), "--replace")
    assert replaced.returncode == 0 and "imported 2 preset(s), 1 of them replaced" in replaced.stdout
    again = engine.cli("presets", "--import", str(changed))  # the same again: nothing to refuse
    assert again.returncode == 0 and "imported 0 preset(s); 2 already there the same" in again.stdout
    not_a_file = with_input(engine, json.dumps(everything), "presets", "--import", "-")
    assert not_a_file.returncode == 2 and "is not a presets file" in not_a_file.stderr
    round_trip = with_input(engine, exported.read_text(), "presets", "--import", "-", "--replace")
    assert round_trip.returncode == 0, round_trip.stderr
    final = json.loads(engine.cli("presets", "--export", "-").stdout)["presets"]
    assert final == {"fast": {"steps": 4, "seed": 7}, "slow": {"steps": 90}}
    assert with_output_closed(engine, "presets", "--export", "-").returncode == EXIT_OUTPUT_CLOSED


def with_input(engine: RunningEngine, text: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "engine.cli", *args]
    return subprocess.run(command, env=engine.env, input=text, capture_output=True, text=True, timeout=WAIT_S)


def test_logs_tails_the_engines_log_and_follows_it(engine):
    followed = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "logs", "-n", "0", "-f"],
        env=engine.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert followed.stdout is not None
        engine.cli("presets", "--save", "logged", "--steps", "3")  # a client, a change: the engine logs
        line = followed.stdout.readline().decode()
        assert " INFO engine" in line, line
    finally:
        followed.send_signal(signal.SIGINT)
        _, stderr = followed.communicate(timeout=WAIT_S)
    assert followed.returncode == 130 and stderr == b""  # ctrl+c ends it, quietly
    tail = engine.cli("logs", "-n", "2")
    assert tail.returncode == 0 and len(tail.stdout.splitlines()) == 2, tail.stdout
    log = Path(engine.env["LANDIFF_DATA_DIR"]) / "engine.log"
    assert tail.stdout.splitlines() == log.read_text().splitlines()[-2:]
    assert with_output_closed(engine, "logs").returncode == EXIT_OUTPUT_CLOSED


def test_following_the_log_goes_on_across_its_rotation(tmp_path, monkeypatch):
    monkeypatch.setattr("engine.cli.script_commands.POLL_S", 0.005)
    path = tmp_path / "engine.log"
    handler = RotatingFileHandler(path, maxBytes=300, backupCount=2, encoding="utf-8")
    logger = logging.getLogger("tests.rotation")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.info("before following")
    out = OutCollector()
    follower = threading.Thread(target=follow_file, args=(path, out, out.keep_on), daemon=True)
    follower.start()
    try:
        wait_until(lambda: out.looked, "the follower to start")
        lines = [f"line {number:03d} " + "x" * 40 for number in range(30)]  # rotates every 6 lines
        for number, line in enumerate(lines, start=1):
            logger.info(line)
            wait_until(lambda n=number: out.text().count("\n") >= n, f"line {number} followed", every=0.005)
    finally:
        out.stop = True
        follower.join(WAIT_S)
        logger.removeHandler(handler)
        handler.close()
    assert path.with_name("engine.log.2").exists()  # it did rotate
    assert out.text().splitlines() == lines  # each once, in order, none before it began


class OutCollector:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.stop = False
        self.looked = False

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def keep_on(self) -> bool:
        self.looked = True
        return not self.stop

    def text(self) -> str:
        return b"".join(self.chunks).decode()
