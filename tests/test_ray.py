"""`serve --ray`: a real engine whose workers are Ray actors on a local cluster (a head and two worker nodes
in processes of their own; a custom resource stands in for the GPUs, the head has none), driven through its
socket. One cluster and one engine for the module, so the tests run in order: four jobs across both workers,
a cancel, a node killed mid-job, a node that joins, actors that die idle and busy. The cluster has Ray's token
authentication on (the engine joins no other): a node without the token is refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from ray.cluster_utils import Cluster  # the test extra installs ray: its absence is an error, not a skip

from engine.generation.video import read_mp4
from tests.harness import PROMPT, ROOT, WAIT_S, RunningEngine, short_dir, wait_for

RESOURCE = "landiff_gpu"
LOOPBACK = "127.0.0.1"  # the test cluster listens on no network interface
NODE = {
    "num_cpus": 1,
    "object_store_memory": 80 * 2**20,
    "resources": {RESOURCE: 1},
    "node_ip_address": LOOPBACK,
}
FINAL = ("job_finished", "job_failed", "job_cancelled", "job_interrupted")
SCRATCH: list[Path] = []  # the folder the cluster's processes take as TMPDIR: the actors' job scratch folders
# a node of someone who lacks the cluster's token, offering the engine's resource (Ray's own node start, as
# ray.cluster_utils adds a node); prints "refused ..." or "joined"
INTRUDER = """
import sys
import ray._private.node
from ray._private.parameter import RayParams
params = RayParams(
    gcs_address=sys.argv[1], node_ip_address="127.0.0.1", num_cpus=1, num_gpus=0,
    resources={"landiff_gpu": 1}, object_store_memory=80 * 2**20, include_log_monitor=False,
    node_manager_port=0, min_worker_port=0, max_worker_port=0, temp_dir=sys.argv[2],
)
params.dashboard_agent_listen_port = None
try:
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
except Exception as error:
    print("refused", type(error).__name__, flush=True)
    sys.exit(3)
print("joined", flush=True)
sys.stdin.read()
"""


def refresh_ray_config() -> None:
    """This process's Ray reads RAY_AUTH_MODE and the token when it is imported: again, after a change."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


class RayEngine(RunningEngine):
    """An engine started with `serve --ray ADDRESS --ray-resource landiff_gpu` on the tiny model."""

    def __init__(self, base: Path, weights: Path, address: str, resource: str = RESOURCE):
        serve_args = ("--ckpts", str(weights), "--ray", address, "--ray-resource", resource)
        super().__init__(base, weights, serve_args)
        self.address = address

    def workers(self) -> list[dict]:
        with self.client() as client:
            return client.request("status")["workers"]

    def wait_for_workers(self, count: int, timeout: float = WAIT_S) -> list[dict]:
        # an actor is ready once its process has imported torch and the pipeline's code: about 10 s of CPU
        # on a quiet 2-core box, over 90 s with the other test process and one busy core beside it
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = self.workers()
            if len(workers) == count:
                return workers
            time.sleep(0.5)
        raise AssertionError(f"{count} workers expected, status lists {self.workers()}")


