"""`landiff-tui` and `python -m landiff_tui`: the app, started without collection pauses.

Importing Textual and the app and building the first frame make tens of thousands of objects, hardly any
of them garbage; with the collector on, its passes over them take about a tenth of the time to the first
frame. It is paused before the imports (here, so that importing `landiff_tui.app` elsewhere changes
nothing) and runs again once every tab is mounted (`LanDiffApp.start_link`).
"""

from __future__ import annotations

import gc
import sys


def main(argv: list[str] | None = None) -> int:
    gc.disable()
    from .app import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
