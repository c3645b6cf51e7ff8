"""The job history: SQLite through sqlmodel, WAL mode, schema versioned with `PRAGMA user_version`.

The engine is the only writer. A job row holds everything needed to reproduce it and the
paths of its finished outputs (never of a half-written file: outputs are renamed into place
before a row points at them).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, TypeAdapter
from sqlalchemy import event as sa_event
from sqlalchemy import text, update
from sqlmodel import Field, Session, SQLModel, col, create_engine, func, select

from engine.protocol import JobSummary

if TYPE_CHECKING:
    from engine.generation.job import JobResult

SCHEMA_VERSION = 6

BUILTIN_PRESETS: dict[str, dict[str, Any]] = {
    "reference defaults": {"cfg": 7.5, "motion_score": 0.1, "temperature": 1.0, "steps": 50, "seed": 42},
    "quick draft": {"cfg": 7.5, "motion_score": 0.1, "temperature": 1.0, "steps": 20},
    "calm motion": {"cfg": 6.5, "motion_score": 0.05, "temperature": 1.0, "steps": 50},
    # long videos, chunk by chunk: 241 and 481 frames are chunk boundaries of both the release (49 + 24 k)
    # and the tiny model (9 + 8 k), so neither rounds
    "long 30 s": {"cfg": 7.5, "motion_score": 0.1, "temperature": 1.0, "steps": 50, "frames": 241},
    "long 1 min": {"cfg": 7.5, "motion_score": 0.1, "temperature": 1.0, "steps": 50, "frames": 481},
    "long draft 30 s": {"cfg": 7.5, "motion_score": 0.1, "temperature": 1.0, "steps": 20, "frames": 241},
}


log = logging.getLogger(__name__)
JOB_ID = re.compile(r"[0-9a-f]{12}")  # what the engine makes; only such an id forms a path
FOREIGN_ID = "refused: its id is not one the engine makes (an edited row), so it never names a folder"


class ForeignJobId(ValueError):
    """A job id the engine did not make (`JOB_ID`): an edited database row, never a path."""


def job_folder(outputs: Path, job_id: str) -> Path:
    """The one place a job's folder is named: `outputs/<id>`, for an id the engine made, else ForeignJobId."""
    if not JOB_ID.fullmatch(job_id):
        raise ForeignJobId(f"job id {job_id!r}: {FOREIGN_ID}")
    return outputs / job_id


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


class JobRow(SQLModel, table=True):
    __tablename__ = "jobs"

    id: str = Field(primary_key=True)
    created_at: float = Field(index=True)
    started_at: float | None = None
    finished_at: float | None = None
    status: str = Field(index=True)
    prompt: str
    params: str  # JSON of protocol.JobParams
    model: str
    engine_version: str
    weights_sha256: str = "{}"
    timings: str = "{}"
    peak_memory_bytes: int | None = None
    error: str | None = None
    video_path: str | None = None
    tokens_path: str | None = None
    sidecar_path: str | None = None
    thumbnail_path: str | None = None
    chunk_timings: str = "[]"  # JSON list, one entry per finished chunk of a long video (schema 2)
    worker: str | None = None  # the worker that ran it last: "cpu", "cuda:1", a Ray node's GPU (schema 3)
    requeues: int = 0  # times a lost worker put it back in the queue (schema 3)
    quality: str | None = None  # JSON of the quality probe's findings, once it ran (schema 3)
    resumed_at_chunk: int | None = None  # chunks made before it last resumed from its checkpoint (schema 4)
    # its place in the queue: workers take the queued job of the lowest rank first; a new job's is its
    # created_at (last), a move gives it one between its new neighbours' (schema 5)
    queue_rank: float = Field(default=0.0, index=True)
    # the variations one command queued together (engine/variations.py) share one; None: a job of its own
    # (schema 6)
    group_id: str | None = Field(default=None, index=True)

    def to_summary(self) -> JobSummary:
        """The row as the wire shows it: its JSON columns read into the summary's fields (ChunkTiming...)."""
        data = self.model_dump(exclude={"queue_rank"})  # the queue's order is its own reply's
        data["group"] = data.pop("group_id")
        for key in JSON_FIELDS:
            data[key] = None if data[key] is None else json.loads(data[key])
        return JobSummary.model_validate(data)

    def summary(self) -> dict[str, Any]:
        """`to_summary()` as plain data (what a reply's list of jobs holds)."""
        return self.to_summary().model_dump()


