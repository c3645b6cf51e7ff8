"""The one job-parameter schema (engine/params.py) and everything built from it.

A parameter added to the schema must reach the CLI's help, the wire model, the TUI's form and the
sidecar with no other edit; the drifts the schema removed (a blank prompt passing submit, 12.05 s being
96 frames in one place and 97 in another, generate without sampling options, prompt limits that differ
between entry points) stay fixed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.cli import client_commands
from engine.cli.main import build_parser, main
from engine.generation.lengths import frames_for_seconds, rules_for
from engine.params import PARAMS, check_params
from engine.protocol import JobParams, ProtocolError, parse_request
from landiff_tui.params import check_form, check_length, defaults, form_texts
from tests.harness import PROMPT, ROOT, WAIT_S

# Run in a fresh interpreter: the schema gains `shimmer` before anything built from it is imported.
ADDED_PARAMETER = """
import asyncio, json, sys
from pathlib import Path

from engine import params

if sys.argv[1] == "add":
    params.PARAMS.append(
        params.Param("shimmer", float, 0.25, "how much the video shimmers", "shimmer", low=0, high=1,
                     stages=("stage2",))
    )

from engine.cli.main import build_parser, main
from engine.protocol import JobParams

report = {"wire": "shimmer" in JobParams.model_fields}
commands = build_parser()._subparsers._group_actions[0].choices
report["help"] = {
    name: "--shimmer" in commands[name].format_help()
    for name in ("generate", "tokens", "submit", "rerun", "presets")
}

from textual.app import App

from landiff_tui.views.generate import GenerateView


class Host(App):
    def compose(self):
        yield GenerateView()


async def form():
    app = Host()
    async with app.run_test() as pilot:
        await pilot.pause()
        fields = app.query("#param-shimmer")
        if not fields:
            return None, None
        shown = fields.first().value
        fields.first().value = "2"
        await pilot.pause()
        return shown, str(app.query_one("#form-errors").render())


report["form"], report["form_error"] = asyncio.run(form())
if len(sys.argv) > 2:  # a whole tiny job from the command line
    home, out = sys.argv[2], Path(sys.argv[3])
    args = ["generate", "A snail.", "--model", "tiny", "--ckpts", home, "--steps", "1", "--out", str(out)]
    report["status"] = main([*args, "--shimmer", "0.5"])
    report["sidecar"] = json.loads(out.with_suffix(".json").read_text())["job"].get("shimmer")
