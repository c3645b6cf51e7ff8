"""Variations: one prompt queued as several jobs at once, a group (`submit --seeds 1-4 --sweep cfg=5,7.5`).

`--seeds` takes a range (`1-4`, both ends included), a list (`3,7,11`), both (`1-3,10`) or a count of random
seeds (`4x`); `--sweep NAME=V1,V2,...` takes values of one job parameter, each parsed and checked by the
parameter's own check (engine.params). Given both, every seed is made with every value (the product). At most
`MAX_VARIATIONS` jobs a command. Plain Python: no engine, no torch.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

from engine.params import SEED_LIMIT, by_name, param, show

MAX_VARIATIONS = 64  # jobs one command queues at most


@dataclass(frozen=True)
class Sweep:
    name: str  # a job parameter's name
    values: tuple[Any, ...]  # each checked by the parameter's own check


def new_group_id() -> str:
    """A group's id: 12 hex digits, as a job's id is."""
    return uuid.uuid4().hex[:12]


def parse_seeds(text: str, rng: random.Random | None = None) -> list[int]:
    """`1-4`, `3,7,11`, `1-3,10` (the seeds in the order given) or `4x` (4 random ones); ValueError naming
    what is wrong: a bad part, a seed out of range, one given twice, more than MAX_VARIATIONS."""
    text = text.strip()
    seed = param("seed")
    if text.lower().endswith("x"):
        count = _whole(text[:-1], f"--seeds {text!r}: NUMBERx asks for that many random seeds")
        _check_count(count, f"--seeds {text}")
        chooser = rng or random.SystemRandom()
        chosen: list[int] = []
        while len(chosen) < count:
            value = chooser.randrange(SEED_LIMIT)
            if value not in chosen:
                chosen.append(value)
        return chosen
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        first, dash, last = part.partition("-")
        what = f"--seeds: {part!r} is not a seed or a range (e.g. 1-4, 3,7,11 or 4x)"
        low = _whole(first, what)
        high = _whole(last, what) if dash else low
        if high < low:
            raise ValueError(f"--seeds: the range {part} runs backwards; write {high}-{low}")
        _check_count(len(seeds) + high - low + 1, f"--seeds {text}")
        for value in range(low, high + 1):
            try:
                seed.check(value)
            except ValueError as error:
                raise ValueError(f"--seeds: {error}") from None
            if value in seeds:
                raise ValueError(f"--seeds: seed {value} is given twice")
            seeds.append(value)
    return seeds


def parse_sweep(text: str) -> Sweep:
    """`NAME=V1,V2,...`: NAME a job parameter (`top-k` or `top_k`), each value parsed by its own check (an
    empty one is `unset` where the parameter may be unset); ValueError naming the bad name or value."""
    name, equals, values = text.partition("=")
    name = name.strip().replace("-", "_")
    known = by_name()
    if not equals or not name:
        raise ValueError(f"--sweep {text!r}: write NAME=V1,V2,... (e.g. cfg=5,7.5,10)")
    if name not in known:
        raise ValueError(f"--sweep: {name!r} is not a job parameter; known: {', '.join(known)}")
    if name == "prompt":
        raise ValueError("--sweep: the prompt cannot be swept (its text may hold commas): submit each one")
    checked: list[Any] = []
    for value in values.split(","):
        try:
            parsed = known[name].parse(value)
        except ValueError as error:
            raise ValueError(f"--sweep {name}: {error}") from None
        if parsed in checked:
            raise ValueError(f"--sweep {name}: the value {value.strip() or 'unset'} is given twice")
        checked.append(parsed)
    _check_count(len(checked), f"--sweep {name}")
    return Sweep(name, tuple(checked))


def variations(seeds: Sequence[int] | None, sweep: Sweep | None) -> list[dict[str, Any]]:
    """The parameters each job of the group changes, seed by seed and within a seed value by value: the
    product of both when both are given, at most MAX_VARIATIONS; [{}] when neither is."""
    if sweep is not None and sweep.name == "seed" and seeds is not None:
        raise ValueError("give the seeds either as --seeds or as --sweep seed=..., not both")
    count = (len(seeds) if seeds is not None else 1) * (len(sweep.values) if sweep is not None else 1)
    if seeds is not None and sweep is not None and count > MAX_VARIATIONS:
        raise ValueError(
            f"--seeds and --sweep make every seed with every value: {len(seeds)} x {len(sweep.values)} = "
            f"{count} jobs; at most {MAX_VARIATIONS} are queued at once"
        )
    seed_part: list[dict[str, Any]] = [{"seed": seed} for seed in seeds] if seeds is not None else [{}]
    sweep_part: list[dict[str, Any]] = (
        [{sweep.name: value} for value in sweep.values] if sweep is not None else [{}]
    )
    return [{**a, **b} for a, b in product(seed_part, sweep_part)]


def changed_words(changed: dict[str, Any]) -> str:
    """What a job of the group changes, as the CLI says it: 'seed=1 cfg=5'."""
    return " ".join(f"{name}={'unset' if value is None else show(value)}" for name, value in changed.items())


def _whole(text: str, what: str) -> int:
    text = text.strip()
    if not text.isdigit():
        raise ValueError(what)
    return int(text)


def _check_count(count: int, what: str) -> None:
    if count < 1:
        raise ValueError(f"{what}: asks for no job")
    if count > MAX_VARIATIONS:
        raise ValueError(f"{what} asks for {count} jobs; at most {MAX_VARIATIONS} are queued at once")
