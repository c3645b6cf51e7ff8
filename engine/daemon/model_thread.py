"""What every thread that holds models does (a job worker, the LLM lane): import torch in itself, keep
stepping through surprises, know when to let its models go, and give their memory back."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)


def load_torch(stopping: threading.Event, who: str) -> None:
    """Import torch and the models' code in this thread (a worker's, the LLM lane's), not on the socket's
    side. An OSError (out of descriptors, say) is waited out, a second at a time: the thread never dies."""
    while not stopping.is_set():
        try:
            from engine.generation import pipeline  # noqa: F401
        except OSError as error:
            log.error("%s cannot load torch yet (%s); retrying in a second", who, error)
            stopping.wait(1.0)
            continue
        return


def keep_stepping(step: Callable[[], None], going: Callable[[], bool], who: str) -> None:
    """A model thread's loop: `step` while `going`. The thread outlives any surprise in a step (a locked
    database, a full disk): logged, then a second's pause."""
    while going():
        try:
            step()
        except Exception:
            log.exception("%s error; retrying in a second", who)
            time.sleep(1.0)


def release_due(requested: threading.Event, pipeline: Any, last_used: float, idle_s: float) -> str | None:
    """Why a thread's models should be let go now ("on request", "after 600 s idle"), or None."""
    if requested.is_set():
        return "on request"
    if pipeline is not None and time.monotonic() - last_used > idle_s:
        return f"after {idle_s:g} s idle"
    return None


P = TypeVar("P")


class HoldsPipeline(Protocol[P]):
    """A model thread's hold on its pipeline: none until its first job, `loading` while it is made."""

    pipeline: P | None
    loading: bool
    make_pipeline: Callable[[], P]


def warm_pipeline(holder: HoldsPipeline[P]) -> P:
    """The holder's pipeline, made first if it has none (its `loading` says so meanwhile, for status)."""
    if holder.pipeline is None:
        holder.loading = True
        try:
            holder.pipeline = holder.make_pipeline()
        finally:
            holder.loading = False
    return holder.pipeline


def free_device_memory() -> None:
    """After a pipeline is let go: its tensors collected, and CUDA's cache of their blocks emptied."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
