"""The weights manager against a hub that lies: names that leave the weights folder, a redirect to another
host, files cut short after they verified, a damaged shard that has no published MD5, a body longer than
its announced or listed size, an index or metadata file without end. All on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.weights import downloads
from engine.weights.downloads import (
    CHUNK,
    METADATA_CAP,
    Downloader,
    DownloadError,
    VerificationRecord,
    download_release,
    file_states,
    planned_files,
    read_checksums,
    size_checked_only,
    slim_flan_t5,
    verify,
)
from engine.weights.layout import FLAN_T5_INDEX, FLAN_T5_REPO, WeightFile

from .fake_hub import COMMIT, FakeHub, states

TOKEN = "hf_secret_token"
ANNOUNCED = 419_280  # what the lying hub of issue 25 announced
STREAMED = 80 * 2**20  # and what it streamed
BLOCK = b"\0" * 65536


class LyingHub:
    """Serves every path as one file whose size it lies about: HEAD names `listed` (the hub's listing, None:
    no size), a GET announces `announced` (its Content-Length, None: none; asked for a range, its
    Content-Range's total) and streams `sent` bytes, in chunked framing (so the client reads past a
    Content-Length it announced) or closing the connection at the end. Counts the GETs and the bytes it got
    out; past `max_gets` it answers 404, so a client that keeps asking ends (with an error) instead of
    filling the disk."""

    def __init__(self, listed: int | None, announced: int | None, sent: int, framing: str = "chunked"):
        self.listed, self.announced, self.sent, self.framing = listed, announced, sent, framing
        self.gets, self.got_out, self.max_gets = 0, 0, 2
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"not-a-digest"')
                if hub.listed is not None:
                    self.send_header("Content-Length", str(hub.listed))
                self.send_header("Connection", "close")
                self.end_headers()

            def do_GET(self) -> None:
                hub.gets += 1
                if hub.gets > hub.max_gets:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                asked = self.headers.get("Range")
                self.send_response(206 if asked else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                if asked:
                    start = int(asked.removeprefix("bytes=").rstrip("-"))
                    self.send_header("Content-Range", f"bytes {start}-{start + hub.sent - 1}/{hub.announced}")
                elif hub.announced is not None:
                    self.send_header("Content-Length", str(hub.announced))
                if hub.framing == "chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                left = hub.sent
                try:
                    while left:
                        piece = BLOCK[: min(left, len(BLOCK))]
                        if hub.framing == "chunked":
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        else:
                            self.wfile.write(piece)
                        left -= len(piece)
                        hub.got_out += len(piece)
                    if hub.framing == "chunked":
                        self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: what a lie should get
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LyingHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def fetch_one(root, hub: LyingHub, path: str = "weights.bin"):
    """Download one file of an unpublished repo from `hub`: (report, the largest size its partial reached)."""
    item = WeightFile("someone/model", path, f"model/{path}", ("diffusion",))
    written = [0]

    def progress(event) -> None:
        written[0] = max(written[0], event.file_done, (root / "model" / (path + ".partial")).stat().st_size)

    report = Downloader(root, endpoint=hub.endpoint, on_progress=progress, timeout=10).download([item])
    return report, written[0]


def nothing_left(root) -> bool:
    return not [p for p in (root / "model").rglob("*") if p.is_file()]


def hostile_index(repos, shard_name: str) -> dict:
    """The flan-T5 repo with an index whose weight map names `shard_name` for an encoder tensor."""
    flan = dict(repos[FLAN_T5_REPO])
    index = json.loads(flan[FLAN_T5_INDEX])
    index["weight_map"]["encoder.block.0.layer.0.SelfAttention.q.weight"] = shard_name
    flan[FLAN_T5_INDEX] = json.dumps(index).encode()
    flan[shard_name.lstrip("/")] = b"written where it must not be"
    return {**repos, FLAN_T5_REPO: flan}


@pytest.mark.parametrize("shard", ["../../../escaped.safetensors", "/tmp/absolute-escape.safetensors"])
def test_index_names_that_leave_the_weights_folder_are_refused_before_any_write(tmp_path, hub_files, shard):  # noqa: F811
    repos, checksums = hub_files
    root = tmp_path / "deep" / "er" / "weights"
    with FakeHub(hostile_index(repos, shard)) as hub:
        with pytest.raises(
            DownloadError, match=r"index flan-t5-xxl/.* names .* not a file inside the weights"
        ):
            download_release(Downloader(root, endpoint=hub.endpoint), "llm", checksums)
        fetched = [path for method, path, _ in hub.log if method == "GET"]
    assert all(FLAN_T5_INDEX in path for path in fetched)  # the index only: nothing else was fetched
    assert not (tmp_path / "escaped.safetensors").exists() and not list(tmp_path.rglob("escaped*"))


def test_slimming_never_deletes_outside_the_weights_folder(tmp_path, hub_files):  # noqa: F811
    repos, checksums = hub_files
    with FakeHub(repos) as hub:
        download_release(Downloader(tmp_path / "w", endpoint=hub.endpoint), "llm", checksums)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    index_path = tmp_path / "w" / "flan-t5-xxl" / FLAN_T5_INDEX
    index = json.loads(index_path.read_text())
    index["weight_map"]["decoder.final_layer_norm.weight"] = "../../victim.txt"
    index_path.write_text(json.dumps(index))
    with pytest.raises(DownloadError, match="victim.txt.*not a file inside the weights folder"):
        slim_flan_t5(tmp_path / "w")
    assert victim.read_text() == "keep me" and index_path.is_file()


def test_a_checksum_list_naming_a_path_outside_is_refused(tmp_path):
    listing = tmp_path / "CHECKSUM.md5"
    listing.write_text("0123456789abcdef0123456789abcdef  ../../etc/cron.d/x\n")
    with pytest.raises(DownloadError, match=r"checksum list .* names '../../etc/cron.d/x'"):
        read_checksums(listing)


def test_the_token_goes_to_the_endpoint_only_never_to_a_redirect_elsewhere(tmp_path, hub_files):  # noqa: F811
    repos, checksums = hub_files
    name = "llm/model.safetensors"
    with FakeHub(repos) as hub, FakeHub(repos) as cdn:
        hub.redirect[name] = cdn.endpoint  # another port: another origin, as the hub's CDN is
        downloader = Downloader(tmp_path, endpoint=hub.endpoint, token=TOKEN)
        report = download_release(downloader, "llm", checksums)[1]
        at_hub = {auth for path, auth in hub.authorization if path.endswith(name)}
        at_cdn = [auth for path, auth in cdn.authorization if path.endswith(name)]
    assert report.failed == {} and f"LanDiff/{name}" in report.fetched
    assert at_hub == {f"Bearer {TOKEN}"} and at_cdn and set(at_cdn) == {None}
    assert states(tmp_path, checksums)[f"LanDiff/{name}"] == "verified"


def test_a_verified_file_cut_short_is_not_present_and_is_fetched_again(tmp_path, hub_files):  # noqa: F811
    repos, checksums = hub_files
    with FakeHub(repos) as hub:
        download_release(Downloader(tmp_path, endpoint=hub.endpoint), "all", checksums)
        local = "LanDiff/llm/model.safetensors"
        with open(tmp_path / local, "r+b") as handle:
            handle.truncate(1000)
        assert states(tmp_path, checksums)[local] == "corrupt"
        llm_files = file_states(tmp_path, planned_files(tmp_path, "llm", checksums))
        shard = next(
            s.local for s in llm_files if s.local.startswith("flan") and s.local.endswith(".safetensors")
        )
        with open(tmp_path / shard, "r+b") as handle:
            handle.truncate(10)
        assert states(tmp_path, checksums)[shard] == "corrupt"  # no MD5 published, its size is known
        report = download_release(Downloader(tmp_path, endpoint=hub.endpoint), "all", checksums)[1]
    assert sorted(report.fetched) == sorted([local, shard]) and report.failed == {}
    assert states(tmp_path, checksums)[local] == states(tmp_path, checksums)[shard] == "verified"


def test_a_damaged_shard_without_a_published_sum_is_caught_by_the_hubs_digest(tmp_path, hub_files):  # noqa: F811
    repos, checksums = hub_files
    index = json.loads(repos[FLAN_T5_REPO][FLAN_T5_INDEX])
    shard = sorted(set(index["weight_map"].values()))[0]
    with FakeHub(repos) as hub:
        hub.corrupt[shard] = 1  # the first transfer is damaged, the second is right
        report = download_release(Downloader(tmp_path, endpoint=hub.endpoint), "llm", checksums)[1]
        assert report.refetched == [f"flan-t5-xxl/{shard}"] and report.failed == {}
        hub.corrupt[shard] = 2  # damaged twice: removed, never left where the loader looks
        (tmp_path / f"flan-t5-xxl/{shard}").unlink()
        report = download_release(Downloader(tmp_path, endpoint=hub.endpoint), "llm", checksums)[1]
    assert report.failed == {f"flan-t5-xxl/{shard}": "sha256 mismatch twice"}
    assert not (tmp_path / f"flan-t5-xxl/{shard}").exists()


def test_verify_checks_flan_t5_by_the_hubs_digest_and_says_what_it_can_only_size_check(tmp_path, hub_files):  # noqa: F811
    repos, checksums = hub_files
    with FakeHub(repos) as hub:
        download_release(Downloader(tmp_path, endpoint=hub.endpoint), "all", checksums)
    files = planned_files(tmp_path, "all", checksums)
    results = verify(tmp_path, files)
    assert all(results.values()) and any(name.startswith("flan-t5-xxl/") for name in results)
    assert size_checked_only(tmp_path, files) == [f"flan-t5-xxl/{FLAN_T5_INDEX}"]  # fetched before the list
    shard = next(name for name in results if name.endswith(".safetensors") and name.startswith("flan"))
    data = bytearray((tmp_path / shard).read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes: only a digest notices
    (tmp_path / shard).write_bytes(bytes(data))
    assert verify(tmp_path, files)[shard] is False
    assert states(tmp_path, checksums)[shard] == "corrupt"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("listed", [ANNOUNCED, None], ids=["listed-by-the-hub", "announced-only"])
def test_a_body_longer_than_announced_is_cut_there_removed_and_not_asked_again(tmp_path, listed):
    with LyingHub(listed=listed, announced=ANNOUNCED, sent=STREAMED) as hub:
        report, written = fetch_one(tmp_path, hub)
    source = "the hub lists" if listed else "the transfer announced"
    assert report.failed["model/weights.bin"] == (
        f"someone/model/weights.bin: the server sent more than the 419,280 bytes {source} (at least "
        f"{ANNOUNCED + 1:,} received); stopped there and removed the partial file, and a server that sends "
        "more than it announces is not asked again"
    )
    assert hub.gets == 1  # a server that lies is not retried
    assert 0 < written <= ANNOUNCED + CHUNK and nothing_left(
        tmp_path
    )  # never past the size; the partial gone
    assert hub.got_out < STREAMED  # the client hung up: the rest of the lie never left the server
    assert VerificationRecord(tmp_path).result(tmp_path, "model/weights.bin") is False


@pytest.mark.timeout(60)
@pytest.mark.parametrize("announced", [STREAMED, None], ids=["announces-more", "announces-nothing"])
def test_a_body_longer_than_the_hub_lists_is_refused_and_not_asked_again(tmp_path, announced):
    with LyingHub(listed=ANNOUNCED, announced=announced, sent=STREAMED, framing="close") as hub:
        report, written = fetch_one(tmp_path, hub)
    why = report.failed["model/weights.bin"]
    if announced:  # refused on its headers: not one byte written
        assert why.startswith(
            "someone/model/weights.bin: the transfer announces 83,886,080 bytes but the hub lists the file "
            "at 419,280; refused before writing anything"
        )
        assert written == 0
    else:
        assert why.startswith(
            "someone/model/weights.bin: the server sent more than the 419,280 bytes the hub lists (at least "
            "419,281 received)"
        )
        assert 0 < written <= ANNOUNCED + CHUNK
    assert hub.gets == 1 and nothing_left(tmp_path)


@pytest.mark.timeout(60)
def test_a_body_whose_size_nothing_names_is_kept_under_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(downloads, "UNSIZED_CAP", 2**20)
    with LyingHub(listed=None, announced=None, sent=2**19, framing="close") as hub:
        report, _ = fetch_one(tmp_path, hub)  # under the cap: the end of the body is the end of the file
    assert report.fetched == ["model/weights.bin"] and hub.gets == 1
    assert (tmp_path / "model" / "weights.bin").stat().st_size == 2**19
    with LyingHub(listed=None, announced=None, sent=STREAMED, framing="close") as hub:
        report, written = fetch_one(tmp_path / "again", hub)
    assert report.failed["model/weights.bin"].startswith(
        "someone/model/weights.bin: the server sent more than the 1,048,576 bytes allowed for a file whose "
        "size nothing named (UNSIZED_CAP)"
    )
    assert hub.gets == 1 and written <= 2**20 and nothing_left(tmp_path / "again")


@pytest.mark.timeout(60)
def test_an_index_announced_over_the_cap_is_refused_before_a_byte_is_written(tmp_path, hub_files):  # noqa: F811
    _, checksums = hub_files
    too_big = rf"google/flan-t5-xxl/{FLAN_T5_INDEX}: 16,777,217 bytes announced, over the 16,777,216-byte"
    with (
        LyingHub(listed=None, announced=METADATA_CAP + 1, sent=METADATA_CAP + 1, framing="close") as hub,
        pytest.raises(DownloadError, match=too_big + " limit for a metadata file; refused before writing"),
    ):
        download_release(Downloader(tmp_path, endpoint=hub.endpoint, timeout=10), "llm", checksums)
    assert hub.gets == 1 and not [p for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.timeout(60)
def test_an_index_without_end_is_cut_at_the_cap_in_blocks_never_whole_in_memory(tmp_path, hub_files):  # noqa: F811
    _, checksums = hub_files
    with LyingHub(listed=None, announced=None, sent=STREAMED, framing="close") as hub:
        tracemalloc.start()
        try:
            with pytest.raises(
                DownloadError,
                match=rf"{FLAN_T5_INDEX}: the server sent more than the 16,777,216 bytes allowed for a "
                r"metadata file \(METADATA_CAP\) \(at least 16,777,217 received\)",
            ):
                download_release(Downloader(tmp_path, endpoint=hub.endpoint, timeout=10), "llm", checksums)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 4 * CHUNK  # a few read blocks at most, never the body (16 MiB read, 80 MiB sent)
    assert hub.gets == 1 and not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_an_index_on_disk_over_the_cap_is_refused_without_reading_it(tmp_path):
    index = tmp_path / "flan-t5-xxl" / FLAN_T5_INDEX
    index.parent.mkdir()
    with open(index, "wb") as handle:
        handle.truncate(METADATA_CAP + 1)  # sparse: no disk used
    tracemalloc.start()
    try:
        with pytest.raises(
            DownloadError, match=r"the index .* is 16,777,217 bytes, over the 16,777,216-byte"
        ):
            planned_files(tmp_path, "llm")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < CHUNK


@pytest.mark.timeout(60)
def test_a_metadata_file_the_hub_lists_over_the_cap_is_not_fetched(tmp_path):
    with LyingHub(listed=METADATA_CAP + 1, announced=METADATA_CAP + 1, sent=METADATA_CAP + 1) as hub:
        report, written = fetch_one(tmp_path, hub, "config.json")
    assert report.failed["model/config.json"] == (
        f"{hub.endpoint} lists someone/model/config.json at 16,777,217 bytes, over the 16,777,216-byte limit "
        "for a metadata file; not fetched"
    )
    assert hub.gets == 0 and written == 0 and not (tmp_path / "model").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("total", [ANNOUNCED, STREAMED], ids=["sends-more", "announces-more"])
def test_a_resumed_body_is_held_to_the_listed_size_too(tmp_path, total):
    partial = tmp_path / "model" / "weights.bin.partial"
    partial.parent.mkdir()
    partial.write_bytes(b"\0" * 1000)  # left by an earlier run: resumed from byte 1000
    with LyingHub(listed=ANNOUNCED, announced=total, sent=STREAMED) as hub:
        report, written = fetch_one(tmp_path, hub)
    why = report.failed["model/weights.bin"]
    if total == ANNOUNCED:  # the Content-Range total is the listed size, the body goes on
        assert "the server sent more than the 419,280 bytes the hub lists (at least 419,281 received)" in why
        assert 1000 < written <= ANNOUNCED
    else:
        assert "the transfer announces 83,886,080 bytes but the hub lists the file at 419,280" in why
        assert written == 0
    assert hub.gets == 1 and nothing_left(tmp_path)
