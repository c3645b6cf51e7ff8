"""Generate: the prompt, its history, the parameters with inline checks, presets, submit.

The first frame shows the prompt and Submit; the fields and the presets' box mount right after it, and the
form's checks (`landiff_tui.params`, the job schema) are imported then too.
"""

from __future__ import annotations

from asyncio import gather
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal
from textual.message import Message
from textual.widgets import Button, Input, Label, Select, Static, TextArea

from ..config import Config, load_form, save_form
from ..keymap import bindings, key_of
from ..messages import EngineConnected, JobQueued
from .base import View, checked

if TYPE_CHECKING:
    from engine.protocol import JobSummary, Preset

HISTORY_LIMIT = 200


class PromptArea(TextArea):
    """A multi-line prompt; up on the first line and down on the last recall earlier prompts."""

    @dataclass(eq=False)
    class Recall(Message):
        step: int  # -1: an earlier prompt, +1: a later one

    def action_cursor_up(self, select: bool = False) -> None:
        if not select and self.cursor_location[0] == 0:
            self.post_message(self.Recall(-1))
        else:
            super().action_cursor_up(select)

    def action_cursor_down(self, select: bool = False) -> None:
        if not select and self.cursor_location[0] == self.document.line_count - 1:
            self.post_message(self.Recall(+1))
        else:
            super().action_cursor_down(select)


class ParamsGrid(Grid):
    class Ready(Message):
        """The fields are mounted: the form can be filled."""

    def on_mount(self) -> None:
        self.post_message(self.Ready())


