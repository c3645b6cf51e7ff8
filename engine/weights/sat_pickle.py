"""Opening the release's SAT/DeepSpeed `.pt` files safely, whatever training state their pickles carry.

Such files hold `module` (the tensors we want) beside whatever the training run saved: `args` (an
argparse Namespace whose fields may be OmegaConf objects), `ds_config`, `param_shapes`, optimizer and
scheduler state, client state. Every global the file names is looked up in a table of our own before
torch's restricted unpickler runs: a few plain classes and torch's tensor rebuilders (wrapped in the
checks below) are real, every other name is mapped to an inert placeholder class that only records the
arguments it was built with. No module named in the file is imported and nothing in it runs. A file
naming something from `os`, `sys`, `posix` or `nt`, which no training run saves, is reported as suspect.

The file is a torch zip (`<archive>/data.pkl` and one `<archive>/data/<key>` record per storage). What a
hostile file could make a loader allocate is checked before it is allocated:

- the zip's central directory and record count are capped before the directory is parsed;
- `data.pkl` is refused when it declares more than `PICKLE_CAP`, and read as a bounded stream that
  inflates no more than it declares;
- unpickling runs under a memory budget (`UNPICKLING_BUDGET`): before each opcode runs, what it may
  allocate is charged (the object it creates, the containers it fills or copies, a tensor's or storage's
  own memory), so a small pickle that copies a large object over and over is refused before the copies
  exist; a BUILD that would re-point a tensor (`set_`) is refused;
- each storage must be a stored (not deflated) record of exactly the bytes its persistent id declares,
  lying inside the file; it is memory-mapped, never read: state we skip is never paged in;
- each tensor's shape, strides and offset are checked against its storage before the view is made: a
  view that reaches past its storage, overflows, or holds more elements than its storage (an expanded,
  stride-0 view that would materialise more than the file stores) is refused, and every tensor of the
  result is checked again after unpickling.

Every refusal is a `RefusedCheckpoint` (a ValueError) whose message says what was refused.
"""

from __future__ import annotations

import argparse
import io
import itertools
import logging
import math
import pickle
import pickletools
import struct
import sys
import threading
import zipfile
import zlib
from _codecs import encode
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import _weights_only_unpickler as restricted

log = logging.getLogger(__name__)
MiB = 2**20
# the modules torch blocks outright; a file naming them was not written by a training run
GUARDED_MODULES = frozenset({"os", "sys", "posix", "nt"})
# classes built for real: plain attribute bags that run no code (SAT's training arguments)
KEPT: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [argparse.Namespace]

# A released file's data.pkl is 55-230 KB (560-1,400 tensors); with a full optimizer state beside the
# weights, 0.6 MB. 16 MiB leaves a margin of more than 25 times; it is read whole, so it is what it costs.
PICKLE_CAP = 16 * MiB
SMALL_RECORD_CAP = 64  # `byteorder`: "little" or "big"
# A released file has 440-1,390 records (5,500 with optimizer state), a central directory of ~100 B each.
RECORDS_CAP = 100_000
CENTRAL_DIRECTORY_CAP = 16 * MiB
# distinct names a pickle may use: a release file uses fewer than 10, training state a few dozen (torch's
# unpickler looks each opcode's callable up among all of them)
GLOBALS_CAP = 256
# What unpickling may allocate, as `_Metered` charges it (upper bounds, 2-3 times what is allocated):
# ~5.5 KiB a tensor, 8 MiB for the largest released file (1,390 tensors), 30 MiB with an optimizer state
# beside it (5,500 tensors). The budget leaves a margin of 8 times over that.
UNPICKLING_BUDGET = 256 * MiB
TENSOR_CHARGE = 1024  # memory outside Python's allocator a tensor or storage object costs (TensorImpl...)
MAX_DIMS = 64
NAMESPACE = "landiff_sat_pickle"  # the module every global of a pickle is renamed into

# the opcodes torch's restricted unpickler runs; any other is refused before anything is built
_OPCODES_TORCH_RUNS = (
    "PROTO STOP GLOBAL NEWOBJ REDUCE BUILD APPEND APPENDS SETITEM SETITEMS MARK TUPLE TUPLE1 TUPLE2 TUPLE3 "
    "NONE NEWFALSE NEWTRUE EMPTY_TUPLE EMPTY_LIST EMPTY_DICT EMPTY_SET BININT BININT1 BININT2 BINFLOAT "
    "BINUNICODE SHORT_BINSTRING BINPERSID BINGET LONG_BINGET BINPUT LONG_BINPUT LONG1"
)
TORCH_OPCODES = frozenset(_OPCODES_TORCH_RUNS.split())

