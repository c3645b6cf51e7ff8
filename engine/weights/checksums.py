"""SHA-256 of the weight files a job used, cached by (path, size, mtime) so big files hash once."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

from platformdirs import user_cache_dir

from engine import settings
from engine.atomic import write_atomically
from engine.weights.layout import ReleaseLayout

CHUNK = 16 * 2**20


def cache_file() -> Path:
    return (settings.CACHE_DIR.path() or Path(user_cache_dir("landiff"))) / "checksums.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def weight_files(layout: ReleaseLayout) -> list[Path]:
    files = [layout.llm_file, layout.tokenizer_file, layout.dit_file, layout.control_file, layout.vae_file]
    for folder in (layout.flan_t5_dir, layout.t5_dir):
        if folder.is_dir():
            files += sorted(p for p in folder.iterdir() if p.is_file())
    return [path for path in files if path.is_file()]


def file_checksums(layout: ReleaseLayout) -> dict[str, str]:
    """{path relative to the layout root: sha256} for every weight file present."""
    store = cache_file()
    try:
        cache = json.loads(store.read_text())
    except (OSError, ValueError):
        cache = {}
    result, changed = {}, False
    for path in weight_files(layout):
        stat = path.stat()
        key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        if key not in cache:
            cache[key] = sha256(path)
            changed = True
        result[str(path.relative_to(layout.root))] = cache[key]
    if changed:
        with contextlib.suppress(OSError):  # a read-only cache only costs re-hashing next time
            write_atomically(store, lambda partial: partial.write_text(json.dumps(cache, indent=1)))
    return result
