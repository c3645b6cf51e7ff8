"""What `serve` was asked for, built once by the CLI and frozen: the engine's configuration.

Plain values only: the socket's side answers before torch loads, and a Ray actor gets its run options
pickled. The pipelines turn `RunOptions` into their torch-side options in their own thread (`dit()`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.generation.speed import DiTOptions


@dataclass(frozen=True)
class RunOptions:
    """How every pipeline of the engine runs: --memory, --attention, --compile, --fuse-qkv (None: the
    device's default)."""

    memory: str = "auto"
    attention: str = "auto"
    compile: bool | None = None
    fuse_qkv: bool | None = None

    def dit(self) -> DiTOptions:
        from engine.generation.speed import DiTOptions

        return DiTOptions(self.attention, self.compile, self.fuse_qkv)

    def without_compile(self) -> RunOptions:
        """torch.compile off unless asked for: it is not thread-safe (pytorch/pytorch#118260), and a
        process with several model threads (workers, the LLM lane) would run it in two at once."""
        return self if self.compile else replace(self, compile=False)


@dataclass(frozen=True)
class RayPlacement:
    """`--ray`: the cluster's address (or auto) and the resource each actor takes one unit of."""

    address: str
    resource: str


@dataclass(frozen=True)
class ParallelGroups:
    """`--parallel`: how a video is split, and the device groups that each render one."""

    split: str
    groups: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class EngineConfig:
    """`gpus`: the local workers' device labels (devices.parse_gpus; None: one on the default device).
    `command_options`: serve's own options but --model, which hello reports (a client restarting the
    engine starts one alike)."""

    model: str
    ckpts: Path | None
    idle_release_s: float
    run: RunOptions = field(default_factory=RunOptions)
    gpus: tuple[str, ...] | None = None
    ray: RayPlacement | None = None
    parallel: ParallelGroups | None = None
    llm_device: str | None = None
    on_finish: tuple[str, ...] = ()  # a command run as each job ends (engine/daemon/on_finish.py)
    command_options: tuple[str, ...] = ()
