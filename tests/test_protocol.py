"""The typed wire: every reply and event has a model, the engine's choke points refuse a wrong shape, and
neither the TUI's test double nor a real engine drifts from the models."""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any, get_args, get_type_hints

import pytest
from pydantic import ValidationError

from engine import protocol as p
from engine.generation.lengths import limits, plan_length, rules_for
from engine.wire import MAX_LINE_BYTES, FramingError, RemoteError, decode_line, encode_line, reply_result
from landiff_tui.messages import message_classes
from landiff_tui.views.queue import STAGES

from .harness import ENGINE_LEAVES_S, PROMPT, RunningEngine
from .tui_double import ScriptedLink, job

# one of each request the TUI sends, as it makes them
TUI_REQUESTS: list[p.Request[Any]] = [
    p.Hello(client="landiff-tui", model="tiny"),
    p.Subscribe(since=3),
    p.Status(),
    p.ListJobs(limit=200),
    p.ListJobs(search="snail", status="finished", offset=100, limit=100),
    p.GetJob(job_id=job(1).id),
    p.Submit.model_validate({"params": {"prompt": PROMPT, "steps": 2}}),
    p.Cancel(job_id=job(1).id),
    p.DeleteJob(job_id=job(2).id, delete_files=True),
    p.MoveJob(job_id=job(1).id, to="up"),
    p.PauseQueue(paused=True),
    p.ListPresets(),
    p.SavePreset(name="mine", params={"steps": 4}),
    p.DeletePreset(name="mine"),
    p.WeightsStatus(),
    p.DownloadWeights(only="all"),
    p.VerifyWeights(only="all"),
    p.CancelDownload(),
    p.LogTail(lines=300),
    p.ReleaseModels(),
    p.Shutdown(),
]


def test_every_request_type_has_a_reply_model_and_every_event_a_message_for_the_views():
    assert set(p.REPLIES) == set(p.REQUEST_MODELS)
    assert list(p.REPLY_MODELS) == [p.type_name(request) for request in p.REPLIES]
    assert set(message_classes()) == set(p.EVENT_MODELS)
    assert len(set(p.EVENT_TYPES)) == len(p.EVENT_TYPES) == 24
    assert [stage for stage, _ in STAGES] == list(get_args(p.Stage))  # the queue draws every stage


def status_result(**changes: Any) -> dict[str, Any]:
    result = {
        "model": "tiny",
        "engine_version": "0.1.0",
        "pid": 1,
        "uptime_s": 2.5,
        "running": None,
        "queue": [],
        "models_loaded": [],
        "downloading": False,
        "seq": 3,
        "limits": limits(rules_for("tiny")),
        "device": "cpu",
        "memory_used_bytes": 1024,
    }
    return {key: value for key, value in {**result, **changes}.items() if value is not ...}


def progress_fields(**changes: Any) -> dict[str, Any]:
    fields = {
        "job_id": "j1",
        "stage": "denoise",
        "step": 3,
        "total": 50,
        "chunk": 1,
        "chunks": 1,
        "rate": 2.5,
        "eta_s": None,
        "frames_written": 0,
        "video_seconds": 0.0,
        "job_eta_s": 19.2,
    }
    return {key: value for key, value in {**fields, **changes}.items() if value is not ...}


BAD_SHAPES = {  # what a slip in a handler or a publisher looks like
    "missing": {"pid": ...},
    "extra": {"gpu": "H200"},
    "wrong type": {"pid": "1"},
    "nested wrong type": {"limits": {**limits(rules_for("tiny")), "fps": 8.5}},
}


def test_a_valid_reply_and_event_encode_as_one_line_that_parses_back():
    line = p.encode_reply("status", 7, p.StatusReply.model_validate(status_result()))
    message = decode_line(line)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and message["v"] == p.PROTOCOL_VERSION
    assert message["id"] == 7 and p.parse_reply("status", reply_result(message)).memory_total_bytes is None
    event = p.event("job_progress", 5, **progress_fields())
    assert event["event"] == "job_progress" and event["seq"] == 5 and event["v"] == p.PROTOCOL_VERSION
    assert p.parse_event(decode_line(encode_line(event))) == p.JobProgressEvent(seq=5, **progress_fields())


