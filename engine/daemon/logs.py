"""The engine's log: module loggers under `engine`, one size-capped rotating file in the data dir.

Every module logs through `logging.getLogger(__name__)`; `configure_logging` (run once by `serve`)
gives the `engine` logger its handlers, so each line is written once per destination: the file, and
stderr unless LANDIFF_LOG_STDERR=0 (a detached engine's stderr is a file of its own, engine.out).
"""

from __future__ import annotations

import logging
import os
import sys
from logging.handlers import RotatingFileHandler
from pathlib import Path

from engine import settings
from engine.paths import log_path, private_dir

ROOT = "engine"  # every engine module's logger is below it
MAX_BYTES = 5 * 2**20  # per file; with the backups the log holds at most 20 MiB
BACKUPS = 3
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TAIL_BYTES_PER_LINE = 400  # a generous line length, to read only the end of the file


def configure_logging(path: Path | None = None, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> Path:
    """Send the engine's loggers (and asyncio's complaints) to the rotating file; returns its path."""
    path = path or log_path()
    private_dir(path.parent)
    level = settings.log_level()
    formatter = logging.Formatter(FORMAT)
    handlers: list[logging.Handler] = [
        RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    ]
    if settings.log_to_stderr():
        handlers.append(logging.StreamHandler(sys.stderr))
    for name in (ROOT, "asyncio"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):  # configuring twice (tests) must not write each line twice
            logger.removeHandler(old)
            old.close()
        for handler in handlers:
            handler.setFormatter(formatter)
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    return path


def tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of the log, reaching into the rotated files when the current one is short."""
    found: list[str] = []
    current, older = path, 0
    while len(found) < lines and current.is_file():
        found = read_end(current, lines - len(found)) + found
        older += 1
        current = path.with_name(f"{path.name}.{older}")
    return found[-lines:]


def read_end(path: Path, lines: int) -> list[str]:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        start = max(size - lines * TAIL_BYTES_PER_LINE, 0)
        handle.seek(start)
        text = handle.read().decode(errors="replace").splitlines()
    if start > 0 and text:
        text = text[1:]  # the first line read is most likely cut
    return text[-lines:]