# The row's JSON columns: each written as the JobSummary field of its name reads it back, so a value of
# another shape fails where it is written, not when a page of jobs holding it is listed.
def page_of_jobs(
    session: Session, search: str | None, status: str | None, sort: str, offset: int, limit: int
) -> tuple[list[JobRow], int]:
    """One page of the jobs matching a prompt search and a status, newest or oldest first, and how many
    match in all: the engine's list_jobs and the CLI's history without an engine read the same."""
    query = select(JobRow)
    if search:
        query = query.where(col(JobRow.prompt).contains(search))
    if status:
        query = query.where(JobRow.status == status)
    orders: dict[str, list[Any]] = {
        "newest": [col(JobRow.created_at).desc()],
        "oldest": [col(JobRow.created_at)],
        "queue": [col(JobRow.queue_rank), col(JobRow.created_at)],  # the order workers take queued jobs
    }
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(query.order_by(*orders[sort]).offset(offset).limit(limit)).all()
    return list(rows), int(total)


JSON_FIELDS = ("params", "timings", "weights_sha256", "chunk_timings", "quality")


def column_shape(key: str) -> TypeAdapter[Any]:
    annotation = JobSummary.model_fields[key].annotation
    assert annotation is not None
    return TypeAdapter(annotation, config=ConfigDict(strict=True))


COLUMN_SHAPES = {key: column_shape(key) for key in JSON_FIELDS}


def column_values(fields: dict[str, Any]) -> dict[str, Any]:
    """Values for the row's columns: those of a JSON column checked against its shape and encoded (None
    stays NULL: the quality probe looks for rows without findings)."""
    values = dict(fields)
    for key in JSON_FIELDS:
        if values.get(key) is not None:
            shape = COLUMN_SHAPES[key]
            values[key] = shape.dump_json(shape.validate_python(values[key])).decode()
    return values


def result_columns(result: JobResult) -> dict[str, Any]:
    """What a job's result puts in its row: its outcome, each field in the column of its name."""
    return dict(result.outcome())


class EngineStateRow(SQLModel, table=True):
    """What the engine keeps between runs that is not a job's: whether the queue is paused."""

    __tablename__ = "engine_state"

    key: str = Field(primary_key=True)
    value: str


QUEUE_PAUSED = "queue_paused"


class PresetRow(SQLModel, table=True):
    __tablename__ = "presets"

    name: str = Field(primary_key=True)
    params: str
    builtin: bool = False


def _migrate_to_1(connection) -> None:
    SQLModel.metadata.create_all(connection)


def _migrate_to_2(connection) -> None:
    """Per-chunk timings of long videos. (A database created at version 0 already has the column: the
    first migration creates the current tables.) Status `cancelled_partial` needs no schema change."""
    columns = {row[1] for row in connection.execute(text("PRAGMA table_info(jobs)"))}
    if "chunk_timings" not in columns:
        connection.execute(text("ALTER TABLE jobs ADD COLUMN chunk_timings VARCHAR NOT NULL DEFAULT '[]'"))


