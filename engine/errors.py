"""Errors that command-line code catches without loading torch."""


class CheckpointError(RuntimeError):
    """A weights file is missing or does not fit the model that should load it."""