_lock = threading.Lock()  # one load at a time: the allowlist and tracemalloc are process-wide
_serial = itertools.count()


class RefusedCheckpoint(ValueError):
    """A checkpoint whose layout is inconsistent, or would cost memory out of proportion, is refused."""


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


# `torch.Tensor` and `Parameter` name the type a tensor is rebuilt as; built directly, they would allocate
TensorType = placeholder("torch.Tensor")
ParameterType = placeholder("torch.nn.parameter.Parameter")


@dataclass(frozen=True)
class LoadedPickle:
    content: Any
    skipped: tuple[str, ...]  # the globals replaced by placeholders, sorted
    suspect: tuple[str, ...]  # those from os/sys/posix/nt: only a tampered file names them


def load_sat_pickle(path: Path) -> LoadedPickle:
    """The content of a torch zip checkpoint, tensors memory-mapped, every unknown global made inert.

    Raises `RefusedCheckpoint` (a ValueError) for a file that is not a torch checkpoint or whose layout
    does not hold together, and OSError for one that cannot be read.
    """
    budget = _Budget(UNPICKLING_BUDGET)
    with _Archive(path, budget) as archive:
        namespace = f"{NAMESPACE}{next(_serial)}"  # a load's own names: none is left behind for the next
        renamed, names = _renamed_globals(archive.read_pickle(), namespace)
        rebuilder = _Rebuilder(archive, budget)
        table = [rebuilder.resolve(name) for name in names]
        unknown = sorted(name for name, value in zip(names, table, strict=True) if _is_stand_in(value))
        allowed: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
            (value, f"{namespace}.g{index}") for index, value in enumerate(table)
        ]
        with _lock, torch.serialization.safe_globals(allowed):
            stream = _Metered(renamed, budget)
            unpickler = restricted.Unpickler(stream, encoding="utf-8")
            unpickler.persistent_load = archive.persistent_load  # type: ignore[method-assign]
            stream.stack = lambda: unpickler.stack
            try:
                content = unpickler.load()
            except RefusedCheckpoint:
                raise
            except Exception as error:  # whatever a malformed pickle makes torch's rebuilders raise
                raise RefusedCheckpoint(f"its pickle could not be loaded: {error}") from error
        _check_every_tensor(content)
    suspect = tuple(name for name in unknown if name.rpartition(".")[0] in GUARDED_MODULES)
    if suspect:
        log.warning(
            "%s names %s, which no training run saves: made inert, nothing ran; consider re-downloading it",
            path,
            ", ".join(suspect),
        )
    if unknown:
        log.info("%s: skipped %d kind(s) of non-tensor object: %s", path, len(unknown), ", ".join(unknown))
    return LoadedPickle(content, tuple(unknown), suspect)


def _is_stand_in(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, Skipped) and value not in (TensorType, ParameterType)


# the zip


