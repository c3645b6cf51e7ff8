"""The engine's news as Textual messages: what the views handle (`on_job_queued`, `on_job_progressed`...).

One message class per concern, not per event name: the five ways a job leaves the queue are one
`JobEnded`, a download's and a verification's progress are one `TransferProgressed`, so a view states
what it reacts to once and reads the typed event the message carries (`message.event`, a model of
`engine.protocol`). Each is a dataclass of what it carries (eq=False: a message is itself, not its
fields). The app posts each message to itself and to every view; none bubbles, so each
recipient handles it once. Progress messages coalesce (`can_replace`): a view that falls behind a fast
stream draws the latest step, not every one.

Imports no pydantic (the views import this before the first paint); the event models are types only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from textual.message import Message

if TYPE_CHECKING:
    from engine import protocol

    JobEndedEvent = (
        protocol.JobFinishedEvent
        | protocol.JobFailedEvent
        | protocol.JobCancelledEvent
        | protocol.JobInterruptedEvent
    )
    TransferStartedEvent = protocol.DownloadStartedEvent | protocol.VerifyStartedEvent
    TransferProgressEvent = protocol.DownloadProgressEvent | protocol.VerifyProgressEvent
    TransferEndedEvent = (
        protocol.DownloadFinishedEvent
        | protocol.DownloadFailedEvent
        | protocol.DownloadCancelledEvent
        | protocol.VerifyFinishedEvent
        | protocol.VerifyFailedEvent
        | protocol.VerifyCancelledEvent
    )


@dataclass(eq=False)
class EngineConnected(Message, bubble=False):
    """The engine answered (again): its hello, and the jobs running or queued now."""

    hello: protocol.HelloReply
    active: list[protocol.JobSummary]
    gap: bool


@dataclass(eq=False)
class EngineLost(Message, bubble=False):
    """No engine to talk to: `state` is starting, lost (it reconnects by itself) or stopped."""

    state: str
    message: str


@dataclass(eq=False)
class JobQueued(Message, bubble=False):
    event: protocol.JobQueuedEvent


@dataclass(eq=False)
class JobStarted(Message, bubble=False):
    event: protocol.JobStartedEvent


@dataclass(eq=False)
class JobRequeued(Message, bubble=False):
    """The job's worker was lost: the job waits in the queue again."""

    event: protocol.JobRequeuedEvent


@dataclass(eq=False)
class JobProgressed(Message, bubble=False):
    event: protocol.JobProgressEvent

    def can_replace(self, message: Message) -> bool:
        """A newer step of the same job's same stage supersedes this one (a stage's last step is kept)."""
        return (
            isinstance(message, JobProgressed)
            and message.event.job_id == self.event.job_id
            and message.event.stage == self.event.stage
        )


@dataclass(eq=False)
class ChunkFinished(Message, bubble=False):
    event: protocol.ChunkFinishedEvent


@dataclass(eq=False)
class JobPreviewed(Message, bubble=False):
    """A live preview of a denoising step (a rough picture of the current estimate, in its PNG)."""

    event: protocol.JobPreviewEvent

    def can_replace(self, message: Message) -> bool:
        """A newer preview of the same job supersedes this one (the file holds the newest anyway)."""
        return isinstance(message, JobPreviewed) and message.event.job_id == self.event.job_id


@dataclass(eq=False)
class JobEnded(Message, bubble=False):
    """The job left the queue: finished, failed, cancelled (perhaps keeping a shorter video), interrupted."""

    event: JobEndedEvent


@dataclass(eq=False)
class JobDeleted(Message, bubble=False):
    event: protocol.JobDeletedEvent


@dataclass(eq=False)
class JobMeasured(Message, bubble=False):
    """The engine's quality probe measured a finished job (CLIP score, flicker, motion)."""

    event: protocol.JobQualityEvent


@dataclass(eq=False)
class ModelsReleased(Message, bubble=False):
    event: protocol.ModelsReleasedEvent


@dataclass(eq=False)
class QueueChanged(Message, bubble=False):
    """The queue's order or its pause changed (a job moved; the queue paused or resumed)."""

    event: protocol.QueueChangedEvent


@dataclass(eq=False)
class TransferStarted(Message, bubble=False):
    """A weights download or verification began."""

    event: TransferStartedEvent


@dataclass(eq=False)
class TransferProgressed(Message, bubble=False):
    event: TransferProgressEvent

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, TransferProgressed) and type(message.event) is type(self.event)


@dataclass(eq=False)
class TransferEnded(Message, bubble=False):
    """A weights download or verification finished, failed or was cancelled."""

    event: TransferEndedEvent


@cache
def message_classes() -> dict[type[protocol.Event], Callable[[Any], Message]]:
    """Each event model's message class (the protocol, and pydantic with it, loads on first use)."""
    from engine import protocol as p

    return {
        p.JobQueuedEvent: JobQueued,
        p.JobStartedEvent: JobStarted,
        p.JobRequeuedEvent: JobRequeued,
        p.JobProgressEvent: JobProgressed,
        p.ChunkFinishedEvent: ChunkFinished,
        p.JobPreviewEvent: JobPreviewed,
        p.JobFinishedEvent: JobEnded,
        p.JobFailedEvent: JobEnded,
        p.JobCancelledEvent: JobEnded,
        p.JobInterruptedEvent: JobEnded,
        p.JobDeletedEvent: JobDeleted,
        p.JobQualityEvent: JobMeasured,
        p.ModelsReleasedEvent: ModelsReleased,
        p.QueueChangedEvent: QueueChanged,
        p.DownloadStartedEvent: TransferStarted,
        p.VerifyStartedEvent: TransferStarted,
        p.DownloadProgressEvent: TransferProgressed,
        p.VerifyProgressEvent: TransferProgressed,
        p.DownloadFinishedEvent: TransferEnded,
        p.DownloadFailedEvent: TransferEnded,
        p.DownloadCancelledEvent: TransferEnded,
        p.VerifyFinishedEvent: TransferEnded,
        p.VerifyFailedEvent: TransferEnded,
        p.VerifyCancelledEvent: TransferEnded,
    }


def message_for(event: protocol.AnyEvent) -> Message:
    """A fresh message carrying `event` (a message is posted to one recipient only)."""
    return message_classes()[type(event)](event)
