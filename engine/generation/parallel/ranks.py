"""Rank 0's side of a parallel group: the engine starts ranks 1..N-1 as child processes, watches them,
rebuilds the group after one is lost, and stops them with itself.

Each helper is `python -m engine.generation.parallel.rank CONFIG`: it loads stage 2 on its device, says
it is ready in the rendezvous file (in the engine's private runtime dir, nothing on a network interface)
and joins the group. A helper dies with the engine (PR_SET_PDEATHSIG, and a watch on its parent).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from engine.generation.parallel.group import ParallelGroup, RankLost
from engine.generation.parallel.network import attach
from engine.generation.parallel.plan import ParallelPlan
from engine.generation.pipeline import Pipeline
from engine.generation.speed import DiTOptions
from engine.generation.stage1 import default_dtype
from engine.generation.stage2 import VideoStage
from engine.paths import rendezvous_path
from engine.specs import get_spec
from engine.weights.downloads import refuse_failed
from engine.weights.layout import layout_for
from engine.weights.loading import load_control_dit, load_diffusion_semantic_decoder

log = logging.getLogger(__name__)
START_TIMEOUT_S = 1800.0  # a helper loading full-size weights from a slow disk
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RankConfig:
    """What a helper rank is told on its command line (JSON)."""

    model: str
    ckpts: str | None
    dit: dict
    cfg: int
    seq: int
    rank: int
    device: str
    rendezvous: str
    parent: int
    threads: int


def torch_device(label: str) -> torch.device:
    """A device label of the engine's ("cpu", "cpu:1", "cuda:2") as torch names it."""
    return torch.device("cpu") if label.startswith("cpu") else torch.device(label)