class _Archive:
    """A torch zip checkpoint's records, checked before any is read; its storages memory-mapped."""

    def __init__(self, path: Path, budget: _Budget):
        self.path = path
        self.size = path.stat().st_size
        self.storages: dict[str, torch.storage.TypedStorage] = {}
        self.storage_keys: dict[int, str] = {}  # id(typed storage) -> key
        self.budget = budget
        self._mapped: torch.UntypedStorage | None = None
        self._handle = path.open("rb")
        try:
            self._check_central_directory()
            try:
                self.zip = zipfile.ZipFile(self._handle)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as error:
                raise RefusedCheckpoint(f"it is not a torch zip archive ({error})") from error
            self.records = self._records()
        except BaseException:
            self._handle.close()
            raise

    def __enter__(self) -> _Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.zip.close()
        self._handle.close()

    def _check_central_directory(self) -> None:
        end_record = getattr(zipfile, "_EndRecData", None)
        if end_record is None:  # a Python without it: zipfile parses the directory unchecked
            return
        end = end_record(self._handle)
        if end is None:
            raise RefusedCheckpoint("it is not a zip archive (torch.save writes one)")
        entries, size = end[getattr(zipfile, "_ECD_ENTRIES_TOTAL", 4)], end[getattr(zipfile, "_ECD_SIZE", 5)]
        if entries > RECORDS_CAP or size > CENTRAL_DIRECTORY_CAP:
            raise RefusedCheckpoint(
                f"its zip directory declares {entries} records in {size} bytes, more than the "
                f"{RECORDS_CAP} records in {CENTRAL_DIRECTORY_CAP // MiB} MiB a checkpoint may have"
            )

    def _records(self) -> dict[str, zipfile.ZipInfo]:
        infos = self.zip.infolist()
        names = [info.filename for info in infos]
        if not infos or "/" not in names[0]:
            raise RefusedCheckpoint("its zip holds no torch archive folder")
        if len(set(names)) != len(names):
            raise RefusedCheckpoint("its zip names a record twice")
        prefix = names[0].split("/", 1)[0] + "/"
        records = {info.filename[len(prefix) :]: info for info in infos if info.filename.startswith(prefix)}
        if "data.pkl" not in records:
            raise RefusedCheckpoint(f"its zip has no {prefix}data.pkl")
        return records

    def read_small(self, name: str, cap: int) -> bytes:
        """A record read as a bounded stream: refused when it declares more than `cap` bytes, and never
        inflated past what it declares (zipfile stops there and checks the CRC)."""
        info = self.records[name]
        if info.file_size > cap:
            raise RefusedCheckpoint(
                f"its {name} declares {info.file_size} bytes, more than the {_size(cap)} a checkpoint's "
                f"{name} may take"
            )
        if info.flag_bits & 0x1:
            raise RefusedCheckpoint(f"its {name} is encrypted")
        try:
            with self.zip.open(info) as stream:
                data = stream.read(info.file_size + 1)
        except (zipfile.BadZipFile, EOFError, NotImplementedError, zlib.error) as error:
            raise RefusedCheckpoint(f"its {name} could not be read ({error})") from error
        if len(data) != info.file_size:
            raise RefusedCheckpoint(
                f"its {name} holds {len(data)} bytes, not the {info.file_size} it declares"
            )
        return data

    def read_pickle(self) -> bytes:
        if "byteorder" in self.records:
            order = self.read_small("byteorder", SMALL_RECORD_CAP)
            if order not in (b"little", b"big"):
                raise RefusedCheckpoint(f"its byteorder record says {order[:16]!r}")
        else:
            order = b"little"  # what torch assumes of a file without the record
        if order.decode() != sys.byteorder:
            raise RefusedCheckpoint(
                f"it was written {order.decode()}-endian; tensors are mapped as they are stored, "
                f"and this machine is {sys.byteorder}-endian"
            )
        return self.read_small("data.pkl", PICKLE_CAP)

    def persistent_load(self, pid: Any) -> torch.storage.TypedStorage:
        """The storage a persistent id names: its record checked against it, then memory-mapped."""
        if type(pid) is not tuple or len(pid) != 5:
            raise RefusedCheckpoint("its pickle names a storage by something other than a 5-tuple")
        kind, storage_type, key, location, numel = pid
        key = _text(key)
        if _text(kind) != "storage" or not isinstance(storage_type, torch.serialization.StorageType):
            raise RefusedCheckpoint(f"its pickle names a storage of an unknown type ({_text(kind)!r})")
        if key is None or _text(location) is None or type(numel) is not int or numel < 0:
            raise RefusedCheckpoint("its pickle names a storage without a key, location or element count")
        dtype = storage_type.dtype
        name = f"data/{key}"
        if key in self.storages:
            typed = self.storages[key]
            if typed.dtype != dtype or typed._size() != numel:
                raise RefusedCheckpoint(
                    f"its pickle names {name} as {numel} {dtype} and as {typed._size()} {typed.dtype}"
                )
            return typed
        info = self.records.get(name)
        if info is None:
            raise RefusedCheckpoint(f"its pickle names a storage with no record {name}")
        nbytes = numel * torch._utils._element_size(dtype)
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise RefusedCheckpoint(
                f"its {name} is stored deflated or encrypted; torch.save stores tensor data as is"
            )
        if info.file_size != nbytes or info.compress_size != nbytes:
            raise RefusedCheckpoint(f"its {name} holds {info.file_size} bytes, its tensors need {nbytes}")
        start = self._data_offset(info, name)
        self.budget.charge(TENSOR_CHARGE)
        typed = torch.storage.TypedStorage(
            wrap_storage=self._map()[start : start + nbytes], dtype=dtype, _internal=True
        )
        self.storages[key] = typed
        self.storage_keys[id(typed)] = key
        return typed

    def _data_offset(self, info: zipfile.ZipInfo, name: str) -> int:
        """Where a stored record's bytes start: after its local header, which must lie inside the file."""
        self._handle.seek(info.header_offset)
        header = self._handle.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise RefusedCheckpoint(f"its {name} has no local zip header")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_length + extra_length
        if start + info.file_size > self.size:
            raise RefusedCheckpoint(f"its {name} runs past the end of the file")
        return start

    def _map(self) -> torch.UntypedStorage:
        if self._mapped is None:  # private mapping: pages are read only when a tensor is used
            mapped = torch.UntypedStorage.from_file(str(self.path), False, self.size)
            assert isinstance(mapped, torch.UntypedStorage)
            self._mapped = mapped
        return self._mapped


