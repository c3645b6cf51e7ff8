"""Entry point of `landiff-tui`.

The Textual interface is not built yet; until it is, this command says so and points
to the engine's command line, which runs the same models headless.
"""

from __future__ import annotations

import sys


def main() -> int:
    print(
        "landiff-tui: the terminal interface is not available in this version yet.\n"
        'Generate headless instead:  landiff-engine generate "your prompt" --model tiny',
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
