"""Command-palette entries: every action of every tab, by name and with its key (from the keymap), offered
only where it applies now."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, cast

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.content import Content

from .keymap import KEYMAP, key_name, show_tab


class PaletteApp(Protocol):
    """What the palette uses of the app (landiff_tui.app.LanDiffApp), named here so that this module, which
    the app imports, imports nothing of it."""

    link: Any  # .connected
    engine_info: Any  # .model, or None before the engine said hello
    screen: Any

    def query(self, selector: str) -> Any: ...
    def query_one(self, selector: str) -> Any: ...
    def pop_screen(self) -> Any: ...
    def action_show_tab(self, tab: str) -> None: ...
    def action_keys(self) -> None: ...
    def switch_model(self, model: str) -> Any: ...


@dataclass
class Entry:
    name: str
    tab: str | None  # the tab it shows first, if any
    action: str | Callable[[PaletteApp], Any]  # a view action's name (on `tab`), or a function of the app
    applies: Callable[[PaletteApp], bool] = lambda app: True
    bound: tuple[str, str] | None = None  # (scope, action) of the keymap, for a function's key

    def key(self) -> str | None:
        """The key that does the same outside the palette, as the keymap has it now; None if there is none."""
        if self.bound is not None:
            scope, action = self.bound
        elif self.tab is None or callable(self.action):
            return None
        elif self.action == "focus_default":  # the tab's own entry: showing it
            scope, action = "app", show_tab(self.tab)
        else:
            scope, action = self.tab, self.action
        keys = KEYMAP.get(scope, {}).get(action)
        return key_name(keys.keys[0]) if keys is not None else None


def view(app: PaletteApp, tab: str) -> Any:
    """The tab's view, or None before it is mounted (the tabs mount right after the first frame)."""
    found = app.query(f"#{tab} .view")
    return found.first() if found else None


def selected_job(app: PaletteApp) -> Any:
    gallery = view(app, "gallery")
    return gallery.selected(quiet=True) if gallery is not None else None


def connected(app: PaletteApp) -> bool:
    return app.link.connected


