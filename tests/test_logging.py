"""The engine's log: size-capped rotation, LANDIFF_LOG_LEVEL, the tail across a rotation, a failed job's
error with its id. (tests/test_engine.py checks a detached engine writes each line once and tells a
job's life.)"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from engine.daemon import logs
from engine.daemon.logs import ROOT, configure_logging, tail
from engine.daemon.store import Store
from engine.daemon.worker import JobWorker
from engine.protocol import JobParams
from tests.harness import WAIT_S


@pytest.fixture
def engine_log(tmp_path, monkeypatch):
    """The `engine` loggers configured onto a file in tmp_path; their handlers removed afterwards."""
    monkeypatch.setenv("LANDIFF_LOG_STDERR", "0")
    monkeypatch.delenv("LANDIFF_LOG_LEVEL", raising=False)
    yield tmp_path / "engine.log"
    for name in (ROOT, "asyncio"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


def test_the_log_rotates_at_its_cap_and_the_tail_reads_across_the_rotation(engine_log):
    configure_logging(engine_log, max_bytes=20_000, backups=2)
    logger = logging.getLogger("engine.daemon.test")
    for number in range(3000):  # ~250 KB: far beyond what three files of 20 KB hold
        logger.info("line %05d %s", number, "x" * 40)
    files = sorted(engine_log.parent.glob("engine.log*"))
    assert [path.name for path in files] == ["engine.log", "engine.log.1", "engine.log.2"]
    assert all(path.stat().st_size <= 20_000 for path in files)
    lines = tail(engine_log, 400)  # more than the current file holds
    numbers = [int(line.split("line ")[1][:5]) for line in lines]
    assert numbers == list(range(2600, 3000))
    assert len(engine_log.read_text().splitlines()) < 400  # so the tail did reach into engine.log.1


def test_the_level_comes_from_landiff_log_level(engine_log, monkeypatch):
    logger = logging.getLogger("engine.generation.test")
    monkeypatch.setenv("LANDIFF_LOG_LEVEL", "warning")
    configure_logging(engine_log)
    logger.info("quiet detail")
    logger.warning("loud problem")
    monkeypatch.setenv("LANDIFF_LOG_LEVEL", "DEBUG")
    configure_logging(engine_log)  # configuring again replaces the handlers: no line twice
    logger.debug("fine detail")
    text = engine_log.read_text()
    assert "quiet detail" not in text and text.count("loud problem") == 1 and text.count("fine detail") == 1
    assert "WARNING engine.generation.test: loud problem" in text


def test_a_level_that_is_no_level_stops_the_engine_with_a_message(tmp_path):
    env = {
        "LANDIFF_LOG_LEVEL": "chatty",
        "LANDIFF_DATA_DIR": str(tmp_path),
        "LANDIFF_RUNTIME_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve", "--model", "tiny"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert result.returncode == 2
    assert (
        "LANDIFF_LOG_LEVEL='chatty' is not a log level; use one of DEBUG, INFO, WARNING, ERROR"
        in result.stderr
    )


def test_a_failed_job_is_logged_with_its_id_and_error(engine_log, tmp_path):
    configure_logging(engine_log)
    store = Store(tmp_path / "landiff.db")
    row = store.add_job(JobParams(prompt="a snail").model_dump(), "tiny", "test")

    def broken_pipeline():
        raise RuntimeError("CUDA out of memory (simulated)")

    worker = JobWorker(store, broken_pipeline, lambda event: None, tmp_path / "outputs", 600.0)
    claimed = worker.claim()
    worker.run_job(claimed.id, JobParams(**json.loads(claimed.params)))
    text = engine_log.read_text()
    assert f"job {row.id} failed after" in text and "RuntimeError: CUDA out of memory (simulated)" in text
    assert "Traceback" in text  # an unexpected error keeps its traceback in the log
    assert store.get(row.id).status == "failed"


def test_the_tail_of_a_missing_log_is_empty_and_of_a_long_one_reads_only_its_end(tmp_path, monkeypatch):
    assert tail(tmp_path / "engine.log", 10) == []
    log = tmp_path / "engine.log"
    log.write_text("".join(f"{n}\n" for n in range(100_000)))
    read: list[int] = []

    class Counted(io.BufferedReader):
        def read(self, size: int | None = -1) -> bytes:
            data = super().read(size)
            read.append(len(data))
            return data

    monkeypatch.setattr(logs, "open", lambda path, mode: Counted(io.FileIO(path, mode)), raising=False)
    assert tail(log, 3) == ["99997", "99998", "99999"]
    assert 0 < sum(read) <= 3 * logs.TAIL_BYTES_PER_LINE < log.stat().st_size // 100  # only the end is read
