"""Fetching, resuming and verifying the weight files.

Files come from the Hugging Face hub (`HF_ENDPOINT` and `HF_TOKEN` respected): huggingface_hub
resolves each file's URL, size and redirect; or, with `--source modelscope`, from ModelScope
(`ModelScopeDownloader`: its documented file API, the repo ids in layout.MODELSCOPE_REPOS, its file list's
Size and Sha256 in place of the hub's HEAD). Either way we stream it into `<file>.partial` with byte ranges,
so a cut connection, a cancel or a killed process resumes where it stopped. A file reaches its
final name only after it checked out: its size against the hub's, its MD5 against the release's list,
or, for files without a published MD5 (flan-T5's), the digest the hub names in its ETag (sha256 for
LFS files, the git blob sha1 for the others). One that fails twice is removed and recorded, and the
loaders refuse a file whose recorded verification failed. Every file name that comes from the hub or
a checksum list is checked to stay inside the weights folder before anything is written or deleted.

No body is written past the size it must have: the hub's listing of the file (the size its HEAD names,
recorded as the file's expected size), else the length the transfer announces, else `UNSIZED_CAP`;
listings and metadata files (the flan-T5 index, JSON, text) never past `METADATA_CAP`. A server that
sends or announces more than that is lying: the transfer stops one byte past the limit, the partial
file is removed, the file fails with the sizes named, and that server is not asked again (retries are
for cut connections, time-outs and 5xx answers only).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus, urlparse

from engine import settings
from engine.atomic import write_atomically
from engine.errors import CheckpointError
from engine.weights.layout import (
    FLAN_T5_FILES,
    FLAN_T5_INDEX,
    FLAN_T5_REPO,
    MODELSCOPE_REPOS,
    MODELSCOPE_REVISION,
    SOURCES,
    WeightFile,
    clip_files,
    encoder_shards,
    flan_t5_files,
    release_files,
)

CHUNK = 1 << 20  # one read from the network: what a transfer holds in memory at a time
RECORD = ".landiff-verified.json"
# The most a listing or metadata file may hold (the flan-T5 index, config / tokenizer JSON, vocab, merges,
# a checksum list): they are parsed whole, in memory. The largest the release fetches (CLIP's vocab.json)
# is under 1 MiB and big models' tokenizer.json files about 10 MiB: one larger is refused, not read.
METADATA_CAP = 16 * 2**20
METADATA_SUFFIXES = (".json", ".txt", ".md5")
# The most a file is written to when neither the hub's listing nor the transfer names its size: the largest
# file the weights have (a flan-T5-xxl shard) is under 10 GiB; a server that streams without end is stopped
# here instead of when the disk is full.
UNSIZED_CAP = 32 * 2**30


class DownloadError(CheckpointError):
    """A download that cannot go on; the message says why and what to do."""


class ServerLied(DownloadError):
    """A server announced or sent another size than the file has: never retried, the partial is removed."""


class SourcesDisagree(DownloadError):
    """Two sources' claims about one file differ (ModelScope's Sha256 against the release's MD5 or the hub's
    digest): never retried, nothing of it is kept."""


class DownloadCancelled(Exception):
    pass


@dataclass(frozen=True)
class DownloadProgress:
    file: str
    file_done: int
    file_total: int | None
    done: int
    total: int
    rate: float  # bytes per second over this run
    eta_s: float | None


@dataclass
class FileState:
    local: str
    state: str  # present, verified, missing, partial, corrupt
    size: int | None
    path: str
    optional: bool = False  # the quality probe's CLIP: its absence leaves the weights complete


@dataclass
class DownloadReport:
    fetched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    refetched: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def partial_of(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


class VerificationRecord:
    """Check results per file, keyed by size and mtime so an edited file is checked again, plus what the
    hub said the file should be (size, digest): a file whose size differs from that is never intact."""

    def __init__(self, root: Path):
        self.path = root / RECORD
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def result(self, root: Path, local: str) -> bool | None:
        """True: checked and unchanged since; False: failed, or not the size it must be; None: unknown."""
        entry = self.entries.get(local)
        target = root / local
        if entry is None or not target.is_file():
            return None if entry is None or entry.get("ok") is not False else False
        stat = target.stat()
        known = self.expected_size(local)
        if known is not None and stat.st_size != known:
            return False  # e.g. a verified file cut short: never "present"
        if entry.get("ok") is None or entry["size"] != stat.st_size or entry["mtime_ns"] != stat.st_mtime_ns:
            return None
        return entry["ok"]

    def expected_size(self, local: str) -> int | None:
        entry = self.entries.get(local) or {}
        if entry.get("expected_size") is not None:
            return entry["expected_size"]
        return entry.get("size") if entry.get("ok") else None  # a file that checked out had the right size

    def digest(self, local: str) -> str | None:
        """'sha256:<hex>' or 'git-sha1:<hex>' from the hub's ETag, when it named one."""
        return (self.entries.get(local) or {}).get("digest")

    def claims(self, local: str) -> dict[str, str]:
        """{source: digest} each source said the file has, as recorded when it was fetched from there."""
        return dict((self.entries.get(local) or {}).get("claims") or {})

    def expect(self, local: str, size: int | None, digest: str | None, source: str | None = None) -> None:
        """What the hub says the file is, recorded before it is fetched (and, with `source`, kept as that
        source's claim, which another source's is checked against)."""
        entry = self.entries.setdefault(local, {"ok": None, "md5": None, "size": None, "mtime_ns": None})
        entry["expected_size"], entry["digest"] = size, digest
        if source is not None and digest is not None:
            entry.setdefault("claims", {})[source] = digest
        self.save()

    def remember(self, root: Path, local: str, ok: bool, md5: str | None) -> None:
        target = root / local
        stat = target.stat() if target.is_file() else None
        entry = self.entries.setdefault(local, {})
        entry.update(
            ok=ok, md5=md5, size=stat.st_size if stat else None, mtime_ns=stat.st_mtime_ns if stat else None
        )
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, lambda partial: partial.write_text(json.dumps(self.entries, indent=1)))