def _text(value: Any) -> str | None:
    if type(value) is bytes:
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if type(value) is str else None


def _size(nbytes: int) -> str:
    return f"{nbytes // MiB} MiB" if nbytes >= MiB and nbytes % MiB == 0 else f"{nbytes} bytes"


# the pickle


def _renamed_globals(data: bytes, namespace: str) -> tuple[bytes, list[str]]:
    """`data` with every GLOBAL renamed to `<namespace>.g<i>`, and the names (as torch reads them) by i.

    Only the opcodes torch's restricted unpickler runs are accepted, so it parses the stream exactly as
    this scan does: no GLOBAL reaches torch's own allowlist.
    """
    names: dict[str, int] = {}
    pieces: list[bytes] = []
    last = 0
    try:
        for opcode, _argument, position in pickletools.genops(data):
            if opcode.name not in TORCH_OPCODES:
                raise RefusedCheckpoint(f"its pickle uses {opcode.name}, an opcode torch.save never writes")
            if opcode.name != "GLOBAL" or position is None:
                continue
            first = data.index(b"\n", position + 1)
            second = data.index(b"\n", first + 1)
            module, name = restricted._read_global_instruction(
                io.BytesIO(data[position + 1 : second + 1]).readline
            )
            index = names.setdefault(f"{module}.{name}", len(names))
            if len(names) > GLOBALS_CAP:
                raise RefusedCheckpoint(f"its pickle names more than {GLOBALS_CAP} globals")
            pieces += [data[last:position], b"c%s\ng%d\n" % (namespace.encode(), index)]
            last = second + 1
    except RefusedCheckpoint:
        raise
    except (ValueError, UnicodeDecodeError, struct.error) as error:  # what genops raises for a bad stream
        raise RefusedCheckpoint(f"its pickle is malformed ({error})") from error
    pieces.append(data[last:])
    return b"".join(pieces), list(names)


class _Budget:
    """What unpickling may allocate, charged before it is allocated; refused past `limit`."""

    def __init__(self, limit: int):
        self.limit = limit
        self.charged = 0

    def charge(self, nbytes: int) -> None:
        self.charged += nbytes
        if self.charged > self.limit:
            raise RefusedCheckpoint(
                f"unpickling it would take more than {self.limit // MiB} MiB "
                "(a released checkpoint's pickle takes a few MiB)"
            )


