"""Weight downloads and verifications run by the engine: one at a time, in a thread, reporting events."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.weights.downloads import (
    DownloadCancelled,
    Downloader,
    DownloadError,
    DownloadProgress,
    download_release,
    planned_files,
    verify,
)

log = logging.getLogger("landiff.engine")
PROGRESS_INTERVAL_S = 0.25


class DownloadJob(threading.Thread):
    def __init__(self, root: Path, only: str, publish: Callable[..., None], checksums: dict[str, str] | None):
        super().__init__(name="landiff-download", daemon=True)
        self.root, self.only, self.publish, self.checksums = root, only, publish, checksums
        self.cancelled = threading.Event()
        self.last = 0.0

    def progress(self, event: DownloadProgress) -> None:
        now = time.monotonic()
        finished_file = event.file_total is not None and event.file_done >= event.file_total
        if finished_file or now - self.last >= PROGRESS_INTERVAL_S:
            self.last = now
            fields: dict[str, Any] = {
                "file": event.file,
                "file_done": event.file_done,
                "file_total": event.file_total,
                "done": event.done,
                "total": event.total,
                "rate": round(event.rate, 1),
                "eta_s": None if event.eta_s is None else round(event.eta_s, 1),
            }
            self.publish("download_progress", **fields)

    def run(self) -> None:
        self.publish("download_started", only=self.only, root=str(self.root))
        downloader = Downloader(self.root, on_progress=self.progress, should_stop=self.cancelled.is_set)
        try:
            _, report = download_release(downloader, self.only, self.checksums)
        except DownloadCancelled as error:
            self.publish("download_cancelled", message=str(error))
        except DownloadError as error:
            self.publish("download_failed", error=str(error))
        except Exception as error:  # a download's failure is never the engine's
            log.exception("download failed")
            self.publish("download_failed", error=f"{type(error).__name__}: {error}")
        else:
            self.publish(
                "download_finished",
                fetched=report.fetched,
                skipped=len(report.skipped),
                refetched=report.refetched,
                failed=report.failed,
            )


class VerifyJob(threading.Thread):
    """Re-reads every present file against its MD5 (about 25 GB for the release), with progress."""

    def __init__(self, root: Path, only: str, publish: Callable[..., None], checksums: dict[str, str] | None):
        super().__init__(name="landiff-verify", daemon=True)
        self.root, self.only, self.publish, self.checksums = root, only, publish, checksums
        self.cancelled = threading.Event()
        self.last = 0.0

    def progress(self, name: str, done: int, total: int) -> None:
        if self.cancelled.is_set():
            raise DownloadCancelled("verification cancelled; nothing was changed")
        now = time.monotonic()
        if now - self.last >= PROGRESS_INTERVAL_S or done >= total:
            self.last = now
            self.publish("verify_progress", file=name, done=done, total=total)

    def run(self) -> None:
        self.publish("verify_started", only=self.only, root=str(self.root))
        try:
            results = verify(self.root, planned_files(self.root, self.only, self.checksums), self.progress)
        except DownloadCancelled as error:
            self.publish("verify_cancelled", message=str(error))
        except Exception as error:
            log.exception("verification failed")
            self.publish("verify_failed", error=f"{type(error).__name__}: {error}")
        else:
            bad = sorted(name for name, ok in results.items() if not ok)
            self.publish("verify_finished", checked=len(results), mismatched=bad)
