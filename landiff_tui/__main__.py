"""`landiff-tui` and `python -m landiff_tui`: the app, started without collection pauses and without OpenSSL.

Importing Textual and the app and building the first frame make tens of thousands of objects, hardly any
of them garbage; with the collector on, its passes over them take about a tenth of the time to the first
frame. It is paused before the imports (here, so that importing `landiff_tui.app` elsewhere changes
nothing) and runs again once every tab is mounted (`LanDiffApp.start_link`).

The TUI talks to the engine over a unix socket and never uses TLS, yet asyncio loads OpenSSL whenever it
can (`try: import ssl`, about 10 ms of the first frame). None in `sys.modules["ssl"]` makes that import
fail at once and asyncio goes without TLS. It is set when this module is imported, which the launchers do
before anything else, so again importing `landiff_tui.app` elsewhere changes nothing; an `ssl` already
imported is kept.
"""

from __future__ import annotations

import gc
import sys

sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]  # typeshed: no None in sys.modules


def main(argv: list[str] | None = None) -> int:
    gc.disable()
    from .app import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
