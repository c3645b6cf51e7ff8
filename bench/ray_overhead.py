"""What a job costs on a Ray actor (serve --ray) beside the same job in this process: tiny model, CPU.

    python bench/ray_overhead.py                      # 8 steps, 25 frames, 3 runs each after a warm one
    python bench/ray_overhead.py --steps 20 --frames 49 --repeats 5

Starts a one-node Ray cluster on the loopback interface (a custom resource stands in for a GPU), one actor
on it as `serve --ray` makes them, and the same warm pipeline here; they take turns. Columns: the median wall
time of a job, the median of its own stage timings (what the pipeline measured inside), and the difference:
what going through Ray adds (the stream of events and the files sent back), apart from the job's compute
running in another process. Both single-threaded. Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray loads: 127.0.0.1 stays the nodes' address
os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"  # no Ray started behind our back by a call after the shutdown
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [sys.path[0], os.environ.get("PYTHONPATH")]))

import ray  # noqa: E402
import torch  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from engine.daemon.ray_pipeline import RemotePipeline, actor_class, control  # noqa: E402
from engine.generation.job import JobSpec  # noqa: E402
from engine.generation.pipeline import Pipeline  # noqa: E402
from engine.specs import get_spec  # noqa: E402
from engine.weights.layout import layout_for  # noqa: E402
from engine.weights.tiny import ensure_tiny_release  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "weights"
        ensure_tiny_release(layout_for("tiny", root), get_spec("tiny"))
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "object_store_memory": 80 * 2**20,
                "include_dashboard": False,
                "node_ip_address": "127.0.0.1",
                "resources": {"bench_gpu": 1},
            },
        )
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            actor = actor_class().options(resources={"bench_gpu": 1}).remote("tiny", str(root), {})
            ray.get(control(actor.ready).remote())
            pipelines = {"here": Pipeline.for_model("tiny", root), "ray actor": RemotePipeline(actor, "b")}
            params = {"prompt": "A snail on moss.", "steps": args.steps, "frames": args.frames}
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in pipelines}
            for pipeline in pipelines.values():
                run_job(pipeline, params, Path(scratch))  # loads the models
            for _ in range(args.repeats):
                for name, pipeline in pipelines.items():
                    runs[name].append(run_job(pipeline, params, Path(scratch)))
        finally:
            ray.shutdown()
            cluster.shutdown()
    print(f"tiny, {args.steps} steps, {args.frames} frames, median of {args.repeats} after a warm run")
    print(f"{'where':<10} {'job wall':>10} {'its stages':>11} {'difference':>11}")
    for name, times in runs.items():
        wall = statistics.median(wall for wall, _ in times)
        stages = statistics.median(stages for _, stages in times)
        print(f"{name:<10} {wall:>9.2f}s {stages:>10.2f}s {wall - stages:>10.3f}s")


def run_job(pipeline, params: dict, scratch: Path) -> tuple[float, float]:
    """(wall seconds, the sum of the job's own stage timings) of one job."""
    out = Path(tempfile.mkdtemp(dir=scratch)) / "video.mp4"
    started = time.perf_counter()
    result = pipeline.run(JobSpec.from_params(params, out=out))
    return time.perf_counter() - started, sum(result.timings_s.values())


if __name__ == "__main__":
    main()
