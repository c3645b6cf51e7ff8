"""The job history read straight from the engine's database, for the commands that only read (jobs, show,
presets, status) when no engine runs: they start none.

Read-only: the file is opened with SQLite's `mode=ro` and never created, migrated or written (the engine
is its only writer, and migrates it when it starts). Torch-free: the store's row models and sqlmodel.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from engine.paths import database_path

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from engine.protocol import JobList, JobSummary

START_HINT = "`landiff-engine serve` runs one here; `submit` or landiff-tui start one in the background"


class HistoryUnreadable(ValueError):
    """The database is there but cannot be read as this version's (newer, older, damaged, not ours)."""


class History:
    """A read-only view of the database at `path` (which must exist: `open_history` checks)."""

    def __init__(self, path: Path):
        from sqlmodel import create_engine

        self.path = path
        uri = f"file:{quote(str(path))}?mode=ro"

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)

        self.engine: Engine = create_engine("sqlite://", creator=connect)
        self.check_schema()

    def check_schema(self) -> None:
        from sqlalchemy import text

        from engine.daemon.store import SCHEMA_VERSION

        with self.reading(), self.engine.connect() as connection:
            version = int(connection.execute(text("PRAGMA user_version")).scalar_one())
        if version > SCHEMA_VERSION:
            raise HistoryUnreadable(
                f"the job history {self.path} comes from a newer landiff-engine (schema {version} > "
                f"{SCHEMA_VERSION}); upgrade landiff-tui or point LANDIFF_DATA_DIR elsewhere"
            )
        self.version = version

    def readable(self) -> bool:
        """Whether it holds jobs to read: False for a file never set up (schema 0); HistoryUnreadable for
        an older version's, which only the next engine to start may migrate (this reader writes nothing)."""
        from engine.daemon.store import SCHEMA_VERSION

        if 0 < self.version < SCHEMA_VERSION:
            raise HistoryUnreadable(
                f"the job history {self.path} is an older landiff-engine's (schema {self.version} < "
                f"{SCHEMA_VERSION}): the next engine to start upgrades it; {START_HINT}"
            )
        return self.version == SCHEMA_VERSION

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def list_jobs(
        self, search: str | None, status: str | None, sort: str = "newest", offset: int = 0, limit: int = 50
    ) -> JobList:
        """As the engine's list_jobs answers (engine/daemon/store.py `Store.list_jobs`): newest first."""
        from sqlmodel import Session

        from engine.daemon.store import page_of_jobs
        from engine.protocol import JobList

        if not self.readable():
            return JobList(jobs=[], total=0)
        with self.reading(), Session(self.engine) as session:
            rows, total = page_of_jobs(session, search, status, sort, offset, limit)
            return JobList(jobs=[row.to_summary() for row in rows], total=int(total))

    def job(self, given: str) -> JobSummary:
        """A job by its id or a unique prefix of at least 4 characters, refused in the engine's words."""
        from sqlmodel import Session, col, select

        from engine.daemon.store import JobRow

        if not self.readable():
            raise ValueError(f"no job {given!r}")
        with self.reading(), Session(self.engine) as session:
            row = session.get(JobRow, given)
            if row is not None:
                return row.to_summary()
            if len(given) < 4:
                raise ValueError(f"no job {given!r}: give its id, or at least its first 4 characters")
            query = select(JobRow).where(col(JobRow.id).startswith(given, autoescape=True))
            rows = session.exec(query.order_by(JobRow.id).limit(6)).all()
            matches: list[JobSummary] = [row.to_summary() for row in rows]
        if not matches:
            raise ValueError(f"no job {given!r}")
        if len(matches) > 1:
            ids = [match.id for match in matches]
            shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
            raise ValueError(f"{given!r} is the start of several jobs ({shown}): give more of the id")
        return matches[0]

    def queued(self) -> int:
        return self.list_jobs(None, "queued", limit=1).total

    def queue_paused(self) -> bool:
        """Whether the queue was left paused (Store.pause_queue): the next engine starts none of it."""
        from sqlmodel import Session

        from engine.daemon.store import QUEUE_PAUSED, EngineStateRow

        if not self.readable():
            return False
        with self.reading(), Session(self.engine) as session:
            return session.get(EngineStateRow, QUEUE_PAUSED) is not None

    def presets(self) -> dict[str, dict[str, Any]]:
        """The saved and built-in presets, as the engine's list_presets holds them."""
        import json

        from sqlmodel import Session, col, select

        from engine.daemon.store import BUILTIN_PRESETS, SCHEMA_VERSION, PresetRow

        if self.version != SCHEMA_VERSION:  # an older one's presets table may differ: the built-in ones
            return builtin_presets()
        with self.reading(), Session(self.engine) as session:
            rows = session.exec(select(PresetRow).order_by(col(PresetRow.name))).all()
            found = {row.name: {"params": json.loads(row.params), "builtin": row.builtin} for row in rows}
        for name, params in BUILTIN_PRESETS.items():  # an engine of this version writes them at start
            found[name] = {"params": params, "builtin": True}
        return dict(sorted(found.items()))

    @contextmanager
    def reading(self) -> Iterator[None]:
        """A database error mid-read as one line (HistoryUnreadable) naming the file."""
        from sqlalchemy.exc import DBAPIError

        try:
            yield
        except DBAPIError as error:
            raise HistoryUnreadable(f"the job history {self.path} cannot be read: {error.orig}") from None


def builtin_presets() -> dict[str, dict[str, Any]]:
    from engine.daemon.store import BUILTIN_PRESETS

    return {name: {"params": params, "builtin": True} for name, params in sorted(BUILTIN_PRESETS.items())}


def open_history() -> History | None:
    """The history of this data dir, read-only; None when there is none yet (never created here)."""
    path = database_path()
    return History(path) if path.is_file() else None


def no_engine_note(command: str, history: History | None) -> str:
    """The one line a reading command writes (to stderr) when it answers from the history."""
    where = f"read from the job history {history.path}" if history is not None else "no job history yet"
    return f"landiff-engine {command}: no engine is running ({where}); {START_HINT}"
