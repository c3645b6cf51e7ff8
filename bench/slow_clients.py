"""Many clients that ask for big pages and never read them: what they cost a running engine.

Fills a data dir with long finished jobs, starts a tiny engine on it, opens CLIENTS connections that each
send REQUESTS `list_jobs limit=500` and never read, then asks `status` from another client. Prints the
engine's memory (baseline, peak, after the clients closed) and how long that `status` took.

    python bench/slow_clients.py --clients 185 --requests 1
    python bench/slow_clients.py --clients 100 --requests 5

The suite runs the second one (tests/test_slow_clients.py). Times are this machine's, not a GPU's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LONG_PROMPT = "a heron wades through a misty marsh at dawn, its reflection trembling " * 28  # ~2,000 chars


@dataclass
class Figures:
    clients: int
    requests: int
    jobs: int
    page_bytes: int  # one list_jobs reply, as a reading client gets it
    baseline_mb: float
    peak_mb: float
    after_close_mb: float
    status_s: float  # a status asked while the slow clients wait


def fill_store(data: Path, jobs: int) -> None:
    """`jobs` finished jobs whose summaries are long (prompt, chunk timings, quality): ~8 kB each."""
    from engine.daemon.store import Store

    store = Store(data / "landiff.db")
    chunks = [{"index": i, "denoise_s": 1.5, "decode_s": 0.5, "write_s": 0.1} for i in range(24)]
    quality = {"frames": 97, "fps": 8.0, "flicker": 1.2, "motion": 3.4, "skipped": "no CLIP weights"}
    for number in range(jobs):
        row = store.add_job({"prompt": f"{number} {LONG_PROMPT}", "seed": number}, "tiny", "bench")
        store.update(
            row.id,
            status="finished",
            finished_at=time.time(),
            timings={f"stage_{i}": 1.0 for i in range(12)},
            chunk_timings=chunks,
            quality=quality,
            video_path=str(data / "outputs" / row.id / "video.mp4"),
        )
    store.engine.dispose()


def rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def start_engine(base: Path, weights: Path) -> subprocess.Popen[str]:
    runtime = Path(tempfile.mkdtemp(prefix="ld-", dir="/tmp"))
    env = {
        **os.environ,
        "LANDIFF_RUNTIME_DIR": str(runtime),
        "LANDIFF_DATA_DIR": str(base / "data"),
        "LANDIFF_HOME": str(weights),
        "LANDIFF_CACHE_DIR": str(base / "cache"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "engine.cli", "serve", "--model", "tiny"]
    with open(base / "engine.stderr", "ab") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("ready"):
        raise RuntimeError((base / "engine.stderr").read_text())
    process.socket = runtime / "engine.sock"  # type: ignore[attr-defined]
    return process


def ask(path: Path, kind: str, timeout: float, **fields: object) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:  # a full backlog (clients not yet accepted) is EAGAIN for a socket with a timeout
                connection.connect(str(path))
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        connection.sendall(json.dumps({"v": 1, "id": 1, "type": kind, **fields}).encode() + b"\n")
        with connection.makefile("rb") as reader:
            return json.loads(reader.readline())


def slow_clients(base: Path, weights: Path, clients: int, requests: int, jobs: int, wait_s: float) -> Figures:
    """The scenario; every wait is bounded by `wait_s` (a failure to answer raises)."""
    fill_store(base / "data", jobs)
    engine = start_engine(base, weights)
    path: Path = engine.socket  # type: ignore[attr-defined]
    try:
        # the worker imports torch after the socket answers: the baseline is the engine at rest after that
        deadline = time.monotonic() + wait_s
        while any(w["state"] == "loading" for w in ask(path, "status", wait_s)["result"]["workers"]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the engine's workers did not load within {wait_s:.0f} s")
            time.sleep(0.2)
        page = ask(path, "list_jobs", wait_s, limit=500)
        page_bytes = len(json.dumps(page))
        baseline = rss_mb(engine.pid, "VmRSS")
        line = b"".join(b'{"v":1,"id":%d,"type":"list_jobs","limit":500}\n' % n for n in range(requests))
        held = []
        for _ in range(clients):
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            connection.connect(str(path))
            connection.sendall(line)
            held.append(connection)
        started = time.monotonic()
        status = ask(path, "status", wait_s)
        status_s = time.monotonic() - started
        assert status["ok"], status
        # every client's first reply has begun to arrive (or the engine dropped it): all that the engine
        # makes for them is made, the rest waits until they read
        for connection in held:
            readable, _, _ = select.select([connection], [], [], wait_s)
            if not readable:
                raise TimeoutError(f"no reply began to arrive within {wait_s:.0f} s")
        with contextlib.suppress(TimeoutError):  # an engine making every page for them answers late
            ask(path, "status", wait_s)
        peak = rss_mb(engine.pid, "VmHWM")
        for connection in held:
            connection.close()
        ask(path, "status", wait_s)
        deadline = time.monotonic() + wait_s
        after = rss_mb(engine.pid, "VmRSS")
        while after > baseline + 64 and time.monotonic() < deadline:  # the engine trims once they left
            time.sleep(0.2)
            after = rss_mb(engine.pid, "VmRSS")
        return Figures(clients, requests, jobs, page_bytes, baseline, peak, after, status_s)
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.wait(timeout=wait_s)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from engine.specs import get_spec
    from engine.weights.layout import layout_for
    from engine.weights.tiny import ensure_tiny_release

    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        weights = base / "weights"
        ensure_tiny_release(layout_for("tiny", weights), get_spec("tiny"))
        figures = slow_clients(base, weights, args.clients, args.requests, args.jobs, wait_s=120)
    rows = [
        ("clients x requests", f"{figures.clients} x {figures.requests}"),
        ("page (one list_jobs limit=500)", f"{figures.page_bytes / 2**20:.2f} MiB"),
        ("engine RSS before", f"{figures.baseline_mb:.0f} MB"),
        ("engine peak RSS", f"{figures.peak_mb:.0f} MB"),
        ("engine RSS after they closed", f"{figures.after_close_mb:.0f} MB"),
        ("status while they wait", f"{figures.status_s:.2f} s"),
    ]
    for name, value in rows:
        print(f"{name:<34} {value}")
    if args.json:
        args.json.write_text(json.dumps(asdict(figures), indent=2))


if __name__ == "__main__":
    main()
