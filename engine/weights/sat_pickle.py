"""Opening the release's SAT/DeepSpeed `.pt` files safely, whatever training state their pickles carry.

Such files hold `module` (the tensors we want) beside whatever the training run saved: `args` (an
argparse Namespace whose fields may be OmegaConf objects), `ds_config`, `param_shapes`, optimizer and
scheduler state, client state. torch's `weights_only` unpickler refuses any class it does not know.
Here every global the file names that is not allowed already is mapped to an inert placeholder class
before loading, so the file loads with torch's own restricted unpickler and nothing in it runs: a
placeholder only records the arguments it was built with. No module named in the file is imported.

torch refuses names from `os`, `sys`, `posix` and `nt` before it looks at the allowlist (a guard against
allowlisting real functions from them). Names from those modules are mapped to placeholders too, so the
guard is lifted for exactly the load of a file whose every such name is already a placeholder: no real
function from them is ever reachable. A file that names one is reported as suspect in the log.

Tensors are memory-mapped (`mmap=True`): the state we skip is never read from disk, and what we keep is
paged in as the model loads it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import pickle
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import _weights_only_unpickler as restricted

log = logging.getLogger(__name__)
# the modules torch blocks outright; a file naming them was not written by a training run
GUARDED_MODULES = frozenset({"os", "sys", "posix", "nt"})
_guard_lock = threading.Lock()
# classes built for real: plain attribute bags that run no code (SAT's training arguments)
KEPT: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [argparse.Namespace]


class Skipped:
    """Stands in for an object of a class (or a call of a function) the loader does not construct."""

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Skipped:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<skipped {self.qualname}>"


def placeholder(qualname: str) -> type[Skipped]:
    return type(qualname.rpartition(".")[2] or "Skipped", (Skipped,), {"qualname": qualname})


@dataclass(frozen=True)
class LoadedPickle:
    content: Any
    skipped: tuple[str, ...]  # the globals replaced by placeholders, sorted
    suspect: tuple[str, ...]  # those from os/sys/posix/nt: only a tampered file names them


def load_sat_pickle(path: Path) -> LoadedPickle:
    """torch.load(path, weights_only=True, mmap=True) with every unknown global made inert.

    Raises what torch.load raises for a file that is not a torch checkpoint (truncated, not a zip).
    """
    with torch.serialization.safe_globals(KEPT):
        unknown = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    stand_ins = [(placeholder(name), name) for name in unknown]
    suspect = tuple(name for name in unknown if name.rpartition(".")[0] in GUARDED_MODULES)
    with torch.serialization.safe_globals([*KEPT, *stand_ins]), _guard_lifted(bool(suspect)):
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if suspect:
        log.warning(
            "%s names %s, which no training run saves: made inert, nothing ran; consider re-downloading it",
            path,
            ", ".join(suspect),
        )
    if unknown:
        log.info("%s: skipped %d kind(s) of non-tensor object: %s", path, len(unknown), ", ".join(unknown))
    return LoadedPickle(content, tuple(unknown), suspect)


@contextlib.contextmanager
def _guard_lifted(lift: bool) -> Iterator[None]:
    """Let GLOBALs from the guarded modules reach the allowlist, where only placeholders match them."""
    blocked = getattr(restricted, "_blocklisted_modules", None)
    if not lift or not isinstance(blocked, list):  # a torch without the list: its refusal stands
        yield
        return
    with _guard_lock:
        saved = list(blocked)
        blocked[:] = [module for module in blocked if module not in GUARDED_MODULES]
        try:
            yield
        finally:
            blocked[:] = saved


UNREADABLE = (pickle.UnpicklingError, OSError, RuntimeError, EOFError, ValueError)