def entries(app: PaletteApp) -> Iterator[Entry]:
    generate = view(app, "generate")
    yield Entry("Generate: go to the prompt", "generate", "focus_default")
    yield Entry("Submit the prompt", "generate", "submit")
    yield Entry("Random seed", "generate", "random_seed")
    yield Entry("Save the parameters as a preset", "generate", "save_preset")
    if generate is not None:
        for name in generate.presets:
            yield Entry(f"Apply the preset {name!r}", "generate", partial(choose, name=name))
    chosen = generate is not None and any(isinstance(box.value, str) for box in generate.query("#preset"))
    yield Entry("Delete the selected preset", "generate", "delete_preset", lambda app: chosen)
    yield Entry("Queue: running and queued jobs", "queue", "focus_default")
    queue = view(app, "queue")
    has_jobs = queue is not None and bool(queue.jobs)
    yield Entry("Cancel a queued or running job", "queue", "cancel_job", lambda app: has_jobs)
    queued = queue is not None and any(job.status == "queued" for job in queue.jobs.values())
    yield Entry("Move the chosen queued job up", "queue", "move_job('up')", lambda app: queued)
    yield Entry("Move the chosen queued job down", "queue", "move_job('down')", lambda app: queued)
    yield Entry("Run the chosen queued job next", "queue", "move_job('top')", lambda app: queued)
    paused = queue is not None and queue.paused
    yield Entry(
        "Resume the queue" if paused else "Pause the queue (the running job finishes)", "queue", "pause_queue"
    )
    yield Entry("Gallery: past jobs", "gallery", "focus_default")
    yield Entry("Search the prompts of past jobs", "gallery", "focus_search")
    gallery = view(app, "gallery")
    marked = len(gallery.marked_jobs()) if gallery is not None else 0
    yield Entry("Clear the gallery's marks" if marked else "Clear the gallery's search", "gallery", "clear")
    yield Entry("Sort the gallery by its next column", "gallery", "sort")
    yield Entry("Reverse the gallery's order", "gallery", "reverse")
    yield Entry("Mark every job in the gallery (or none)", "gallery", "mark_all")
    if marked:
        yield Entry(f"Re-run the {marked} marked jobs", "gallery", "rerun")
        yield Entry(f"Delete the {marked} marked jobs and their files", "gallery", "delete")
    job = selected_job(app)
    if job is not None:
        short = f"{job.id[:8]} ({job.prompt[:30]!r})"
        yield Entry(f"Open job {short}", "gallery", "open")
        yield Entry(f"Mark or unmark job {short}", "gallery", "mark")
        if not marked:  # with jobs marked, re-run and delete act on them
            yield Entry(f"Re-run job {short}", "gallery", "rerun")
        yield Entry(f"Edit and re-run job {short}", "gallery", "edit")
        yield Entry(f"Copy the prompt of job {short}", "gallery", "copy_prompt")
        if job.video_path:
            yield Entry(f"Copy the video path of job {short}", "gallery", "copy_path")
            yield Entry(f"Play the video of job {short}", "gallery", "play")
        if not marked:
            yield Entry(f"Delete job {short} and its files", "gallery", "delete")
    weights = view(app, "weights")
    generated = weights is not None and weights.status is not None and weights.status.generated
    yield Entry("Weights: status, download, verify", "weights", "focus_default")
    yield Entry(
        "Generate the tiny model's weights" if generated else "Download the weights",
        "weights",
        "download",
        connected,
    )
    yield Entry(
        "Download the weights from ModelScope",
        "weights",
        "download('modelscope')",
        lambda app: connected(app) and not generated,
    )
    yield Entry("Verify the weights", "weights", "verify", connected)
    yield Entry(
        "Cancel the download or verification",
        "weights",
        "cancel",
        lambda app: connected(app) and weights is not None and weights.busy,
    )
    yield Entry("Refresh the weights' states", "weights", "refresh", connected)
    yield Entry("Engine: status and log", "engine", "focus_default")
    yield Entry("Restart the engine" if connected(app) else "Start the engine", "engine", "restart")
    yield Entry("Stop the engine", "engine", "stop", connected)
    yield Entry("Release the models from memory", "engine", "release", connected)
    yield Entry("Refresh the engine's status and log", "engine", "refresh", connected)
    info = app.engine_info if connected(app) else None
    if info is not None and not info.random_weights:
        yield Entry("Switch the engine to the tiny model", None, lambda app: app.switch_model("tiny"))
    if info is not None and info.random_weights:
        yield Entry("Switch the engine to the landiff model", None, lambda app: app.switch_model("landiff"))
    yield Entry("Keys: every key of every tab", None, lambda app: app.action_keys(), bound=("app", "keys"))


def choose(app: PaletteApp, name: str) -> None:
    app.query_one("#preset").value = name


def with_key(name: Content, entry: Entry) -> Content:
    """An entry as the palette lists it: "Cancel a queued or running job  [x]"."""
    key = entry.key()
    return name if key is None else Content.assemble(name, "  ", (f"[{key}]", "dim"))


class LanDiffCommands(Provider):
    @property
    def landiff(self) -> PaletteApp:
        """The app, a LanDiffApp: it alone names this provider in its COMMANDS."""
        return cast(PaletteApp, self.app)

    def applicable(self) -> list[Entry]:
        return [entry for entry in entries(self.landiff) if entry.applies(self.landiff)]

    async def discover(self) -> Hits:
        for entry in self.applicable():
            shown = with_key(Content(entry.name), entry)
            yield DiscoveryHit(shown, lambda entry=entry: self.run(entry), text=entry.name)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for entry in self.applicable():
            score = matcher.match(entry.name)
            if score > 0:
                shown = with_key(matcher.highlight(entry.name), entry)
                yield Hit(score, shown, lambda entry=entry: self.run(entry), text=entry.name)

    async def run(self, entry: Entry) -> None:
        app = self.landiff
        from .screens.job_detail import JobDetail

        while isinstance(app.screen, JobDetail):  # the palette acts on the tabs, not on a job's page
            app.pop_screen()
        if entry.tab is not None:
            app.action_show_tab(entry.tab)
        if callable(entry.action):
            result = entry.action(app)
            if hasattr(result, "__await__"):
                await result
        elif entry.action != "focus_default":
            assert entry.tab is not None  # a view's action names its tab
            await view(app, entry.tab).run_action(entry.action)