# Upper bounds (CPython 3.11, 64-bit) of what one opcode of torch's unpickler allocates, keyed by opcode:
# the object it pushes (with its stack slot), a memo entry, a dict entry it adds.
_FIXED_COST = {
    pickle.PROTO[0]: 0,
    pickle.STOP[0]: 0,
    pickle.GLOBAL[0]: 8,
    pickle.NONE[0]: 8,
    pickle.NEWTRUE[0]: 8,
    pickle.NEWFALSE[0]: 8,
    pickle.EMPTY_TUPLE[0]: 8,
    pickle.EMPTY_LIST[0]: 64,
    pickle.EMPTY_DICT[0]: 72,
    pickle.EMPTY_SET[0]: 232,
    pickle.MARK[0]: 72,
    pickle.BININT[0]: 40,
    pickle.BININT1[0]: 40,
    pickle.BININT2[0]: 40,
    pickle.BINFLOAT[0]: 32,
    pickle.LONG1[0]: 300,
    pickle.BINGET[0]: 8,
    pickle.LONG_BINGET[0]: 8,
    pickle.BINPUT[0]: 112,
    pickle.LONG_BINPUT[0]: 112,
    pickle.BINPERSID[0]: 8,  # a new storage is charged by persistent_load
    pickle.APPEND[0]: 16,
    pickle.SETITEM[0]: 160,
    pickle.TUPLE1[0]: 72,
    pickle.TUPLE2[0]: 80,
    pickle.TUPLE3[0]: 88,
}
# bytes of argument that follow an opcode, where that is fixed
_ARGUMENT_LENGTH = {
    pickle.PROTO[0]: 1,
    pickle.BININT1[0]: 1,
    pickle.BINGET[0]: 1,
    pickle.BINPUT[0]: 1,
    pickle.BININT2[0]: 2,
    pickle.BININT[0]: 4,
    pickle.LONG_BINGET[0]: 4,
    pickle.LONG_BINPUT[0]: 4,
    pickle.BINFLOAT[0]: 8,
}
ENTRY_COST = 160  # one element of a container copied or filled: a dict or OrderedDict entry at most
CALL_COST = 512  # the object a call (REDUCE, NEWOBJ) or BUILD makes, beside the containers it copies


class _Metered:
    """The pickle as torch's unpickler reads it, charging each opcode to the budget before it runs.

    The reader follows the opcodes (the stream was scanned whole already, so they are well-formed): when
    torch reads the next opcode, its cost is charged: a fixed cost for the object it creates, and for
    the opcodes that fill or copy containers (TUPLE, APPENDS, SETITEMS, REDUCE, NEWOBJ, BUILD) a cost
    from the sizes on the unpickler's stack, so that a small pickle copying one large object over and
    over is refused before the copies exist. BUILD on a tensor (`tensor.set_(*state)`, which torch.save
    never writes) is refused: it would re-point a checked view.
    """

    def __init__(self, data: bytes, budget: _Budget):
        self._data = data
        self._stream = io.BytesIO(data)
        self._budget = budget
        self._next = 0  # where the next opcode starts
        self.stack: Callable[[], list[Any]] = list  # the unpickler's stack, once it is running

    def read(self, size: int = -1) -> bytes:
        position = self._stream.tell()
        if position == self._next:
            self._before(position)
        elif position > self._next:
            raise RefusedCheckpoint("its pickle was not read as it was scanned")
        return self._stream.read(size)

    def readline(self, size: int = -1) -> bytes:
        return self._stream.readline(size)

    def _before(self, position: int) -> None:
        data, code = self._data, self._data[position]
        if code == pickle.BINUNICODE[0]:
            length = 4 + int.from_bytes(data[position + 1 : position + 5], "little")
            cost = 80 + 5 * length  # the bytes read, then the str decoded from them
        elif code in (pickle.SHORT_BINSTRING[0], pickle.LONG1[0]):
            length = 1 + data[position + 1]
            cost = 80 + 5 * length
        elif code == pickle.GLOBAL[0]:
            length = data.index(b"\n", data.index(b"\n", position + 1) + 1) - position
            cost = 8
        else:
            length = _ARGUMENT_LENGTH.get(code, 0)
            cost = _FIXED_COST[code] if code in _FIXED_COST else self._stack_cost(code)
        self._next = position + 1 + length
        self._budget.charge(cost)

    def _stack_cost(self, code: int) -> int:
        stack = self.stack()
        if code == pickle.TUPLE[0]:
            return 64 + 8 * len(stack)
        if code == pickle.APPENDS[0]:
            return 16 * len(stack)
        if code == pickle.SETITEMS[0]:
            return ENTRY_COST // 2 * len(stack)
        if len(stack) < 2:
            return 0  # torch refuses the opcode
        if code in (pickle.REDUCE[0], pickle.NEWOBJ[0]):
            args = stack[-1]
            items = args if type(args) is tuple else (args,)
            return CALL_COST + 16 * len(items) + sum(_copy_cost(item) for item in items)
        if code == pickle.BUILD[0]:
            if isinstance(stack[-2], torch.Tensor):
                raise RefusedCheckpoint(
                    "its pickle re-points a tensor (BUILD), which torch.save never writes"
                )
            state = stack[-1]
            parts = state if type(state) is tuple else (state,)
            return CALL_COST + sum(_copy_cost(part) for part in parts)
        raise RefusedCheckpoint(f"its pickle uses opcode {code}, which torch.save never writes")