@pytest.mark.parametrize("slip", BAD_SHAPES, ids=list(BAD_SHAPES))
def test_a_reply_with_a_missing_extra_or_wrong_typed_field_is_refused_as_it_is_made(slip):
    with pytest.raises(ValidationError, match="StatusReply"):
        p.StatusReply.model_validate(status_result(**BAD_SHAPES[slip]))


def test_a_reply_of_another_request_type_or_not_a_model_is_refused():
    with pytest.raises(p.WireShapeError, match="must be a StatusReply, not LogTailReply"):
        p.encode_reply("status", 7, p.LogTailReply(path="/x", lines=[]))
    with pytest.raises(p.WireShapeError, match="must be a StatusReply, not dict"):
        p.encode_reply("status", 7, status_result())


@pytest.mark.parametrize(
    "kind, fields, problem",
    [
        ("job_progress", progress_fields(step=...), "step: Field required"),
        ("job_progress", progress_fields(gpu=0), "gpu: Extra inputs"),
        ("job_progress", progress_fields(step="3"), "step: Input should be a valid integer"),
        ("job_progress", progress_fields(stage="render"), "stage: Input should be 'text'"),
        ("job_queued", {"job_id": "j1"}, "prompt: Field required"),
        ("job_cancelled_partial", {"job_id": "j1"}, "does not match any of the expected tags"),
    ],
)
def test_an_event_with_a_missing_extra_or_wrong_typed_field_or_an_unknown_name_is_refused(
    kind, fields, problem
):
    with pytest.raises(p.WireShapeError, match=problem):
        p.event(kind, 1, **fields)


def test_framing_refuses_what_is_not_one_json_object_within_the_limit():
    assert decode_line(b'{"v": 1, "id": 1}\n') == {"v": 1, "id": 1}
    for line, code in [(b"[1, 2]", "bad_json"), (b"{nope", "bad_json"), (b"\xff\xfe", "bad_json")]:
        with pytest.raises(FramingError) as refused:
            decode_line(line)
        assert refused.value.code == code
    with pytest.raises(FramingError, match="limited to"):
        decode_line(b"{" + b" " * MAX_LINE_BYTES + b"}")
    assert decode_line(b"{" + b" " * MAX_LINE_BYTES + b"}", limit=2 * MAX_LINE_BYTES) == {}
    with pytest.raises(RemoteError) as refused:
        reply_result({"v": 1, "id": 1, "ok": False, "error": {"code": "busy", "message": "later"}})
    assert (refused.value.code, str(refused.value)) == ("busy", "later")


def test_the_double_answers_as_the_protocol_says_each_request_the_tui_sends():
    """The TUI's requests are typed (mypy checks each `call` gets a request model and gives its reply
    model); the double must not drift from the protocol either: each of its `on_<type>` methods takes a
    request model and is annotated to return that model's reply model, and returns one that goes over
    the wire."""
    answers = {
        name: get_type_hints(method)
        for name, method in inspect.getmembers(ScriptedLink, inspect.isfunction)
        if name.startswith("on_")
    }
    scripted = set()
    for name, hints in answers.items():
        model = hints.get("request")
        assert model in p.REQUEST_MODELS, f"{name} takes a {model}, not a request model of the protocol"
        assert name == f"on_{p.type_name(model)}", f"{name} answers {model.__name__}"
        reply = p.reply_type(model)
        assert hints.get("return") is reply, f"{name} must be annotated to return {reply.__name__}"
        scripted.add(model)
    assert scripted == {type(request) for request in TUI_REQUESTS}, "one sample of each scripted request"
    link = ScriptedLink([job(0, "running"), job(1, "queued"), job(2)])

    async def ask_each() -> list[tuple[p.Request[Any], p.Exact]]:
        return [(request, await link.call(request)) for request in TUI_REQUESTS]

    for request, reply in asyncio.run(ask_each()):
        kind = p.type_name(type(request))
        assert type(reply) is p.reply_type(type(request)), kind
        line = p.encode_reply(kind, 1, reply)  # and it survives the wire
        assert p.read_reply(request, reply_result(decode_line(line)), "tests") == reply, kind
    parsed = [request.model_copy(update={"id": None}) for request in link.requests]
    assert parsed == TUI_REQUESTS  # each as the engine parsed it: the request sent


