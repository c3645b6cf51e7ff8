"""The weights manager against a hub that lies: names that leave the weights folder, a redirect to another
host, files cut short after they verified, a damaged shard that has no published MD5. All on 127.0.0.1."""

from __future__ import annotations

import json

import pytest

from engine.weights.downloads import (
    Downloader,
    DownloadError,
    download_release,
    file_states,
    planned_files,
    read_checksums,
    size_checked_only,
    slim_flan_t5,
    verify,
)
from engine.weights.layout import FLAN_T5_INDEX, FLAN_T5_REPO

from .fake_hub import FakeHub, states

TOKEN = "hf_secret_token"


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
