"""SHA-256 of the weight files a job used, cached by (path, size, mtime) so big files hash once."""

from __future__ import annotations

import contextlib
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from platformdirs import user_cache_dir

from engine import settings
from engine.atomic import write_atomically
from engine.weights.layout import ReleaseLayout

CHUNK = 16 * 2**20
HASH_THREADS = 8


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
    keys = {}
    for path in weight_files(layout):
        stat = path.stat()
        keys[path] = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    missing = [path for path, key in keys.items() if key not in cache]
    # side by side (hashlib lets go of the GIL): the largest file sets the time, not the sum of them all
    with ThreadPoolExecutor(max_workers=max(1, min(HASH_THREADS, len(missing)))) as pool:
        for path, digest in zip(missing, pool.map(sha256, missing), strict=True):
            cache[keys[path]] = digest
    changed = bool(missing)
    result = {str(path.relative_to(layout.root)): cache[key] for path, key in keys.items()}
    if changed:
        with contextlib.suppress(OSError):  # a read-only cache only costs re-hashing next time
            write_atomically(store, lambda partial: partial.write_text(json.dumps(cache, indent=1)))
    return result