def md5_of(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    return digest_of(path, "md5", on_bytes)


def digests_of(path: Path, kinds: tuple[str, ...]) -> dict[str, str]:
    """Several digests of a file (md5, sha256, git-sha1) in one read."""
    size = path.stat().st_size
    hashers = {}
    for kind in kinds:
        if kind == "md5":
            hashers[kind] = hashlib.md5(usedforsecurity=False)
        elif kind == "sha256":
            hashers[kind] = hashlib.sha256()
        else:
            hashers[kind] = hashlib.sha1(usedforsecurity=False)
            hashers[kind].update(b"blob %d\0" % size)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {kind: hasher.hexdigest() for kind, hasher in hashers.items()}


def digest_of(path: Path, kind: str, on_bytes: Callable[[int], None] | None = None) -> str:
    """md5, sha256, or git-sha1 (git's blob id: sha1 over 'blob <size>\\0' and the content)."""
    if kind == "md5":
        digest = hashlib.md5(usedforsecurity=False)
    elif kind == "sha256":
        digest = hashlib.sha256()
    else:
        digest = hashlib.sha1(usedforsecurity=False)
        digest.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return digest.hexdigest()


def digest_from_etag(etag: str | None) -> str | None:
    """The hub's ETag names a file's content: sha256 for LFS files, the git blob sha1 for the others."""
    value = (etag or "").removeprefix("W/").strip('"').lower()
    if not all(c in "0123456789abcdef" for c in value):
        return None
    return {64: f"sha256:{value}", 40: f"git-sha1:{value}"}.get(len(value))


def check_of(item: WeightFile, record: VerificationRecord) -> str:
    """How a file can be checked: md5 (the release's list), sha256 / git-sha1 (the hub's), size, or none."""
    if item.md5:
        return "md5"
    digest = record.digest(item.local)
    if digest:
        return digest.partition(":")[0]
    return "size" if record.expected_size(item.local) is not None else "none"


def intact(path: Path, item: WeightFile, record: VerificationRecord, on_bytes=None) -> bool:
    """Whether a file is what it must be, by the strongest check there is for it."""
    known = record.expected_size(item.local)
    if known is not None and path.stat().st_size != known:
        return False
    if item.md5:
        return digest_of(path, "md5", on_bytes) == item.md5
    digest = record.digest(item.local)
    if digest:
        kind, _, value = digest.partition(":")
        return digest_of(path, kind, on_bytes) == value
    if on_bytes is not None:
        on_bytes(path.stat().st_size)
    return True


def inside(root: Path, local: str, origin: str) -> Path:
    """`root / local`, refused unless `local` is a relative path that stays inside `root` (names from the
    hub or a checksum list: an index naming '../../x' or '/etc/x' must not write or delete there)."""
    parts = local.replace("\\", "/").split("/")
    if (
        not local
        or local.startswith(("/", "\\"))
        or any(part in ("", ".", "..") for part in parts)
        or (":" in parts[0])
    ):
        raise DownloadError(
            f"{origin} names {local!r}, which is not a file inside the weights folder {root}; "
            "that list is damaged or was tampered with: delete it and download again"
        )
    return root / local


def is_metadata(name: str) -> bool:
    """A listing or metadata file (parsed whole, so capped at METADATA_CAP), not a weights file."""
    return name.lower().endswith(METADATA_SUFFIXES)


def read_capped(path: Path, what: str) -> str:
    """The text of a listing or metadata file, refused (before reading it) when over METADATA_CAP."""
    size = path.stat().st_size
    if size > METADATA_CAP:
        raise DownloadError(
            f"{what} {path} is {size:,} bytes, over the {METADATA_CAP:,}-byte limit for such a file: it is "
            "not what the hub publishes; delete it and download again"
        )
    return path.read_text()


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(read_capped(path, what))
    except ValueError as error:
        raise DownloadError(
            f"{what} {path} is not valid JSON ({error}); delete it and download again"
        ) from None


def file_states(root: Path, files: list[WeightFile]) -> list[FileState]:
    record = VerificationRecord(root)
    states = []
    for item in files:
        target = inside(root, item.local, item_origin(item))
        verified = record.result(root, item.local)
        if verified is False:
            state = "corrupt"
        elif target.is_file():
            state = "verified" if verified else "present"
        elif partial_of(target).is_file():
            state = "partial"
        else:
            state = "missing"
        size = target.stat().st_size if target.is_file() else None
        if state == "partial":
            size = partial_of(target).stat().st_size
        states.append(FileState(item.local, state, size, str(target), item.optional))
    return states


def verify(
    root: Path, files: list[WeightFile], on_progress: Callable[[str, int, int], None] | None = None
) -> dict[str, bool]:
    """Every present file that can be checked, by its strongest check (`check_of`); {local path: intact}.

    Files the hub named no digest for are size-checked only (`size_checked_only` lists them)."""
    record = VerificationRecord(root)
    present = [
        item
        for item in files
        if check_of(item, record) != "none" and inside(root, item.local, item_origin(item)).is_file()
    ]
    total = sum((root / item.local).stat().st_size for item in present)
    done = 0
    results = {}
    for item in present:

        def advance(count: int, name: str = item.local) -> None:
            nonlocal done
            done += count
            if on_progress is not None:
                on_progress(name, done, total)

        ok = intact(root / item.local, item, record, advance)
        record.remember(root, item.local, ok, item.md5)
        results[item.local] = ok
    return results


def size_checked_only(root: Path, files: list[WeightFile]) -> list[str]:
    """Present files with neither a published MD5 nor a digest from the hub: only their size is checked
    (or nothing, for files this downloader did not fetch)."""
    record = VerificationRecord(root)
    return [
        item.local
        for item in files
        if check_of(item, record) in ("size", "none") and (root / item.local).is_file()
    ]


def item_origin(item: WeightFile) -> str:
    if item.optional:
        return f"the list of {item.repo}'s files"
    if item.repo == FLAN_T5_REPO:
        return f"the index flan-t5-xxl/{FLAN_T5_INDEX}"
    return f"the checksum list of {item.repo}"


def refuse_failed(root: Path) -> None:
    """Refuse to load from a root where a present file failed its checksum (the stages call this)."""
    record = VerificationRecord(root)
    for local in record.entries:
        if (root / local).is_file() and record.result(root, local) is False:
            raise DownloadError(
                f"{root / local} failed its checksum: run `landiff-engine weights download` to fetch it again"
            )


def offline_refusal(root: Path) -> Callable[[int], None]:
    def refuse(missing: int) -> None:
        if settings.HF_HUB_OFFLINE.flag():
            raise DownloadError(
                f"{missing} file(s) are missing under {root} but HF_HUB_OFFLINE is set: unset it to download"
            )

    return refuse


def read_checksums(path: Path) -> dict[str, str]:
    """A CHECKSUM.md5 file (`<md5>  <path>` lines, as md5sum writes them) -> {path: md5}."""
    sums = {}
    for line in read_capped(path, "the checksum list").splitlines():
        if line.strip() and not line.startswith("#"):
            md5, name = line.split(maxsplit=1)
            name = name.strip().lstrip("*").removeprefix("./")
            inside(Path("LanDiff"), name, f"the checksum list {path}")
            sums[name] = md5.lower()
    return sums


def planned_files(
    root: Path, only: str, checksums: dict[str, str] | None = None, clip: bool = False
) -> list[WeightFile]:
    """The release files of `only` (llm, diffusion or all), flan-T5 shards from its local index if present;
    with `clip`, the quality probe's optional CLIP too."""
    groups = ("llm", "diffusion") if only == "all" else (only,)
    files = [item for item in release_files(checksums) if set(item.groups) & set(groups)]
    if "llm" in groups:
        index = root / "flan-t5-xxl" / FLAN_T5_INDEX
        if is_slimmed(root):
            files += flan_t5_files([])[: len(FLAN_T5_FILES)]
            files.append(WeightFile(FLAN_T5_REPO, SLIM_NAME, f"flan-t5-xxl/{SLIM_NAME}", ("llm",)))
        else:
            shards = encoder_shards(read_json(index, "the index")) if index.is_file() else []
            files += flan_t5_files(shards)
    return files + (clip_files() if clip else [])


SLIM_NAME = "model.safetensors"


def is_slimmed(root: Path) -> bool:
    """Whether flan-T5 is the slim encoder: its one file there and the index (which names shards) gone."""
    folder = root / "flan-t5-xxl"
    return (folder / SLIM_NAME).is_file() and not (folder / FLAN_T5_INDEX).is_file()


def slim_shards(folder: Path, index: Path, listing: dict) -> list[str]:
    """The shard files the index names, each checked to be a shard: a file right in `folder` whose name
    ends in .safetensors and is not the slim file's. Anything else (spiece.model, config.json, a tokenizer
    file, a path elsewhere) is a damaged or tampered index, refused before anything is read or deleted:
    slimming deletes the shards, and only them."""
    weight_map = listing.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
        raise DownloadError(
            f"the index {index} has no weight map of file names; delete it and download again"
        )
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        inside(folder, shard, f"the index {index}")
        if "/" in shard or "\\" in shard or not shard.endswith(".safetensors") or shard == SLIM_NAME:
            raise DownloadError(
                f"the index {index} names {shard!r} as a weights shard, which it is not (a shard is a "
                f".safetensors file of the folder other than {SLIM_NAME}); slimming would delete it: that "
                "index is damaged or was tampered with: delete it and download again"
            )
    return shards


def check_slim_file(path: Path, tensors: dict) -> None:
    """The slim file just written, read back: exactly `tensors`' keys, each with its dtype, shape and
    values. DownloadError otherwise (the shards it was to replace are kept)."""
    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        if keys != set(tensors):
            raise DownloadError(f"{path} does not hold the tensors written to it; the shards are kept")
        for key in keys:
            read = handle.get_tensor(key)
            if read.dtype != tensors[key].dtype or not torch.equal(read, tensors[key]):
                raise DownloadError(f"{path} reads back {key} otherwise than written; the shards are kept")


def slim_flan_t5(root: Path) -> int:
    """Keep only the encoder of the downloaded flan-T5, in bf16, as one file; returns the bytes freed.

    The slim file is written under a temporary name, read back and compared with what was written, and
    only then takes its name; the index and the shard files it lists are deleted after that, nothing else
    (the tokenizer and config files stay: the encoder needs them)."""
    from stat import S_ISLNK, S_ISREG

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    folder = root / "flan-t5-xxl"
    index = folder / FLAN_T5_INDEX
    if not index.is_file():
        raise DownloadError(
            f"{index} is missing: download flan-T5 first (landiff-engine weights download --only llm)"
        )
    listing = read_json(index, "the index")
    shards = slim_shards(folder, index, listing)
    wanted = {key for key in listing["weight_map"] if key.startswith("encoder.") or key == "shared.weight"}
    tensors = {}
    for shard in encoder_shards(listing):
        with safe_open(str(folder / shard), framework="pt") as handle:
            for key in handle.keys():
                if key.startswith("encoder.") or key == "shared.weight":
                    tensors[key] = handle.get_tensor(key).to(torch.bfloat16)
    lacking = sorted(wanted - set(tensors))
    if not tensors or lacking:
        what = (
            f"lack encoder tensors the index names ({', '.join(lacking[:3])})"
            if lacking
            else "hold no encoder"
        )
        raise DownloadError(
            f"the shards under {folder} {what}: "
            "download flan-T5 again (landiff-engine weights download --only llm)"
        )

    def write_checked(partial: Path) -> None:
        save_file(tensors, str(partial))
        check_slim_file(partial, tensors)

    write_atomically(folder / SLIM_NAME, write_checked)
    freed = 0
    index.unlink()
    for shard in shards:
        path = folder / shard
        try:
            status = path.lstat()
        except FileNotFoundError:
            continue
        if S_ISREG(status.st_mode) or S_ISLNK(status.st_mode):  # never a folder
            path.unlink()
            freed += status.st_size if S_ISREG(status.st_mode) else 0
    return freed - (folder / SLIM_NAME).stat().st_size


def download_release(
    downloader: Downloader, only: str, checksums: dict[str, str] | None = None, clip: bool = False
) -> tuple[list[WeightFile], DownloadReport]:
    """Fetch the flan-T5 index first (it names the encoder shards), then everything `only` needs (and,
    with `clip`, the quality probe's CLIP)."""
    if only in ("llm", "all"):
        index = WeightFile(FLAN_T5_REPO, FLAN_T5_INDEX, f"flan-t5-xxl/{FLAN_T5_INDEX}", ("llm",))
        slimmed = (downloader.root / "flan-t5-xxl" / "model.safetensors").is_file()
        if not slimmed and not (downloader.root / index.local).is_file():
            offline_refusal(downloader.root)(1)
            downloader.fetch_json(index)
    files = planned_files(downloader.root, only, checksums, clip)
    return files, downloader.download(files)


class Downloader:
    """Fetches files from the Hugging Face hub; `ModelScopeDownloader` swaps where the files and what they
    must be come from, and keeps the rest (resume, caps, verification, cancel) as it is."""

    source = "huggingface"
    access_hint = "check HF_TOKEN and that the repo is accessible"

    def __init__(
        self,
        root: Path,
        *,
        endpoint: str | None = None,
        token: str | None = None,
        on_progress: Callable[[DownloadProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        timeout: float = 30.0,
    ):
        self.root = root
        self.endpoint = endpoint.rstrip("/") if endpoint else settings.hub_endpoint()
        self.token = token if token is not None else settings.HF_TOKEN.raw()
        self.on_progress, self.should_stop, self.timeout = on_progress, should_stop, timeout
        self.record = VerificationRecord(root)

    # hub access

    def url(self, item: WeightFile) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(item.repo, item.path, revision=item.revision, endpoint=self.endpoint)

    def metadata(self, item: WeightFile):
        from huggingface_hub import get_hf_file_metadata

        try:
            return get_hf_file_metadata(self.url(item), token=self.token or False, timeout=self.timeout)
        except Exception as error:  # httpx/hub errors vary by version; the message is what matters
            raise DownloadError(
                f"could not reach {self.endpoint} for {item.repo}/{item.path} "
                f"({type(error).__name__}: {error}). Check the network (or HF_ENDPOINT / HF_TOKEN) "
                "and run the download again; finished files are kept."
            ) from None

    def expectation(self, item: WeightFile) -> tuple[int | None, str | None]:
        """The file's size and digest ('sha256:<hex>' / 'git-sha1:<hex>') as the source lists them."""
        metadata = self.metadata(item)
        return metadata.size, digest_from_etag(metadata.etag)

    def where(self, item: WeightFile) -> str:
        """The file as the source names it, for messages."""
        return f"{item.repo}/{item.path}"

    def checks_out(self, path: Path, item: WeightFile) -> bool:
        """Whether a fetched file is what it must be (False: fetched again; SourcesDisagree: refused)."""
        return intact(path, item, self.record)

    def fetch_json(self, item: WeightFile) -> dict:
        """A listing the hub does not size for us (the flan-T5 index): never written past METADATA_CAP."""
        target = inside(self.root, item.local, item_origin(item))
        self.fetch(item, expected=None)
        os.replace(partial_of(target), target)
        return read_json(target, "the index")

    # downloading

    def download(self, files: list[WeightFile]) -> DownloadReport:
        report = DownloadReport()
        require_online = offline_refusal(self.root)
        todo = []
        for item in files:
            target = inside(self.root, item.local, item_origin(item))
            if target.is_file() and self.record.result(self.root, item.local) is not False:
                report.skipped.append(item.local)
            else:
                todo.append(item)
        if todo:
            require_online(len(todo))
        sizes: dict[str, int | None] = {}
        for item in list(todo):
            try:
                size, digest = self.expectation(item)
            except SourcesDisagree as disagreement:  # refused before any byte of it
                todo.remove(item)
                report.failed[item.local] = str(disagreement)
                continue
            if is_metadata(item.path) and size is not None and size > METADATA_CAP:
                todo.remove(item)  # parsed whole, so never fetched past the cap: refused before any byte
                report.failed[item.local] = (
                    f"{self.endpoint} lists {self.where(item)} at {size:,} bytes, over the "
                    f"{METADATA_CAP:,}-byte limit for a metadata file; not fetched"
                )
                continue
            sizes[item.local] = size
            self.record.expect(item.local, size, digest, self.source)
        needed = sum(max((sizes[i.local] or 0) - self.partial_size(i), 0) for i in todo)
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if needed > free:
            raise DownloadError(
                f"not enough disk space in {self.root}: {needed / 2**30:.2f} GiB to download, "
                f"{free / 2**30:.2f} GiB free. Free some space or set LANDIFF_HOME to another disk."
            )
        self.started, self.done, self.total = time.monotonic(), 0, needed
        for item in todo:
            try:
                ok = self.fetch_verified(item, sizes[item.local])
                if not ok:
                    ok = self.fetch_verified(item, sizes[item.local], again=True)
                    if ok:
                        report.refetched.append(item.local)
            except (ServerLied, SourcesDisagree) as lie:  # never kept; a file that was there failed before
                partial_of(self.root / item.local).unlink(missing_ok=True)
                (self.root / item.local).unlink(missing_ok=True)
                self.record.remember(self.root, item.local, False, item.md5)
                report.failed[item.local] = str(lie)
                continue
            if ok:
                report.fetched.append(item.local)
            else:
                report.failed[item.local] = f"{check_of(item, self.record)} mismatch twice"
        return report

    def partial_size(self, item: WeightFile) -> int:
        partial = partial_of(self.root / item.local)
        return partial.stat().st_size if partial.is_file() else 0

    def fetch_verified(self, item: WeightFile, size: int | None, again: bool = False) -> bool:
        target = self.root / item.local
        partial = partial_of(target)
        if again:
            partial.unlink(missing_ok=True)
        self.fetch(item, expected=size)
        if not self.checks_out(partial, item):
            partial.unlink()  # never leave a file that failed verification where a loader looks
            target.unlink(missing_ok=True)
            self.record.remember(self.root, item.local, False, item.md5)
            return False
        os.replace(partial, target)
        self.record.remember(self.root, item.local, True, item.md5)
        return True

    def fetch(self, item: WeightFile, expected: int | None) -> None:
        """Stream the file into `<file>.partial`, resuming from its current size when `expected` (the hub's
        listing) is known; retries cut connections, time-outs and 5xx answers, never a server that lies
        about the size (ServerLied: the partial file is removed)."""
        target = inside(self.root, item.local, item_origin(item))
        partial = partial_of(target)
        partial.parent.mkdir(parents=True, exist_ok=True)
        attempts = 0
        while True:
            if expected is None:
                partial.unlink(missing_ok=True)  # no size to resume against: start over
            offset = partial.stat().st_size if partial.is_file() else 0
            if expected is not None and offset == expected:
                return
            if expected is not None and offset > expected:
                partial.unlink()
                continue
            try:
                complete = self.stream(item, partial, offset, expected)
            except ServerLied:
                partial.unlink(missing_ok=True)
                raise
            except urllib.error.HTTPError as error:
                if error.code not in (408, 429, 500, 502, 503, 504):
                    raise DownloadError(
                        f"{self.endpoint} refused {self.where(item)} (HTTP {error.code}); {self.access_hint}"
                    ) from None
                problem: object = error
            except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
                problem = error
            else:
                if complete:
                    return
                problem = "the server closed the connection early"
            attempts += 1
            if attempts > 5:
                raise DownloadError(
                    f"the connection to {self.endpoint} kept failing while fetching {item.path} ({problem}); "
                    "run the download again to resume"
                )
            time.sleep(min(0.2 * attempts, 2.0))

    def stream(self, item: WeightFile, partial: Path, offset: int, expected: int | None) -> bool:
        """One transfer into `partial` from `offset`, never past the file's limit (`limit_of`); whether the
        file is complete. Raises ServerLied for a server that announces another size than the hub lists,
        or sends more than its limit: reading stops one byte past it."""
        url = self.url(item)
        headers = {"Accept-Encoding": "identity", "User-Agent": "landiff-tui"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        token_for = TokenOnlyForEndpoint(self.endpoint, self.token)
        token_for.authorize(request)
        with urllib.request.build_opener(token_for).open(request, timeout=self.timeout) as response:
            if offset and response.status != 206:
                offset = 0  # the server ignored the range: start over
            name = f"{item.repo}/{item.path}"
            announced = announced_size(response.headers, offset, name)
            limit, source = limit_of(name, expected, announced)
            sized = expected is not None or announced is not None
            with open(partial, "r+b" if offset else "wb") as handle:
                handle.seek(offset)
                handle.truncate()
                # whatever has arrived, one byte past the limit at most: progress and cancel stay live
                while chunk := response.read1(min(CHUNK, limit + 1 - offset)):
                    if self.should_stop is not None and self.should_stop():
                        raise DownloadCancelled(f"cancelled while fetching {item.path}; run again to resume")
                    if offset + len(chunk) > limit:
                        raise ServerLied(
                            f"{name}: the server sent more than the {limit:,} bytes {source} (at least "
                            f"{offset + len(chunk):,} received); stopped there and removed the partial file, "
                            "and a server that sends more than it announces is not asked again"
                        )
                    handle.write(chunk)
                    offset += len(chunk)
                    self.report(item.local, offset, limit if sized else None, len(chunk))
            return offset == limit or not sized  # with no size named, the end of the body is the end

    def report(self, local: str, file_done: int, file_total: int | None, advanced: int) -> None:
        self.done = getattr(self, "done", 0) + advanced
        if self.on_progress is None:
            return
        elapsed = max(time.monotonic() - getattr(self, "started", time.monotonic()), 1e-6)
        rate = self.done / elapsed
        total = getattr(self, "total", 0)
        eta = (total - self.done) / rate if rate > 0 and total else None
        self.on_progress(DownloadProgress(local, file_done, file_total, self.done, total, rate, eta))


class ModelScopeDownloader(Downloader):
    """Fetches the same files from ModelScope through its documented HTTP file API, with everything else the
    hub's downloader does unchanged (resume by byte range, size caps, retries, cancel, the record):

    - the file list: `GET {endpoint}/api/v1/models/{id}/repo/files?Revision=master&Recursive=true`, a JSON
      envelope `{"Code": 200, "Data": {"Files": [{"Path", "Type", "Size", "Sha256", ...}]}}` (listed once
      per repo, never read past METADATA_CAP); it stands in for the hub's HEAD: the size and the digest;
    - a file: `GET {endpoint}/api/v1/models/{id}/repo?Revision=master&FilePath={path}`, with `Range`.

    A file is checked as the hub's downloader checks it (the release's MD5 where it publishes one) AND against
    ModelScope's Sha256, and against any digest another source named for it before (the hub's ETag, kept in
    the record): bytes that match one claim and not another are refused (SourcesDisagree), never kept. No
    Hugging Face token is ever sent here."""

    source = "modelscope"

    def __init__(self, root: Path, *, endpoint: str | None = None, **kwargs):
        kwargs["token"] = ""  # HF_TOKEN is Hugging Face's: never sent to another server
        super().__init__(root, endpoint=endpoint or settings.modelscope_endpoint(), **kwargs)
        self.variable = (
            settings.MODELSCOPE_ENDPOINT.name if endpoint else settings.modelscope_endpoint_variable()
        )
        self.access_hint = (
            "check that the ModelScope repo exists and is public, or fetch from Hugging Face "
            "(`landiff-engine weights download --source huggingface`)"
        )
        self.listings: dict[str, dict[str, dict]] = {}
        self.listed: dict[str, str | None] = {}  # local -> ModelScope's Sha256 of it

    def repo_of(self, item: WeightFile) -> str:
        repo = MODELSCOPE_REPOS.get(item.repo)
        if repo is None or item.revision is not None:
            raise DownloadError(
                f"{item.repo} has no ModelScope copy this project can check "
                f"({'pinned to a Hugging Face commit' if item.revision else 'none is known'}): fetch "
                f"{item.local} from Hugging Face (`landiff-engine weights download --source huggingface"
                f"{' --clip' if item.optional else ''}`)"
            )
        return repo

    def where(self, item: WeightFile) -> str:
        return f"ModelScope's {MODELSCOPE_REPOS.get(item.repo) or item.repo}/{item.path}"

    def url(self, item: WeightFile) -> str:
        repo = quote(self.repo_of(item), safe="/")
        return (
            f"{self.endpoint}/api/v1/models/{repo}/repo?Revision={quote_plus(MODELSCOPE_REVISION)}"
            f"&FilePath={quote_plus(item.path)}"
        )

    def unreachable(self, what: str, error: object) -> str:
        return (
            f"could not reach ModelScope at {self.endpoint} for {what} ({type(error).__name__}: {error}). "
            f"Check the network, or set {self.variable} to a ModelScope server that can be reached, and run "
            "the download again; finished files are kept."
        )

    def listing(self, repo: str) -> dict[str, dict]:
        """{path: entry} of the repo's files (folders left out), fetched once."""
        if repo in self.listings:
            return self.listings[repo]
        url = (
            f"{self.endpoint}/api/v1/models/{quote(repo, safe='/')}/repo/files"
            f"?Revision={quote_plus(MODELSCOPE_REVISION)}&Recursive=true"
        )
        what = f"the file list of {repo}"
        request = urllib.request.Request(
            url, headers={"Accept": "application/json", "User-Agent": "landiff-tui"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read(METADATA_CAP + 1)
        except urllib.error.HTTPError as error:
            missing = " (no such repo there)" if error.code == 404 else ""
            raise DownloadError(
                f"ModelScope at {self.endpoint} refused {what} (HTTP {error.code}){missing}; "
                f"{self.access_hint}"
            ) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            raise DownloadError(self.unreachable(what, error)) from None
        if len(body) > METADATA_CAP:
            raise DownloadError(
                f"ModelScope at {self.endpoint} sent {what} past the {METADATA_CAP:,}-byte limit for a "
                "listing; not read"
            )
        self.listings[repo] = files_of_listing(body, f"{what} from {self.endpoint}")
        return self.listings[repo]

    def expectation(self, item: WeightFile) -> tuple[int | None, str | None]:
        entry = self.listing(self.repo_of(item)).get(item.path)
        if entry is None:
            raise SourcesDisagree(
                f"{self.where(item)} is not in the repo's file list at {self.endpoint}; not fetched "
                "(`--source huggingface` fetches it)"
            )
        sha256 = entry.get("Sha256") or None
        self.listed[item.local] = sha256
        digest = f"sha256:{sha256}" if sha256 else None
        for source, claim in self.record.claims(item.local).items():
            if source != self.source and claim.startswith("sha256:") and digest and claim != digest:
                raise SourcesDisagree(
                    f"{self.where(item)}: ModelScope lists SHA-256 {sha256} but {source} named "
                    f"{claim.partition(':')[2]} for the same file; the two sources disagree, so it is not "
                    "fetched from ModelScope (`--source huggingface` fetches it)"
                )
        return entry["Size"], digest

    def fetch_json(self, item: WeightFile) -> dict:
        """The flan-T5 index, sized and checked by the file list (the hub's downloader reads it unsized)."""
        target = inside(self.root, item.local, item_origin(item))
        size, digest = self.expectation(item)
        if size is not None and size > METADATA_CAP:
            raise DownloadError(
                f"{self.where(item)} is listed at {size:,} bytes, over the {METADATA_CAP:,}-byte limit for "
                "an index; not fetched"
            )
        self.record.expect(item.local, size, digest, self.source)
        self.fetch(item, expected=size)
        try:
            ok = self.checks_out(partial_of(target), item)
        except SourcesDisagree:
            partial_of(target).unlink()
            raise
        if not ok:
            partial_of(target).unlink()
            raise DownloadError(
                f"{self.where(item)} does not match its listed SHA-256; run the download again"
            )
        os.replace(partial_of(target), target)
        self.record.remember(self.root, item.local, True, None)
        return read_json(target, "the index")

    def checks_out(self, path: Path, item: WeightFile) -> bool:
        """The release's MD5 (as from Hugging Face), ModelScope's Sha256, and any other source's recorded
        digest, all from one read. Damaged in transit (no claim matches): False, fetched again."""
        known = self.record.expected_size(item.local)
        if known is not None and path.stat().st_size != known:
            return False
        claims = {"the release's published MD5": f"md5:{item.md5}"} if item.md5 else {}
        listed = self.listed.get(item.local)
        if listed:
            claims["ModelScope's listed SHA-256"] = f"sha256:{listed}"
        for source, claim in self.record.claims(item.local).items():
            if source != self.source:
                claims[f"the digest {source} named"] = claim
        if not claims:
            return True  # size-checked only, as the hub's downloader does for a file it names no digest for
        kinds = tuple(sorted({kind_of(claim) for claim in claims.values()}))
        found = digests_of(path, kinds)
        matched = {name for name, claim in claims.items() if claim.partition(":")[2] == found[kind_of(claim)]}
        if matched == set(claims):
            return True
        if not matched:
            return False
        raise SourcesDisagree(
            f"{self.where(item)}: the bytes fetched match {', '.join(sorted(matched))} but not "
            f"{', '.join(sorted(set(claims) - matched))}: ModelScope's copy is not the file the release "
            "publishes; refused and removed (`--source huggingface` fetches it)"
        )


def kind_of(claim: str) -> str:
    """'sha256' of 'sha256:<hex>'."""
    return claim.partition(":")[0]


def files_of_listing(body: bytes, what: str) -> dict[str, dict]:
    """ModelScope's file-list envelope -> {path: entry} of its files; DownloadError when it is not one."""
    try:
        envelope = json.loads(body)
    except ValueError as error:
        raise DownloadError(f"{what} is not valid JSON ({error})") from None
    files = envelope.get("Data", {}).get("Files") if isinstance(envelope, dict) else None
    if isinstance(envelope, dict) and envelope.get("Code", 200) != 200:
        raise DownloadError(f"{what} is an error: {envelope.get('Message') or envelope.get('Code')}")
    if not isinstance(files, list):
        raise DownloadError(f"{what} holds no Data.Files list; is that a ModelScope server?")
    listed = {}
    for entry in files:
        if not isinstance(entry, dict) or entry.get("Type", "blob") == "tree":
            continue
        path, size, sha256 = entry.get("Path"), entry.get("Size"), entry.get("Sha256") or None
        if (
            not isinstance(path, str)
            or not isinstance(size, int)
            or isinstance(size, bool)
            or size < 0
            or not (sha256 is None or (isinstance(sha256, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha256)))
        ):
            raise DownloadError(f"{what} names a file without a path, a size or a SHA-256: {entry!r:.200}")
        listed[path] = {"Size": size, "Sha256": sha256.lower() if sha256 else None}
    return listed


def downloader_for(source: str, root: Path, **kwargs) -> Downloader:
    """The downloader of `source` (layout.SOURCES): huggingface or modelscope."""
    if source not in SOURCES:
        raise DownloadError(f"unknown source {source!r}; use one of {', '.join(SOURCES)}")
    return (ModelScopeDownloader if source == "modelscope" else Downloader)(root, **kwargs)


def limit_of(name: str, expected: int | None, announced: int | None) -> tuple[int, str]:
    """The most bytes a file may have, and where that comes from: the hub's listing (`expected`), else
    what the transfer announced, else a cap (METADATA_CAP for a metadata file, which is never larger,
    UNSIZED_CAP for any other). Raises ServerLied when the transfer announces another size than the hub
    lists, or a metadata file over its cap, before anything is written."""
    if expected is not None and announced is not None and announced != expected:
        raise ServerLied(
            f"{name}: the transfer announces {announced:,} bytes but the hub lists the file at {expected:,}; "
            "refused before writing anything, and not asked again"
        )
    metadata = is_metadata(name)
    known = expected if expected is not None else announced
    if known is None:
        if metadata:
            return METADATA_CAP, "allowed for a metadata file (METADATA_CAP)"
        return UNSIZED_CAP, "allowed for a file whose size nothing named (UNSIZED_CAP)"
    if metadata and known > METADATA_CAP:
        raise ServerLied(
            f"{name}: {known:,} bytes announced, over the {METADATA_CAP:,}-byte limit for a metadata file; "
            "refused before writing anything"
        )
    return known, "the hub lists" if expected is not None else "the transfer announced"


def announced_size(headers, offset: int, name: str) -> int | None:
    """The whole file's size as a transfer from `offset` announces it (Content-Length, or a partial
    answer's Content-Range total); None when it names none. Headers that contradict each other, or a range
    that starts elsewhere than asked, are a lie (ServerLied)."""
    length = (headers.get("Content-Length") or "").strip()
    body = int(length) if length.isdigit() else None
    if not offset:
        return body
    whole = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (headers.get("Content-Range") or "").strip())
    total = int(whole[3]) if whole and whole[3] != "*" else None
    if whole and int(whole[1]) != offset:
        raise ServerLied(f"{name}: asked for bytes from {offset:,}, the server answered from {whole[1]}")
    if body is not None and total is not None and offset + body != total:
        raise ServerLied(
            f"{name}: the server announces {body:,} bytes from {offset:,} of a {total:,}-byte file; refused"
        )
    return total if total is not None else None if body is None else offset + body


class TokenOnlyForEndpoint(urllib.request.HTTPRedirectHandler):
    """Follows redirects, sending the token only to the endpoint's own scheme, host and port: the hub
    redirects large files to its CDN, which needs none, and a redirect elsewhere must not receive it."""

    def __init__(self, endpoint: str, token: str | None):
        self.origin, self.token = origin_of(endpoint), token

    def authorize(self, request: urllib.request.Request) -> None:
        # unredirected: urllib would otherwise copy it onto every redirect, whatever the host
        if self.token and origin_of(request.full_url) == self.origin:
            request.add_unredirected_header("Authorization", f"Bearer {self.token}")

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        redirected = super().redirect_request(req, fp, code, msg, headers, newurl)
        if redirected is not None:
            self.authorize(redirected)
        return redirected


def origin_of(url: str) -> tuple[str, str | None, int | None]:
    parts = urlparse(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, parts.hostname, parts.port or default
