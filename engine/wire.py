"""The wire's framing and constants, apart from its pydantic models so that clients start fast.

A message is one JSON object on one line, carrying the protocol version `v`. Both clients (the CLI's
blocking `engine.client` and the TUI's `landiff_tui.client`) frame and unframe through here and raise
the one `RemoteError` when the engine refuses a request. `engine.protocol` re-exports the constants and
holds the models; the TUI and the blocking client import only this module at start-up.
"""

from __future__ import annotations

import json
from typing import Any, Final

PROTOCOL_VERSION: Final = 1
MAX_LINE_BYTES = 2**20  # a line sent to the engine (its defence against a runaway client)
# a line the engine sends: a page of jobs or the replay of events a client missed can pass 1 MiB, and a
# client trusts its engine (same user), so it only guards against a line that never ends
MAX_REPLY_BYTES = 2**26
MAX_PROMPT_CHARS = 2000
MODEL_FPS = 8  # frames a second the LanDiff models make (the release's and tiny's): the fps default
# an engine asked to stop waits at most this long for its model threads to leave (one may be inside a
# torch import or a step), then as long again for the quality probe; a client restarting it waits out both
STOP_WAIT_S = 30.0
LEAVES_WITHIN_S = 2 * STOP_WAIT_S + 5.0  # how long a client waits for a stopping engine to let go
# cancelled_partial: cancelled during a long video; the chunks finished before the cancel are kept as a
# shorter, playable video
JOB_STATUSES = ("queued", "running", "finished", "failed", "cancelled", "cancelled_partial", "interrupted")


class RemoteError(Exception):
    """The engine refused a request: `code` is for programs, the message says why in words for people."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class FramingError(ValueError):
    """A line that is not one JSON object within the size limit; `code` names which."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def encode_line(message: dict[str, Any]) -> bytes:
    """One message as one line, stamped with the protocol version."""
    return (json.dumps({"v": PROTOCOL_VERSION, **message}, separators=(",", ":")) + "\n").encode()


def request_line(request_id: int | str, kind: str, **fields: Any) -> bytes:
    return encode_line({"id": request_id, "type": kind, **fields})


def decode_line(line: bytes, limit: int = MAX_LINE_BYTES) -> dict[str, Any]:
    """One received line -> its JSON object, or FramingError."""
    if len(line) > limit:
        raise FramingError("line_too_long", f"lines are limited to {limit} bytes")
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, ValueError) as error:
        raise FramingError("bad_json", f"not a JSON object: {error}") from None
    if not isinstance(message, dict):
        raise FramingError("bad_json", "a message must be a JSON object")
    return message


def is_event(message: dict[str, Any]) -> bool:
    return "event" in message


def reply_result(message: dict[str, Any]) -> dict[str, Any]:
    """A reply's result, or the engine's refusal raised as RemoteError."""
    if message.get("ok"):
        return message.get("result") or {}
    error = message.get("error") or {}
    raise RemoteError(error.get("code", "error"), error.get("message", "the engine refused the request"))
