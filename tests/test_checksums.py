"""The weights' SHA-256 a job's record names: every file's true digest, hashed side by side, once."""

from __future__ import annotations

import hashlib

from engine.weights import checksums
from engine.weights.layout import layout_for


def test_every_weight_file_is_hashed_once_and_named_by_its_digest(home, tmp_path, monkeypatch):
    monkeypatch.setenv("LANDIFF_CACHE_DIR", str(tmp_path / "cache"))
    layout = layout_for("tiny", home)
    hashed: list[str] = []
    real = checksums.sha256

    def counted(path):
        hashed.append(path.name)
        return real(path)

    monkeypatch.setattr(checksums, "sha256", counted)
    first = checksums.file_checksums(layout)
    files = checksums.weight_files(layout)
    assert len(first) == len(files) == len(hashed) > 5
    for path in files:
        assert first[str(path.relative_to(layout.root))] == hashlib.sha256(path.read_bytes()).hexdigest()
    hashed.clear()
    assert checksums.file_checksums(layout) == first and hashed == []  # the cache answers the second time
