"""Weights: every release file's state, and download / verify / cancel with progress, through the engine."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Label, ProgressBar, Static

from .base import View

ENDED = {
    "download_finished",
    "download_failed",
    "download_cancelled",
    "verify_finished",
    "verify_failed",
    "verify_cancelled",
}


def mib(count: int | None) -> str:
    return "" if count is None else f"{count / 2**20:,.1f} MiB"


class WeightsView(View):
    FOCUS = "#weights-table"
    BINDINGS = [
        Binding("d", "download", "Download"),
        Binding("v", "verify", "Verify"),
        Binding("x", "cancel", "Cancel transfer"),
        Binding("r", "refresh", "Refresh"),
    ]

    def compose(self) -> ComposeResult:
        yield Static("", id="weights-root")
        table = DataTable(id="weights-table", cursor_type="row", zebra_stripes=True)
        table.add_columns("state", "size", "file")
        yield table
        yield Label("", id="weights-activity")
        yield ProgressBar(id="weights-progress", total=None, show_eta=True)

    def on_mount(self) -> None:
        self.query_one("#weights-progress").display = False

    def shown(self) -> None:
        self.run_worker(self.action_refresh(), exclusive=True, group="weights")

    def engine_connected(self, hello: dict[str, Any]) -> None:
        self.run_worker(self.action_refresh(), exclusive=True, group="weights")

    def engine_event(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if not kind.startswith(("download_", "verify_")):
            return
        bar = self.query_one("#weights-progress", ProgressBar)
        activity = self.query_one("#weights-activity", Label)
        if kind in ("download_started", "verify_started"):
            bar.display = True
            bar.update(total=None, progress=0)
            activity.update(f"{kind.split('_')[0]}ing into {event['root']} (x: cancel)")
        elif kind == "download_progress":
            bar.display = True
            bar.update(total=event["total"] or None, progress=event["done"])
            rate = event.get("rate") or 0
            done, total = mib(event["file_done"]), mib(event["file_total"])
            activity.update(f"{event['file']}: {done} of {total}  {rate / 2**20:.1f} MiB/s")
        elif kind == "verify_progress":
            bar.display = True
            bar.update(total=event["total"] or None, progress=event["done"])
            activity.update(f"verifying {event['file']}")
        elif kind in ENDED:
            bar.display = False
            activity.update(describe_end(event))
            severity = (
                "information"
                if kind.endswith("finished") and not event.get("failed") and not event.get("mismatched")
                else "warning"
            )
            self.notify(describe_end(event), title="weights", severity=severity, timeout=10)
            self.run_worker(self.action_refresh(), exclusive=True, group="weights")

    async def action_refresh(self) -> None:
        status = await self.call("weights_status")
        if status is None:
            return
        looked = ", ".join(
            f"{p['rule']} ({'used' if p['chosen'] else 'there' if p['applies'] else 'not there'})"
            for p in status["looked"]
        )
        verdict = "complete" if status["complete"] else "INCOMPLETE (d: download)"
        self.query_one("#weights-root", Static).update(
            f"{status['model']} weights in {status['root']}: {verdict}\nlooked at: {looked}"
        )
        table = self.query_one("#weights-table", DataTable)
        table.clear()
        for item in status["files"]:
            table.add_row(item["state"], mib(item["size"]), item["local"], key=item["local"])

    async def action_download(self) -> None:
        if await self.call("download_weights", only="all") is not None:
            self.notify("the engine is downloading; it goes on if you quit the TUI")

    async def action_verify(self) -> None:
        if await self.call("verify_weights", only="all") is not None:
            self.notify("verifying every present file (it reads them all)")

    async def action_cancel(self) -> None:
        if await self.call("cancel_download") is not None:
            self.notify("cancelling; partial files stay and resume next time")


def describe_end(event: dict[str, Any]) -> str:
    kind = event["event"]
    if kind == "download_finished":
        text = f"download finished: {len(event['fetched'])} fetched, {event['skipped']} already there"
        if event.get("failed"):
            text += f"; failed (removed, download again): {', '.join(event['failed'])}"
        return text
    if kind == "verify_finished":
        bad = event.get("mismatched") or []
        return f"verified {event['checked']} file(s)" + (
            f"; mismatched: {', '.join(bad)}" if bad else ": all match"
        )
    return event.get("error") or event.get("message") or kind.replace("_", " ")
