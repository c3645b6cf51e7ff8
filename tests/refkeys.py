"""Reading ../shared/refkeys: the full-size checkpoint key listings of the release."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFKEYS = SHARED / "refkeys"


def read_refkeys(path: Path) -> dict[str, list[int]]:
    """`key<TAB>[shape]<TAB>dtype` lines, `#` comments ignored."""
    listing = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split("\t")[:2]
        listing[key] = list(ast.literal_eval(shape))
    return listing


def refkeys_or_skip(name: str) -> dict[str, list[int]]:
    path = REFKEYS / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared is not next to this clone)")
    return read_refkeys(path)
