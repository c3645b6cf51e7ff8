"""Command-palette entries: every app-level action, by name."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

ENTRIES = [
    ("Generate: go to the prompt", "show_tab", ("generate",)),
    ("Queue: running and queued jobs", "show_tab", ("queue",)),
    ("Gallery: past jobs", "show_tab", ("gallery",)),
    ("Weights: status, download, verify", "show_tab", ("weights",)),
    ("Engine: status and log", "show_tab", ("engine",)),
    ("Submit the prompt", "view:generate:submit", ()),
    ("Random seed", "view:generate:random_seed", ()),
    ("Save the parameters as a preset", "view:generate:save_preset", ()),
    ("Delete the selected preset", "view:generate:delete_preset", ()),
    ("Cancel the running job", "view:queue:cancel_job", ()),
    ("Download the weights", "view:weights:download", ()),
    ("Verify the weights", "view:weights:verify", ()),
    ("Cancel the download or verification", "view:weights:cancel", ()),
    ("Restart the engine", "view:engine:restart", ()),
    ("Stop the engine", "view:engine:stop", ()),
    ("Release the models from memory", "view:engine:release", ()),
    ("Switch the engine to the tiny model", "switch_tiny", ()),
]


class LanDiffCommands(Provider):
    async def discover(self) -> Hits:
        for name, action, args in ENTRIES:
            yield DiscoveryHit(name, partial(self.run, action, args))

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, action, args in ENTRIES:
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), partial(self.run, action, args))

    async def run(self, action: str, args: tuple) -> None:
        app = self.app
        if action == "show_tab":
            app.action_show_tab(*args)
        elif action == "switch_tiny":
            await app.switch_model("tiny")
        else:
            _, tab, name = action.split(":")
            app.action_show_tab(tab)
            view = app.query_one(f"#{tab}").query_one(".view")
            await view.run_action(name)
