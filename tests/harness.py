"""What the test modules share: the engine subprocess they drive, their waits, and the bounds of both.

A test's time is bounded once, by `TEST_LIMIT_S` (conftest applies it to every test through pytest-timeout,
so a hang fails naming the test). A wait in a test is bounded by what the product promises where it
promises something (an engine lets go of its data dir within `wire.LEAVES_WITHIN_S`), and otherwise by
`WAIT_S`: as long as a loaded machine may need, short enough that the wait fails with what it waited for
before the test's limit does. No test measures the machine's speed against a clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from engine.client import EngineClient
from engine.wire import LEAVES_WITHIN_S

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "A snail crawling on green moss."
STOP_HINT = "use it (landiff-engine status) or stop it first (landiff-engine stop)"

TEST_LIMIT_S = 600.0  # one test, its fixtures' set-up and tear-down included
WAIT_S = TEST_LIMIT_S - 180.0  # a wait the product does not bound: leaves the rest of the test its time
ENGINE_LEAVES_S = LEAVES_WITHIN_S  # a stopping engine has let go of everything within this


SHORT_ROOT_MAX = 40  # a temp dir longer than this leaves too little of a socket path's 107 bytes


def short_root() -> Path:
    """Where the tests put what holds a Unix socket: the session's temp dir when its path is short, else
    /tmp (a TMPDIR such as macOS's /var/folders/... leaves no room for a socket path under pytest's
    tmp_path)."""
    temp = Path(tempfile.gettempdir())
    return temp if len(os.fsencode(temp)) <= SHORT_ROOT_MAX else Path("/tmp")


SHORT_DIRS: list[Path] = []  # made by this test process; conftest removes them when its session ends


def short_dir(base: Path | None = None) -> Path:
    """A short path for sockets: the same one for the same `base` (an engine restarted on it finds its old
    socket there), a new one without. Not created: the engine makes its runtime dir owner-only itself."""
    if base is None:
        path = Path(tempfile.mkdtemp(prefix="ld-", dir=short_root()))
    else:
        path = short_root() / f"ld-{hashlib.sha1(os.fsencode(base)).hexdigest()[:12]}"
    SHORT_DIRS.append(path)
    return path


def wait_until(
    condition: Callable[[], object], what: str, timeout: float = WAIT_S, every: float = 0.05
) -> None:
    """Poll `condition` until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


async def wait_until_async(
    condition: Callable[[], object],
    what: str,
    timeout: float = WAIT_S,
    every: float = 0.01,
    pause: Callable[[float], Awaitable[object]] = asyncio.sleep,
    state: Callable[[], str] = str,
) -> None:
    """`wait_until` inside an event loop: `pause` lets the loop run; `state()` is added to the failure."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{state()}")
        await pause(every)


async def until(pilot, condition: Callable[[], object], timeout: float = WAIT_S, what: str = "the condition"):
    """Wait in a Pilot-driven app; the failure names the app's subtitle and notifications."""

    def state() -> str:
        return f" ({pilot.app.sub_title!r}; {[str(n.message) for n in pilot.app._notifications]})"

    await wait_until_async(condition, what, timeout, 0.05, pilot.pause, state)


def mounted(app, selector: str):
    """The widget, or None before it is mounted (tabs and form fields come after the first frame)."""
    found = app.query(selector)
    return found.first() if found else None


class RunningEngine:
    """`landiff-engine serve --model tiny` as a subprocess; `serve_args`: more of serve's options."""

    def __init__(self, base: Path, weights: Path, serve_args: tuple[str, ...] = ()):
        self.base, self.weights, self.serve_args = base, weights, serve_args
        self.runtime = short_dir(base)  # its socket's path must fit 107 bytes, however deep `base` is
        self.env = {
            **os.environ,
            "LANDIFF_RUNTIME_DIR": str(self.runtime),
            "LANDIFF_DATA_DIR": str(base / "data"),
            "LANDIFF_HOME": str(weights),
            "LANDIFF_CACHE_DIR": str(base / "cache"),
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        self.socket = self.runtime / "engine.sock"
        self.process: subprocess.Popen | None = None

    def start(self) -> RunningEngine:
        command = [sys.executable, "-m", "engine.cli", "serve", "--model", "tiny", *self.serve_args]
        self.base.mkdir(parents=True, exist_ok=True)
        self.stderr = self.base / "engine.stderr"  # a file, not a pipe nobody reads: the log can be long
        with open(self.stderr, "ab") as stderr:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
        line = self.process.stdout.readline()
        assert line.startswith("ready"), self.stderr.read_text()
        return self

    def client(self) -> EngineClient:
        return EngineClient(self.socket, timeout=WAIT_S)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "engine.cli", *args]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=WAIT_S)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=ENGINE_LEAVES_S)


FINAL = ("job_finished", "job_failed", "job_cancelled")


def wait_for(client: EngineClient, job_id: str, kinds=FINAL) -> list[dict]:
    """The job's events on a subscribed connection, up to the first of `kinds`."""
    seen = []
    for event in client.events():
        if event.get("job_id") == job_id:
            seen.append(event)
            if event["event"] in kinds:
                return seen
    return seen


def until_ended(client: EngineClient, job_ids: list[str]) -> list[dict]:
    """Every event on a subscribed connection until each of these jobs has ended."""
    seen, ended = [], set()
    for event in client.events():
        seen.append(event)
        if event.get("job_id") in job_ids and event["event"] in FINAL:
            ended.add(event["job_id"])
            if ended == set(job_ids):
                return seen
    raise AssertionError("the events stopped")


def subscribed(engine: RunningEngine, since: int | None = None) -> tuple[EngineClient, dict]:
    """A client that said hello and subscribed from `since` (default: now), and the subscribe reply."""
    client = engine.client()
    client.request("hello", client="tests")
    current = client.request("status")["seq"] if since is None else since
    return client, client.request("subscribe", since=current)


def submit(client: EngineClient, steps: int, note: str = "") -> str:
    return client.request("submit", params={"prompt": f"{PROMPT} {note}", "steps": steps})["job_id"]


def job_status(client: EngineClient, job_id: str) -> str:
    return client.request("get_job", job_id=job_id)["job"]["status"]


def until_job_ended(client: EngineClient, job_id: str) -> str:
    """Poll the job until it is neither queued nor running; its status then."""
    wait_until(
        lambda: job_status(client, job_id) not in ("queued", "running"), f"job {job_id} to end", every=0.2
    )
    return job_status(client, job_id)
