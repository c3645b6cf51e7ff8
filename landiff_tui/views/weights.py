"""Weights: every release file's state, and download / verify / cancel with progress, through the engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.widgets import DataTable, Label, ProgressBar, Static

from ..keymap import bindings, key_of
from ..messages import EngineConnected, TransferEnded, TransferProgressed, TransferStarted
from ..screens.confirm import Confirm
from ..widgets.lists import ListTable
from .base import View

if TYPE_CHECKING:
    from engine.protocol import WeightsSource, WeightsStatusReply

    from ..messages import TransferEndedEvent


def mib(count: int | None) -> str:
    return "" if count is None else f"{count / 2**20:,.1f} MiB"


def short_paths(paths: list[str], width: int) -> dict[str, str]:
    """Each path as the table shows it in about `width` columns: whole when it fits, else its top folder,
    "…", its file's folder and name, and as many parts between as fit; so that files of one name in
    different folders (three special_tokens_map.json: the release's T5's, flan-T5's, CLIP's) are told
    apart at 80 columns, where whole paths run past the table's right edge."""
    shown = {}
    for path in paths:
        parts = path.split("/")
        text = path
        if len(path) > width and len(parts) > 3:
            tail = "/".join(parts[-2:])
            for part in reversed(parts[1:-2]):
                if len(f"{parts[0]}/…/{part}/{tail}") > width:
                    break
                tail = f"{part}/{tail}"
            text = f"{parts[0]}/…/{tail}"
        shown[path] = text
    counts: dict[str, int] = {}
    for text in shown.values():
        counts[text] = counts.get(text, 0) + 1
    return {path: text if counts[text] == 1 else path for path, text in shown.items()}  # never two alike


# the tiny model's files are written on this machine: their states in those words
GENERATED_STATES = {"verified": "generated", "present": "generated", "missing": "to generate"}


