"""Every job parameter, defined once: type, range, default, unit, help, normalisation, model bound.

The wire model (`engine.protocol.JobParams`), the command-line options (`engine.cli.param_options`), the
TUI's Generate form (`landiff_tui.params`), the pipeline's `JobSpec` and so its JSON sidecar, and the store
(which keeps `JobParams` as JSON) are all built from `PARAMS`. To add a parameter, add a `Param` here and
read it in the pipeline (`job.<name>`); see the README's Development section.

Plain Python on purpose: the TUI checks its form with this module from its first keystroke, so it imports
neither pydantic nor torch. Ranges are what the engine accepts; a model limit beyond a range (the length
by the language model's token budget, the prompt by its text tokens) is checked where the model is known:
`engine.generation.lengths` and `engine.generation.prompt_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.wire import MAX_PROMPT_CHARS, MODEL_FPS

STAGES = ("stage1", "stage2")  # stage 1: prompt -> semantic tokens; stage 2: tokens -> video
SEED_LIMIT = 2**63  # torch generators take seeds below this


@dataclass(frozen=True)
class Param:
    name: str
    kind: type  # int, float or str
    default: Any
    help: str  # one line, what it does; the range and default are appended where shown
    label: str  # the Generate form's label
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the value must be > low, not >= low
    optional: bool = False  # None is accepted and means `unset`
    unset: str = ""  # what None means, e.g. "off"
    unit: str = ""
    required: bool = False  # no default: the job cannot be made without it
    normalise: Callable[[Any], Any] | None = None  # applied before the checks, e.g. str.strip
    max_chars: int | None = None  # for text
    choices: tuple[Any, ...] = ()  # a fixed set of values (text or numbers): the only ones accepted
    stages: tuple[str, ...] = STAGES  # the stages that read it: `tokens` takes the stage-1 ones
    bound: Callable[[str], str] | None = None  # model name -> the model limit beyond the range, in words
    note: str = ""  # said in help after the range, e.g. what the reference's demo offers
    in_form: bool = True  # a field in the TUI's Generate form (else kept from presets and re-runs)
    hint: str = ""  # the form field's placeholder; default: the range or what empty means
    seconds: bool = False  # a length that may also be given in seconds (12s, --seconds)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def range_text(self) -> str:
        """The accepted values in words: 'between 0 and 50', '> 0 and <= 10', '>= 1', 'one of a, b'."""
        if self.choices:
            return "one of " + ", ".join(map(show, self.choices))
        low, high = self.low, self.high
        if low is not None and high is not None:
            if self.low_open:
                return f"> {show(low)} and <= {show(high)}"
            return f"between {show(low)} and {show(high)}"
        if low is not None:
            return f"{'>' if self.low_open else '>='} {show(low)}"
        if high is not None:
            return f"<= {show(high)}"
        if self.max_chars is not None:
            return f"at most {self.max_chars} characters"
        return ""

    def describe(self, model: str | None = None) -> str:
        """Help text: what it does, its range and unit, its default, the bound `model` sets, a note."""
        parts = [self.range_text() + (f" {self.unit}" if self.unit and self.range_text() else "")]
        if not self.required:
            parts.append(
                f"default: {self.unset or 'unset'}"
                if self.default is None
                else f"default {show(self.default)}"
            )
        parts += [self.bound(model) if self.bound and model else "", self.note]
        details = "; ".join(part for part in parts if part)
        return f"{self.help} ({details})" if details else self.help

    def form_hint(self) -> str:
        if self.hint:
            return self.hint
        if self.optional:
            return f"empty: {self.unset or 'unset'}"
        return self.range_text()

    def check(self, value: Any) -> Any:
        """The value normalised and checked; ValueError naming the parameter, the range and the value."""
        if value is None:
            if self.optional:
                return None
            raise ValueError(f"{self.name} is required: {self.help}")
        if self.normalise is not None and isinstance(value, self.kind):
            value = self.normalise(value)
        value = self._typed(value)
        if self.kind is str:
            return self._check_text(value)
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.name} must be {self.range_text()}, got {show(value)}")
        if not self._in_range(value):
            raise ValueError(f"{self.name} must be {self.range_text()}, got {show(value)}")
        return value

    def parse(self, text: str) -> Any:
        """Text from a command line or a form field -> the checked value ('' is None when optional)."""
        if self.kind is str:
            return self.check(text)
        text = text.strip()
        if not text:
            if self.optional:
                return None
            raise ValueError(f"{self.name} is empty: enter {self.range_text() or 'a value'}")
        try:
            value = self.kind(text)
        except ValueError:
            raise ValueError(f"{self.name} must be {noun(self.kind)}, not {text!r}") from None
        return self.check(value)

    def _typed(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{self.name} must be {noun(self.kind)}, got {value!r}")
        if self.kind is float and isinstance(value, (int, float)):
            return float(value)
        if self.kind is int and isinstance(value, int):
            return value
        if self.kind is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if self.kind is str and isinstance(value, str):
            return value
        raise ValueError(f"{self.name} must be {noun(self.kind)}, got {value!r}")

    def _in_range(self, value: float) -> bool:
        if value != value:  # NaN
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def _check_text(self, value: str) -> str:
        if self.required and not value:
            raise ValueError(f"{self.name} must not be empty: {self.help}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:  # a lone surrogate ("\ud800" in JSON): not text
            raise ValueError(
                f"{self.name} holds {value[error.start]!r} at character {error.start + 1}, half of a UTF-16 "
                "pair and not a character: send the text as it was typed"
            ) from None
        if self.max_chars is not None and len(value) > self.max_chars:
            raise ValueError(
                f"{self.name} is {len(value)} characters; at most {self.max_chars} are accepted: shorten it"
            )
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.name} must be {self.range_text()}, got {value!r}")
        return value


def show(value: Any) -> str:
    if value == SEED_LIMIT - 1:
        return "2**63 - 1"
    return f"{value:g}" if isinstance(value, float) else str(value)


def noun(kind: type) -> str:
    return {int: "a whole number", float: "a number", str: "text"}[kind]


def prompt_bound(model: str) -> str:
    from engine.specs import get_spec  # torch-free, but not needed before help is shown

    spec = get_spec(model)
    return (
        f"at most {spec.llm.max_text_tokens} flan-T5 tokens, what the {model} model's language model "
        f"reads; stage 2's T5 reads the first {spec.text_tokens} tokens, as the reference does"
    )


def length_bound(model: str) -> str:
    from engine.generation.lengths import limits, rules_for

    most = limits(rules_for(model))
    return (
        f"{model}: {most['clip_frames']} frames a clip, {most['chunk_frames']} more a chunk, at most "
        f"{most['max_frames']} ({most['max_seconds']:.0f} s at {most['fps']} fps), the token budget"
    )


def overlap_bound(model: str) -> str:
    from engine.generation.lengths import allowed_overlaps, rules_for

    rules = rules_for(model)
    choices = ", ".join(map(str, allowed_overlaps(rules)))
    return f"{model}: one of {choices}, default {rules.default_overlap}"


PARAMS: list[Param] = [
    Param(
        "prompt",
        str,
        None,
        "describe the video to generate",
        "prompt",
        required=True,
        normalise=str.strip,
        max_chars=MAX_PROMPT_CHARS,
        bound=prompt_bound,
        in_form=False,  # the form's prompt is its own text area, above the fields
    ),
    Param(
        "cfg",
        float,
        7.5,
        "language-model guidance scale; 0 or 1 turns guidance off",
        "LLM CFG",
        low=0,
        high=50,
        note="the reference demo offers 1 to 15",
    ),
    Param(
        "motion_score",
        float,
        0.1,
        "how much the video moves (a micro-condition of the language model)",
        "motion",
        low=0,
        high=10,
        note="the reference demo offers 0 to 1, the range it was trained on",
        stages=("stage1",),
    ),
    Param(
        "seed",
        int,
        42,
        "random seed for both stages",
        "seed",
        low=0,
        high=SEED_LIMIT - 1,
        hint="ctrl+r: random",
    ),
    Param(
        "temperature",
        float,
        1.0,
        "sampling temperature of the semantic tokens",
        "temperature",
        low=0,
        high=10,
        low_open=True,
        stages=("stage1",),
    ),
    Param(
        "top_k",
        int,
        None,
        "sample only the k most likely codes",
        "top-k",
        low=1,
        optional=True,
        unset="off",
        note="above the codebook size it keeps every code",
        stages=("stage1",),
    ),
    Param(
        "top_p",
        float,
        None,
        "nucleus sampling: the smallest set of codes with this probability mass",
        "top-p",
        low=0,
        high=1,
        low_open=True,
        optional=True,
        unset="off",
        stages=("stage1",),
    ),
    Param(
        "steps",
        int,
        50,
        "denoising steps of the diffusion model",
        "steps",
        low=1,
        high=1000,
        stages=("stage2",),
    ),
    Param(
        "cache",
        float,
        0.0,
        "step caching: a denoising step reuses the diffusion blocks' last output change while the "
        "accumulated change of their input stays under this threshold; 0 is off, the exact computation",
        "step cache",
        low=0,
        high=10,
        note="the quality cost on LanDiff is not measured yet; the skipped calls are reported",
        stages=("stage2",),
        hint="0: off",
    ),
    Param(
        "frames",
        int,
        None,
        "video length; beyond one clip, a long video made chunk by chunk, rounded up to a chunk boundary",
        "length",
        low=1,
        high=100_000,
        optional=True,
        unset="one clip",
        unit="frames",
        bound=length_bound,
        hint="e.g. 97 or 12s",
        seconds=True,
    ),
    Param(
        "overlap",
        int,
        None,
        "latent frames each chunk of a long video shares with the one before",
        "overlap",
        low=0,
        high=64,
        optional=True,
        unset="the model's",
        bound=overlap_bound,
        in_form=False,
    ),
    Param(
        "fps",
        int,
        MODEL_FPS,
        f"frames a second of the video; above the model's {MODEL_FPS}, frames are interpolated between the "
        "model's (ffmpeg's motion-compensated minterpolate), the length in seconds unchanged",
        "fps",
        choices=(MODEL_FPS, 2 * MODEL_FPS, 3 * MODEL_FPS),
        stages=("stage2",),
        note=f"{MODEL_FPS} is the model's own frames, as the reference writes them",
    ),
]


def video_fps(params: Mapping[str, Any]) -> int:
    """A job's video frame rate (a job from before the parameter existed: the default, the model's)."""
    fps: int | None = params.get("fps")
    default: int = param("fps").default
    return default if fps is None else fps


def fps_text(params: Mapping[str, Any], model: str) -> str:
    """A job's video frame rate in words: '8 fps', '16 fps (x2, interpolated from the model's 8)'."""
    from engine.specs import get_spec  # torch-free

    fps = video_fps(params)
    try:
        model_fps = get_spec(model).fps
    except ValueError:  # a model this version does not know
        return f"{fps} fps"
    if fps == model_fps or fps % model_fps:
        return f"{fps} fps"
    return f"{fps} fps (x{fps // model_fps}, interpolated from the model's {model_fps})"


def by_name(params: Iterable[Param] | None = None) -> dict[str, Param]:
    return {param.name: param for param in (PARAMS if params is None else params)}


def param(name: str) -> Param:
    return by_name()[name]


def defaults(params: Sequence[Param] | None = None) -> dict[str, Any]:
    """Every parameter that has a default, with it (the prompt has none)."""
    return {p.name: p.default for p in (PARAMS if params is None else params) if not p.required}


def check_value(name: str, value: Any) -> Any:
    return param(name).check(value)


def check_params(values: Mapping[str, Any], *, complete: bool = True) -> dict[str, Any]:
    """Known names only, each value normalised and checked; missing ones get their defaults (complete)
    or stay missing (not complete: a preset, the options given on a command line)."""
    known = by_name()
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown job parameter(s): {', '.join(unknown)}; known: {', '.join(known)}")
    checked = {name: known[name].check(value) for name, value in values.items()}
    if not complete:
        return checked
    for name, p in known.items():
        if name not in checked:
            checked[name] = p.check(None) if p.required else p.default
    return {name: checked[name] for name in known}


def for_stages(stages: Iterable[str], params: Sequence[Param] | None = None) -> list[Param]:
    """The parameters a command that runs `stages` takes."""
    wanted = set(stages)
    return [p for p in (PARAMS if params is None else params) if wanted & set(p.stages)]


def prompt_too_long(tokens: int, limit: int, model: str) -> str:
    """The one message every entry point gives for a prompt over the language model's text tokens."""
    return (
        f"the prompt is {tokens} flan-T5 tokens; the {model} model's language model reads at most {limit}: "
        "shorten the prompt"
    )
