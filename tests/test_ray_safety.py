"""`serve --ray` refuses what is unsafe or cannot work, in one line, before it joins: a cluster with Ray's
token authentication off, no token here (or one other users can read), Ray's own resources as
--ray-resource. What an actor streams back is read as checked plain data (ray_actor.pack / ray_pipeline.
read_item), and a dead actor's scratch folders are swept."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.daemon.ray_actor import BadItem, SentFiles, chunk_item, outcome_item, pack, sweep_scratch, unpack
from engine.daemon.ray_pipeline import RemoteFailure, read_item
from tests.harness import WAIT_S, RunningEngine, short_dir

# a head with Ray's authentication off, on loopback, in a folder of its own; prints its address, stops
# when its stdin closes
OPEN_HEAD = """
import sys
from ray.cluster_utils import Cluster
head = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 1, "object_store_memory": 80 * 2**20, "include_dashboard": False,
    "temp_dir": sys.argv[1], "node_ip_address": "127.0.0.1",
})
print(head.address, flush=True)
try:
    sys.stdin.read()
finally:
    head.shutdown()
"""


def serve_ray(engine: RunningEngine, *options: str, env: dict[str, str] | None = None):
    command = [sys.executable, "-m", "engine.cli", "serve", "--model", "tiny", "--ray", *options]
    return subprocess.run(command, env=env or engine.env, capture_output=True, text=True, timeout=WAIT_S)


def token_env(engine: RunningEngine, tmp_path: Path) -> dict[str, str]:
    """The engine's environment with a token of its own, owner-only, and nothing of Ray's elsewhere."""
    env = {name: value for name, value in engine.env.items() if not name.startswith("RAY_")}
    token = tmp_path / "token"
    token.write_text(os.urandom(32).hex())
    token.chmod(0o600)
    (tmp_path / "home").mkdir(exist_ok=True)
    env.update(RAY_AUTH_TOKEN_PATH=str(token), HOME=str(tmp_path / "home"), RAY_USAGE_STATS_ENABLED="0")
    return env


def test_ray_resources_of_rays_own_are_refused_at_start(tmp_path, home):
    engine = RunningEngine(tmp_path, home)
    for resource in ("CPU", "memory", "object_store_memory", "node:127.0.0.1"):
        done = serve_ray(engine, "auto", "--ray-resource", resource)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert f"--ray-resource {resource}: a resource of Ray's own" in done.stderr


def test_serve_ray_needs_the_clusters_token_kept_private(tmp_path, home):
    engine = RunningEngine(tmp_path, home)
    env = token_env(engine, tmp_path)
    missing = {**env, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "absent")}
    done = serve_ray(engine, "127.0.0.1:1", env=missing)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"no Ray token at {tmp_path / 'absent'}" in done.stderr and "chmod 600" in done.stderr
    done = serve_ray(engine, "127.0.0.1:1", env={**env, "RAY_AUTH_MODE": "disabled"})
    assert (
        done.returncode == 2
        and "RAY_AUTH_MODE=disabled" in done.stderr
        and "token authentication" in done.stderr
    )
    (tmp_path / "token").chmod(0o644)
    done = serve_ray(engine, "127.0.0.1:1", env=env)
    assert done.returncode == 2 and "can be read by other users: chmod 600" in done.stderr
    (tmp_path / "token").chmod(0o600)  # the token passes: the closed port is what is refused now
    done = serve_ray(engine, "127.0.0.1:1", env=env)
    assert done.returncode == 2 and "nothing answers there" in done.stderr


def test_serve_ray_refuses_a_cluster_with_authentication_off(tmp_path, home):
    engine = RunningEngine(tmp_path, home)
    env = token_env(engine, tmp_path)
    temp = short_dir()  # Ray's socket paths must fit 107 bytes
    head_env = {
        **env,
        "RAY_AUTH_MODE": "disabled",
        "RAY_TMPDIR": str(temp),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    head = subprocess.Popen(
        [sys.executable, "-c", OPEN_HEAD, str(temp / "ray")],
        env=head_env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        address = head.stdout.readline().strip()
        assert address.startswith("127.0.0.1:"), address
        done = serve_ray(engine, address, env={**env, "RAY_TMPDIR": str(temp)})
    finally:
        head.stdin.close()
        head.wait(WAIT_S)
        shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "has token authentication off" in done.stderr and "RAY_AUTH_MODE=token" in done.stderr
    assert "SIGTERM handler" not in done.stderr + done.stdout


class Stranger:
    """Any class an actor could send pickled: the engine must not take it."""


def test_only_checked_plain_frames_are_read():
    for sent in (Stranger(), {"kind": "progress"}, pickle.dumps(Stranger()), b"", b"\x00\x00\x00\x05{}"):
        with pytest.raises(BadItem):
            read_item(sent)
    with pytest.raises(BadItem, match="kind"):
        read_item(pack("pickle", {}))
    whole = pack("loaded", {"models": ["stage1"], "weight_bytes": 3}, {"extra": b"abc"})
    with pytest.raises(BadItem, match="add up"):
        unpack(whole + b"x")
    with pytest.raises(BadItem, match="weight size"):
        read_item(pack("loaded", {"models": ["stage1"], "weight_bytes": "3"}))
    with pytest.raises(BadItem, match="progress item with bad fields"):
        read_item(pack("progress", {"report": {"stage": "denoise", "step": "one"}}))
    loaded = read_item(pack("loaded", {"models": ["stage1", "stage2"], "weight_bytes": 7}))
    assert (loaded.models, loaded.weight_bytes) == (["stage1", "stage2"], 7)


def test_a_chunk_and_an_outcome_come_back_as_the_engines_own_objects():
    from engine.generation.job import ChunkDone, JobResult
    from engine.protocol import ChunkReport, ChunkTiming

    frame = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    report = ChunkReport(
        index=0, chunks=1, first_frame=0, last_frame=8, frames_written=9, video_seconds=1.1, timings_s={}
    )
    timing = ChunkTiming(index=0, denoise_s=1.0, decode_s=0.5, write_s=0.1)
    done = ChunkDone(report, timing, frame[None], Path("/far/video.partial.mp4"))
    chunk = read_item(chunk_item(done, b"video bytes"))
    assert chunk.video_tail == b"video bytes" and chunk.done.report == report
    assert chunk.done.preview.tolist() == frame.tolist()
    bad = chunk_item(done, b"").replace(b"[4, 6, 3]", b"[5, 6, 3]")
    with pytest.raises(BadItem, match="do not match its shape"):
        read_item(bad)
    result = JobResult(Path("/far/v.mp4"), Path("/far/v.npy"), Path("/far/v.json"), Path("/far/v.png"), fps=8)
    digest = hashlib.sha256(b"video").hexdigest()
    files = SentFiles(result, b"tokens", b"png", {"job": {}}, digest, 5)
    outcome = read_item(outcome_item("finished", files))
    assert outcome.status == "finished" and outcome.files == files
    with pytest.raises(BadItem, match="SHA-256"):
        read_item(outcome_item("finished", SentFiles(result, b"", b"", {}, "not a hash", 5)))
    failed = read_item(outcome_item("failed", error=ZeroDivisionError("division by zero")))
    assert isinstance(failed.error, RemoteFailure) and type(failed.error).__name__ == "ZeroDivisionError"
    refused = read_item(outcome_item("failed", error=ValueError("prompt too long")))
    assert type(refused.error) is ValueError and str(refused.error) == "prompt too long"


def test_scratch_folders_of_dead_actors_are_swept(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    gone = tmp_path / f"landiff-ray-job-{dead_pid}-abc"
    alive = tmp_path / f"landiff-ray-job-{os.getpid()}-abc"
    other = tmp_path / "landiff-ray-job-notapid"
    for folder in (gone, alive, other):
        (folder / "inner").mkdir(parents=True)
    assert sweep_scratch(tmp_path) == [gone]
    assert not gone.exists() and alive.exists() and other.exists()
    assert sweep_scratch(tmp_path, dead_only=False, pid=os.getpid()) == [alive]
    assert sorted(path.name for path in tmp_path.iterdir()) == [other.name]


def test_a_nodes_weights_report_is_read_as_checked_data():
    """What a node says of its weights fetch (ray_actor.fetch_weights) is plain JSON, checked field by
    field; a node of another landiff version is refused whatever it says it did."""
    from engine.daemon.ray_pipeline import fetch_words, read_fetch_report

    report = {
        "ip": "10.0.0.2",
        "landiff": "1.0",
        "python": "3.12.1",
        "root": "/w/tiny",
        "outcome": "generated",
    }
    report.update(fetched=0, written=17, kept=3, failed={}, error="")
    read = read_fetch_report(json.dumps(report).encode())
    assert fetch_words(read, "1.0") == "generated 17 file(s), 3 already there -> /w/tiny"
    assert fetch_words(read, "1.1").startswith("refused: it runs landiff 1.0, the engine 1.1: pip install")
    for bad in (
        {**report, "written": -1},
        {**report, "written": "17"},
        {**report, "outcome": "pwned"},
        {**report, "failed": {"a": 1}},
        {key: value for key, value in report.items() if key != "root"},
        [report],
    ):
        with pytest.raises(BadItem):
            read_fetch_report(json.dumps(bad).encode())
    with pytest.raises(BadItem):
        read_fetch_report(pickle.dumps(report))
    item = read_item(pack("weights", {"report": json.dumps(report)}))
    assert item == read