@pytest.fixture(scope="module")
def cluster():
    """A head (no landiff_gpu) and two worker nodes with one landiff_gpu each. Their processes get the
    environment set here: the engine's code importable, nothing from the network, every file Ray writes
    (its address file, sessions, sockets) in a folder of its own that goes with the cluster, Ray's token
    authentication on with a token file of its own (the engine inherits the variables), and a TMPDIR of its
    own (where the actors make their job scratch folders)."""
    temp = short_dir()  # short: Ray's socket paths under it must fit 107 bytes
    local = None
    tempfile.gettempdir()  # this process keeps its own, whatever TMPDIR says from here on
    with pytest.MonkeyPatch.context() as patch:  # undone however the set-up ends
        try:
            (temp / "tmp").mkdir(parents=True)
            token = temp / "token"
            token.write_text(os.urandom(32).hex())
            token.chmod(0o600)
            patch.setenv("RAY_AUTH_MODE", "token")
            patch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
            patch.delenv("RAY_AUTH_TOKEN", raising=False)
            patch.setenv("TMPDIR", str(temp / "tmp"))
            SCRATCH[:] = [temp / "tmp"]
            refresh_ray_config()
            patch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
            patch.setenv("HF_HUB_OFFLINE", "1")
            patch.setenv("LANDIFF_CACHE_DIR", str(temp / "cache"))
            patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
            # Ray's default folder ($RAY_TMPDIR/ray) holds the address file a cluster writes for ray.init:
            # the same folder as the nodes' temp_dir, never a /tmp/ray shared with other runs
            patch.setenv("RAY_TMPDIR", str(temp))
            # the nodes' processes and the engine (which inherits this) take the loopback address as their
            # own, as a one-box cluster does by default on macOS and Windows, instead of rewriting 127.0.0.1
            # to this box's IP
            patch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            started = time.monotonic()
            local = Cluster(
                initialize_head=True,
                head_node_args={
                    "num_cpus": 1,
                    "object_store_memory": 80 * 2**20,
                    "include_dashboard": False,
                    "temp_dir": str(temp / "ray"),
                    "node_ip_address": LOOPBACK,
                },
            )
            nodes = [local.add_node(wait=False, **NODE) for _ in range(2)]  # they start side by side
            local.wait_for_nodes()
            assert local.address.startswith(f"{LOOPBACK}:")
            print(f"cluster up in {time.monotonic() - started:.1f} s")
            yield local, nodes
        finally:
            if local is not None:
                local.shutdown()
            shutil.rmtree(temp, ignore_errors=True)
    refresh_ray_config()


@pytest.fixture(scope="module")
def engine(cluster, tmp_path_factory, home):
    local, _ = cluster
    running = RayEngine(tmp_path_factory.mktemp("ray-engine"), home, local.address).start()
    yield running
    running.stop()


def node_label(node) -> str:
    """The label prefix of the workers on a cluster node (ray_workers: ray:<node id[:8]>:<slot>)."""
    return f"ray:{node.node_id[:8]}:"


def job_events(client, job_ids: set[str]) -> dict[str, list[dict]]:
    """Every event of these jobs until each has ended."""
    seen: dict[str, list[dict]] = {job_id: [] for job_id in job_ids}
    open_jobs = set(job_ids)
    for event in client.events():
        if event.get("job_id") in seen:
            seen[event["job_id"]].append(event)
            if event["event"] in FINAL:
                open_jobs.discard(event["job_id"])
                if not open_jobs:
                    break
    return seen


def subscribed(engine: RayEngine):
    client = engine.client()
    client.request("hello", client="tests")
    client.request("subscribe", since=client.request("status")["seq"])
    return client


