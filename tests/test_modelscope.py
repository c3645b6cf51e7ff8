"""ModelScope as the release's second source (issue 29, point 4), against a fake ModelScope on 127.0.0.1:
verified by the same checksums as the Hugging Face path, resumed with a byte range, a file that is not the
release's refused and not kept, and `weights download --source modelscope` through the CLI and the engine."""

from __future__ import annotations

import pytest

from engine.weights.downloads import (
    Downloader,
    DownloadError,
    ModelScopeDownloader,
    download_release,
    planned_files,
    verify,
)
from engine.weights.layout import MODELSCOPE_REPOS, RELEASE_REPO

from .fake_hub import FakeHub, states
from .fake_modelscope import FakeModelScope


def modelscope_repos(repos: dict[str, dict[str, bytes]]) -> dict[str, dict[str, bytes]]:
    """The hub's repos under their ModelScope ids (layout.MODELSCOPE_REPOS), copied."""
    return {MODELSCOPE_REPOS[repo]: dict(files) for repo, files in repos.items()}  # type: ignore[misc]


def test_a_full_download_from_modelscope_is_verified_by_the_release_checksums(
    tmp_path, hub_files, monkeypatch
):
    repos, checksums = hub_files
    monkeypatch.setenv("HF_TOKEN", "hf_secret")  # Hugging Face's: never sent to ModelScope
    with FakeModelScope(modelscope_repos(repos)) as ms:
        files, report = download_release(
            ModelScopeDownloader(tmp_path, endpoint=ms.endpoint), "all", checksums
        )
        with pytest.raises(
            DownloadError, match="pinned to a Hugging Face commit.*--source huggingface --clip"
        ):
            download_release(
                ModelScopeDownloader(tmp_path, endpoint=ms.endpoint), "all", checksums, clip=True
            )
    assert report.failed == {} and report.skipped == ["flan-t5-xxl/model.safetensors.index.json"]  # first
    assert sorted(report.fetched + report.skipped) == sorted(item.local for item in files)
    assert set(states(tmp_path, checksums).values()) == {"verified"}  # flan-T5 too, by ModelScope's SHA-256
    assert all(verify(tmp_path, planned_files(tmp_path, "all", checksums)).values())
    assert ("list", "yinaoxiong/LanDiff", None) in ms.log and (
        "list",
        "AI-ModelScope/flan-t5-xxl",
        None,
    ) in ms.log
    assert not any("Authorization" in headers for headers in ms.headers)
    assert not list(tmp_path.rglob("*.partial"))


def test_a_cut_transfer_from_modelscope_resumes_with_a_byte_range(tmp_path, hub_files):
    repos, checksums = hub_files
    name = "llm/model.safetensors"
    size = len(repos[RELEASE_REPO][name])
    with FakeModelScope(modelscope_repos(repos)) as ms:
        ms.cut_once[name] = size // 3
        _, report = download_release(ModelScopeDownloader(tmp_path, endpoint=ms.endpoint), "llm", checksums)
        assert [r for what, path, r in ms.log if what == "GET" and path == name] == [
            None,
            f"bytes={size // 3}-",
        ]
        assert ms.served[name] == size  # every byte once
    assert report.failed == {}
    assert states(tmp_path, checksums)[f"LanDiff/{name}"] == "verified"


def test_a_file_that_is_not_the_releases_is_refused_and_not_kept(tmp_path, hub_files):
    """ModelScope serving other bytes than the release's MD5 names (its own list agreeing with them), or
    listing another SHA-256 than the release's bytes have: refused at once, nothing kept; bytes damaged in
    transit (no claim matches) are fetched once more, as from the hub."""
    repos, checksums = hub_files
    other, lying, damaged = (
        "diffusion/latest",
        "CogVideoX-2b-sat/transformer/latest",
        "CogVideoX-2b-sat/vae/3d-vae.pt",
    )
    served = modelscope_repos(repos)
    served["yinaoxiong/LanDiff"][other] = b"2"  # the release's file holds "1"
    with FakeModelScope(served) as ms:
        ms.listed_sha256[lying] = "ab" * 32
        ms.corrupt[damaged] = 2
        _, report = download_release(
            ModelScopeDownloader(tmp_path, endpoint=ms.endpoint), "diffusion", checksums
        )
        gets = [path for what, path, _ in ms.log if what == "GET"]
    assert sorted(report.failed) == sorted(f"LanDiff/{name}" for name in (other, lying, damaged))
    assert (
        "match ModelScope's listed SHA-256 but not the release's published MD5"
        in report.failed[f"LanDiff/{other}"]
    )
    assert (
        "match the release's published MD5 but not ModelScope's listed SHA-256"
        in report.failed[f"LanDiff/{lying}"]
    )
    assert report.failed[f"LanDiff/{damaged}"] == "md5 mismatch twice"
    assert (
        gets.count(other) == gets.count(lying) == 1 and gets.count(damaged) == 2
    )  # refused: not asked again
    for name in (other, lying, damaged):
        assert (
            not (tmp_path / "LanDiff" / name).exists()
            and not (tmp_path / "LanDiff" / (name + ".partial")).exists()
        )
        assert states(tmp_path, checksums)[f"LanDiff/{name}"] == "corrupt"