def test_the_double_refuses_a_request_the_engine_would_refuse():
    with pytest.raises(ValidationError, match="limit"):  # a client cannot make one...
        p.ListJobs(limit=0)
    with pytest.raises(p.ProtocolError, match="limit") as refused:  # ...and the double refuses one forced
        asyncio.run(ScriptedLink([]).call(p.ListJobs.model_construct(limit=0)))
    assert refused.value.code == "invalid"


@pytest.fixture(scope="module")
def engine(tmp_path_factory, weights):
    running = RunningEngine(tmp_path_factory.mktemp("protocol-engine"), weights).start()
    yield running
    running.stop()


def test_a_real_engine_replies_and_publishes_in_the_models(engine):
    """Every request type against a real tiny engine; each reply and event must parse as its model."""
    with engine.client() as client:
        asked = {}

        def ask(kind: str, **fields: Any) -> Any:
            asked[kind] = p.parse_reply(kind, client.request(kind, **fields))
            return asked[kind]

        ask("hello", client="tests")
        since = ask("status").seq
        ask("subscribe", since=since)
        long = ask("submit", params={"prompt": PROMPT, "steps": 1000}).job_id
        short = ask("submit", params={"prompt": PROMPT, "steps": 2, "frames": 10}).job_id
        assert asked["submit"].length == p.LengthRecord(**plan_length(rules_for("tiny"), 10).record())
        ask("get_job", job_id=short)
        assert ask("cancel", job_id=short).status == "cancelled"
        for event in client.events():
            if event["event"] == "job_progress" and event["job_id"] == long:
                break
        assert ask("cancel", job_id=long).status == "cancelling"
        for event in client.events():
            if event["event"] in ("job_cancelled", "job_interrupted") and event["job_id"] == long:
                break
        assert ask("pause_queue", paused=True).paused  # the two below wait, in the order they are moved to
        first = ask("submit", params={"prompt": PROMPT, "steps": 2}).job_id
        second = ask("submit", params={"prompt": PROMPT, "steps": 2}).job_id
        assert ask("move_job", job_id=second, to="top").queue == [second, first]
        assert ask("status").queue_paused and asked["status"].queue == [second, first]
        for queued in (first, second):
            ask("cancel", job_id=queued)
        assert ask("pause_queue", paused=False).paused is False
        done = ask("submit", params={"prompt": PROMPT, "steps": 2}).job_id
        for event in client.events():
            if event["event"] == "job_finished":
                break
        ask("probe_quality", job_id=done)
        for event in client.events():
            if event["event"] == "job_quality" and event["job_id"] == done:
                break
        ask("list_jobs", limit=500)
        ask("delete_job", job_id=short, delete_files=True)
        ask("list_presets")
        ask("save_preset", name="mine", params={"steps": 4})
        ask("delete_preset", name="mine")
        ask("weights_status", only="llm")
        ask("verify_weights", only="llm")
        for event in client.events():
            if event["event"] in ("verify_finished", "verify_failed", "verify_cancelled"):
                break
        ask("log_tail", lines=20)
        ask("release_models")
        for event in client.events():
            if event["event"] == "models_released":
                break
        replay = ask("subscribe", since=since)
        ask("shutdown")
    engine.process.wait(timeout=ENGINE_LEAVES_S)
    assert set(asked) == set(p.REQUEST_TYPES) - {"download_weights", "cancel_download"}
    kinds = {event.event for event in replay.missed}
    expected = {"job_queued", "job_started", "job_progress", "chunk_finished", "job_finished"}
    expected |= {"job_cancelled", "job_deleted", "models_released", "verify_started", "verify_finished"}
    expected |= {"job_quality", "queue_changed"}
    assert expected <= kinds, expected - kinds
    assert [event.seq for event in replay.missed] == list(range(since + 1, since + 1 + len(replay.missed)))


