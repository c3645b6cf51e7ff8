"""What a worker runs its jobs through: a local Pipeline, a parallel group's (GroupPipeline), or a Ray
actor's handle (RemotePipeline). Each is checked against this interface by the type checker where its
factory is typed."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from engine.generation.job import ChunkDone, JobResult, JobSpec
    from engine.generation.pipeline import SemanticTokens
    from engine.generation.resume import Checkpoints
    from engine.protocol import ProgressReport


class PipelineBackend(Protocol):
    def run(
        self,
        job: JobSpec,
        on_progress: Callable[[ProgressReport], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_chunk: Callable[[ChunkDone], None] | None = None,
        tokens: SemanticTokens | None = None,
        checkpoints: Checkpoints | None = None,
    ) -> JobResult:
        """One job, its events through the callbacks; `tokens`: stage 1 made elsewhere (an LLM lane);
        `checkpoints`: resume checkpoints in the job's folder (a backend that writes elsewhere gets None)."""
        ...

    def stage2(self) -> object:
        """Have stage 2's models ready (a worker does it while an LLM lane makes the job's tokens)."""
        ...

    def loaded_models(self) -> list[str]: ...

    def weight_bytes(self) -> int: ...

    def close(self) -> None:
        """Let go of what it runs besides its models (a group's helper ranks); the worker calls it when it
        releases the models."""
        ...


PipelineFactory = Callable[[], PipelineBackend]