def test_modelscope_naming_another_digest_than_the_hub_did_is_refused_before_fetching(tmp_path, hub_files):
    repos, checksums = hub_files
    with FakeHub(repos) as hub:
        download_release(Downloader(tmp_path, endpoint=hub.endpoint), "llm", checksums)
    name = "spiece.model"
    (tmp_path / "flan-t5-xxl" / name).unlink()
    served = modelscope_repos(repos)
    served["AI-ModelScope/flan-t5-xxl"][name] = b"another tokenizer"
    with FakeModelScope(served) as ms:
        _, report = download_release(ModelScopeDownloader(tmp_path, endpoint=ms.endpoint), "llm", checksums)
        assert not [path for what, path, _ in ms.log if what == "GET"]  # nothing fetched at all
    assert "the two sources disagree" in report.failed[f"flan-t5-xxl/{name}"]
    assert not (tmp_path / "flan-t5-xxl" / name).exists()


def test_weights_download_source_modelscope_through_the_cli(tmp_path, hub_files, monkeypatch, capsys):
    from engine.cli.main import main

    repos, checksums = hub_files
    listing = tmp_path / "CHECKSUM.md5"
    listing.write_text("".join(f"{md5}  {path}\n" for path, md5 in checksums.items()))
    root = tmp_path / "weights"
    common = ["--ckpts", str(root), "--checksums", str(listing), "--only", "diffusion"]
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the hub is never asked (nor the internet)
    monkeypatch.delenv("MODELSCOPE_ENDPOINT", raising=False)
    monkeypatch.setenv("MODELSCOPE_DOMAIN", "127.0.0.1:9")  # https://127.0.0.1:9: nothing listens
    assert main(["weights", "download", *common, "--source", "modelscope"]) != 0
    said = capsys.readouterr().err
    assert "could not reach ModelScope at https://127.0.0.1:9" in said and "set MODELSCOPE_DOMAIN" in said
    with FakeModelScope(modelscope_repos(repos)) as ms:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", ms.endpoint)  # wins over MODELSCOPE_DOMAIN
        assert main(["weights", "download", *common, "--source", "modelscope"]) == 0
        assert any(what == "GET" for what, _, _ in ms.log)
    assert main(["weights", "verify", *common]) == 0
    assert set(states(root, checksums).values()) >= {"verified"}
    wanted = [item.local for item in planned_files(root, "diffusion", checksums)]
    assert all(states(root, checksums)[local] == "verified" for local in wanted)
    with pytest.raises(SystemExit):
        main(["weights", "download", *common, "--source", "elsewhere"])


def test_the_engine_downloads_from_modelscope_when_asked(tmp_path, hub_files, monkeypatch):
    from engine.daemon.weights_ops import WeightsOperations
    from engine.protocol import DownloadFinishedEvent, DownloadWeights

    assert DownloadWeights.model_validate({"only": "all"}).source == "huggingface"  # what older clients send
    repos, checksums = hub_files
    listing = tmp_path / "CHECKSUM.md5"
    listing.write_text("".join(f"{md5}  {path}\n" for path, md5 in checksums.items()))
    monkeypatch.setenv("LANDIFF_CHECKSUMS", str(listing))  # a bundle to download, not the tiny generator's
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    events: list = []
    with FakeModelScope(modelscope_repos(repos)) as ms:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", ms.endpoint)
        ops = WeightsOperations("tiny", tmp_path / "root", events.append)
        request = DownloadWeights.model_validate({"only": "diffusion", "source": "modelscope"})
        reply = ops.start("download", request.only, request.clip, request.source)
        assert not reply.generated and ops.job is not None
        ops.job.join(60)
    (finished,) = [event for event in events if isinstance(event, DownloadFinishedEvent)]
    assert finished.failed == {} and finished.fetched
    assert {file.state for file in ops.status("diffusion").files} == {"verified"}