def test_four_jobs_run_across_both_workers_with_live_progress(engine, cluster):
    _, nodes = cluster
    workers = engine.wait_for_workers(2)
    assert {worker["label"][:-1] for worker in workers} == {node_label(node) for node in nodes}
    with subscribed(engine) as client:
        ids = [
            client.request("submit", params={"prompt": f"{PROMPT} {n}", "steps": 4, "seed": n})["job_id"]
            for n in range(4)
        ]
        events = job_events(client, set(ids))
        rows = [client.request("get_job", job_id=job_id)["job"] for job_id in ids]
    assert [row["status"] for row in rows] == ["finished"] * 4, [row["error"] for row in rows]
    assert len({row["worker"] for row in rows}) == 2  # both workers ran jobs
    for job_id, row in zip(ids, rows, strict=True):
        kinds = [event["event"] for event in events[job_id] if event["event"] != "job_quality"]
        assert kinds[:2] == ["job_queued", "job_started"] and kinds[-1] == "job_finished"
        stages = [event["stage"] for event in events[job_id] if event["event"] == "job_progress"]
        assert stages.index("tokens") < stages.index("denoise") < stages.index("decode")
        chunk = next(event for event in events[job_id] if event["event"] == "chunk_finished")
        assert Path(chunk["preview"]).is_file() and chunk["preview"].startswith(str(engine.base))
        # the files came back into the engine's own outputs folder, complete
        video = Path(row["video_path"])
        assert video.parent == engine.base / "data" / "outputs" / job_id
        frames, fps = read_mp4(video)
        assert frames.shape == (9, 64, 96, 3) and fps == 8
        record = json.loads(Path(row["sidecar_path"]).read_text())
        assert record["job"]["out"] == str(video) and record["tokens_path"] == row["tokens_path"]
        assert record["worker"] == row["worker"] and row["weights_sha256"]
        assert Path(row["thumbnail_path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not [path for path in video.parent.iterdir() if ".partial" in path.name]
    assert rows[0]["weights_sha256"] == rows[1]["weights_sha256"]  # the same tiny weights on every box
    # each actor keeps its models warm, and the engine's status says so
    assert [worker["models_loaded"] for worker in engine.workers()] == [["stage1", "stage2"]] * 2


def test_a_cancel_stops_a_running_remote_job(engine):
    with subscribed(engine) as client:
        job_id = client.request("submit", params={"prompt": PROMPT, "steps": 1000})["job_id"]
        for event in client.events():
            if event.get("job_id") == job_id and event.get("stage") == "denoise":
                break
        assert client.request("cancel", job_id=job_id)["status"] == "cancelling"
        events = wait_for(client, job_id, FINAL)
        row = client.request("get_job", job_id=job_id)["job"]
    assert events[-1]["event"] == "job_cancelled" and row["status"] == "cancelled"
    steps = [event["step"] for event in events if event.get("stage") == "denoise"]
    assert max(steps, default=0) < 1000  # stopped between steps, not run to its end
    assert not (engine.base / "data" / "outputs" / job_id).exists()
    engine.wait_for_workers(2)  # both workers stay, and take the next jobs


def wait_until(check, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.5)
    raise AssertionError(f"waited {timeout:g} s for {what}")


def scratch_folders() -> list[Path]:
    return sorted(SCRATCH[0].glob("landiff-ray-job-*"))


def actor_pids() -> list[int]:
    """The processes of this module's cluster's PipelineHost actors (by their TMPDIR: other runs' differ)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if command.startswith(b"ray::PipelineHost") and f"TMPDIR={SCRATCH[0]}".encode() in environ:
            pids.append(int(entry.name))
    return pids


def test_a_node_without_the_cluster_token_is_refused(engine, cluster):
    """Someone on the box (another user) without the token starts a node offering the engine's resource:
    the cluster refuses it, and the engine's workers stay its own."""
    local, _ = cluster
    before = sorted(worker["label"] for worker in engine.workers())
    env = {name: value for name, value in os.environ.items() if not name.startswith("RAY_AUTH")}
    home = SCRATCH[0] / "intruder"
    home.mkdir()
    env.update(RAY_AUTH_MODE="disabled", HOME=str(home))  # no token in any of Ray's places
    env["RAY_NUM_REDIS_GET_RETRIES"] = "3"  # it gives up after 3 refusals, not Ray's 20 (a second each)
    command = [sys.executable, "-c", INTRUDER, local.address, str(home / "ray")]
    intruder = subprocess.Popen(
        command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        said = intruder.stdout.readline()
    finally:
        intruder.stdin.close()  # a node that joined leaves
        errors = intruder.stderr.read()
        intruder.wait(WAIT_S)
    assert said.startswith("refused") and intruder.returncode == 3, (said, errors[-2000:])
    assert "Authentication token is missing or incorrect" in errors
    assert sorted(worker["label"] for worker in engine.workers()) == before


def test_an_actor_that_dies_idle_is_replaced_before_any_job(engine):
    """Ray's own signal (the actor's pending watch call fails) takes its worker out and starts another on
    its node: no job is spent finding out."""
    before = {worker["label"] for worker in engine.wait_for_workers(2)}
    pids = actor_pids()
    assert len(pids) == 2, pids
    os.kill(pids[0], signal.SIGKILL)

    def replaced():
        labels = {worker["label"] for worker in engine.workers()}
        return len(labels) == 2 and len(labels & before) == 1 and labels

    after = wait_until(replaced, "a new worker in place of the killed actor's")
    (gone,) = before - after
    (new,) = after - before
    assert new.rsplit(":", 1)[0] == gone.rsplit(":", 1)[0]  # on the same node, the next slot
    assert "its Ray actor died" in engine.stderr.read_text()
    with subscribed(engine) as client:
        job_id = client.request("submit", params={"prompt": PROMPT, "steps": 2})["job_id"]
        kinds = [event["event"] for event in wait_for(client, job_id, FINAL)]
        row = client.request("get_job", job_id=job_id)["job"]
    assert kinds[-1] == "job_finished" and row["requeues"] == 0


def test_an_actor_killed_mid_job_leaves_no_scratch_folder(engine):
    """Its job goes back to the queue once; the folder it rendered in goes when the next actor starts on the
    box (its process is gone: the folder is named after it)."""
    engine.wait_for_workers(2)
    before = set(scratch_folders())  # an earlier test's job may still be leaving its own
    with subscribed(engine) as client:
        job_id = client.request("submit", params={"prompt": PROMPT, "steps": 1000})["job_id"]
        seen = []
        for event in client.events():
            if event.get("job_id") == job_id:
                seen.append(event)
                if event.get("stage") == "denoise":
                    break
        (folder,) = set(scratch_folders()) - before
        pid = int(folder.name.split("-")[3])
        os.kill(pid, signal.SIGKILL)
        requeued = False
        for event in client.events():  # until it runs again, on the other worker
            if event.get("job_id") == job_id:
                seen.append(event)
                requeued = requeued or event["event"] == "job_requeued"
                if event["event"] in FINAL or (requeued and event.get("stage") == "denoise"):
                    break
        client.request("cancel", job_id=job_id)
        seen += wait_for(client, job_id, FINAL)
    kinds = [event["event"] for event in seen]
    assert kinds.count("job_requeued") == 1 and kinds[-1] == "job_cancelled", kinds
    engine.wait_for_workers(2)  # the killed actor's node has a new one, which swept the folder
    wait_until(lambda: not folder.exists(), f"{folder} to go")


def test_a_cluster_without_the_resource_says_so(cluster, tmp_path, home):
    """`--ray-resource` that no node offers: no worker, and the log says why queued jobs wait."""
    local, _ = cluster
    idle = RayEngine(tmp_path, home, local.address, resource="landiff_none").start()
    try:
        wait_until(lambda: "offer no landiff_none" in idle.stderr.read_text(), "the log to say it")
        with idle.client() as client:
            job_id = client.request("submit", params={"prompt": PROMPT, "steps": 2})["job_id"]
            status = client.request("status")
        assert status["workers"] == [] and status["queue"] == [job_id]
        assert status["no_worker"].startswith("the Ray cluster offers no landiff_none: queued jobs wait")
    finally:
        idle.stop()
    assert idle.stderr.read_text().count("offer no landiff_none") == 1  # said once, not every second


def test_a_node_killed_mid_job_requeues_its_job_on_the_other_worker(engine, cluster):
    local, nodes = cluster
    with subscribed(engine) as client:
        job_id = client.request("submit", params={"prompt": PROMPT, "steps": 60})["job_id"]
        seen = []
        for event in client.events():
            if event.get("job_id") == job_id:
                seen.append(event)
                if event.get("stage") == "denoise":
                    break
        first = next(event for event in seen if event["event"] == "job_started")["worker"]
        doomed = next(node for node in nodes if first.startswith(node_label(node)))
        local.remove_node(doomed)
        seen += wait_for(client, job_id, ("job_finished", "job_failed", "job_interrupted"))
        row = client.request("get_job", job_id=job_id)["job"]
    kinds = [event["event"] for event in seen]
    assert kinds.count("job_requeued") == 1 and kinds.count("job_started") == 2, kinds
    assert kinds.count("job_finished") == 1 and kinds[-1] == "job_finished"
    restarted = [event for event in seen if event["event"] == "job_started"][1]
    assert restarted["worker"] != first and row["worker"] == restarted["worker"]
    assert row["status"] == "finished" and row["requeues"] == 1
    frames, _ = read_mp4(Path(row["video_path"]))
    assert frames.shape[0] == 9
    nodes.remove(doomed)
    assert [worker["label"] for worker in engine.wait_for_workers(1)] == [row["worker"]]


def test_a_node_that_joins_takes_jobs(engine, cluster):
    local, nodes = cluster
    nodes.append(local.add_node(**NODE))
    workers = engine.wait_for_workers(2)
    joined = next(worker["label"] for worker in workers if worker["label"].startswith(node_label(nodes[-1])))
    with subscribed(engine) as client:  # one long job takes a worker; the short one must go to the other
        long = client.request("submit", params={"prompt": PROMPT, "steps": 1000})["job_id"]
        short = client.request("submit", params={"prompt": PROMPT, "steps": 2})["job_id"]
        wait_for(client, short, FINAL)
        client.request("cancel", job_id=long)
        wait_for(client, long, FINAL)
        rows = {job_id: client.request("get_job", job_id=job_id)["job"] for job_id in (long, short)}
    assert rows[short]["status"] == "finished"
    assert joined in {rows[long]["worker"], rows[short]["worker"]}


def test_a_node_that_leaves_idle_takes_no_job_with_it(engine, cluster):
    local, nodes = cluster
    leaving = nodes.pop()
    local.remove_node(leaving)
    (staying,) = engine.wait_for_workers(1)
    assert not staying["label"].startswith(node_label(leaving))
    with subscribed(engine) as client:
        job_id = client.request("submit", params={"prompt": PROMPT, "steps": 2})["job_id"]
        kinds = [event["event"] for event in wait_for(client, job_id, FINAL)]
        row = client.request("get_job", job_id=job_id)["job"]
    assert "job_requeued" not in kinds and row["status"] == "finished" and row["requeues"] == 0
    assert row["worker"] == staying["label"]


def test_the_engine_leaves_the_cluster_and_stops_cleanly(engine):
    before = set(scratch_folders())  # an earlier test's job may still be leaving its own
    with subscribed(engine) as client:  # a job running as it stops: its actor's scratch folder goes too
        job_id = client.request("submit", params={"prompt": PROMPT, "steps": 1000})["job_id"]
        for event in client.events():
            if event.get("job_id") == job_id and event.get("stage") == "denoise":
                break
    (running,) = set(scratch_folders()) - before
    engine.stop()  # within its own bound (harness.ENGINE_LEAVES_S)
    assert not running.exists()
    assert engine.process.returncode == 0
    log = engine.stderr.read_text()
    assert "engine stopped" in log and "local Ray instance" not in log  # it joins a cluster, never starts one
    assert "token authentication on" in log and "SIGTERM handler" not in log


def test_serve_ray_without_a_cluster_says_so(tmp_path, home):
    engine = RunningEngine(tmp_path, home)
    token = tmp_path / "token"  # the token passes: the closed port is what is refused
    token.write_text("0" * 64)
    token.chmod(0o600)
    engine.env.update(RAY_AUTH_TOKEN_PATH=str(token), RAY_AUTH_MODE="token")
    command = [sys.executable, "-m", "engine.cli", "serve", "--model", "tiny", "--ray", "127.0.0.1:1"]
    done = subprocess.run(command, env=engine.env, capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--ray 127.0.0.1:1: nothing answers there" in done.stderr
    assert "ray start --head" in done.stderr
    both = subprocess.run(
        [*command, "--gpus", "cpu:2"], env=engine.env, capture_output=True, text=True, timeout=WAIT_S
    )
    assert both.returncode == 2 and "--gpus and --ray exclude each other" in both.stderr
    without_ray = "import sys; sys.modules['ray'] = None; from engine.cli.main import main; sys.exit(main())"
    bare = [sys.executable, "-c", without_ray, "serve", "--model", "tiny", "--ray", "auto"]
    missing = subprocess.run(bare, env=engine.env, capture_output=True, text=True, timeout=WAIT_S)
    assert missing.returncode == 2 and "Ray is not installed here; pip install" in missing.stderr


def test_a_video_copy_that_differs_from_the_actors_is_not_kept(tmp_path):
    from engine.daemon.ray_pipeline import VideoMirror

    out = tmp_path / "job" / "video.mp4"
    mirror = VideoMirror(out)
    mirror.append(b"first chunk ")
    mirror.append(b"second chunk")
    assert mirror.partial.read_bytes() == b"first chunk second chunk" and not out.exists()
    with pytest.raises(ValueError, match="differs from its own"):
        mirror.finish(24, hashlib.sha256(b"another video, same size!").hexdigest())
    mirror.abort()
    assert list(out.parent.iterdir()) == []
    kept = VideoMirror(out)
    kept.append(b"the whole video")
    assert kept.finish(15, hashlib.sha256(b"the whole video").hexdigest()) == out
    assert out.read_bytes() == b"the whole video" and list(out.parent.iterdir()) == [out]


def test_files_that_cannot_all_land_leave_none(tmp_path):
    from engine.daemon.ray_actor import SentFiles
    from engine.daemon.ray_pipeline import VideoMirror, land
    from engine.generation.job import JobResult, JobSpec

    job = JobSpec.from_params({"prompt": PROMPT}, out=tmp_path / "job" / "video.mp4")
    mirror = VideoMirror(job.out)
    mirror.append(b"video")
    result = JobResult(
        Path("/far/video.mp4"), Path("/far/video.npy"), Path("/far/video.json"), Path("/far/v.png"), fps=8
    )
    record = {"no job": "a record without its job block cannot be rewritten"}
    files = SentFiles(result, b"tokens", b"png", record, hashlib.sha256(b"video").hexdigest(), 5)
    with pytest.raises(KeyError):
        land(job, files, mirror, "ray:test:0")
    mirror.abort()
    assert list(job.out.parent.iterdir()) == []
    files = SentFiles(result, b"tokens", b"png", {"job": {"out": "/far/video.mp4"}}, files.video_sha256, 5)
    mirror = VideoMirror(job.out)
    mirror.append(b"video")
    landed = land(job, files, mirror, "ray:test:0")
    assert landed.video == job.out and landed.tokens.read_bytes() == b"tokens"
    record = json.loads(landed.sidecar.read_text())
    assert record["job"]["out"] == str(job.out) and record["worker"] == "ray:test:0"
    assert sorted(path.name for path in job.out.parent.iterdir()) == [
        "video.json",
        "video.mp4",
        "video.npy",
        "video.png",
    ]


def test_tokens_made_elsewhere_reach_the_actor_as_a_given_tokens_file(tmp_path):
    """RemotePipeline.run(tokens=...) (the PipelineBackend's LLM-lane entry) sends the codes as the .npy
    a job's given tokens are, which the actor loads as such."""
    import numpy as np

    from engine.daemon.ray_pipeline import npy_bytes
    from engine.generation.outputs import load_tokens

    codes = np.arange(7, dtype=np.int64) * 3
    (tmp_path / "given.npy").write_bytes(npy_bytes(codes))
    assert load_tokens(tmp_path / "given.npy").tolist() == codes.tolist()


EXTRA = "landiff_extra"  # the resource of the nodes the last test adds: the module's engine never uses them
OLD = "0.0.1-old"


def add_node_with(local, env: dict[str, str]):
    """A worker node offering EXTRA, its processes (and so its actors) started with `env` on top."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        return local.add_node(**{**NODE, "resources": {EXTRA: 1}})


class ElsewhereEngine(RayEngine):
    """An engine (and CLI) on the nodes that offer EXTRA, without --ckpts, started in a folder of its own:
    Ray puts its driver's working folder first on its workers' sys.path, which would have every node import
    this checkout's code."""

    def __init__(self, base: Path, weights: Path, address: str):
        RunningEngine.__init__(self, base, weights, ("--ray", address, "--ray-resource", EXTRA))
        self.address = address

    def start(self) -> ElsewhereEngine:
        command = [sys.executable, "-m", "engine.cli", "serve", "--model", "tiny", *self.serve_args]
        self.base.mkdir(parents=True, exist_ok=True)
        self.stderr = self.base / "engine.stderr"
        with open(self.stderr, "ab") as stderr:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=self.base
            )
        line = self.process.stdout.readline()
        assert line.startswith("ready"), self.stderr.read_text()
        return self

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "engine.cli", *args]
        return subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=WAIT_S, cwd=self.base
        )


def test_each_node_runs_the_engines_version_and_makes_its_own_weights(cluster, tmp_path, home):
    """A node whose landiff is another version is not admitted (the log and status say why, and the fix);
    without --ckpts each node finds its weights by its own rules ($LANDIFF_HOME there, not the engine's):
    `weights download --ray` makes them on each node and says so per node, and the first job on a node
    that lacks them makes them there."""
    import engine

    local, _ = cluster
    old_code = tmp_path / "old"  # the engine's code, as another version of it (PYTHONPATH puts it first)
    shutil.copytree(ROOT / "engine", old_code / "engine", ignore=shutil.ignore_patterns("__pycache__"))
    init = old_code / "engine" / "__init__.py"
    ours = f'__version__ = "{engine.__version__}"'
    assert ours in init.read_text()
    init.write_text(init.read_text().replace(ours, f'__version__ = "{OLD}"'))
    python_path = os.pathsep.join([str(old_code), os.environ["PYTHONPATH"]])
    old = add_node_with(local, {"PYTHONPATH": python_path, "LANDIFF_HOME": str(tmp_path / "old-weights")})
    running = ElsewhereEngine(tmp_path / "engine", home, local.address).start()  # no --ckpts
    nodes = [old]
    try:
        refusal = f"Ray node {old.node_id[:8]} ({LOOPBACK}) is not used: it runs landiff {OLD}, the engine "
        wait_until(lambda: refusal in running.stderr.read_text(), "the log to refuse the old node")
        assert f"pip install landiff-tui=={engine.__version__} on that box" in running.stderr.read_text()
        with running.client() as client:
            status = client.request("status")
        assert status["workers"] == [] and status["no_worker"].startswith(refusal), status
        fresh = tmp_path / "fresh-weights"  # this node's own weights root, empty
        nodes.append(add_node_with(local, {"LANDIFF_HOME": str(fresh)}))
        command = ("weights", "download", "--ray", local.address, "--model", "tiny", "--ray-resource", EXTRA)
        done = running.cli(*command)
        lines = sorted(line for line in done.stdout.splitlines() if line.startswith("node "))
        assert done.returncode == 1 and len(lines) == 2, (done.stdout, done.stderr)
        said = {line.split()[1]: line.split(": ", 1)[1] for line in lines}
        assert said[old.node_id[:8]].startswith(f"refused: it runs landiff {OLD}, the engine")
        assert said[nodes[1].node_id[:8]].startswith("generated ")
        assert said[nodes[1].node_id[:8]].endswith(f"-> {fresh / 'tiny'}")
        assert not (tmp_path / "old-weights").exists()  # the refused node fetched nothing
        again = running.cli(*command)
        assert f"node {nodes[1].node_id[:8]} ({LOOPBACK}): ready, all " in again.stdout, again.stdout
        (worker,) = running.wait_for_workers(1)
        assert worker["label"].startswith(node_label(nodes[1]))
        shutil.rmtree(fresh)  # its first job finds no weights: it makes them on its box
        with subscribed(running) as client:
            job_id = client.request("submit", params={"prompt": PROMPT, "steps": 2})["job_id"]
            wait_for(client, job_id, FINAL)
            row = client.request("get_job", job_id=job_id)["job"]
        assert row["status"] == "finished", row["error"]
        assert (fresh / "tiny" / "CHECKSUM.md5").is_file()
        log = running.stderr.read_text()
        assert f"worker {worker['label']}, weights on its node: generated " in log
        assert log.count(refusal) == 1  # said once
    finally:
        running.stop()
        for node in nodes:
            local.remove_node(node)
