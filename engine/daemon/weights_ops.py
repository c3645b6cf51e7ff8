"""The engine's weights desk: where its model's weights are, their state, and one download or
verification at a time (engine/daemon/weights_jobs.py runs them in a thread)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from engine import settings
from engine.daemon.events import Publisher
from engine.protocol import RootCandidate, WeightFileState, WeightsJobReply, WeightsPart, WeightsStatusReply

if TYPE_CHECKING:
    from engine.daemon.weights_jobs import WeightsJob
    from engine.specs import ModelSpec

log = logging.getLogger(__name__)


class WeightsBusy(RuntimeError):
    pass


class NothingRunning(RuntimeError):
    pass


class WeightsOperations:
    def __init__(self, model: str, ckpts: Path | None, publish: Publisher):
        self.model, self.ckpts, self.publish = model, ckpts, publish
        self.job: WeightsJob | None = None  # the running (or last) download or verification

    def busy(self) -> bool:
        return self.job is not None and self.job.is_alive() and not self.job.done.is_set()

    def root(self) -> Path:
        from engine.weights.layout import layout_for

        return layout_for(self.model, self.ckpts).root

    def spec(self) -> ModelSpec:
        from engine.specs import get_spec

        return get_spec(self.model)

    def checksums(self, root: Path) -> dict[str, str] | None:
        """The release's sums; LANDIFF_CHECKSUMS replaces them (mirrors, tests); tiny uses its own list."""
        from engine.weights.downloads import read_checksums
        from engine.weights.layout import TINY_CHECKSUMS

        configured = settings.CHECKSUMS.path()
        if configured is not None:
            return read_checksums(configured)
        if self.spec().random_weights and (root / TINY_CHECKSUMS).is_file():
            return read_checksums(root / TINY_CHECKSUMS)
        return None

    def generates(self) -> bool:
        """The tiny model's weights are made here, not fetched (unless a checksum list names a bundle to
        download, as a mirror or a test does)."""
        return self.spec().random_weights and settings.CHECKSUMS.path() is None

    def start(
        self, kind: str, only: WeightsPart, clip: bool = False, source: str = "huggingface"
    ) -> WeightsJobReply:
        """Start a `download` or a `verify` of `only` (llm, diffusion, all) in its thread; a download of
        weights this engine generates writes them instead. `clip`: the download fetches the quality
        probe's optional CLIP too (a verification of all files checks it whenever it is there). `source`:
        where a download fetches from (huggingface or modelscope)."""
        from engine.daemon.weights_jobs import DownloadJob, GenerateJob, VerifyJob

        if self.busy():
            raise WeightsBusy("a weights download or verification is running; follow its events or cancel it")
        root = self.root()
        generated = kind == "download" and self.generates()
        job_class = GenerateJob if generated else {"download": DownloadJob, "verify": VerifyJob}[kind]
        clip = clip or (kind == "verify" and only == "all")  # a stage's files (--only) are not the CLIP
        self.job = job_class(root, only, self.publish, self.checksums(root), clip, source, self.spec())
        self.job.start()
        what = "generation" if generated else f"download from {source}" if kind == "download" else kind
        log.info("weights %s of %s started under %s", what, only, root)
        return WeightsJobReply(root=str(root), only=only, generated=generated)

    def cancel(self) -> None:
        if not self.busy():
            raise NothingRunning("no download or verification is running")
        assert self.job is not None  # busy() says it runs
        self.job.cancelled.set()
        log.info("weights %s cancel requested", self.job.kind)

    def status(self, only: WeightsPart) -> WeightsStatusReply:
        from engine.weights.downloads import file_states, planned_files
        from engine.weights.layout import where_it_looked

        root = self.root()
        states = file_states(root, planned_files(root, only, self.checksums(root), clip=only == "all"))
        return WeightsStatusReply(
            root=str(root),
            model=self.model,
            looked=[RootCandidate.model_validate(candidate) for candidate in where_it_looked(self.ckpts)],
            files=[WeightFileState.model_validate(vars(state)) for state in states],
            complete=all(state.state in ("verified", "present") for state in states if not state.optional),
            busy=self.busy(),
            generated=self.generates(),
            random_weights=self.spec().random_weights,
        )
