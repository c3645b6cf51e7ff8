"""How a length of time reads, the same in the CLI and the TUI (the engine's uptime, a job's age): torch-free
and import-free, so either can use it from its first paint."""

from __future__ import annotations


def duration_text(seconds: float) -> str:
    """`seconds` in the two largest units that matter: "42 s", "4 min 57 s", "2 h 5 min", "3 d 4 h".
    Whole seconds (cut, not rounded: an uptime of 59.9 s has not yet reached a minute); below zero reads 0."""
    whole = max(0, int(seconds))
    minutes, secs = divmod(whole, 60)
    hours, mins = divmod(minutes, 60)
    days, hrs = divmod(hours, 24)
    if days:
        return f"{days} d {hrs} h"
    if hours:
        return f"{hours} h {mins} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"
