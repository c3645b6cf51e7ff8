"""The wire format's constants, apart from its pydantic models so that clients start fast.

`engine.protocol` re-exports them; the TUI and the blocking client import only this module at start-up.
"""

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 2**20
MAX_PROMPT_CHARS = 2000
# cancelled_partial: cancelled during a long video; the chunks finished before the cancel are kept as a
# shorter, playable video
JOB_STATUSES = ("queued", "running", "finished", "failed", "cancelled", "cancelled_partial", "interrupted")
