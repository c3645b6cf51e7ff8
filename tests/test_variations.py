"""Variations (engine/variations.py, `submit --seeds/--sweep`): the parser, and a group queued on a real
engine, all or nothing."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest

from engine.variations import MAX_VARIATIONS, Sweep, parse_seeds, parse_sweep, variations
from tests.harness import ENGINE_LEAVES_S, PROMPT, RunningEngine, wait_until

pytestmark = pytest.mark.timeout(180)


def test_seeds_are_ranges_lists_or_a_count_of_random_ones():
    assert parse_seeds("1-4") == [1, 2, 3, 4]
    assert parse_seeds(" 3, 7,11 ") == [3, 7, 11]
    assert parse_seeds("1-3,10") == [1, 2, 3, 10]
    assert parse_seeds("5") == [5]
    random_ones = parse_seeds("4x", random.Random(1))
    assert len(set(random_ones)) == 4 and all(0 <= seed < 2**63 for seed in random_ones)
    assert len(parse_seeds(f"{MAX_VARIATIONS}x")) == MAX_VARIATIONS


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("4-1", "the range 4-1 runs backwards; write 1-4"),
        ("1-3,2", "seed 2 is given twice"),
        ("a", "'a' is not a seed or a range"),
        ("-3", "'-3' is not a seed or a range"),
        ("1,,2", "'' is not a seed or a range"),
        ("0x", "asks for no job"),
        (f"1-{MAX_VARIATIONS + 1}", f"asks for {MAX_VARIATIONS + 1} jobs; at most {MAX_VARIATIONS}"),
        ("1-1000000000000", f"at most {MAX_VARIATIONS} are queued at once"),
        (f"{MAX_VARIATIONS + 1}x", f"at most {MAX_VARIATIONS}"),
        (f"{2**63}", "seed must be between 0 and 2**63 - 1"),
    ],
)
def test_bad_seeds_are_refused_saying_why(text, said):
    with pytest.raises(ValueError, match="--seeds") as refused:
        parse_seeds(text)
    assert said in str(refused.value)


def test_a_sweep_takes_values_of_one_parameter_each_checked_by_its_own_check():
    assert parse_sweep("cfg=5,7.5,10") == Sweep("cfg", (5.0, 7.5, 10.0))
    assert parse_sweep("top-k=,10,50") == Sweep("top_k", (None, 10, 50))  # empty: unset (off)
    assert parse_sweep("steps= 20 ,50") == Sweep("steps", (20, 50))


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("cfg=5,99", "--sweep cfg: cfg must be between 0 and 50, got 99"),
        ("steps=10,2.5", "--sweep steps: steps must be a whole number, not '2.5'"),
        ("steps=10,", "--sweep steps: steps is empty"),
        ("colour=1,2", "'colour' is not a job parameter; known: prompt, cfg"),
        ("cfg", "write NAME=V1,V2"),
        ("prompt=a,b", "the prompt cannot be swept"),
        ("cfg=5,5.0", "the value 5.0 is given twice"),
        ("fps=8,9", "fps must be one of 8, 16, 24, got 9"),
    ],
)
def test_a_bad_sweep_is_refused_naming_the_value(text, said):
    with pytest.raises(ValueError) as refused:
        parse_sweep(text)
    assert said in str(refused.value)


def test_seeds_and_a_sweep_make_the_product_up_to_the_cap():
    assert variations(None, None) == [{}]
    assert variations([1, 2], None) == [{"seed": 1}, {"seed": 2}]
    assert variations([1, 2], Sweep("cfg", (5.0, 7.5))) == [
        {"seed": 1, "cfg": 5.0},
        {"seed": 1, "cfg": 7.5},
        {"seed": 2, "cfg": 5.0},
        {"seed": 2, "cfg": 7.5},
    ]
    with pytest.raises(ValueError, match=f"8 x 9 = 72 jobs; at most {MAX_VARIATIONS}"):
        variations(list(range(8)), Sweep("steps", tuple(range(1, 10))))
    with pytest.raises(ValueError, match="not both"):
        variations([1], Sweep("seed", (2, 3)))


def jobs_in(engine: RunningEngine) -> list[tuple[str, dict, str | None]]:
    with sqlite3.connect(Path(engine.env["LANDIFF_DATA_DIR"]) / "landiff.db") as db:
        rows = db.execute("SELECT id, params, group_id FROM jobs ORDER BY created_at").fetchall()
    return [(job_id, json.loads(params), group) for job_id, params, group in rows]


def test_a_group_is_queued_as_one_and_a_bad_value_queues_nothing(tmp_path, home):
    engine = RunningEngine(tmp_path / "engine", home).start()
    try:
        with engine.client() as client:
            client.request("pause_queue", paused=True)  # the jobs stay queued: nothing runs
        refused = engine.cli("submit", PROMPT, "--seeds", "1-3", "--sweep", "cfg=5,75")
        assert refused.returncode != 0 and "cfg must be between 0 and 50, got 75" in refused.stderr
        # a value the schema takes but the model's length does not: refused before the first is sent
        too_long = engine.cli("submit", PROMPT, "--sweep", "frames=9,100000")
        assert too_long.returncode != 0 and "nothing was queued" in too_long.stderr, too_long.stderr
        both = engine.cli("submit", PROMPT, "--seeds", "1-2", "--seed", "3")
        assert both.returncode != 0 and "--seed or as --seeds" in both.stderr
        assert jobs_in(engine) == []

        queued = engine.cli("submit", PROMPT, "--seeds", "1-3", "--sweep", "cfg=5,7.5", "--steps", "2")
        assert queued.returncode == 0, queued.stderr
        lines = queued.stdout.splitlines()
        assert [line.split(" ", 1)[1] for line in lines] == [
            f"seed={seed} cfg={cfg}" for seed in (1, 2, 3) for cfg in ("5", "7.5")
        ]
        rows = jobs_in(engine)
        assert [row[0] for row in rows] == [line.split()[0] for line in lines]
        assert [(p["seed"], p["cfg"], p["steps"]) for _, p, _ in rows] == [
            (seed, cfg, 2) for seed in (1, 2, 3) for cfg in (5.0, 7.5)
        ]
        groups = {group for _, _, group in rows}
        assert len(groups) == 1 and None not in groups
        (group,) = groups
        assert f"group {group}: 6 job(s) queued" in queued.stderr

        alone = engine.cli("submit", PROMPT)  # one job: a group of its own, none
        listed = json.loads(engine.cli("jobs", "--format", "json").stdout)["jobs"]
        assert {job["id"]: job["group"] for job in listed} == {
            **{row[0]: group for row in rows},
            alone.stdout.strip(): None,
        }
        shown = json.loads(engine.cli("show", rows[0][0], "--json").stdout)
        assert shown["group"] == group
    finally:
        engine.cli("stop")
        wait_until(lambda: not engine.socket.exists(), "the engine to leave", ENGINE_LEAVES_S)
        engine.stop()


def test_a_schema_5_database_gains_the_group_column(tmp_path):
    from engine.daemon.store import SCHEMA_VERSION, Store
    from engine.protocol import JobParams

    path = tmp_path / "v5.db"
    job = Store(path).add_job(JobParams(prompt="old").model_dump(), "tiny", "test")
    with sqlite3.connect(path) as db:  # as schema 5 left it
        db.execute("DROP INDEX ix_jobs_group_id")
        db.execute("ALTER TABLE jobs DROP COLUMN group_id")
        db.execute("PRAGMA user_version = 5")
    store = Store(path)
    row = store.get(job.id)
    assert row is not None and row.to_summary().group is None
    new = store.add_job(JobParams(prompt="new").model_dump(), "tiny", "test", "g1")
    assert new.to_summary().group == "g1"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'ix_jobs_group_id'").fetchone()


def test_wait_follows_every_job_of_the_group_until_each_ends(tmp_path, home):
    engine = RunningEngine(tmp_path / "engine", home).start()
    try:
        done = engine.cli("submit", PROMPT, "--seeds", "1-2", "--steps", "1", "--wait", "--no-notify")
        assert done.returncode == 0, done.stderr
        ids = [line.split()[0] for line in done.stdout.splitlines()]
        assert len(ids) == 2 and done.stderr.count("finished: ") == 2, done.stderr
        rows = jobs_in(engine)
        with sqlite3.connect(Path(engine.env["LANDIFF_DATA_DIR"]) / "landiff.db") as db:
            statuses = dict(db.execute("SELECT id, status FROM jobs").fetchall())
        assert statuses == dict.fromkeys(ids, "finished")
        assert f"group: {rows[0][2]}" in engine.cli("show", ids[1]).stdout
    finally:
        engine.cli("stop")
        wait_until(lambda: not engine.socket.exists(), "the engine to leave", ENGINE_LEAVES_S)
        engine.stop()