print(json.dumps(report))
"""


def run_with_schema(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-c", ADDED_PARAMETER, *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=WAIT_S)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_parameter_added_to_the_schema_reaches_help_wire_form_and_sidecar(home, tmp_path):
    report = run_with_schema("add", str(home), str(tmp_path / "v.mp4"))
    assert report["wire"]
    # a stage-2 parameter: every command that runs stage 2 takes it, `tokens` (stage 1 only) does not
    assert report["help"] == {
        "generate": True,
        "tokens": False,
        "submit": True,
        "rerun": True,
        "presets": True,
    }
    assert report["form"] == "0.25"  # its default, filled in
    assert "shimmer must be between 0 and 1, got 2" in report["form_error"]
    assert report["status"] == 0 and report["sidecar"] == 0.5


def test_the_added_parameter_check_sees_a_schema_without_it():
    """The check above can fail: without the addition, no surface shows `shimmer`."""
    report = run_with_schema("keep")
    assert not report["wire"] and not any(report["help"].values()) and report["form"] is None


def test_every_parameter_is_on_the_wire_with_the_schema_default():
    fields = JobParams.model_fields
    assert list(fields) == [p.name for p in PARAMS]
    assert all(fields[p.name].default == p.default for p in PARAMS if not p.required)
    assert JobParams.model_config["extra"] == "forbid"


def refuse_to_start_an_engine(monkeypatch):
    def started(args):
        raise AssertionError("an engine was started for parameters that do not pass")

    monkeypatch.setattr(client_commands, "engine_for", started)


@pytest.mark.parametrize("command", [["submit", "   "], ["rerun", "job1", "--prompt", " \n\t "]])
def test_a_blank_prompt_is_refused_at_submit_with_one_line(command, monkeypatch, capsys):
    refuse_to_start_an_engine(monkeypatch)
    status = main([*command, "--model", "tiny"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "prompt must not be empty: describe the video to generate" in err


def test_a_blank_prompt_is_refused_on_the_wire_and_a_prompt_is_stripped():
    line = json.dumps({"v": 1, "id": 1, "type": "submit", "params": {"prompt": "  \n "}}).encode()
    with pytest.raises(ProtocolError, match="prompt must not be empty"):
        parse_request(line)
    line = json.dumps({"v": 1, "id": 1, "type": "submit", "params": {"prompt": "  A fox.\n"}}).encode()
    assert parse_request(line).params.prompt == "A fox."


@pytest.mark.parametrize("model", ["landiff", "tiny"])
def test_seconds_become_the_same_frames_in_the_tui_and_the_engine(model):
    engine = frames_for_seconds(rules_for(model), 12.05)
    assert engine == 97  # 12.05 s at 8 fps is 96.4 frames: rounded up, never shorter than asked
    assert check_length("12.05s", model) == (engine, None)
    for options in (["--seconds", "12.05"], ["--frames", "12.05s"]):
        for command in ("generate", "submit"):
            args = build_parser().parse_args([command, PROMPT, *options])
            assert client_commands.given_params(args, model) == {"frames": engine}
    params, errors = check_form(PROMPT, {**form_texts(defaults()), "frames": "12.05 s"}, model)
    assert errors == {} and params["frames"] == engine


def test_generate_takes_the_sampling_options(home, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runs = {}
    for name, options in {
        "plain": [],
        "sampled": ["--temperature", "0.5", "--top-k", "4", "--top-p", "0.9"],
    }.items():
        out = tmp_path / f"{name}.mp4"
        args = [
            "generate",
            PROMPT,
            "--model",
            "tiny",
            "--ckpts",
            str(home),
            "--steps",
            "1",
            "--out",
            str(out),
        ]
        assert main([*args, *options]) == 0, capsys.readouterr().err
        runs[name] = json.loads(out.with_suffix(".json").read_text())
    job = runs["sampled"]["job"]
    assert (job["temperature"], job["top_k"], job["top_p"]) == (0.5, 4, 0.9)
    assert set(runs["plain"]["job"]) >= {p.name for p in PARAMS}  # the sidecar lists every parameter
    tokens = {name: np.load(run["tokens_path"]) for name, run in runs.items()}
    assert not np.array_equal(tokens["plain"], tokens["sampled"])  # the options reach the sampler


def long_by_tokens() -> str:
    prompt = " ".join(["a snail crawling slowly over wet green moss"] * 12)
    assert len(prompt) < 2000  # within the character cap: only the token limit refuses it
    return prompt


def refusals(prompt: str, home: Path, tmp_path: Path, monkeypatch, capsys) -> dict[str, str]:
    monkeypatch.setenv("LANDIFF_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    refuse_to_start_an_engine(monkeypatch)
    said = {}
    for command in (["generate", "--ckpts", str(home)], ["tokens"], ["submit"]):
        status = main([command[0], prompt, "--model", "tiny", *command[1:]])
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1, err
        said[command[0]] = err.removeprefix(f"landiff-engine {command[0]}: ")
    assert not (tmp_path / "results").exists()
    return said


def test_the_character_cap_is_the_same_in_submit_generate_and_tokens(home, tmp_path, monkeypatch, capsys):
    said = refusals("x" * 2001, home, tmp_path, monkeypatch, capsys)
    assert set(said.values()) == {"prompt is 2001 characters; at most 2000 are accepted: shorten it\n"}
    _, errors = check_form("x" * 2001, {})
    assert errors["prompt"] == said["submit"].strip()


def test_the_token_limit_is_the_same_in_generate_tokens_and_the_engine(home, tmp_path, monkeypatch, capsys):
    from engine.generation.job import JobSpec
    from engine.generation.pipeline import Pipeline
    from engine.generation.prompt_tokens import check_prompt_fits
    from engine.specs import get_spec
    from engine.weights.layout import layout_for

    prompt = long_by_tokens()
    monkeypatch.setenv("LANDIFF_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    said = {}
    for command in (["generate", "--ckpts", str(home)], ["tokens"]):
        status = main([command[0], prompt, "--model", "tiny", *command[1:]])
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1, err
        said[command[0]] = err.removeprefix(f"landiff-engine {command[0]}: ").strip()
    message = said["generate"]
    assert said["tokens"] == message and message.endswith("reads at most 64: shorten the prompt")
    spec, layout = get_spec("tiny"), layout_for("tiny", home)
    with pytest.raises(ValueError) as checked:  # what the engine's submit calls
        check_prompt_fits(prompt, spec, layout.flan_t5_dir)
    assert str(checked.value) == message
    with pytest.raises(ValueError) as ran:  # and stage 1 when a job reaches it: never cut silently
        Pipeline(spec, layout).run(JobSpec(prompt, tmp_path / "v.mp4", steps=1))
    assert str(ran.value) == message
    assert check_prompt_fits(PROMPT, spec, layout.flan_t5_dir) <= spec.llm.max_text_tokens


def test_bad_values_name_the_parameter_and_the_range_the_same_way_everywhere(capsys):
    with pytest.raises(ValueError) as schema:
        check_params({"prompt": "x", "cfg": 51})
    assert str(schema.value) == "cfg must be between 0 and 50, got 51"
    with pytest.raises(ProtocolError) as wire:
        parse_request(json.dumps({"v": 1, "id": 1, "type": "submit", "params": {"prompt": "x", "cfg": 51}}))
    assert str(schema.value) in str(wire.value)
    _, errors = check_form("x", {"cfg": "51"})
    assert errors["cfg"] == str(schema.value)
    with pytest.raises(ValueError, match="unknown job parameter"):
        check_params({"prompt": "x", "cfgg": 1})
