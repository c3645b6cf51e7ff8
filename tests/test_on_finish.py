"""`serve --on-finish COMMAND` (engine/daemon/on_finish.py): the job's record on the command's stdin as each
job ends, a failing command only logged, one that cannot run refused at start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .harness import PROMPT, WAIT_S, RunningEngine, wait_until

pytestmark = pytest.mark.timeout(300)

# the hook: its stdin kept in a file named after the job and its status, then a failure (exit 3)
HOOK = """
import json, sys
from pathlib import Path
record = json.load(sys.stdin)
job = record["job"]
(Path(sys.argv[1]) / f"{job['id']}-{job['status']}.json").write_text(json.dumps(record))
print("hook saw", job["id"])
sys.exit(3)
"""


def test_each_job_end_runs_the_command_with_the_jobs_record_and_its_failure_is_only_logged(tmp_path, home):
    script, seen = tmp_path / "hook.py", tmp_path / "seen"
    script.write_text(HOOK)
    seen.mkdir()
    engine = RunningEngine(
        tmp_path / "engine", home, serve_args=("--on-finish", f"{sys.executable} {script} {seen}")
    ).start()
    try:
        with engine.client() as client:
            client.request("pause_queue", paused=True)  # the second waits queued, to be cancelled
            done = client.request("submit", params={"prompt": PROMPT, "steps": 2})["job_id"]
            dropped = client.request("submit", params={"prompt": PROMPT, "steps": 2})["job_id"]
            client.request("cancel", job_id=dropped)
            client.request("pause_queue", paused=False)
        finished, cancelled = seen / f"{done}-finished.json", seen / f"{dropped}-cancelled.json"
        wait_until(lambda: finished.exists() and cancelled.exists(), "the hook for both jobs", WAIT_S)
        record = json.loads(finished.read_text())
        assert record["event"]["event"] == "job_finished" and record["event"]["job_id"] == done
        assert record["job"]["status"] == "finished" and Path(record["job"]["video_path"]).is_file()
        assert json.loads(cancelled.read_text())["event"]["event"] == "job_cancelled"
        log = Path(engine.env["LANDIFF_DATA_DIR"]) / "engine.log"
        wait_until(
            lambda: f"--on-finish for job {done} exited 3: hook saw {done}" in log.read_text(), "the log"
        )
        with engine.client() as client:  # the hook's failure is its own: the job stays finished
            assert client.request("get_job", job_id=done)["job"]["status"] == "finished"
    finally:
        engine.stop()


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ("no-such-program-here --flag", "'no-such-program-here' is not a program on PATH"),
        ("notify 'unclosed", "No closing quotation"),
        ("", "--on-finish needs a command"),
    ],
)
def test_a_command_that_cannot_run_is_refused_at_start_in_one_line(tmp_path, home, command, said):
    engine = RunningEngine(tmp_path / "engine", home)
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve", "--model", "tiny", "--on-finish", command],
        env=engine.env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert done.returncode == 2 and said in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not engine.socket.exists()