def _copy_cost(value: Any) -> int:
    """What a shallow copy of `value` may take (a call may copy each of its arguments)."""
    if isinstance(value, (tuple, list, set, frozenset, dict)):
        return ENTRY_COST * len(value)
    if isinstance(value, (str, bytes, bytearray)):
        return 5 * len(value)
    return 0


def _bytearray(source: Any = b"", *args: Any) -> bytearray:
    if isinstance(source, int):  # bytearray(n) allocates n zeroed bytes
        raise RefusedCheckpoint("its pickle builds a bytearray from a size")
    return bytearray(source, *args)


TEXT_CODECS = frozenset({"latin1", "latin-1", "iso-8859-1", "utf-8", "utf8", "ascii"})


def _encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as pickle uses it for bytes: text codecs only (others can expand their input)."""
    if type(encoding) is not str or encoding.lower() not in TEXT_CODECS:
        raise RefusedCheckpoint(f"its pickle encodes bytes with {str(encoding)[:32]!r}")
    return encode(text, encoding, errors)


@cache
def _plain_globals() -> dict[str, Any]:
    """The globals built for real that need no checks: containers, numbers, dtypes, storage types."""
    table: dict[str, Any] = {
        "collections.OrderedDict": OrderedDict,
        "collections.Counter": Counter,
        "builtins.set": set,
        "builtins.complex": complex,
        "builtins.bytearray": _bytearray,
        "_codecs.encode": _encode,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "torch.serialization._get_layout": torch.serialization._get_layout,
        "torch.Tensor": TensorType,
        "torch.nn.parameter.Parameter": ParameterType,
    }
    for name, value in restricted._get_allowed_globals().items():
        if isinstance(value, (torch.dtype, torch.serialization.StorageType)):
            table[name] = value
    for kept in KEPT:
        value, name = kept if isinstance(kept, tuple) else (kept, f"{kept.__module__}.{kept.__qualname__}")
        table[name] = value
    return table


class _Rebuilder:
    """torch's tensor rebuilders, each checking the view it is asked for against its storage first."""

    def __init__(self, archive: _Archive, budget: _Budget):
        self.archive = archive
        self.budget = budget

    def resolve(self, name: str) -> Any:
        checked = {
            "torch._utils._rebuild_tensor": self.tensor,
            "torch._utils._rebuild_tensor_v2": self.tensor_v2,
            "torch._utils._rebuild_parameter": self.parameter,
            "torch._utils._rebuild_parameter_with_state": self.parameter_with_state,
            "torch._tensor._rebuild_from_type_v2": self.from_type_v2,
        }
        if name in checked:
            return checked[name]
        plain = _plain_globals()
        return plain[name] if name in plain else placeholder(name)

    def tensor(self, storage: Any, storage_offset: Any, size: Any, stride: Any) -> torch.Tensor:
        self._check_view(storage, storage_offset, size, stride)
        return torch._utils._rebuild_tensor(storage, storage_offset, size, stride)

    def tensor_v2(
        self,
        storage: Any,
        storage_offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any,
        backward_hooks: Any,
        metadata: Any = None,
    ) -> torch.Tensor:
        self._check_view(storage, storage_offset, size, stride)
        _check_hooks(backward_hooks)
        if metadata is not None and type(metadata) is not dict:
            raise RefusedCheckpoint("its pickle gives a tensor metadata that is not a dict")
        return torch._utils._rebuild_tensor_v2(
            storage, storage_offset, size, stride, bool(requires_grad), backward_hooks, metadata
        )

    def parameter(self, data: Any, requires_grad: Any, backward_hooks: Any) -> torch.nn.Parameter:
        self._check_parameter(data, backward_hooks)
        return torch._utils._rebuild_parameter(data, bool(requires_grad), backward_hooks)

    def parameter_with_state(
        self, data: Any, requires_grad: Any, backward_hooks: Any, state: Any
    ) -> torch.nn.Parameter:
        self._check_parameter(data, backward_hooks)
        return torch._utils._rebuild_parameter_with_state(data, bool(requires_grad), backward_hooks, state)

    def from_type_v2(self, func: Any, new_type: Any, args: Any, state: Any) -> Any:
        """A tensor rebuilt as `new_type` with attributes; a tensor subclass we do not know stays inert."""
        if _is_stand_in(new_type):
            return new_type(func, args, state)
        real_type = {TensorType: torch.Tensor, ParameterType: torch.nn.Parameter}.get(new_type)
        rebuilders = (self.tensor, self.tensor_v2, self.parameter, self.parameter_with_state)
        if real_type is None or func not in rebuilders or type(args) is not tuple:
            raise RefusedCheckpoint(
                "its pickle rebuilds a tensor through something that is not a tensor rebuilder"
            )
        self.budget.charge(TENSOR_CHARGE)
        return torch._tensor._rebuild_from_type_v2(func, real_type, args, state)

    def _check_parameter(self, data: Any, backward_hooks: Any) -> None:
        if not isinstance(data, torch.Tensor):
            raise RefusedCheckpoint("its pickle builds a parameter from something that is not a tensor")
        _check_hooks(backward_hooks)
        self.budget.charge(TENSOR_CHARGE)

    def _check_view(self, storage: Any, offset: Any, size: Any, stride: Any) -> None:
        """Refuse a view that overflows, reaches past its storage or holds more elements than it."""
        self.budget.charge(TENSOR_CHARGE)
        key = self.archive.storage_keys.get(id(storage))
        if key is None or self.archive.storages.get(key) is not storage or storage is None:
            raise RefusedCheckpoint("its pickle builds a tensor on something that is not one of its storages")
        shape, strides = _dims(size, "shape"), _dims(stride, "strides")
        if len(shape) != len(strides):
            raise RefusedCheckpoint(f"a tensor's shape {shape} and strides {strides} differ in length")
        if type(offset) is not int or offset < 0 or min(shape + strides, default=0) < 0:
            raise RefusedCheckpoint(
                f"a tensor has a negative size, stride or offset (shape {shape}, strides {strides}, "
                f"offset {offset!r})"
            )
        available = storage._size()
        numel = math.prod(shape)
        where = f"storage data/{key}, which has {available} element{'' if available == 1 else 's'}"
        if numel == 0:
            if offset > available:
                raise RefusedCheckpoint(f"an empty tensor's offset {offset} lies past its {where}")
            return
        extent = offset + sum((length - 1) * step for length, step in zip(shape, strides, strict=True)) + 1
        if extent > available:
            raise RefusedCheckpoint(
                f"a tensor of shape {shape} and strides {strides} at offset {offset} reaches element "
                f"{extent} of {where}"
            )
        if numel > available:
            raise RefusedCheckpoint(
                f"a tensor of shape {shape} and strides {strides} would hold {numel} elements but its "
                f"{where}: an expanded view that would materialise more than the file stores"
            )


