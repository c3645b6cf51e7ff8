"""`landiff-engine verify`: a job's tokens (and frames) made again from its record and their hashes compared
with the recorded ones (engine/generation/verify.py), on the tiny model on the CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from engine.cli.main import main
from engine.generation import verify
from engine.generation.job import JobSpec
from engine.generation.resume import Checkpoints, load_or_none

PROMPT = "A kingfisher diving into a clear stream."


@pytest.fixture(autouse=True)
def places(tmp_path_factory, monkeypatch):
    """The weights' checksum cache and the job history of the test, not the user's."""
    base = tmp_path_factory.mktemp("places")
    monkeypatch.setenv("LANDIFF_CACHE_DIR", str(base / "cache"))
    monkeypatch.setenv("LANDIFF_DATA_DIR", str(base / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def made(home, tmp_path_factory) -> Path:
    """A `generate` of the tiny model (2 steps): its record's path."""
    out = tmp_path_factory.mktemp("made") / "kingfisher.mp4"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LANDIFF_CACHE_DIR", str(out.parent / "cache"))
        patch.setenv("LANDIFF_DATA_DIR", str(out.parent / "data"))
        args = ["generate", PROMPT, "--model", "tiny", "--ckpts", str(home), "--out", str(out)]
        assert main([*args, "--steps", "2", "--seed", "5"]) == 0
    return out.with_suffix(".json")


def edited(record_path: Path, to: Path, edit) -> Path:
    record = json.loads(record_path.read_text())
    edit(record)
    to.write_text(json.dumps(record))
    return to


def test_the_record_holds_the_environment_and_the_hashes(made):
    record = json.loads(made.read_text())
    env = record["environment"]
    assert env["torch"] and env["python"] and env["numpy"] and env["cuda"] is None and env["gpu"] is None
    assert env["deterministic_algorithms"] is False and "tf32_matmul" in env
    assert "dit" in record and "memory" in record and "engine_version" not in env  # not recorded twice
    hashes = record["hashes"]
    assert hashes["tokens_sha256"] == verify.tokens_sha256(__import__("numpy").load(made.with_suffix(".npy")))
    assert len(hashes["frames_sha256"]) == record["chunks"]["done"] == 1


def test_a_generated_video_verifies_in_full(made, capsys):
    assert main(["verify", str(made), "--full"]) == 0
    out, err = capsys.readouterr()
    assert "in this process (not through the engine)" in err
    assert "weights   same (17 file(s))" in out
    assert "tokens    match" in out and "frames    match" in out and "reproduced on cpu" in out


def test_a_record_whose_tokens_hash_differs_says_so_and_what_else_differs(made, tmp_path, capsys):
    def edit(record):
        record["hashes"]["tokens_sha256"] = "0" * 64
        record["environment"]["torch"] = "2.5.1+cu124"
        record["environment"]["gpu"] = "NVIDIA H100 80GB HBM3"

    path = edited(made, tmp_path / "edited.json", edit)
    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "tokens    DIFFER recorded 000000000000" in out
    assert "likely causes, recorded -> now:" in out
    lines = out.splitlines()
    assert any(line.split() == ["torch", "2.5.1+cu124", "->", verify.torch.__version__] for line in lines)
    assert any(line.split()[:1] == ["gpu"] and line.endswith("-> not recorded") for line in lines)
    assert not any(line.split()[:1] == ["numpy"] for line in lines)  # only what differs


def test_frames_that_differ_name_the_first_chunk(made, tmp_path, capsys):
    path = edited(
        made, tmp_path / "edited.json", lambda r: r["hashes"]["frames_sha256"].__setitem__(0, "f" * 64)
    )
    assert main(["verify", str(path), "--full", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    tokens, frames = report["checks"]
    assert tokens["outcome"] == "match" and frames["outcome"] == "differ" and not report["matched"]
    assert frames["note"].startswith("chunk 1 of 1 is the first that differs")


def test_changed_weights_are_named_before_the_run(made, home, tmp_path, capsys):
    copy = tmp_path / "weights"
    shutil.copytree(home, copy)
    llm = copy / "tiny" / "LanDiff" / "llm" / "model.safetensors"
    tensors = load_file(llm)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, llm)
    assert main(["verify", str(made), "--ckpts", str(copy)]) == 1
    out, err = capsys.readouterr()
    said = err.splitlines()
    assert "weights differ: LanDiff/llm/model.safetensors" in said
    assert said.index("weights differ: LanDiff/llm/model.safetensors") < said.index(
        "making the tokens again on cpu (stage 1)"
    )
    assert "weights   differ: 1 of 17 file(s)" in out and "tokens    DIFFER" in out
    assert "likely cause: the weights above differ from the job's" in out


def test_refusals_are_one_line(made, home, tmp_path, capsys):
    old = edited(made, tmp_path / "old.json", lambda record: record.pop("hashes"))
    assert main(["verify", str(old)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"landiff-engine verify: {verify.PREDATES}"
    assert main(["verify", str(made), "--ckpts", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("landiff-engine verify: the tiny weights are absent from ") and "fetches" in err


def test_a_job_of_the_engines_history_verifies(made, capsys):
    from engine import __version__
    from engine.daemon.store import Store
    from engine.paths import database_path

    store = Store(database_path())
    row = store.add_job({"prompt": PROMPT, "steps": 2, "seed": 5}, "tiny", __version__)
    store.update(row.id, status="finished", sidecar_path=str(made))
    store.engine.dispose()
    assert main(["verify", row.id[:6]]) == 0
    assert f"verifying {made} here" in capsys.readouterr().err
    queued = Store(database_path()).add_job({"prompt": PROMPT}, "tiny", __version__)
    assert main(["verify", queued.id]) == 2
    assert "has no record to verify (queued)" in capsys.readouterr().err


def test_a_resumed_job_records_every_chunks_frames(pipeline, tmp_path):
    """A job resumed after its first chunk records the hashes an uninterrupted run records."""
    two_chunks = {"steps": 2, "frames": 17, "seed": 3}
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    def snapshot(done) -> None:
        if done.report.index == 0:
            shutil.copytree(whole, killed)

    first = pipeline.run(
        JobSpec(PROMPT, whole / "video.mp4", **two_chunks), on_chunk=snapshot, checkpoints=Checkpoints(whole)
    )
    job = JobSpec(PROMPT, killed / "video.mp4", **two_chunks)
    start = load_or_none(killed, job, "tiny", "cpu", "the test job")
    assert start is not None and start.chunks_done == 1
    resumed = pipeline.run(job, checkpoints=Checkpoints(killed, start))
    hashes = json.loads(resumed.sidecar.read_text())["hashes"]
    assert len(hashes["frames_sha256"]) == 2
    assert hashes == json.loads(first.sidecar.read_text())["hashes"]
