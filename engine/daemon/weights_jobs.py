"""Weight downloads and verifications run by the engine: one at a time, in a thread, reporting events."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from engine.daemon.events import Publisher
from engine.job_words import generated_words
from engine.protocol import (
    DownloadCancelledEvent,
    DownloadFailedEvent,
    DownloadFinishedEvent,
    DownloadProgressEvent,
    DownloadStartedEvent,
    Event,
    VerifyCancelledEvent,
    VerifyFailedEvent,
    VerifyFinishedEvent,
    VerifyProgressEvent,
    VerifyStartedEvent,
    WeightsJobCancelled,
    WeightsJobFailed,
    WeightsJobStarted,
    WeightsPart,
)
from engine.weights.downloads import (
    DownloadCancelled,
    DownloadError,
    DownloadProgress,
    download_release,
    downloader_for,
    planned_files,
    verify,
)

if TYPE_CHECKING:
    from engine.specs import ModelSpec

log = logging.getLogger(__name__)
PROGRESS_INTERVAL_S = 0.25


class WeightsJob(threading.Thread):
    """A download or verification. `done` is set before its last event is published, so a client that
    has seen that event finds the engine free for the next one."""

    kind = ""
    started_event: type[WeightsJobStarted]
    failed_event: type[WeightsJobFailed]
    cancelled_event: type[WeightsJobCancelled]

    def __init__(
        self,
        root: Path,
        only: WeightsPart,
        publish: Publisher,
        checksums: dict[str, str] | None,
        clip: bool = False,
        source: str = "huggingface",
        spec: ModelSpec | None = None,
    ):
        super().__init__(name=f"landiff-{self.kind}", daemon=True)
        self.source = source  # a download's: huggingface or modelscope
        self.spec = spec  # the model whose weights these are (a generation makes them from it)
        self.root, self.only, self.publish, self.checksums = root, only, publish, checksums
        self.clip = clip  # the quality probe's optional CLIP too
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self.last = 0.0

    def run(self) -> None:
        self.publish(self.started_event(only=self.only, root=str(self.root)))
        started = time.monotonic()
        ended: Event
        try:
            outcome, ended = "finished", self.work()
        except DownloadCancelled as error:
            outcome, ended = "cancelled", self.cancelled_event(message=str(error))
        except DownloadError as error:
            outcome, ended = "failed", self.failed_event(error=str(error))
        except Exception as error:  # a download's failure is never the engine's
            log.exception("weights %s of %s failed", self.kind, self.only)
            outcome, ended = "failed", self.failed_event(error=f"{type(error).__name__}: {error}")
        fields = ended.model_dump(exclude={"v", "seq", "event"})
        log.log(
            logging.WARNING if outcome == "failed" else logging.INFO,
            "weights %s of %s %s after %.1f s: %s",
            self.kind,
            self.only,
            outcome,
            time.monotonic() - started,
            ", ".join(f"{key} {value}" for key, value in fields.items()) or "-",
        )
        self.done.set()
        self.publish(ended)

    def work(self) -> Event:
        """The work, and the event that says it finished."""
        raise NotImplementedError

    def due(self, finished: bool) -> bool:
        """Whether a progress event is due (at most four a second, and each file's last)."""
        now = time.monotonic()
        if finished or now - self.last >= PROGRESS_INTERVAL_S:
            self.last = now
            return True
        return False


class DownloadJob(WeightsJob):
    kind = "download"
    started_event, failed_event, cancelled_event = (
        DownloadStartedEvent,
        DownloadFailedEvent,
        DownloadCancelledEvent,
    )

    def progress(self, event: DownloadProgress) -> None:
        finished_file = event.file_total is not None and event.file_done >= event.file_total
        if finished_file:
            log.info("downloaded %s (%d bytes)", event.file, event.file_done)
        if self.due(finished_file):
            self.publish(
                DownloadProgressEvent(
                    file=event.file,
                    file_done=event.file_done,
                    file_total=event.file_total,
                    done=event.done,
                    total=event.total,
                    rate=round(event.rate, 1),
                    eta_s=None if event.eta_s is None else round(event.eta_s, 1),
                )
            )

    def work(self) -> Event:
        downloader = downloader_for(
            self.source, self.root, on_progress=self.progress, should_stop=self.cancelled.is_set
        )
        _, report = download_release(downloader, self.only, self.checksums, self.clip)
        return DownloadFinishedEvent(
            fetched=report.fetched,
            skipped=len(report.skipped),
            refetched=report.refetched,
            failed=report.failed,
        )


class GenerateJob(DownloadJob):
    """The tiny model's "download": its random weights are made here, in the release layout, with the
    checksum list that `verify` reads; it reports as a download does, so clients follow it the same way,
    in its own words: nothing is `fetched`; `generated` is set and `written` names the files written. Only
    the files that are missing or damaged are written (all of the tiny model's, whatever `only` says: they
    are made together in about a second); when all are there and check out, nothing is."""

    def work(self) -> Event:
        from engine.weights.layout import ReleaseLayout
        from engine.weights.tiny import make_tiny_release

        assert self.spec is not None and self.spec.random_weights  # WeightsOperations.start gives it
        outcome = make_tiny_release(ReleaseLayout(self.root), self.spec, remember=True)
        log.info("%s", generated_words(len(outcome.written), len(outcome.kept)))
        return DownloadFinishedEvent(
            fetched=[],
            skipped=len(outcome.kept),
            refetched=[],
            failed={},
            generated=True,
            written=outcome.written,
        )


class VerifyJob(WeightsJob):
    """Re-reads every present file against its MD5 (about 25 GB for the release), with progress."""

    kind = "verify"
    started_event, failed_event, cancelled_event = VerifyStartedEvent, VerifyFailedEvent, VerifyCancelledEvent

    def progress(self, name: str, done: int, total: int) -> None:
        if self.cancelled.is_set():
            raise DownloadCancelled("verification cancelled; nothing was changed")
        if self.due(done >= total):
            self.publish(VerifyProgressEvent(file=name, done=done, total=total))

    def work(self) -> Event:
        files = planned_files(self.root, self.only, self.checksums, self.clip)
        results = verify(self.root, files, self.progress)
        bad = sorted(name for name, ok in results.items() if not ok)
        return VerifyFinishedEvent(checked=len(results), mismatched=bad)