class WeightsView(View):
    FOCUS = "#weights-table"
    BINDINGS = bindings("weights")

    def __init__(self) -> None:
        super().__init__()
        self.status: WeightsStatusReply | None = None
        self.busy = False  # a download or verification is running

    def compose(self) -> ComposeResult:
        yield Static("", id="weights-root")
        table: DataTable[str] = ListTable(id="weights-table", cursor_type="row", zebra_stripes=True)
        table.add_columns("state", "size", "file")
        yield table
        yield Label("", id="weights-activity")
        yield ProgressBar(id="weights-progress", total=None, show_eta=True)

    def on_mount(self) -> None:
        self.query_one("#weights-progress").display = False

    def shown(self) -> None:
        self.run_worker(self.action_refresh(), exclusive=True, group="weights")

    def on_engine_connected(self, message: EngineConnected) -> None:
        self.run_worker(self.action_refresh(), exclusive=True, group="weights")

    def on_transfer_started(self, message: TransferStarted) -> None:
        from engine.protocol import DownloadStartedEvent

        self.busy = True
        bar = self.query_one("#weights-progress", ProgressBar)
        bar.display = True
        bar.update(total=None, progress=0)
        doing = "downloading" if isinstance(message.event, DownloadStartedEvent) else "verifying"
        cancel = key_of("weights", "cancel")
        self.query_one("#weights-activity", Label).update(
            f"{doing} into {message.event.root} ({cancel}: cancel)"
        )

    def on_transfer_progressed(self, message: TransferProgressed) -> None:
        from engine.protocol import DownloadProgressEvent

        event = message.event
        bar = self.query_one("#weights-progress", ProgressBar)
        bar.display = True
        bar.update(total=event.total or None, progress=event.done)
        if isinstance(event, DownloadProgressEvent):
            done, total = mib(event.file_done), mib(event.file_total)
            text = f"{event.file}: {done} of {total}  {event.rate / 2**20:.1f} MiB/s"
        else:
            text = f"verifying {event.file}"
        self.query_one("#weights-activity", Label).update(text)

    def on_transfer_ended(self, message: TransferEnded) -> None:
        from engine.protocol import DownloadFinishedEvent, VerifyFinishedEvent

        event = message.event
        self.busy = False
        self.query_one("#weights-progress", ProgressBar).display = False
        text = describe_end(event)
        self.query_one("#weights-activity", Label).update(text)
        clean = (isinstance(event, DownloadFinishedEvent) and not event.failed) or (
            isinstance(event, VerifyFinishedEvent) and not event.mismatched
        )
        self.notify(text, title="weights", severity="information" if clean else "warning", timeout=10)
        self.run_worker(self.action_refresh(), exclusive=True, group="weights")

    async def action_refresh(self) -> None:
        from engine.protocol import WeightsStatus

        status = await self.call(WeightsStatus())
        if status is None:
            return
        self.status, self.busy = status, status.busy
        looked = ", ".join(
            f"{p.rule} ({'used' if p.chosen else 'there' if p.applies else 'not there'})"
            for p in status.looked
        )
        download = key_of("weights", "download")
        if status.generated:
            verdict = "generated" if status.complete else f"not written yet ({download}: generate them)"
            head = f"{status.model} weights in {status.root}: random, made on this machine; {verdict}"
        elif status.random_weights:
            verdict = "complete" if status.complete else "not there yet: the engine's first job makes them"
            head = f"tiny weights (random, made on this machine) in {status.root}: {verdict}"
        else:
            verdict = "complete" if status.complete else f"INCOMPLETE ({download}: download)"
            head = f"{status.model} weights in {status.root}: {verdict}"
        self.query_one("#weights-root", Static).update(f"{head}\nlooked at: {looked}")
        table = self.query_one("#weights-table", DataTable)
        table.clear()
        # the file's column gets what the state's and the size's leave: about 44 at 80 columns
        paths = short_paths([item.local for item in status.files], max(44, table.size.width - 34))
        for item in status.files:
            state = GENERATED_STATES.get(item.state, item.state) if status.generated else item.state
            if item.optional:  # the quality probe's CLIP: `landiff-engine weights download --clip`
                state += " (optional)"
            table.add_row(state, mib(item.size), paths[item.local], key=item.local)

    async def action_download(self, source: WeightsSource = "huggingface") -> None:
        """Make the weights present: the tiny model's are generated here, the release's downloaded (from
        `source`: the Hugging Face hub or ModelScope, checked against the same sums); either asks first (a
        download takes long and much disk; writing files over others is not undone)."""
        from engine.protocol import DownloadWeights, WeightsStatus

        status = self.status or await self.call(WeightsStatus())
        if status is None:
            return
        if status.generated:
            self.ask_to_generate(status)
            return
        if status.complete:
            self.notify(
                f"every file is there; {key_of('weights', 'verify')} verifies them", severity="information"
            )
            return

        async def answered(yes: bool | None) -> None:
            if yes and await self.call(DownloadWeights(only="all", source=source)) is not None:
                self.notify("the engine is downloading; it goes on if you quit the TUI")

        if status.random_weights:  # an engine that does not write them itself (a checksum list is set)
            question = (
                "The tiny model's random weights are made on this machine by the engine's first job (or "
                "`landiff-engine tiny`). Fetch them from the hub (HF_ENDPOINT) instead?"
            )
        else:
            server = (
                "ModelScope (MODELSCOPE_ENDPOINT)" if source == "modelscope" else "Hugging Face (HF_ENDPOINT)"
            )
            question = (
                f"Download the missing {status.model} weights from {server} into {status.root}? About 25 GB "
                "for the whole release; partial files resume, and the engine goes on if you quit."
            )
        self.app.push_screen(Confirm(question, "Download"), answered)

    def ask_to_generate(self, status: WeightsStatusReply) -> None:
        """The tiny model's weights: made on this machine in seconds, but written over what is there, so
        it asks first, saying how many files there are and how many are missing."""
        from engine.protocol import DownloadWeights

        async def answered(yes: bool | None) -> None:
            if yes and await self.call(DownloadWeights(only="all")) is not None:
                self.notify("the engine is writing the tiny model's random weights")

        count = len(status.files)
        missing = sum(item.state == "missing" for item in status.files)
        there = (
            "none is there yet"
            if missing == count
            else f"{missing} missing; those there that do not check out are written again"
            if missing
            else "all are there; those that do not check out are written again"
        )
        question = (
            f"Write the tiny model's random weights into {status.root}? {count} files ({there}). They are "
            "toy weights that make noise videos, made on this machine in a few seconds."
        )
        self.app.push_screen(Confirm(question, "Write"), answered)

    async def action_verify(self) -> None:
        from engine.protocol import VerifyWeights

        if await self.call(VerifyWeights(only="all")) is not None:
            self.notify("verifying every present file (it reads them all)")

    async def action_cancel(self) -> None:
        from engine.protocol import CancelDownload

        if await self.call(CancelDownload()) is not None:
            self.notify("cancelling; partial files stay and resume next time")


def describe_end(event: TransferEndedEvent) -> str:
    from engine.job_words import download_words
    from engine.protocol import DownloadFinishedEvent, VerifyFinishedEvent, WeightsJobFailed

    if isinstance(event, DownloadFinishedEvent):
        text = download_words(event)
        if event.failed:
            text += f"; failed (removed, download again): {', '.join(event.failed)}"
        return text if event.generated else f"download finished: {text}"
    if isinstance(event, VerifyFinishedEvent):
        bad = event.mismatched
        return f"verified {event.checked} file(s)" + (
            f"; mismatched: {', '.join(bad)}" if bad else ": all match"
        )
    return event.error if isinstance(event, WeightsJobFailed) else event.message
