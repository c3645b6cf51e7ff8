"""The weights manager against a fake hub on 127.0.0.1: fresh, cut and resumed, corrupt, no space, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.generation.job import JobSpec
from engine.generation.pipeline import Pipeline
from engine.generation.video import read_mp4
from engine.specs import get_spec
from engine.weights import downloads
from engine.weights.downloads import (
    Downloader,
    DownloadError,
    download_release,
    file_states,
    planned_files,
    verify,
)
from engine.weights.layout import RELEASE_REPO, ReleaseLayout

from .fake_hub import FakeHub, states
from .harness import RunningEngine

TINY = get_spec("tiny")


def test_fresh_download_then_the_pipeline_runs_from_it(tmp_path, hub_files):
    repos, checksums = hub_files
    events = []
    with FakeHub(repos) as hub:
        downloader = Downloader(tmp_path, endpoint=hub.endpoint, on_progress=events.append)
        files, report = download_release(downloader, "all", checksums)
    assert report.failed == {} and len(report.fetched) + len(report.skipped) == len(files)
    assert set(states(tmp_path, checksums).values()) == {"verified", "present"}  # flan-T5 has no MD5 list
    assert all(states(tmp_path, checksums)[f"LanDiff/{path}"] == "verified" for path in checksums)
    assert events[-1].done == events[-1].total > 0 and events[-1].eta_s == 0
    assert not list(tmp_path.rglob("*.partial"))
    pipeline = Pipeline(TINY, ReleaseLayout(tmp_path), device=torch.device("cpu"))
    result = pipeline.run(JobSpec("A snail crawling on green moss.", tmp_path / "out" / "v.mp4", steps=2))
    assert read_mp4(result.video)[0].shape[0] == TINY.video_frames(3)


def test_a_cut_transfer_resumes_without_fetching_the_done_part_again(tmp_path, hub_files):
    repos, checksums = hub_files
    name = "llm/model.safetensors"
    size = len(repos[RELEASE_REPO][name])
    with FakeHub(repos) as hub:
        hub.cut_once[name] = size // 3
        downloader = Downloader(tmp_path, endpoint=hub.endpoint)
        download_release(downloader, "llm", checksums)
        ranges = [r for method, path, r in hub.log if method == "GET" and path.endswith(name)]
        assert ranges == [None, f"bytes={size // 3}-"]
        assert hub.served[name] == size  # every byte once
    assert states(tmp_path, checksums)[f"LanDiff/{name}"] == "verified"


def test_a_partial_file_left_by_an_earlier_run_is_resumed(tmp_path, hub_files):
    repos, checksums = hub_files
    name = "tokenizer/model.safetensors"
    content = repos[RELEASE_REPO][name]
    partial = tmp_path / "LanDiff" / (name + ".partial")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(content[:1000])
    assert states(tmp_path, checksums)[f"LanDiff/{name}"] == "partial"
    with FakeHub(repos) as hub:
        download_release(Downloader(tmp_path, endpoint=hub.endpoint), "llm", checksums)
        assert hub.served[name] == len(content) - 1000
    assert (tmp_path / "LanDiff" / name).read_bytes() == content


def test_damaged_bytes_are_caught_fetched_again_and_reported(tmp_path, hub_files):
    repos, checksums = hub_files
    with FakeHub(repos) as hub:
        hub.corrupt["diffusion/latest"] = 1
        hub.corrupt["CogVideoX-2b-sat/vae/3d-vae.pt"] = 2
        _, report = download_release(Downloader(tmp_path, endpoint=hub.endpoint), "diffusion", checksums)
    assert report.refetched == ["LanDiff/diffusion/latest"]
    assert list(report.failed) == ["LanDiff/CogVideoX-2b-sat/vae/3d-vae.pt"]
    assert not (tmp_path / "LanDiff/CogVideoX-2b-sat/vae/3d-vae.pt").exists()
    assert not list(tmp_path.rglob("*.partial"))
    assert (
        states(tmp_path, checksums)["LanDiff/CogVideoX-2b-sat/vae/3d-vae.pt"] == "corrupt"
    )  # removed, recorded


def test_not_enough_disk_space_is_said_before_anything_is_fetched(tmp_path, hub_files, monkeypatch):
    repos, checksums = hub_files

    class Tiny:
        free = 1000

    monkeypatch.setattr(downloads.shutil, "disk_usage", lambda path: Tiny)
    with FakeHub(repos) as hub, pytest.raises(DownloadError, match="not enough disk space"):
        download_release(Downloader(tmp_path, endpoint=hub.endpoint), "diffusion", checksums)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.name != downloads.RECORD]


def test_an_unreachable_hub_is_a_clear_message_and_nothing_looks_complete(tmp_path, hub_files):
    _, checksums = hub_files
    with pytest.raises(DownloadError, match="could not reach http://127.0.0.1:9"):
        download_release(
            Downloader(tmp_path, endpoint="http://127.0.0.1:9", timeout=2), "diffusion", checksums
        )
    assert set(states(tmp_path, checksums).values()) == {"missing"}


def test_verify_flags_a_damaged_file_and_the_pipeline_refuses_it(tmp_path, hub_files):
    repos, checksums = hub_files
    with FakeHub(repos) as hub:
        download_release(Downloader(tmp_path, endpoint=hub.endpoint), "all", checksums)
    damaged = tmp_path / "LanDiff" / "llm" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\0")
    results = verify(tmp_path, planned_files(tmp_path, "all", checksums))
    assert results["LanDiff/llm/model.safetensors"] is False and sum(results.values()) == len(results) - 1
    assert states(tmp_path, checksums)["LanDiff/llm/model.safetensors"] == "corrupt"
    with pytest.raises(DownloadError, match="failed its checksum"):
        Pipeline(TINY, ReleaseLayout(tmp_path), device=torch.device("cpu")).stage1()
    with FakeHub(repos) as hub:
        _, report = download_release(Downloader(tmp_path, endpoint=hub.endpoint), "llm", checksums)
    assert report.fetched == ["LanDiff/llm/model.safetensors"]
    assert states(tmp_path, checksums)["LanDiff/llm/model.safetensors"] == "verified"


def test_weights_commands_end_to_end(tmp_path, hub_files, monkeypatch, capsys):
    from engine.cli.main import main

    repos, checksums = hub_files
    listing = tmp_path / "CHECKSUM.md5"
    listing.write_text("".join(f"{md5}  {path}\n" for path, md5 in checksums.items()))
    root = tmp_path / "weights"
    common = ["--ckpts", str(root), "--checksums", str(listing)]
    assert main(["weights", "status", *common]) == 1
    with FakeHub(repos) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        assert main(["weights", "download", *common]) == 0
    assert main(["weights", "verify", *common]) == 0
    capsys.readouterr()
    assert main(["weights", "status", "--json", *common]) == 0
    report = json.loads(capsys.readouterr().out)
    required = [f for f in report["files"] if not f["optional"]]  # the quality probe's CLIP is optional
    assert report["root"] == str(root) and {f["state"] for f in required} == {"verified", "present"}


def test_flan_t5_can_be_slimmed_to_its_bf16_encoder(tmp_path, hub_files):
    from engine.generation.text_encoder import load_t5_encoder
    from engine.weights.downloads import slim_flan_t5

    repos, checksums = hub_files
    with FakeHub(repos) as hub:
        download_release(Downloader(tmp_path, endpoint=hub.endpoint), "llm", checksums)
    folder = tmp_path / "flan-t5-xxl"
    ids = torch.tensor([[5, 6, 1]])
    before = load_t5_encoder(folder, dtype=torch.bfloat16, device="cpu")(input_ids=ids).last_hidden_state
    assert slim_flan_t5(tmp_path) > 0
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "spiece.model",
        "tokenizer_config.json",
    ]
    after = load_t5_encoder(folder, dtype=torch.bfloat16, device="cpu")(input_ids=ids).last_hidden_state
    assert torch.equal(before, after)
    assert set(states(tmp_path, checksums).values()) >= {"present"}
    assert all(state != "missing" for local, state in states(tmp_path, checksums).items() if "flan" in local)
    with FakeHub(repos) as hub:
        _, report = download_release(Downloader(tmp_path, endpoint=hub.endpoint), "llm", checksums)
    assert report.fetched == [] and not any(method == "GET" for method, _, _ in hub.log)


def flan_folder_contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}


def test_slimming_never_deletes_what_the_encoder_needs_even_when_the_index_names_it(tmp_path, hub_files):
    """A hostile index naming the tokenizer and the config as shards: slimming would delete them with the
    shards. The index is refused before anything is read, written or deleted."""
    from engine.weights.downloads import slim_flan_t5
    from engine.weights.layout import FLAN_T5_INDEX

    repos, checksums = hub_files
    with FakeHub(repos) as hub:
        download_release(Downloader(tmp_path, endpoint=hub.endpoint), "llm", checksums)
    folder = tmp_path / "flan-t5-xxl"
    index = json.loads((folder / FLAN_T5_INDEX).read_text())
    index["weight_map"]["decoder.final_layer_norm.weight"] = "spiece.model"
    index["weight_map"]["decoder.block.0.layer.0.SelfAttention.q.weight"] = "config.json"
    (folder / FLAN_T5_INDEX).write_text(json.dumps(index))
    before = flan_folder_contents(folder)
    with pytest.raises(DownloadError, match=r"names 'config.json' as a weights shard, which it is not"):
        slim_flan_t5(tmp_path)
    assert flan_folder_contents(folder) == before  # nothing deleted, nothing written


def test_the_shards_are_deleted_only_once_the_slim_file_reads_back_as_written(
    tmp_path, hub_files, monkeypatch
):
    from engine.weights.downloads import slim_flan_t5

    repos, checksums = hub_files
    with FakeHub(repos) as hub:
        download_release(Downloader(tmp_path, endpoint=hub.endpoint), "llm", checksums)
    folder = tmp_path / "flan-t5-xxl"
    before = flan_folder_contents(folder)

    def unreadable(path: Path, tensors: dict) -> None:
        raise DownloadError(f"{path} reads back otherwise than written; the shards are kept")

    monkeypatch.setattr(downloads, "check_slim_file", unreadable)
    with pytest.raises(DownloadError, match="the shards are kept"):
        slim_flan_t5(tmp_path)
    assert flan_folder_contents(folder) == before and not list(folder.glob("*.partial*"))


def test_offline_mode_refuses_to_download_but_runs_when_complete(tmp_path, hub_files, monkeypatch):
    repos, checksums = hub_files
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE"):
        download_release(Downloader(tmp_path, endpoint="http://127.0.0.1:9"), "diffusion", checksums)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with FakeHub(repos) as hub:
        download_release(Downloader(tmp_path, endpoint=hub.endpoint), "all", checksums)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, report = download_release(Downloader(tmp_path, endpoint="http://127.0.0.1:9"), "all", checksums)
    assert report.fetched == [] and report.failed == {}


def test_the_engine_downloads_reports_events_and_cancel_keeps_the_partial_file(tmp_path, hub_files):
    repos, checksums = hub_files
    listing = tmp_path / "CHECKSUM.md5"
    listing.write_text("".join(f"{md5}  {path}\n" for path, md5 in checksums.items()))
    name = "CogVideoX-2b-sat/transformer/1000/mp_rank_00_model_states.pt"
    with FakeHub(repos) as hub:
        hub.slow[name] = 0.05
        engine = RunningEngine(tmp_path / "engine", tmp_path / "home")
        engine.env.update({"HF_ENDPOINT": hub.endpoint, "LANDIFF_CHECKSUMS": str(listing)})
        engine.env.pop("HF_HUB_OFFLINE")
        engine.start()
        try:
            with engine.client() as client:
                client.request("subscribe", since=0)
                started = client.request("download_weights", only="diffusion")
                root = Path(started["root"])
                for event in client.events():
                    assert event["event"] not in ("download_failed", "download_finished"), event
                    if event["event"] == "download_progress" and event["file"] == f"LanDiff/{name}":
                        break
                client.request("cancel_download")
                kinds = []
                for event in client.events():
                    kinds.append(event["event"])
                    if event["event"] in ("download_cancelled", "download_finished", "download_failed"):
                        break
                assert kinds[-1] == "download_cancelled"
                partial = root / "LanDiff" / (name + ".partial")
                assert partial.is_file() and 0 < partial.stat().st_size < len(repos[RELEASE_REPO][name])
                assert not (root / "LanDiff" / name).exists()
                kept = partial.stat().st_size
                del hub.slow[name]
                client.request("download_weights", only="diffusion")
                for event in client.events():
                    if event["event"] in ("download_finished", "download_failed", "download_cancelled"):
                        break
                assert event["event"] == "download_finished" and event["failed"] == {}
                ranges = [r for method, path, r in hub.log if method == "GET" and path.endswith(name)]
                assert ranges[-1] == f"bytes={kept}-"
        finally:
            engine.stop()
    wanted = file_states(root, planned_files(root, "diffusion", checksums))
    assert wanted and all(item.state == "verified" for item in wanted)


def test_the_root_is_landiff_home_then_ckpts_beside_then_the_user_data_dir(tmp_path, monkeypatch, capsys):
    from engine.cli.main import main
    from engine.weights.layout import root_candidates, weights_root

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LANDIFF_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert weights_root() == tmp_path / "xdg" / "landiff" / "weights"
    (tmp_path / "ckpts" / "LanDiff").mkdir(parents=True)
    assert weights_root() == tmp_path / "ckpts"
    monkeypatch.setenv("LANDIFF_HOME", str(tmp_path / "elsewhere"))
    assert weights_root() == tmp_path / "elsewhere"
    assert [place.chosen for place in root_candidates()] == [True, False, False]
    assert [place.applies for place in root_candidates()] == [True, True, True]
    capsys.readouterr()
    assert main(["weights", "status", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [place["path"] for place in report["looked"]] == [
        str(tmp_path / "elsewhere"),
        str(tmp_path / "ckpts"),
        str(tmp_path / "xdg" / "landiff" / "weights"),
    ]
    assert {f["state"] for f in report["files"]} == {"missing"}
    assert main(["weights", "status"]) == 1
    text = capsys.readouterr().out
    assert f"{tmp_path / 'elsewhere'} (used)" in text and f"{tmp_path / 'ckpts'} (outranked)" in text


@pytest.mark.timeout(60)
def test_the_weights_root_moves_with_landiff_data_dir(tmp_path, monkeypatch, capsys):
    """Issue 26, point 6: the default root is weights/ in the data dir, which honours LANDIFF_DATA_DIR (a
    data dir moved to a big disk takes the 25 GB with it), after $LANDIFF_HOME and ./ckpts as before."""
    from engine.cli.main import main
    from engine.weights.layout import layout_for, root_candidates, weights_root

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LANDIFF_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    big = tmp_path / "big-disk" / "landiff"
    monkeypatch.setenv("LANDIFF_DATA_DIR", str(big))
    assert weights_root() == big / "weights"
    assert layout_for("tiny").root == big / "weights" / "tiny"
    last = root_candidates()[-1]
    assert last.chosen and last.path == big / "weights" and "$LANDIFF_DATA_DIR" in last.rule
    capsys.readouterr()
    assert main(["weights", "status", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["root"] == str(big / "weights")
    assert [place["path"] for place in report["looked"]] == [
        None,
        str(tmp_path / "ckpts"),
        str(big / "weights"),
    ]
    assert main(["weights", "status"]) == 1
    assert f"$LANDIFF_DATA_DIR: {big / 'weights'} (used)" in capsys.readouterr().out
    assert not (tmp_path / "xdg").exists()  # nothing looked for, let alone put, in the home's data dir
    (tmp_path / "ckpts" / "LanDiff").mkdir(parents=True)  # the documented order holds
    assert weights_root() == tmp_path / "ckpts"
    monkeypatch.setenv("LANDIFF_HOME", str(tmp_path / "elsewhere"))
    assert weights_root() == tmp_path / "elsewhere"
    monkeypatch.delenv("LANDIFF_HOME")
    (tmp_path / "ckpts" / "LanDiff").rmdir()
    monkeypatch.setenv("LANDIFF_DATA_DIR", "")  # empty counts as unset: the user data dir
    assert weights_root() == tmp_path / "xdg" / "landiff" / "weights"
    assert root_candidates()[-1].rule == "weights/ in the user data dir"


@pytest.mark.timeout(120)
def test_generating_the_tiny_weights_writes_only_what_lacks_and_says_so(tmp_path):
    """Issue 26, point 12: the tiny model's "download" rewrites nothing when all is there and checks out,
    writes only the missing or damaged files otherwise, and never reports anything as fetched."""
    from safetensors.torch import load_file

    from engine.daemon.weights_jobs import generated_words
    from engine.daemon.weights_ops import WeightsOperations
    from engine.protocol import DownloadFinishedEvent
    from engine.weights.downloads import read_checksums
    from engine.weights.layout import TINY_CHECKSUMS
    from engine.weights.tiny import tiny_file_names

    events: list = []
    ops = WeightsOperations("tiny", tmp_path, events.append)
    root = ops.root()

    def generate() -> DownloadFinishedEvent:
        events.clear()
        assert ops.start("download", "all").generated
        assert ops.job is not None
        ops.job.join(90)
        assert not ops.job.is_alive()
        (finished,) = [event for event in events if isinstance(event, DownloadFinishedEvent)]
        assert (
            finished.generated
            and finished.fetched == []
            and finished.refetched == [] == list(finished.failed)
        )
        return finished

    def stamps() -> dict[str, tuple[int, int]]:
        return {name: ((root / name).stat().st_ino, (root / name).stat().st_mtime_ns) for name in names}

    names = tiny_file_names()
    first = generate()
    assert first.written == names and first.skipped == 0 and len(names) == 27
    assert generated_words(len(first.written), first.skipped) == "wrote 27 generated files"
    written = {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}
    assert written - {downloads.RECORD} == set(names)  # the list names all it writes; no scratch left
    status = ops.status("all")
    assert status.complete and {file.state for file in status.files} == {"verified"}
    before = stamps()
    llm = load_file(str(root / "LanDiff/llm/model.safetensors"))

    again = generate()
    assert again.written == [] and again.skipped == 27
    assert generated_words(0, again.skipped) == "the tiny model's weights are all there; nothing written"
    assert stamps() == before  # not one file rewritten

    gone = ["LanDiff/llm/model.safetensors", "clip-vit-base-patch32/vocab.json"]
    for name in gone:
        (root / name).unlink()
    damaged = [
        "LanDiff/CogVideoX-2b-sat/vae/3d-vae.pt",
        "flan-t5-xxl/model.safetensors",
    ]  # by MD5, by SHA-256
    for name in damaged:
        data = bytearray((root / name).read_bytes())
        data[-1] ^= 0xFF  # same size, other bytes
        (root / name).write_bytes(bytes(data))
    third = generate()
    assert third.written == sorted([*gone, *damaged, TINY_CHECKSUMS]) and third.skipped == 27 - 5
    assert generated_words(5, third.skipped) == "wrote 5 generated files; 22 already there"
    after = stamps()
    assert {name for name in names if after[name] != before[name]} == set(third.written)
    regenerated = load_file(str(root / "LanDiff/llm/model.safetensors"))
    assert regenerated.keys() == llm.keys() and all(torch.equal(regenerated[k], llm[k]) for k in llm)
    sums = read_checksums(root / TINY_CHECKSUMS)
    assert all(downloads.md5_of(root / "LanDiff" / name) == md5 for name, md5 in sums.items())
    assert all(verify(root, planned_files(root, "all", sums, clip=True)).values())
    assert {file.state for file in ops.status("all").files} == {"verified"}