class GenerateView(View):
    FOCUS = "#prompt"
    BINDINGS = bindings("generate")

    def __init__(self) -> None:
        super().__init__()
        self.history: list[str] = []
        self.history_at = 0
        self.draft = ""
        self.presets: dict[str, Preset] = {}
        self.extras: dict[str, Any] = {}  # parameters the form has no field for
        self.model: str | None = None  # the engine's, for the length rules
        self.pending_fill: dict[str, Any] | None = None  # what to fill once the fields are mounted
        self.pending_prompt: str | None = None
        self.applied: tuple[str, dict[str, str]] | None = None  # the preset shown, and what it set
        self.inputs: dict[str, Input] = {}  # each field's Input by its parameter's name (`mount_form`)
        self.check_due = False  # a check is queued for the changes seen so far
        self.preset_due = True  # config.toml's `remember = "preset:NAME"`: applied once the presets come

    def compose(self) -> ComposeResult:
        # the fields (two widgets each) and the notes on them come after the prompt and the presets' box
        # before Submit, right after the first frame (`mount_form`), which shows the prompt with the focus
        self._prompt_area = PromptArea(id="prompt", soft_wrap=True, show_line_numbers=False)
        yield self._prompt_area
        with Horizontal(id="preset-row"):
            yield Button(f"Submit ({key_of('generate', 'submit')})", variant="primary", id="submit")

    def on_mount(self) -> None:
        self.query_one(PromptArea).border_title = "prompt (up/down on the first/last line: history)"
        self.call_after_refresh(self.mount_form)

    @property
    def complete(self) -> bool:
        """The fields and the presets' box, which come after the first frame, are mounted."""
        return all(
            found and found.first().is_mounted for found in (self.query("#params"), self.query("#preset"))
        )

    async def mount_form(self) -> None:
        """The fields, the notes on them and the presets' box; the fields' values come when they are there
        (`fields_ready`). Awaited together: the screen, which runs this after its refresh, draws again
        only once they are all there, not after each."""
        from ..params import FIELDS

        fields, inputs = [], {}
        for field in FIELDS:
            inputs[field.name] = Input(id=f"param-{field.name}", placeholder=field.form_hint())
            fields += [Label(field.label, classes="param-label"), inputs[field.name]]
        if not self.is_attached:  # the app quit before
            return
        notes = Static("", id="length-note"), Static("", id="form-errors")
        presets: Select[str] = Select([], prompt="preset", id="preset", allow_blank=True)
        self.inputs = inputs
        await gather(
            self.mount(ParamsGrid(*fields, id="params"), *notes, after=self.query_one(PromptArea)),
            self.query_one("#preset-row").mount(presets, before=self.query_one("#submit")),
        )

    @on(ParamsGrid.Ready)
    def fields_ready(self) -> None:
        kept = load_form(self.config.state) if self.config.remember == "last" else None
        if kept is not None and self.pending_fill is None and self.pending_prompt is None:
            self.restore(kept["fields"], kept["prompt"])
        else:
            self.fill(self.pending_fill or {}, self.pending_prompt)
        self.pending_fill = self.pending_prompt = None

    @property
    def config(self) -> Config:
        """The user's config.toml (the app's), the defaults in an app without one."""
        return getattr(self.app, "config", None) or Config(state=None)

    def restore(self, fields: dict[str, str], prompt: str) -> None:
        """The form as the user left it at the last quit or submit (config.toml's `remember = "last"`): the
        fields' texts as they were, checked as typed; the prompt unless one is being typed already."""
        from ..params import defaults, form_texts

        texts = {**form_texts(defaults()), **fields}
        area = self.query_one(PromptArea)
        with self.prevent(Input.Changed, TextArea.Changed):
            for name, widget in self.inputs.items():
                widget.value = texts.get(name, "")
            if prompt and not area.text:
                area.load_text(prompt)
                area.move_cursor(area.document.end)
        self.check()

    def keep_form(self) -> None:
        """Kept for the next launch (config.toml's `remember = "last"`), in the data dir."""
        if self.config.remember == "last" and self.inputs:
            save_form(self.config.state, self.texts(), self.prompt_area.text)

    @property
    def prompt_area(self) -> PromptArea:
        return self._prompt_area  # queried no more once the app is closing

    def on_unmount(self) -> None:
        self.keep_form()

    # data from the engine

    def on_engine_connected(self, message: EngineConnected) -> None:
        self.model = message.hello.model
        self.check()
        self.run_worker(self.load(), exclusive=True, group="generate-load")

    def on_job_queued(self, message: JobQueued) -> None:
        self.remember(message.event.prompt)

    async def load(self) -> None:
        from engine.protocol import ListJobs

        listing = await self.call(ListJobs(limit=HISTORY_LIMIT))
        if listing is not None:
            prompts: list[str] = []
            for job in reversed(listing.jobs):  # oldest first, like a shell history
                if not prompts or prompts[-1] != job.prompt:
                    prompts.append(job.prompt)
            self.history = prompts
            self.history_at = len(self.history)
        await self.load_presets()

    async def load_presets(self) -> None:
        from engine.protocol import ListPresets

        reply = await self.call(ListPresets())
        if reply is None:
            return
        self.presets = reply.presets
        options = [(f"{name}{' (built in)' if p.builtin else ''}", name) for name, p in self.presets.items()]
        self.query_one("#preset", Select).set_options(options)
        preset, self.preset_due = self.config.preset if self.preset_due else None, False
        if preset is None:
            return
        if preset in self.presets:  # chosen as if in the box: applied, and the box names it
            self.query_one("#preset", Select).value = preset
        else:
            self.notify(
                f"config.toml's [form] remember names the preset {preset!r}, which the engine does not have",
                severity="warning",
                timeout=10,
            )

    def remember(self, prompt: str) -> None:
        if not self.history or self.history[-1] != prompt:
            self.history.append(prompt)
        self.history_at = len(self.history)

    # the form

    def texts(self) -> dict[str, str]:
        return {name: widget.value for name, widget in self.inputs.items()}

    def check(self) -> tuple[dict[str, Any] | None, dict[str, str]]:
        from ..params import check_form, check_length, length_note

        model, overlap = self.model, self.extras.get("overlap")
        params, errors = check_form(self.query_one(PromptArea).text, self.texts(), model, overlap)
        if self.query("#form-errors"):  # the notes mount with the fields, after the first frame
            frames, _ = check_length(self.texts().get("frames", ""), model)
            if "frames" not in errors:
                self.query_one("#length-note", Static).update(length_note(model, frames, overlap))
            for name, widget in self.inputs.items():
                widget.set_class(name in errors, "-invalid")
            shown = {name: message for name, message in errors.items() if name != "prompt"}
            self.query_one("#form-errors", Static).update("; ".join(shown.values()))
        self.query_one("#submit", Button).disabled = bool(errors)
        return params, errors

    def fill(self, params: dict[str, Any], prompt: str | None = None) -> None:
        """Every field from `params`, the schema's default where it has none (a job to edit)."""
        from ..params import FIELDS, defaults, form_texts

        if not self.query("#params Input"):  # the fields come after the first frame
            self.pending_fill, self.pending_prompt = params, prompt
            return
        shown = {field.name for field in FIELDS} | {"prompt"}
        self.extras = {
            name: value for name, value in params.items() if name not in shown and value is not None
        }
        texts = form_texts({**defaults(), **params})
        with self.prevent(Input.Changed, TextArea.Changed):  # checked once below, not once per field
            for name, widget in self.inputs.items():
                if name in texts:
                    widget.value = texts[name]
            if prompt is not None:
                self.query_one(PromptArea).load_text(prompt)
        self.check()

    def apply_preset(self, name: str, params: dict[str, Any]) -> None:
        """The fields the preset sets; the others (the seed, often) keep what they hold."""
        from ..params import FIELDS, form_texts

        shown = {field.name for field in FIELDS}
        texts = {key: text for key, text in form_texts(params).items() if key in params}
        with self.prevent(Input.Changed):  # checked once below, not once per field
            for key, widget in self.inputs.items():
                if key in texts:
                    widget.value = texts[key]
        self.extras.update({key: value for key, value in params.items() if key not in shown | {"prompt"}})
        self.applied = (name, texts)
        self.check()

    @on(Input.Changed)
    @on(TextArea.Changed)
    def changed(self) -> None:
        # one check for a burst: filling in a job or a preset changes ten fields, each with its message
        if not self.check_due:
            self.check_due = True
            self.call_later(self.check_changes)

    def check_changes(self) -> None:
        self.check_due = False
        self.check()
        if self.applied is not None:
            name, texts = self.applied
            now = self.texts()
            if any(now.get(key) != text for key, text in texts.items()):
                self.applied = None  # edited: the box no longer names what the fields hold
                self.query_one("#preset", Select).clear()

    @on(PromptArea.Recall)
    def recall(self, message: PromptArea.Recall) -> None:
        if not self.history:
            return
        area = self.query_one(PromptArea)
        if self.history_at == len(self.history):
            self.draft = area.text
        self.history_at = min(max(self.history_at + message.step, 0), len(self.history))
        text = self.draft if self.history_at == len(self.history) else self.history[self.history_at]
        area.load_text(text)
        area.move_cursor((0, 0) if message.step < 0 else area.document.end)

    @on(Select.Changed, "#preset")
    def preset_chosen(self, event: Select.Changed) -> None:
        if not isinstance(event.value, str) or event.value not in self.presets:
            self.applied = None
            return
        self.apply_preset(event.value, self.presets[event.value].params)
        self.notify(f"preset {event.value!r} applied (the fields it does not set are unchanged)")

    @on(Button.Pressed, "#submit")
    async def submit_pressed(self) -> None:
        await self.action_submit()

    # actions

    async def action_submit(self) -> None:
        params, errors = self.check()
        if params is None:
            self.notify(next(iter(errors.values())), title="not submitted", severity="error")
            return
        from engine.protocol import Submit

        params = {**self.extras, **params}  # e.g. a long video's overlap, kept from the job being edited
        request = checked(self.app, lambda: Submit.model_validate({"params": params}))
        reply = await self.call(request) if request is not None else None
        if reply is not None:
            self.remember(params["prompt"])
            self.draft = ""
            self.query_one(PromptArea).load_text("")  # a second ctrl+s queues nothing; up recalls it
            self.keep_form()
            self.notify(f"job {reply.job_id[:8]} queued (up in the prompt recalls it)", title="submitted")
            self.engine_app.action_show_tab("queue")

    def action_random_seed(self) -> None:
        import secrets

        seed = secrets.randbelow(2**31)
        if self.query("#param-seed"):
            self.query_one("#param-seed", Input).value = str(seed)
        else:  # pressed before the fields mounted
            self.pending_fill = {**(self.pending_fill or {}), "seed": seed}

    async def action_save_preset(self) -> None:
        params, errors = self.check()
        if any(name != "prompt" for name in errors):
            self.notify("fix the parameters before saving them as a preset", severity="error")
            return
        from ..params import check_form
        from ..screens.confirm import AskName

        params, _ = check_form("preset", self.texts())
        if params is None:
            self.notify("fix the parameters before saving them as a preset", severity="error")
            return

        from engine.protocol import SavePreset

        async def save(name: str | None) -> None:
            if name is None:
                return
            values = {key: value for key, value in params.items() if key != "prompt"}
            request = checked(self.app, lambda: SavePreset(name=name, params=values))
            if request is not None and await self.call(request) is not None:
                self.notify(f"preset {name!r} saved")
                await self.load_presets()

        self.app.push_screen(AskName("Save these parameters as the preset named:"), save)

    async def action_delete_preset(self) -> None:
        from ..screens.confirm import Confirm

        box = self.query("#preset")
        name = box.first(Select).value if box else None
        if not isinstance(name, str):
            self.notify("choose the preset to delete first", severity="warning")
            return

        from engine.protocol import DeletePreset

        async def delete(yes: bool | None) -> None:
            if yes and await self.call(DeletePreset(name=name)) is not None:
                self.notify(f"preset {name!r} deleted")
                self.query_one("#preset", Select).clear()
                await self.load_presets()

        self.app.push_screen(Confirm(f"Delete the preset {name!r}?", "Delete"), delete)

    def edit(self, job: JobSummary) -> None:
        """Fill the form from a past job (edit and re-run)."""
        params = dict(job.params)
        self.fill(params, prompt=params.pop("prompt", job.prompt))