def _migrate_to_3(connection) -> None:
    """Which worker ran a job, how often a lost worker re-queued it, and the quality probe's findings."""
    columns = {row[1] for row in connection.execute(text("PRAGMA table_info(jobs)"))}
    for name, declaration in (
        ("worker", "VARCHAR"),
        ("requeues", "INTEGER NOT NULL DEFAULT 0"),
        ("quality", "VARCHAR"),
    ):
        if name not in columns:
            connection.execute(text(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}"))


def _migrate_to_4(connection) -> None:
    """Where a long job last resumed from its checkpoint (engine/generation/resume.py)."""
    columns = {row[1] for row in connection.execute(text("PRAGMA table_info(jobs)"))}
    if "resumed_at_chunk" not in columns:
        connection.execute(text("ALTER TABLE jobs ADD COLUMN resumed_at_chunk INTEGER"))


def _migrate_to_5(connection) -> None:
    """The queue's own order (a job moved up or down keeps its new place) and its pause."""
    columns = {row[1] for row in connection.execute(text("PRAGMA table_info(jobs)"))}
    if "queue_rank" not in columns:
        connection.execute(text("ALTER TABLE jobs ADD COLUMN queue_rank FLOAT NOT NULL DEFAULT 0"))
        connection.execute(text("UPDATE jobs SET queue_rank = created_at"))
    connection.execute(text("CREATE INDEX IF NOT EXISTS ix_jobs_queue_rank ON jobs (queue_rank)"))
    SQLModel.metadata.create_all(connection, tables=[EngineStateRow.__table__])  # type: ignore[attr-defined]


def _migrate_to_6(connection) -> None:
    """The group of variations a job was queued with (`submit --seeds/--sweep`)."""
    columns = {row[1] for row in connection.execute(text("PRAGMA table_info(jobs)"))}
    if "group_id" not in columns:
        connection.execute(text("ALTER TABLE jobs ADD COLUMN group_id VARCHAR"))
    connection.execute(text("CREATE INDEX IF NOT EXISTS ix_jobs_group_id ON jobs (group_id)"))


# MIGRATIONS[n] takes a database at version n to version n + 1.
MIGRATIONS: list[Callable] = [
    _migrate_to_1,
    _migrate_to_2,
    _migrate_to_3,
    _migrate_to_4,
    _migrate_to_5,
    _migrate_to_6,
]


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.engine = create_engine(
            f"sqlite:///{path}", connect_args={"check_same_thread": False, "timeout": 30}
        )
        sa_event.listen(self.engine, "connect", _pragmas)
        self.lock = threading.RLock()
        self._migrate()

    def _migrate(self) -> None:
        """All steps and the new version in one transaction, begun IMMEDIATE: Python's sqlite3 opens no
        transaction before DDL by itself, so without it a second process could see half a migration (and
        fail on "table jobs already exists"); with it, that process waits and then finds the tables."""
        with self.lock, self.engine.connect() as connection:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                version = connection.execute(text("PRAGMA user_version")).scalar_one()
                if version > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"{self.path} comes from a newer landiff-engine "
                        f"(schema {version} > {SCHEMA_VERSION}); "
                        "upgrade landiff-tui or point LANDIFF_DATA_DIR elsewhere"
                    )
                for step in range(version, SCHEMA_VERSION):
                    MIGRATIONS[step](connection)
                connection.execute(text(f"PRAGMA user_version = {SCHEMA_VERSION}"))
                for name, params in BUILTIN_PRESETS.items():  # in the same transaction: no racing insert
                    connection.execute(
                        text(
                            "INSERT INTO presets (name, params, builtin) VALUES (:name, :params, 1) "
                            "ON CONFLICT(name) DO UPDATE SET params = excluded.params, builtin = 1"
                        ),
                        {"name": name, "params": json.dumps(params)},
                    )
            except BaseException:
                connection.exec_driver_sql("ROLLBACK")
                raise
            connection.exec_driver_sql("COMMIT")

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # jobs

    def add_job(
        self, params: dict[str, Any], model: str, engine_version: str, group: str | None = None
    ) -> JobRow:
        now = time.time()
        row = JobRow(
            id=new_job_id(),
            group_id=group,
            created_at=now,
            queue_rank=now,
            status="queued",
            prompt=params["prompt"],
            params=json.dumps(params),
            model=model,
            engine_version=engine_version,
        )
        with self.lock, self.session() as session:
            session.add(row)
            session.commit()
        return row

    def get(self, job_id: str) -> JobRow | None:
        with self.session() as session:
            return session.get(JobRow, job_id)

    def update(self, job_id: str, **fields: Any) -> JobRow:
        values = column_values(fields)
        with self.lock, self.session() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise KeyError(job_id)
            for key, value in values.items():
                setattr(row, key, value)
            session.add(row)
            session.commit()
            return row

    def update_running(self, job_id: str, worker: str | None, **fields: Any) -> bool:
        """Change the job's row only while it runs on `worker` (one conditional update, as a claim is);
        whether it did. A job's transitions (engine/daemon/lifecycle.py) write through this."""
        with self.lock, self.engine.begin() as connection:
            changed = connection.execute(
                update(JobRow)
                .where(
                    col(JobRow.id) == job_id,
                    col(JobRow.status) == "running",
                    col(JobRow.worker).is_not_distinct_from(worker),
                )
                .values(**column_values(fields))
            )
            return changed.rowcount == 1

    def claim_next(self, worker: str | None = None) -> JobRow | None:
        """The oldest queued job, marked running (on `worker`, the claiming worker's label).

        The claim is a conditional update (`WHERE status = 'queued'`), as a cancel is: of a claim and a
        cancel of the same job, exactly one changes the row, whatever the interleaving.
        """
        with self.lock, self.session() as session:
            while True:
                row = session.exec(
                    select(JobRow)
                    .where(JobRow.status == "queued")
                    .order_by(col(JobRow.queue_rank), col(JobRow.created_at))
                ).first()
                if row is None or self.queue_paused(session):
                    return None
                if not JOB_ID.fullmatch(row.id):  # refused as it is read: no worker sees it
                    session.exec(
                        update(JobRow)
                        .where(col(JobRow.id) == row.id, col(JobRow.status) == "queued")
                        .values(status="failed", finished_at=time.time(), error=FOREIGN_ID)
                    )
                    session.commit()
                    log.warning("job %r failed: %s", row.id, FOREIGN_ID)
                    continue
                started = time.time()
                claimed = session.exec(
                    update(JobRow)
                    .where(col(JobRow.id) == row.id, col(JobRow.status) == "queued")
                    .values(status="running", started_at=started, worker=worker)
                )
                session.commit()
                if claimed.rowcount == 1:
                    row.status, row.started_at, row.worker = "running", started, worker
                    return row

    def requeue(self, job_id: str) -> bool:
        """Put a running job whose worker was lost back in the queue, once: one conditional update that
        changes the row only while it runs and was never re-queued. Whether it did (False: the caller
        marks the job interrupted). It keeps its place in the queue (its queue_rank)."""
        with self.lock, self.engine.begin() as connection:
            requeued = connection.execute(
                update(JobRow)
                .where(col(JobRow.id) == job_id, col(JobRow.status) == "running", col(JobRow.requeues) == 0)
                .values(status="queued", started_at=None, requeues=JobRow.requeues + 1)
            )
            return requeued.rowcount == 1

    def cancel_queued(self, job_id: str) -> bool:
        """Cancel the job if it is still queued, in one conditional update; whether it was."""
        with self.lock, self.engine.begin() as connection:
            cancelled = connection.execute(
                update(JobRow)
                .where(col(JobRow.id) == job_id, col(JobRow.status) == "queued")
                .values(status="cancelled", finished_at=time.time())
            )
            return cancelled.rowcount == 1

    def running(self) -> list[JobRow]:
        with self.session() as session:
            return list(session.exec(select(JobRow).where(JobRow.status == "running")).all())

    def interrupt_running(self, resume: Collection[str] = ()) -> list[str]:
        """Jobs a dead engine left running: those in `resume` back in the queue at their old place (to
        continue from their checkpoints), the others marked interrupted. Returns the interrupted ids."""
        with self.lock, self.session() as session:
            rows = session.exec(select(JobRow).where(JobRow.status == "running")).all()
            interrupted = []
            for row in rows:
                if row.id in resume:
                    row.status, row.started_at = "queued", None
                else:
                    row.status, row.finished_at = "interrupted", time.time()
                    row.error = "the engine stopped while this job was running"
                    interrupted.append(row.id)
                session.add(row)
            session.commit()
            return interrupted

    def list_jobs(
        self,
        search: str | None = None,
        status: str | None = None,
        sort: str = "newest",
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[JobRow], int]:
        with self.session() as session:
            return page_of_jobs(session, search, status, sort, offset, limit)

    def queued_ids(self) -> list[str]:
        """The queued jobs' ids (500 at most), in the order workers take them."""
        rows, _ = self.list_jobs(status="queued", sort="queue", limit=500)
        return [row.id for row in rows]

    # the queue: its order and its pause

    def move_queued(self, job_id: str, to: int | str) -> bool:
        """Move a queued job to place `to` of the queue (0: next; past the end: last) or by a word: top,
        bottom, up, down. Whether it moved: False when the job is not queued (a worker took it, say).
        One transaction under the lock a claim takes, so a claim sees the old order or the new one."""
        with self.lock, self.session() as session:
            ranks = session.exec(
                select(JobRow.id, JobRow.queue_rank)
                .where(JobRow.status == "queued")
                .order_by(col(JobRow.queue_rank), col(JobRow.created_at))
            ).all()
            order = [queued for queued, _ in ranks]
            if job_id not in order:
                return False
            at = order.index(job_id)
            place = {"top": 0, "bottom": len(order), "up": at - 1, "down": at + 1}.get(str(to), to)
            order.remove(job_id)
            order.insert(max(0, min(int(place), len(order))), job_id)
            # the queued jobs' ranks dealt out again in the new order: all stay within the span they had,
            # so a job submitted later (ranked by its creation time) still comes after them
            for queued, rank in zip(order, sorted(rank for _, rank in ranks), strict=True):
                session.exec(
                    update(JobRow)
                    .where(col(JobRow.id) == queued, col(JobRow.status) == "queued")
                    .values(queue_rank=rank)
                )
            session.commit()
            return True

    def queue_paused(self, session: Session | None = None) -> bool:
        if session is None:
            with self.session() as own:
                return own.get(EngineStateRow, QUEUE_PAUSED) is not None
        return session.get(EngineStateRow, QUEUE_PAUSED) is not None

    def pause_queue(self, paused: bool) -> None:
        """A paused queue starts no job (nor makes tokens ahead) until it is resumed, across restarts."""
        with self.lock, self.session() as session:
            state = session.get(EngineStateRow, QUEUE_PAUSED)
            if paused and state is None:
                session.add(EngineStateRow(key=QUEUE_PAUSED, value="1"))
            elif not paused and state is not None:
                session.delete(state)
            session.commit()

    def ids_starting(self, prefix: str, limit: int = 6) -> list[str]:
        """Job ids that begin with `prefix`, at most `limit` (a prefix that matches more is ambiguous)."""
        with self.session() as session:
            query = select(JobRow.id).where(col(JobRow.id).startswith(prefix, autoescape=True))
            return list(session.exec(query.order_by(JobRow.id).limit(limit)).all())

    def delete(self, job_id: str) -> JobRow | None:
        with self.lock, self.session() as session:
            row = session.get(JobRow, job_id)
            if row is not None:
                session.delete(row)
                session.commit()
            return row

    # presets

    def presets(self) -> dict[str, dict[str, Any]]:
        with self.session() as session:
            rows = session.exec(select(PresetRow).order_by(col(PresetRow.name))).all()
        return {row.name: {"params": json.loads(row.params), "builtin": row.builtin} for row in rows}

    def save_preset(self, name: str, params: dict[str, Any]) -> None:
        with self.lock, self.session() as session:
            existing = session.get(PresetRow, name)
            if existing is not None and existing.builtin:
                raise ValueError(
                    f"preset {name!r} is built in and cannot be changed; save it under another name"
                )
            session.merge(PresetRow(name=name, params=json.dumps(params), builtin=False))
            session.commit()

    def delete_preset(self, name: str) -> bool:
        with self.lock, self.session() as session:
            row = session.get(PresetRow, name)
            if row is None:
                return False
            if row.builtin:
                raise ValueError(f"preset {name!r} is built in and cannot be deleted")
            session.delete(row)
            session.commit()
            return True

    def integrity(self) -> str:
        with self.engine.connect() as connection:
            return connection.execute(text("PRAGMA integrity_check")).scalar_one()


def _pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
