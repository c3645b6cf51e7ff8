"""The engine's wire format: one JSON object per line over a Unix socket.

A request is `{"v": 1, "id": ..., "type": ..., ...}`; its reply echoes the id with either
`{"ok": true, "result": {...}}` or `{"ok": false, "error": {"code": ..., "message": ...}}`.
Events are `{"v": 1, "event": ..., "seq": n, ...}` with a per-engine sequence number, pushed to
subscribed connections. This module imports no torch: clients use it as it is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from engine.params import PARAMS, Param
from engine.wire import JOB_STATUSES, MAX_LINE_BYTES, MAX_PROMPT_CHARS, PROTOCOL_VERSION  # noqa: F401 (re-exported)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def job_params_model(params: Sequence[Param] | None = None) -> type[Strict]:
    """The wire model of a job's parameters, one field per schema parameter (`engine.params`), each checked
    and normalised by the schema's own code: the same ranges the CLI, the TUI and the pipeline apply."""
    fields: dict[str, Any] = {}
    for param in PARAMS if params is None else params:
        kind = param.kind | None if param.optional else param.kind
        checked = Annotated[kind, AfterValidator(param.check)]
        fields[param.name] = (checked, ... if param.required else param.default)
    return create_model("JobParams", __base__=Strict, __module__=__name__, **fields)


JobParams = job_params_model()


class Request(Strict):
    v: Literal[1] = PROTOCOL_VERSION
    id: int | str


class Hello(Request):
    type: Literal["hello"]
    client: str = Field(default="", max_length=200)
    model: str | None = Field(default=None, max_length=100)  # the spec the client expects, if any


class Submit(Request):
    type: Literal["submit"]
    params: JobParams


class Cancel(Request):
    type: Literal["cancel"]
    job_id: str = Field(max_length=64)


class ListJobs(Request):
    type: Literal["list_jobs"]
    search: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    status: Literal[JOB_STATUSES] | None = None  # type: ignore[valid-type]
    sort: Literal["newest", "oldest"] = "newest"
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=50, ge=1, le=500)


class GetJob(Request):
    type: Literal["get_job"]
    job_id: str = Field(max_length=64)


class DeleteJob(Request):
    type: Literal["delete_job"]
    job_id: str = Field(max_length=64)
    delete_files: bool = False


class ListPresets(Request):
    type: Literal["list_presets"]


class SavePreset(Request):
    type: Literal["save_preset"]
    name: str = Field(min_length=1, max_length=100)
    params: dict[str, Any]


class DeletePreset(Request):
    type: Literal["delete_preset"]
    name: str = Field(min_length=1, max_length=100)


class Status(Request):
    type: Literal["status"]


class Subscribe(Request):
    type: Literal["subscribe"]
    since: int = Field(default=0, ge=0)  # the last sequence number this client saw


class ReleaseModels(Request):
    type: Literal["release_models"]


class Shutdown(Request):
    type: Literal["shutdown"]


class DownloadWeights(Request):
    type: Literal["download_weights"]
    only: Literal["llm", "diffusion", "all"] = "all"


class CancelDownload(Request):
    """Cancels the running download or verification."""

    type: Literal["cancel_download"]


class WeightsStatus(Request):
    type: Literal["weights_status"]
    only: Literal["llm", "diffusion", "all"] = "all"


class VerifyWeights(Request):
    type: Literal["verify_weights"]
    only: Literal["llm", "diffusion", "all"] = "all"


class LogTail(Request):
    type: Literal["log_tail"]
    lines: int = Field(default=200, ge=1, le=5000)


AnyRequest = Annotated[
    Hello
    | Submit
    | Cancel
    | ListJobs
    | GetJob
    | DeleteJob
    | ListPresets
    | SavePreset
    | DeletePreset
    | Status
    | Subscribe
    | ReleaseModels
    | Shutdown
    | DownloadWeights
    | CancelDownload
    | WeightsStatus
    | VerifyWeights
    | LogTail,
    Field(discriminator="type"),
]
REQUEST_ADAPTER: TypeAdapter = TypeAdapter(AnyRequest)
REQUEST_TYPES = [
    "download_weights",
    "cancel_download",
    "weights_status",
    "verify_weights",
    "log_tail",
    "hello",
    "submit",
    "cancel",
    "list_jobs",
    "get_job",
    "delete_job",
    "list_presets",
    "save_preset",
    "delete_preset",
    "status",
    "subscribe",
    "release_models",
    "shutdown",
]


class ProtocolError(Exception):
    """A line that is not a valid request; `code` is machine-readable, the message says what to fix."""

    def __init__(self, code: str, message: str, request_id: int | str | None = None):
        super().__init__(message)
        self.code, self.message, self.request_id = code, message, request_id


def parse_request(line: bytes) -> AnyRequest:
    """One received line -> a request model, or ProtocolError naming the problem."""
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError("line_too_long", f"request lines are limited to {MAX_LINE_BYTES} bytes")
    try:
        data = json.loads(line)
    except (UnicodeDecodeError, ValueError) as error:
        raise ProtocolError("bad_json", f"not a JSON object: {error}") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_json", "a request must be a JSON object")
    request_id = data.get("id") if isinstance(data.get("id"), int | str) else None
    if data.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            "bad_version",
            f"protocol version {data.get('v')!r} is not supported (this engine speaks {PROTOCOL_VERSION})",
            request_id,
        )
    if data.get("type") not in REQUEST_TYPES:
        raise ProtocolError(
            "unknown_type",
            f"unknown request type {data.get('type')!r}; known: {', '.join(REQUEST_TYPES)}",
            request_id,
        )
    try:
        return REQUEST_ADAPTER.validate_python(data)
    except ValidationError as error:
        raise ProtocolError("invalid", describe_validation(error), request_id) from None


def describe_validation(error: ValidationError) -> str:
    parts = []
    for problem in error.errors()[:5]:
        where = ".".join(str(part) for part in problem["loc"] if part not in REQUEST_TYPES)
        parts.append(f"{where or 'request'}: {problem['msg']}")
    more = len(error.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps({"v": PROTOCOL_VERSION, **message}, separators=(",", ":")) + "\n").encode()


def reply(request_id: int | str | None, result: dict[str, Any] | None = None) -> bytes:
    return encode({"id": request_id, "ok": True, "result": result or {}})


def error_reply(request_id: int | str | None, code: str, message: str) -> bytes:
    return encode({"id": request_id, "ok": False, "error": {"code": code, "message": message}})


def event(kind: str, seq: int, **fields: Any) -> dict[str, Any]:
    return {"event": kind, "seq": seq, **fields}
