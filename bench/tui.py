"""TUI benchmarks: time to first paint, and the gallery with 10,000 jobs (search keystroke -> updated list).

    python bench/tui.py [--jobs 10000] [--repeat 5]

First paint is measured on a real pseudo-terminal, from exec (interpreter start included) to the first
frame, with no engine answering, so it is the TUI's own cost. The gallery runs against a real engine
process (tiny model) over a store filled with synthetic finished jobs; the TUI itself never imports torch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = [
    "snail",
    "heron",
    "fox",
    "kite",
    "wave",
    "moss",
    "dusk",
    "beach",
    "forest",
    "city",
    "rain",
    "neon",
    "train",
    "river",
    "desert",
]


def first_paint(repeat: int) -> tuple[list[float], list[float], bool]:
    """Seconds from exec to the first frame on a real pseudo-terminal (80x24), as a user sees it."""
    import pty
    import select
    import signal

    env = {**os.environ, "LANDIFF_RUNTIME_DIR": tempfile.mkdtemp(), "TERM": "xterm-256color"}
    env.update(COLUMNS="80", LINES="24")
    code = "import time, sys; t = time.perf_counter(); import landiff_tui.app; "
    code += "print(time.perf_counter() - t, 'torch' in sys.modules)"
    imports, torch_loaded = [], False
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        )
        seconds, loaded = out.stdout.split()
        imports.append(float(seconds))
        torch_loaded |= loaded == "True"
    paints = []
    for _ in range(repeat):
        started = time.perf_counter()
        pid, fd = pty.fork()
        if pid == 0:
            command = [sys.executable, "-m", "landiff_tui.app", "--model", "tiny", "--no-start"]
            os.chdir(ROOT)
            os.execvpe(sys.executable, command, env)
        screen = b""
        while b"Submit" not in screen:  # the Generate tab's button: the first full frame is out
            ready, _, _ = select.select([fd], [], [], 30)
            if not ready:
                raise RuntimeError("the TUI drew nothing in 30 s")
            screen += os.read(fd, 1 << 16)
        paints.append(time.perf_counter() - started)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    return imports, paints, torch_loaded


def fill_store(data: Path, count: int) -> None:
    from sqlalchemy import insert

    from engine.daemon.store import JobRow, Store

    store = Store(data / "landiff.db")
    rng = random.Random(0)
    now = time.time()
    rows = []
    for index in range(count):
        prompt = " ".join(rng.choice(WORDS) for _ in range(8)) + f" #{index}"
        params = {
            "prompt": prompt,
            "seed": index,
            "cfg": 7.5,
            "motion_score": 0.1,
            "temperature": 1.0,
            "steps": 50,
        }
        rows.append(
            {
                "id": uuid.uuid4().hex[:12],
                "created_at": now - index,
                "status": "finished",
                "prompt": prompt,
                "params": json.dumps(params),
                "model": "tiny",
                "engine_version": "bench",
                "weights_sha256": "{}",
                "timings": json.dumps({"denoise": 1.0}),
            }
        )
    with store.session() as session:
        session.execute(insert(JobRow), rows)
        session.commit()


async def gallery(count: int, repeat: int) -> dict[str, list[float]]:
    from landiff_tui.app import LanDiffApp

    app = LanDiffApp(model="tiny", autostart=False)
    timings: dict[str, list[float]] = {
        "first page": [],
        "keystroke -> list": [],
        "query": [],
        "next page": [],
    }
    async with app.run_test(size=(120, 40)) as pilot:
        while not app.link.connected:
            await pilot.pause(0.05)
        while (await app.link.request("status")).device.startswith("starting"):
            await pilot.pause(0.2)  # the engine's worker is still importing torch: it would skew the timings
        await pilot.press("f3")
        view = app.query_one("GalleryView")
        for _ in range(repeat):
            await app.workers.wait_for_complete()
            generation = view.generation
            started = time.perf_counter()
            view.reload()
            while view.generation == generation or view.fetching or app.workers._workers:
                await pilot.pause(0.005)
            timings["first page"].append(time.perf_counter() - started)
        search = app.query_one("#search")
        search.focus()
        for word in (WORDS * repeat)[:repeat]:
            search.value = ""
            await pilot.pause(0.3)
            await app.workers.wait_for_complete()
            await pilot.press(*word[:2])
            await pilot.pause(0.3)  # past the debounce: the list shows the first two letters' matches
            await app.workers.wait_for_complete()
            generation = view.generation
            started = time.perf_counter()
            await pilot.press(word[2])
            while view.generation == generation or view.fetching or app.workers._workers:
                await pilot.pause(0.005)
            timings["keystroke -> list"].append(time.perf_counter() - started)
            timings["query"].append(view.last_query_s)
        search.value = ""
        await pilot.pause(0.4)
        await app.workers.wait_for_complete()
        table = app.query_one("#gallery-table")
        table.focus()
        before = len(view.rows)
        started = time.perf_counter()
        table.move_cursor(row=before - 1)
        while len(view.rows) == before:
            await pilot.pause(0.005)
        timings["next page"].append(time.perf_counter() - started)
    return timings


def row(stage: str, values: list[float], rate: str = "") -> str:
    median = statistics.median(values)
    return f"| {stage:<34} | {median * 1000:9.1f} ms | {rate:<22} | {len(values):>3} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    imports, paints, torch_loaded = first_paint(args.repeat)
    base = Path(tempfile.mkdtemp())
    os.environ.update(
        LANDIFF_RUNTIME_DIR=str(base / "run"),
        LANDIFF_DATA_DIR=str(base / "data"),
        LANDIFF_HOME=str(base / "weights"),
        HF_HUB_OFFLINE="1",
    )
    started = time.perf_counter()
    fill_store(base / "data", args.jobs)
    filled = time.perf_counter() - started
    engine = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "serve", "--model", "tiny"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert engine.stdout.readline().startswith("ready")
        timings = asyncio.run(gallery(args.jobs, args.repeat))
    finally:
        engine.terminate()
        engine.wait(30)

    print(
        f"landiff-tui benchmarks, {os.cpu_count()} CPUs, {args.jobs:,} jobs in the store "
        f"(filled in {filled:.1f} s)"
    )
    print(f"| {'stage':<34} | {'median':>12} | {'rate / note':<22} | {'n':>3} |")
    print(f"|{'-' * 36}|{'-' * 14}|{'-' * 24}|{'-' * 5}|")
    print(row("import landiff_tui.app", imports, "torch imported: " + ("YES" if torch_loaded else "no")))
    print(row("first paint (exec -> first frame, pty)", paints))
    print(row("gallery first page (100 rows)", timings["first page"]))
    print(row("search: keystroke -> updated list", timings["keystroke -> list"], "incl. 150 ms debounce"))
    print(row("search: engine query + table fill", timings["query"]))
    print(row("next page on scroll (100 rows)", timings["next page"]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"peak memory (this process, TUI side): {peak:.0f} MiB RSS")


if __name__ == "__main__":
    main()
