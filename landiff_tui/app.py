"""`landiff-tui`: the Textual app. A client of the engine: everything it shows comes over the socket."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from asyncio import gather
from typing import TYPE_CHECKING, Any, cast

from textual import on
from textual.app import App, ComposeResult
from textual.containers import Container

from engine import __version__
from engine.wire import RemoteError

from .client import ABSENT, LOST, STARTING, STOPPED, EngineLink
from .config import Config
from .keymap import PALETTE, TABS, apply_keys, bindings, key_name, key_of, tab_key
from .messages import EngineConnected, EngineLost, JobEnded, JobQueued, TransferEnded, message_for
from .views.base import View
from .views.generate import GenerateView
from .widgets.deferred import add_later_css, mount_later_view
from .widgets.tabbed import TabbedViews

if TYPE_CHECKING:
    from engine.protocol import AnyEvent, HelloReply, R, Request, SubscribeReply

    from .notify import JobEndNotices
    from .views.queue import QueueView
    from .widgets.weights_banner import WeightsBanner

# the other tabs' views: imported and mounted into their panes after the first frame, which shows the
# Generate tab
DEFERRED = {
    "queue": "landiff_tui.views.queue:QueueView",
    "gallery": "landiff_tui.views.gallery:GalleryView",
    "weights": "landiff_tui.views.weights:WeightsView",
    "engine": "landiff_tui.views.engine_view:EngineView",
}


def start_hint() -> str:
    return f"{key_of('engine', 'restart')} on the Engine tab ({tab_key('engine')}) starts one"


def landiff_commands() -> type:
    """The command palette's provider, imported when the palette first opens rather than before the first
    frame (Textual takes a function returning the provider class in COMMANDS)."""
    from .commands import LanDiffCommands

    return LanDiffCommands


class LanDiffApp(App):
    TITLE = "LanDiff"
    CSS_PATH = "app.tcss"
    COMMANDS = App.COMMANDS | {landiff_commands}
    AUTO_FOCUS = "#prompt"  # typing lands in the prompt from the first frame
    BINDINGS = bindings("app")
    COMMAND_PALETTE_BINDING = PALETTE.keys[0]

    def __init__(
        self,
        model: str | None = None,
        link: Any = None,
        autostart: bool = True,
        gc_paused: bool = False,
        desktop_notify: bool = True,
        config: Config | None = None,
    ):
        """`gc_paused`: the caller disabled the garbage collector for the start-up; the app enables it
        again once every tab is mounted (see `main`). `desktop_notify`: a job's end is also told on the
        desktop through the terminal (landiff_tui/notify.py). `config`: the user's config.toml
        (`landiff_tui.config.load`); None: the defaults, the keymap as it is and no form kept."""
        if config is not None:  # before Textual copies the app's bindings (and the views are made)
            apply_keys(config.keys)
        self.config = config or Config(state=None)
        super().__init__()
        if self.config.theme is not None:
            self.theme = self.config.theme
        model = model or self.config.model
        self.model = model
        self.gc_paused = gc_paused
        self.job_notices: JobEndNotices | None = None
        if desktop_notify:
            from .notify import JobEndNotices

            self.job_notices = JobEndNotices()
        if link is None:
            link = EngineLink(
                self.engine_event, self.engine_connected, self.engine_state, model=model, autostart=autostart
            )
            from engine.settings import ENGINE_ARGS

            if self.config.engine_options and ENGINE_ARGS.raw() is None:  # the variable wins over the file
                link.options = list(self.config.engine_options)
        else:  # a link made elsewhere (tests) reports to this app
            link.on_event, link.on_connected, link.on_state = (
                self.engine_event,
                self.engine_connected,
                self.engine_state,
            )
        self.link: EngineLink = link
        self.engine_info: HelloReply | None = None
        self.weights_offer_declined = False  # the banner's Later: not offered again

    def compose(self) -> ComposeResult:
        # the first frame has the Generate tab's pane; the header, the tab strip, the footer and the other
        # panes' views come right after it (`mount_later`), into the rows and panes kept for them
        yield Container(id="header-row")
        panes = [Container(GenerateView(), id="generate", classes="tab-pane")]
        panes += [Container(id=tab, classes="tab-pane") for tab in DEFERRED]
        yield TabbedViews({tab: tab_title(tab) for tab, _ in TABS}, *panes, initial="generate", id="tabs")

    def on_mount(self) -> None:
        self.sub_title = "connecting to the engine..."
        if self.config.errors:
            self.notify(
                "\n".join(self.config.errors),
                title="config.toml not applied: the defaults run",
                severity="error",
                timeout=30,
            )
        self.call_after_refresh(self.mount_later)
        self.call_after_refresh(self.start_link)

    async def mount_later(self) -> None:
        """After the first frame: the header, the tab strip and the footer, awaited together (the screen,
        which runs this after its refresh, draws again once they are all there, not after each); the other
        tabs' views, which are hidden, after the frames that show them."""
        from textual.widgets import Footer, Header

        main = self.screen_stack[0]  # the main screen, though a dialog opened already
        await gather(
            main.query_one("#header-row").mount(Header()),
            main.query_one(TabbedViews).mount_strip(),
            main.mount(Footer()),
        )
        # the footer lists its keys a refresh after it mounts; the hidden views wait for that frame too
        self.call_after_refresh(self.call_after_refresh, self.mount_views)

    async def mount_views(self) -> None:
        """The other tabs' rules and views, into their (hidden) panes."""
        add_later_css(self)
        main = self.screen_stack[0]
        await gather(*(mount_later_view(main.query_one(f"#{tab}"), path) for tab, path in DEFERRED.items()))

    def push_screen(self, *args: Any, **kwargs: Any) -> Any:
        add_later_css(self)  # the dialogs' rules, even for one opened before `mount_later` ran
        return super().push_screen(*args, **kwargs)

    def start_link(self) -> None:
        """Connect once every tab and the whole form are mounted (after the first frame): each gets the
        state."""
        views = self.views
        if len(views) < len(TABS) or not all(view.is_mounted and view.complete for view in views):
            self.call_after_refresh(self.start_link)
            return
        if self.gc_paused:
            # what the start-up made lives as long as the app: later collections need not walk it
            gc.freeze()
            gc.enable()
            self.gc_paused = False
        self.link.start()

    async def on_unmount(self) -> None:
        await self.link.close()

    @property
    def views(self) -> list[View]:
        return list(self.query(View))

    # engine link callbacks (on the app's loop): each becomes a message to the app and to every view

    def broadcast(self, make) -> None:
        for recipient in (self, *self.views):
            recipient.post_message(make())

    def engine_event(self, event: AnyEvent) -> None:
        self.broadcast(lambda: message_for(event))

    def engine_connected(self, hello: HelloReply, caught_up: SubscribeReply) -> None:
        self.engine_info = hello
        self.sub_title = f"engine: {hello.model} model, pid {hello.pid}"
        if hello.engine_version != __version__:  # a detached engine outlives an upgrade of landiff-tui
            self.notify(
                f"the engine runs version {hello.engine_version}, this landiff-tui {__version__}: "
                f"restart the engine (Engine tab: {key_of('engine', 'restart')})",
                severity="warning",
                timeout=15,
            )
        self.broadcast(lambda: EngineConnected(hello, caught_up.active, caught_up.gap))
        self.run_worker(self.check_weights(), exclusive=True, group="weights-check")
        self.run_worker(self.name_workers(hello), exclusive=True, group="header-workers")

    async def name_workers(self, hello: HelloReply) -> None:
        """The header names the engine's workers when it has several (`serve --gpus`: one a GPU)."""
        from engine.protocol import Status

        try:
            status = await self.link.call(Status())
        except RemoteError:
            return
        labels = [worker.label for worker in status.workers]
        said = f"engine: {hello.model} model, pid {hello.pid}"
        if len(labels) > 1 and self.sub_title == said:  # still connected to the engine that said hello
            self.sub_title = f"{said}, {len(labels)} workers: {', '.join(labels)}"
        elif not labels and status.no_worker and self.sub_title == said:
            self.sub_title = f"{said}, no worker: {status.no_worker}"

    def engine_state(self, state: str, message: str) -> None:
        self.sub_title = {
            STARTING: message,
            LOST: "engine lost: reconnecting...",
            ABSENT: f"no engine is running: {start_hint()}",
        }.get(state, f"engine stopped: {start_hint()}")
        self.broadcast(lambda: EngineLost(state, message))
        if state == STOPPED:
            self.notify(message or "the engine stopped", severity="error", timeout=15)
        elif state == LOST:
            self.notify(message, severity="warning")

    def on_engine_connected(self, message: EngineConnected) -> None:
        if self.job_notices is not None:  # the jobs alive now: their ends are told on the desktop
            self.job_notices.saw_active(message.active)

    def on_job_queued(self, message: JobQueued) -> None:
        if self.job_notices is not None:
            self.job_notices.saw(message.event.job_id, message.event.prompt)

    def on_job_ended(self, message: JobEnded) -> None:
        from engine.protocol import JobCancelledEvent, JobFailedEvent, JobFinishedEvent

        event = message.event
        if self.job_notices is not None and (notice := self.job_notices.ended(event)):
            from .notify import notify_desktop

            notify_desktop(self, *notice)
        if isinstance(event, JobFinishedEvent):
            self.notify(f"a video is ready: see the Gallery ({tab_key('gallery')})", title="job finished")
        elif isinstance(event, JobCancelledEvent) and event.partial:
            kept = "the finished chunks are kept"
            if event.chunks_done is not None and event.chunks is not None:
                kept = f"{event.chunks_done} of {event.chunks} chunks kept"
                kept += f" ({event.frames} frames)" if event.frames is not None else ""
            self.notify(f"cancelled: {kept} as a shorter video in the Gallery", timeout=8)
        elif isinstance(event, JobFailedEvent):
            self.notify(event.error, title="job failed", severity="error", timeout=10)

    async def check_weights(self) -> None:
        """Weights missing for the model served: a banner offers to download them or to try the tiny model
        (`WeightsBanner`: it takes no key, as the engine answers while the user may be typing a prompt); it
        goes once they are complete, or the engine serves the tiny model."""
        if self.engine_info is None:
            return
        if self.engine_info.random_weights:
            await self.hide_weights_banner()
            return
        from engine.protocol import WeightsStatus

        try:
            status = await self.link.call(WeightsStatus())
        except RemoteError:
            return
        if status.complete:
            await self.hide_weights_banner()
        elif not self.weights_offer_declined:
            await self.show_weights_banner(status.root)

    async def show_weights_banner(self, root: str) -> None:
        from .widgets.weights_banner import WeightsBanner

        main = self.screen_stack[0]
        shown = main.query(WeightsBanner)
        if shown:
            shown.first().show_root(root)
            return
        add_later_css(self)
        await main.mount(WeightsBanner(root), after=main.query_one("#header-row"))

    async def hide_weights_banner(self) -> None:
        for banner in self.screen_stack[0].query("#weights-banner"):
            await banner.remove()

    async def on_weights_banner_chosen(self, message: WeightsBanner.Chosen) -> None:
        """The banner's answer (WeightsBanner.Chosen): "download", the name of a model to try instead, or
        None (later: not offered again while this TUI runs; the Weights tab and the palette still do)."""
        if message.choice is None:
            self.weights_offer_declined = True
            await self.hide_weights_banner()
            self.notify(
                f"the Weights tab ({tab_key('weights')}) downloads them when you want; the command palette "
                f"({key_name(PALETTE.keys[0])}) switches the engine to the tiny model"
            )
        elif message.choice == "download":
            from .views.weights import WeightsView

            self.action_show_tab("weights")
            await self.query_one(WeightsView).action_download()
        else:
            await self.switch_model(message.choice)

    def on_transfer_ended(self, message: TransferEnded) -> None:
        """A download finished (or failed): the banner goes if the weights are complete now."""
        self.run_worker(self.check_weights(), exclusive=True, group="weights-check")

    async def switch_model(self, model: str) -> None:
        """Stop this engine (when idle) and start one serving `model`."""
        from engine.protocol import Status

        try:
            status = await self.link.call(Status())
            if status.running or status.queue:
                self.notify(
                    "the engine has jobs; cancel them or wait before switching model", severity="error"
                )
                return
        except RemoteError as error:
            self.notify(str(error), severity="error")
            return
        self.run_worker(self.restart_engine(model), group="engine-start")

    async def restart_engine(self, model: str | None = None) -> None:
        """Bring the engine back: restart the running one, or start one when none answers (the header
        says which); `model` defaults to the one this app asked for or last saw."""
        if model is None and self.engine_info is not None:
            model = self.engine_info.model
        try:
            await self.link.restart(model)
        except RemoteError as error:
            self.notify(str(error), title="engine", severity="error")

    # actions

    def action_keys(self) -> None:
        from .screens.keys import Keys

        self.push_screen(Keys(self.query_one(TabbedViews).active))

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedViews).active = tab
        views = self.query_one(f"#{tab}").query(".view")
        if views:
            views.first(View).focus_default()
        # else: pressed before the tab mounted (right after launch); the view takes the focus on mount

    @on(TabbedViews.TabActivated)
    def tab_shown(self, event: TabbedViews.TabActivated) -> None:
        views = event.pane.query(".view")
        if views:
            views.first(View).shown()

    async def action_quit(self) -> None:
        """Quit; with a job running, ask first (it goes on in the engine). One question at most: ctrl+q
        again while it is open leaves it as it is, and a dialog open before (another question, the key list,
        the palette) gives way to it rather than lying under it."""
        from textual.screen import ModalScreen

        from .screens.confirm import Confirm

        if any(isinstance(screen, Confirm) and screen.purpose == "quit" for screen in self.screen_stack):
            return
        queue = self.query("QueueView")  # not there yet when ctrl+q comes with the first frame
        if not queue or cast("QueueView", queue.first()).running is None:
            self.exit()
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.exit(message="the running job continues in the engine; `landiff-tui` shows it again")

        question = Confirm("A job is running. It continues in the engine after you quit. Quit?", "Quit")
        question.purpose = "quit"
        while isinstance(self.screen, ModalScreen) and len(self.screen_stack) > 1:
            self.screen.dismiss(None)  # its No (a question), its cancel (a name asked for)
        self.push_screen(question, answered)

    async def call_engine(self, request: Request[R]) -> R | None:
        """The request's reply model; a refusal becomes a notification with the engine's message (and None).

        None too when the app began to close meanwhile: the widgets that would show the reply are going.
        """
        try:
            reply = await self.link.call(request)
        except RemoteError as error:
            from engine.protocol import type_name

            title = type_name(type(request)).replace("_", " ")
            self.notify(str(error), title=title, severity="error", timeout=10)
            return None
        return reply if self.is_running else None