class Ranks:
    """The helpers of one group (devices[1:]), started, watched and stopped from rank 0's process."""

    def __init__(
        self,
        plan: ParallelPlan,
        devices: list[str],
        model: str,
        ckpts: Path | None,
        dit: DiTOptions,
        folder: Path,
    ):
        if len(devices) != plan.size:
            raise ValueError(f"a {plan.text()} group takes {plan.size} devices, got {devices}")
        self.plan, self.devices, self.model, self.ckpts = plan, devices, model, ckpts
        self.dit, self.folder = dit, folder
        self.processes: dict[int, subprocess.Popen] = {}
        self.rendezvous: Path | None = None
        self.store: dist.Store | None = None
        self.group: ParallelGroup | None = None

    def start(self) -> None:
        """Start the helpers (they load their models while rank 0 goes on)."""
        self.rendezvous = rendezvous_path(self.folder, os.getpid(), uuid.uuid4().hex[:12])
        threads = torch.get_num_threads()  # some CPU kernels round by thread count: same as rank 0
        for rank in range(1, self.plan.size):
            config = RankConfig(
                self.model,
                None if self.ckpts is None else str(self.ckpts),
                {k: v for k, v in asdict(self.dit).items()},
                self.plan.cfg,
                self.plan.seq,
                rank,
                self.devices[rank],
                str(self.rendezvous),
                os.getpid(),
                threads,
            )
            command = [sys.executable, "-m", "engine.generation.parallel.rank", json.dumps(asdict(config))]
            self.processes[rank] = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        self.store = dist.FileStore(str(self.rendezvous), self.plan.size)
        log.info(
            "parallel group %s on %s: helper ranks started (pids %s)",
            self.plan.text(),
            ", ".join(self.devices),
            ", ".join(str(p.pid) for p in self.processes.values()),
        )

    def pids(self) -> list[int]:
        return [process.pid for process in self.processes.values()]

    def dead(self) -> list[tuple[int, int]]:
        """(rank, exit code) of each helper that has exited."""
        return [(rank, p.returncode) for rank, p in self.processes.items() if p.poll() is not None]

    def ready(self, stage) -> ParallelGroup:
        """The group, joined and attached to rank 0's `stage`; (re)built when none is up, a helper is
        gone or the last one broke."""
        group = self.group
        if group is not None and not group.broken and not self.dead():
            return group
        if group is not None or self.dead():
            lost = ", ".join(f"rank {rank} ({how(code)})" for rank, code in self.dead()) or "a broken group"
            log.warning("parallel group %s: rebuilding after %s", self.plan.text(), lost)
            self.stop()
        if not self.processes:
            self.start()
        self.wait_ready()
        assert self.store is not None  # start() made it with the helpers
        self.group = ParallelGroup(self.plan, 0, torch_device(self.devices[0]), self.store)
        self.group.explain = self.explain
        attach(stage, self.group)
        log.info("parallel group %s joined", self.plan.text())
        return self.group

    def wait_ready(self) -> None:
        store = self.store
        assert store is not None  # start() made it with the helpers
        keys = [f"ready/{rank}" for rank in self.processes]
        deadline = time.monotonic() + START_TIMEOUT_S
        while not store.check(keys):
            for rank, code in self.dead():
                self.stop()
                raise RankLost(
                    f"rank {rank} of the parallel group ({self.devices[rank]}) stopped while starting "
                    f"({how(code)}); its output is on the engine's stderr (engine.out when detached)"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RankLost(f"the parallel group's ranks did not start within {START_TIMEOUT_S:g} s")
            time.sleep(0.05)

    def explain(self, error: BaseException) -> str:
        """What a failed collective means: the helper that died, when one did (it may take a moment)."""
        deadline = time.monotonic() + 3.0
        while not self.dead() and time.monotonic() < deadline:
            time.sleep(0.05)
        dead = self.dead()
        if dead:
            rank, code = dead[0]
            return (
                f"rank {rank} of the parallel group ({self.devices[rank]}) died mid-job ({how(code)}); "
                "the group restarts for the next job"
            )
        return f"the parallel group stopped answering ({error}); it restarts for the next job"

    def stop(self) -> None:
        """Send the helpers home (EXIT), then end any that does not leave: no process outlives this.
        Helpers that never joined a group (still loading) are ended at once."""
        if self.group is not None:
            self.group.close()
            self.group = None
        else:
            for process in self.processes.values():
                process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes = {}
        self.store = None
        if self.rendezvous is not None:
            self.rendezvous.unlink(missing_ok=True)
            self.rendezvous = None


def how(code: int | None) -> str:
    if code is None:
        return "running"
    return f"killed by signal {-code}" if code < 0 else f"exit code {code}"


def helper_stage(model: str, ckpts: Path | None, device: torch.device, dit: DiTOptions) -> VideoStage:
    """Stage 2 as a helper rank runs it: the semantic decoder and the DiT, resident on its device. The
    prompt's T5 states come from rank 0 and only rank 0 decodes frames, so no T5 and no VAE here."""
    spec = get_spec(model)
    layout = layout_for(spec.name, ckpts)
    refuse_failed(layout.root)
    dtype = default_dtype(device)
    decoder = load_diffusion_semantic_decoder(layout, spec.decoder, device=device, dtype=dtype)
    network = load_control_dit(layout, spec.dit, device=device, dtype=dtype)
    stage = VideoStage(spec, None, decoder, network, None, device)
    stage.prepare(dit.resolved(device, dtype), dtype)
    return stage


class GroupPipeline(Pipeline):
    """A pipeline whose stage 2 renders on a parallel group: rank 0 here, the helpers in child processes.

    Stage 1 runs on rank 0's device alone; its helpers load stage 2 meanwhile."""

    ranks: Ranks

    def stage2(self):
        stage = super().stage2()
        self.ranks.ready(stage)
        return stage

    def close(self) -> None:
        self.ranks.stop()


def parallel_pipeline(
    model: str,
    ckpts: Path | None,
    devices: list[str],
    plan: ParallelPlan,
    folder: Path,
    memory: str = "auto",
    dit: DiTOptions | None = None,
) -> GroupPipeline:
    """The pipeline of one group of `devices` (rank 0 on the first, under the `memory` profile; the helpers
    hold their decoder and DiT resident); the helpers start now."""
    dit = dit or DiTOptions()
    pipeline = GroupPipeline.for_model(model, ckpts, device=torch_device(devices[0]), memory=memory, dit=dit)
    plan.check(pipeline.spec)
    pipeline.ranks = Ranks(plan, devices, model, ckpts, dit, folder)
    pipeline.ranks.start()
    return pipeline
