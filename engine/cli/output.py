"""The command line's standard output when its reader leaves (`landiff-engine jobs | head -1`): the command
stops quietly, as git and coreutils do. They die of SIGPIPE, with no message, and a shell reports status
141 (128 + 13); Python ignores SIGPIPE, so a write raises BrokenPipeError instead, which `main` turns into
that same status through `output_closed`."""

from __future__ import annotations

import errno
import os
import sys

from rich.console import Console

EXIT_OUTPUT_CLOSED = 128 + 13  # 141: what a shell reports for a command SIGPIPE ended


class OutputConsole(Console):
    """A rich Console on stdout whose broken pipe ends the command as a print's does (rich's own answer
    is SystemExit(1))."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, "the reader of the output left")


def notify_terminal(title: str, body: str) -> bool:
    """Tell the user's desktop through their terminal (engine/notify.py picks the escape from the
    environment): written to stderr when it is a terminal, else to stdout when that is one, else nowhere, so
    piped or redirected output never gets an escape in it. Whether it was written."""
    from engine.notify import notification

    for stream in (sys.stderr, sys.stdout):
        try:
            if not stream.isatty():
                continue
            stream.write(notification(os.environ, title, body))
            stream.flush()
        except (OSError, ValueError):  # the terminal went away (a closed stream: ValueError): no one to tell
            return False
        return True
    return False


def output_closed() -> int:
    """Stop quietly: what is still buffered goes to /dev/null, or Python's flush at exit would fail again
    and print its own complaint. Returns the status to exit with."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # a stdout with no file descriptor (captured): nothing is flushed at exit
        pass
    return EXIT_OUTPUT_CLOSED