def tab_title(tab: str) -> str:
    label = next(label for tab_id, label in TABS if tab_id == tab)
    return f"{tab_key(tab)} {label}"


def main(argv: list[str] | None = None) -> int:
    from engine.settings import CONFIG_DIR

    from . import config as user_config

    parser = argparse.ArgumentParser(
        prog="landiff-tui",
        description="LanDiff text-to-video in the terminal",
        epilog=f"configuration: {user_config.config_path()} (keys, theme, the form kept between launches, "
        f"engine options; see the README's Configuration file; {CONFIG_DIR.name} moves the folder)",
    )
    parser.add_argument(
        "--model",
        choices=("landiff", "tiny"),
        default=None,
        help="the model the engine serves (tiny: random toy weights, runs on a CPU); "
        "default: whatever engine is running, else landiff",
    )
    parser.add_argument(
        "--no-start", action="store_true", help="only connect: wait for an engine instead of starting one"
    )
    parser.add_argument(
        "--no-notify",
        dest="notify",
        action="store_false",
        help="tell a job's end only inside the app, not on the desktop through the terminal (OSC 99, OSC 9 "
        "or OSC 777 where the terminal takes one, else the bell)",
    )
    args = parser.parse_args(argv)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print(
            "landiff-tui needs a terminal (run it in one, or over ssh -t). Without one, use the engine's "
            "command line: landiff-engine submit/jobs/show (see landiff-engine --help).",
            file=sys.stderr,
        )
        return 2
    gc.disable()  # already off when started as `landiff-tui` (see __main__.py); start_link turns it on
    from .widgets import terminal_image

    if terminal_image.graphics_hinted(os.environ):  # asked before Textual reads the keyboard; others: none
        terminal_image.detect()
    config = user_config.load()
    for line in config.errors:  # said here (seen after the app quits) and in the app
        print(f"landiff-tui: {line}; running with the defaults", file=sys.stderr)
    app = LanDiffApp(
        model=args.model,
        autostart=not args.no_start,
        gc_paused=True,
        desktop_notify=args.notify,
        config=config,
    )
    app.run()
    if app.return_code:
        return app.return_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
