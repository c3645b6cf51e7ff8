"""The Textual front end of LanDiff. Never imports torch."""