def test_the_service_handles_each_request_model_once_found_by_its_type():
    from engine.daemon.service import EngineService, handlers

    found = handlers(EngineService)
    assert set(found) == set(p.REQUEST_MODELS)
    assert all(found[model].__name__ == f"on_{p.type_name(model)}" for model in found)

    class Forgetful(EngineService):
        on_cancel = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match="handles no Cancel$"):
        handlers(Forgetful)

    class Twice(EngineService):
        async def on_stop(self, request: p.Shutdown) -> p.ShutdownReply:
            return p.ShutdownReply(stopping=False)

    with pytest.raises(TypeError, match="a second handler of Shutdown"):
        handlers(Twice)


def test_a_handler_must_be_annotated_to_return_its_request_types_reply_model():
    from engine.daemon.service import EngineService, handlers

    class Misannotated(EngineService):
        async def on_shutdown(self, request: p.Shutdown) -> p.EmptyReply:  # type: ignore[override]
            return p.EmptyReply()

    with pytest.raises(TypeError, match="on_shutdown must be annotated to return ShutdownReply.*EmptyReply$"):
        handlers(Misannotated)

    class Untyped(EngineService):
        async def on_shutdown(self, request: p.Shutdown) -> dict:  # type: ignore[override]
            return {"stopping": True}

    with pytest.raises(TypeError, match="return ShutdownReply, the reply model of Shutdown, not dict$"):
        handlers(Untyped)
    with pytest.raises(TypeError, match="return ShutdownReply"):
        Untyped("tiny", None, None, None, None, lambda: None, None, None)  # refused as it is set up


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"fps": "24"}, "params.fps"),  # a string for a number
        ({"seed": True}, "params.seed"),  # a boolean for an integer
        ({"steps": 3.0}, "params.steps"),  # a float for an integer
        ({"cfg": "7.5"}, "params.cfg"),
        ({"prompt": "a heron \ud800 at dawn"}, "params.prompt"),  # a lone surrogate: not text
    ],
)
def test_a_value_of_another_type_is_refused_naming_its_field(params, field):
    """No coercion on the wire (was: "24" became 24, true became 1), and a prompt that is not text gets
    a clear refusal, not `internal` when the store or the log cannot write it."""
    line = json.dumps({"v": 1, "id": 1, "type": "submit", "params": {"prompt": "a heron", **params}})
    with pytest.raises(p.ProtocolError) as refused:
        p.parse_request(line.encode())
    assert refused.value.code == "invalid" and str(refused.value).startswith(field), str(refused.value)


def test_an_integer_is_a_number_where_a_float_is_meant():
    line = json.dumps({"v": 1, "id": 1, "type": "submit", "params": {"prompt": "a heron", "cfg": 7}})
    assert p.parse_request(line.encode()).params.cfg == 7.0


def test_a_refused_field_named_like_a_request_type_is_still_named():
    """`status` is a request type and a field of list_jobs: the message names the field either way."""
    from pydantic import ValidationError

    with pytest.raises(p.ProtocolError, match="^status: Input should be 'queued'"):
        p.parse_request(b'{"v": 1, "id": 1, "type": "list_jobs", "status": "bogus"}')
    with pytest.raises(ValidationError) as built:
        p.ListJobs.model_validate({"status": "bogus"})
    assert p.describe_validation(built.value).startswith("status: Input should be 'queued'")