def _check_hooks(backward_hooks: Any) -> None:
    """torch.save never writes hooks (an empty OrderedDict stands in for them); none is attached here."""
    if backward_hooks is not None and (type(backward_hooks) not in (dict, OrderedDict) or backward_hooks):
        raise RefusedCheckpoint("its pickle attaches backward hooks to a tensor")


def _dims(value: Any, what: str) -> list[int]:
    if type(value) not in (tuple, list, torch.Size) or len(value) > MAX_DIMS:
        raise RefusedCheckpoint(f"a tensor's {what} is not a tuple of at most {MAX_DIMS} ints")
    if any(type(item) is not int for item in value):
        raise RefusedCheckpoint(f"a tensor's {what} {list(value)[:8]!r} holds something that is not an int")
    return list(value)


def _check_every_tensor(content: Any) -> None:
    """Every tensor the pickle built (also those its BUILD opcodes re-pointed) holds no more elements than
    its storage: nothing in the result materialises more than the file stores."""
    seen: set[int] = set()
    pending = [content]
    while pending:
        item = pending.pop()
        if id(item) in seen or isinstance(item, (str, bytes, bytearray, int, float, complex, type)):
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            available = item.untyped_storage().nbytes() // item.element_size()
            if item.numel() > available:
                raise RefusedCheckpoint(
                    f"a tensor of shape {list(item.shape)} and strides {list(item.stride())} would hold "
                    f"{item.numel()} elements but its storage has {available}"
                )
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            pending.extend(item)
        attributes = getattr(item, "__dict__", None)  # a tensor's, a Namespace's, a placeholder's state
        if isinstance(attributes, dict):
            pending.extend(attributes.values())


UNREADABLE = (pickle.UnpicklingError, OSError, RuntimeError, EOFError, ValueError)
