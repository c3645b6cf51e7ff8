"""Hostile SAT checkpoints are refused before they cost memory (issue 25, point 4).

Each file is tiny on disk and written in the release's layout (a torch zip whose `data.pkl` names its
tensors' storages `data/<key>`); what it would cost is what a loader that trusts it would allocate:
a deflated `data.pkl` of a GiB, a one-float adaLN weight expanded to 1.5 GiB, a 2**62-element view, a
pickle that copies one large tuple over and over, a bytearray asked for by its size. The loads that
could cost memory run in a child process whose peak resident memory (ru_maxrss) is measured against
its own baseline after imports.
"""

from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from engine.errors import CheckpointError
from engine.models.configs import DiTConfig
from engine.models.control_dit import ControlDiT
from engine.specs import get_spec
from engine.weights import loading
from engine.weights.checkpoints import expected_shapes
from engine.weights.layout import layout_for
from engine.weights.loading import CONTROL_DIT_PREFIX, MAIN_DIT_PREFIX, load_control_dit, read_sat_checkpoint
from engine.weights.sat_keys import sat_dit_shapes
from engine.weights.sat_pickle import load_sat_pickle
from engine.weights.tiny import ensure_tiny_release
from tests.harness import ROOT
from tests.refkeys import refkeys_or_skip

TINY = get_spec("tiny")
MiB = 2**20
GiB = 2**30
CHILD_LIMIT_S = 120  # a child that does not finish in this long fails its test
# what a refused load may add to the child's peak resident memory: well below every hostile size here
REFUSAL_BOUND = 200 * MiB
ADALN = "model.diffusion_model.mixins.adaln_layer.adaLN_modulations.0.1.weight"
FIX = "Re-download it."

CHILD = """
import json, resource, sys
from pathlib import Path
import torch
from engine.specs import get_spec
from engine.weights.layout import layout_for
from engine.weights.loading import load_control_dit, read_sat_checkpoint

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

kind, target = sys.argv[1], Path(sys.argv[2])
before = peak()
try:
    if kind == "dit":
        load_control_dit(layout_for("tiny", target), get_spec("tiny").dit, device="cpu", dtype=torch.float32)
    else:
        read_sat_checkpoint(target, "module", fix="Re-download it.")
    outcome = {"error": None, "message": ""}
except Exception as error:
    outcome = {"error": type(error).__name__, "message": str(error)}
print(json.dumps({**outcome, "before": before, "grew": peak() - before}))
"""


def load_in_child(kind: str, target: Path) -> dict:
    """Load `target` in a fresh interpreter: its outcome and how much its peak resident memory grew."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(target)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CHILD_LIMIT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# writing torch zips by hand


@dataclass(frozen=True)
class Deflated:
    """A raw deflate stream with the size and CRC of what it inflates to (as a zip record declares them)."""

    stream: bytes
    size: int
    crc: int


def deflated(data: bytes) -> Deflated:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return Deflated(packer.compress(data) + packer.flush(), len(data), zlib.crc32(data))


def deflated_with_zeros(head: bytes, mebibytes: int) -> Deflated:
    """`head` followed by `mebibytes` MiB of zeros, deflated in about a second: one flushed block repeated."""

    def block(data: bytes) -> bytes:
        packer = zlib.compressobj(9, zlib.DEFLATED, -15)
        return packer.compress(data) + packer.flush(zlib.Z_FULL_FLUSH)  # not final, history reset

    zeros = bytes(MiB)
    crc = zlib.crc32(head)
    for _ in range(mebibytes):
        crc = zlib.crc32(zeros, crc)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty final block
    return Deflated(block(head) + block(zeros) * mebibytes + final, len(head) + mebibytes * MiB, crc)


def write_zip(path: Path, records: dict[str, bytes | Deflated]) -> None:
    """A zip of `records` (bytes are stored, `Deflated` records deflated), as miniz and zipfile read it."""
    body, directory = bytearray(), bytearray()
    for name, record in records.items():
        if isinstance(record, Deflated):
            method, payload, size, crc = 8, record.stream, record.size, record.crc
        else:
            method, payload, size, crc = 0, record, len(record), zlib.crc32(record)
        encoded = name.encode()
        fields = struct.pack("<HHHHHIII", 20, 0, method, 0, 0x21, crc, len(payload), size)
        directory += b"PK\x01\x02" + struct.pack("<H", 20) + fields
        directory += struct.pack("<HHHHHII", len(encoded), 0, 0, 0, 0, 0, len(body)) + encoded
        body += b"PK\x03\x04" + fields + struct.pack("<HH", len(encoded), 0) + encoded + payload
    count = len(records)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(directory), len(body), 0)
    path.write_bytes(bytes(body + directory + end))


def records_of(path: Path) -> dict[str, bytes]:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


@dataclass(frozen=True)
class Storage:
    key: str
    numel: int
    kind: type = torch.FloatStorage


@dataclass(frozen=True)
class View:
    """A tensor as a pickle describes it: any storage, offset, shape and strides, checked by nothing."""

    storage: Storage
    offset: int
    size: tuple
    stride: tuple


@dataclass(frozen=True)
class Repointed:
    """A view whose tensor the pickle's BUILD opcode then re-points: torch runs `tensor.set_(*state)`."""

    view: View
    state: tuple


class Crafter(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.kind, obj.key, "cpu", obj.numel)
        return None

    def reducer_override(self, obj):
        if isinstance(obj, View):
            args = (obj.storage, obj.offset, obj.size, obj.stride, False, OrderedDict())
            return torch._utils._rebuild_tensor_v2, args
        if isinstance(obj, Repointed):
            return (*self.reducer_override(obj.view), obj.state)
        return NotImplemented


def crafted(path: Path, module: dict, data: dict[str, bytes | Deflated]) -> Path:
    """A checkpoint {"module": module} whose views and records are exactly as given."""
    import io

    buffer = io.BytesIO()
    Crafter(buffer, protocol=2).dump({"module": module})
    records: dict[str, bytes | Deflated] = {
        "archive/data.pkl": buffer.getvalue(),
        "archive/byteorder": b"little",
    }
    records.update({f"archive/data/{key}": value for key, value in data.items()})
    records["archive/version"] = b"3\n"
    write_zip(path, records)
    return path


def floats(count: int) -> bytes:
    return torch.arange(count, dtype=torch.float32).numpy().tobytes()


@pytest.fixture
def release(tmp_path):
    layout = layout_for("tiny", tmp_path / "weights")
    ensure_tiny_release(layout, TINY)
    return layout


def replace_in_dit(layout, key: str, value: torch.Tensor) -> None:
    content = torch.load(layout.dit_file, weights_only=True)
    assert key in content["module"]
    content["module"][key] = value
    torch.save(content, layout.dit_file)


# the three findings


@pytest.mark.timeout(240)
def test_a_gibibyte_pickle_stored_deflated_is_refused_before_it_is_inflated(tmp_path):
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(4)}}, path)
    records: dict[str, bytes | Deflated] = dict(records_of(path))
    records["mp_rank_00_model_states/data.pkl"] = deflated_with_zeros(
        records["mp_rank_00_model_states/data.pkl"], 1024
    )  # the real pickle, then a GiB after its STOP
    write_zip(path, records)
    assert path.stat().st_size < 2 * MiB
    outcome = load_in_child("sat", path)
    assert outcome["error"] == "CheckpointError", outcome
    assert "could not be read as a torch checkpoint" in outcome["message"]
    assert "data.pkl" in outcome["message"] and "16 MiB" in outcome["message"] and FIX in outcome["message"]
    assert outcome["grew"] < REFUSAL_BOUND, f"peak RSS grew {outcome['grew'] / MiB:.0f} MiB"


@pytest.mark.timeout(240)
def test_a_pickle_that_inflates_past_its_declared_size_is_read_no_further(tmp_path):
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(4)}}, path)
    records: dict[str, bytes | Deflated] = dict(records_of(path))
    pickled = records["mp_rank_00_model_states/data.pkl"]
    stream = deflated_with_zeros(pickled, 1024)  # declares the size and CRC of the real pickle alone
    records["mp_rank_00_model_states/data.pkl"] = Deflated(stream.stream, len(pickled), zlib.crc32(pickled))
    write_zip(path, records)
    outcome = load_in_child("sat", path)
    assert outcome["error"] is None, outcome  # what the header declares is the whole pickle
    assert outcome["grew"] < REFUSAL_BOUND, f"peak RSS grew {outcome['grew'] / MiB:.0f} MiB"


@pytest.mark.timeout(240)
def test_a_stride_0_adaln_weight_is_refused_before_torch_cat_materialises_it(release):
    replace_in_dit(release, ADALN, torch.ones(1).expand(25_165_824, 16))  # 1.5 GiB from one float
    outcome = load_in_child("dit", release.root.parent)
    assert outcome["error"] == "CheckpointError", outcome
    assert "mp_rank_00_model_states.pt could not be read as a torch checkpoint" in outcome["message"]
    assert "[25165824, 16]" in outcome["message"] and "1 element" in outcome["message"]
    assert outcome["grew"] < REFUSAL_BOUND, f"peak RSS grew {outcome['grew'] / MiB:.0f} MiB"


def test_a_tensor_of_2_62_elements_gets_the_clear_refusal(release):
    replace_in_dit(release, ADALN, torch.ones(1).expand(2**31, 2**31))
    with pytest.raises(CheckpointError) as refused:
        load_control_dit(release, TINY.dit, device="cpu", dtype=torch.float32)
    message = str(refused.value)
    assert "could not be read as a torch checkpoint" in message and "4611686018427387904 elements" in message
    assert type(refused.value) is CheckpointError and "Re-download" in message


def test_an_adaln_weight_of_the_wrong_shape_is_refused_before_it_is_converted(release, monkeypatch):
    """A view that fits its storage but not the model is refused on the SAT key, before `convert_dit`."""
    wrong = torch.zeros(48, 1024)  # a storage of its own, that the view fits
    replace_in_dit(release, ADALN, wrong)
    converted = []
    monkeypatch.setattr(loading, "convert_dit", lambda *args: converted.append(args) or ({}, []))
    with pytest.raises(CheckpointError, match=r"does not fit the model: 1 wrong shape\(s\): ") as refused:
        load_control_dit(release, TINY.dit, device="cpu", dtype=torch.float32)
    assert f"{ADALN} is [48, 1024], expected [" in str(refused.value)
    assert converted == []


def test_a_fused_tensor_of_a_layer_the_model_lacks_is_refused_before_it_is_converted(release, monkeypatch):
    content = torch.load(release.dit_file, weights_only=True)
    surplus = ADALN.replace("adaLN_modulations.0.", "adaLN_modulations.99.")
    content["module"][surplus] = content["module"][ADALN]
    torch.save(content, release.dit_file)
    converted = []
    monkeypatch.setattr(loading, "convert_dit", lambda *args: converted.append(args) or ({}, []))
    with pytest.raises(CheckpointError, match=rf"does not fit the model: 1 unexpected key\(s\): {surplus}\."):
        load_control_dit(release, TINY.dit, device="cpu", dtype=torch.float32)
    assert converted == []


def test_the_shapes_checked_before_conversion_are_the_released_ones():
    """What `load_control_dit` checks the SAT tensors against is the release's own listing (refkeys)."""
    listing = refkeys_or_skip("cogvideox2b_transformer_module.txt")
    with torch.device("meta"):
        expected = expected_shapes(ControlDiT(DiTConfig()))
    released = {MAIN_DIT_PREFIX + key: list(shape) for key, shape in sat_dit_shapes(expected, "main").items()}
    assert released == {key: shape for key, shape in listing.items() if "pos_embed" not in key}
    control = refkeys_or_skip("diffusion_control_model_only.txt")
    wanted = {
        CONTROL_DIT_PREFIX + key: list(shape) for key, shape in sat_dit_shapes(expected, "control").items()
    }
    assert wanted.items() <= control.items()


# what unpickling may allocate


@pytest.mark.timeout(240)
def test_a_pickle_that_copies_one_tuple_over_and_over_is_stopped_at_its_budget(tmp_path):
    """100,000 Nones, then the same 800 KB tuple handed to an unknown class 1,000 times: 800 MB of copies."""
    n, copies = 100_000, 1_000
    get_class, get_tuple = b"j" + struct.pack("<I", 0), b"j" + struct.pack("<I", 1)
    body = b"c" + b"landiff_absent\nThing\n" + b"r" + struct.pack("<I", 0)
    body += b"(" + b"N" * n + b"t" + b"r" + struct.pack("<I", 1) + b"R"
    body += (get_class + get_tuple + b"R") * (copies - 1)
    junk = b"X" + struct.pack("<I", 4) + b"junk" + b"](" + body + b"e"
    module = b"X" + struct.pack("<I", 6) + b"module" + b"}"
    pickled = b"\x80\x02}(" + module + junk + b"u."
    path = tmp_path / "mp_rank_00_model_states.pt"
    write_zip(path, {"archive/data.pkl": pickled, "archive/byteorder": b"little", "archive/version": b"3\n"})
    assert path.stat().st_size < MiB
    outcome = load_in_child("sat", path)
    assert outcome["error"] == "CheckpointError", outcome
    assert "unpickling it would take more than" in outcome["message"]
    assert outcome["grew"] < 400 * MiB, f"peak RSS grew {outcome['grew'] / MiB:.0f} MiB"


@pytest.mark.timeout(240)
def test_a_bytearray_of_two_gibibytes_asked_for_by_size_is_never_allocated(tmp_path):
    pickled = b"\x80\x02}(X\x06\x00\x00\x00module}X\x04\x00\x00\x00junkcbuiltins\nbytearray\n"
    pickled += b"J" + struct.pack("<i", 2**31 - 1) + b"\x85Ru."  # bytearray(2**31 - 1): zeroed, 2 GiB
    path = tmp_path / "mp_rank_00_model_states.pt"
    write_zip(path, {"archive/data.pkl": pickled, "archive/byteorder": b"little", "archive/version": b"3\n"})
    outcome = load_in_child("sat", path)
    assert outcome["error"] == "CheckpointError", outcome
    assert "builds a bytearray from a size" in outcome["message"]
    assert outcome["grew"] < REFUSAL_BOUND, f"peak RSS grew {outcome['grew'] / MiB:.0f} MiB"


def test_a_tensor_that_build_would_re_point_past_its_storage_is_refused(tmp_path):
    """torch's unpickler runs `tensor.set_(*state)` for BUILD, unchecked: torch.save never writes it."""
    storage = Storage("0", 8)
    repointed = Repointed(View(storage, 0, (8,), (1,)), (storage, 0, (2**31, 2**31), (0, 0)))
    path = crafted(tmp_path / "bad.pt", {"w": repointed}, {"0": floats(8)})
    with pytest.raises(CheckpointError, match=r"re-points a tensor \(BUILD\), which torch.save never writes"):
        read_sat_checkpoint(path, "module", fix=FIX)


def test_opcodes_torch_save_never_writes_are_refused_before_anything_is_built(tmp_path):
    path = tmp_path / "bad.pt"
    pickled = pickle.dumps({"module": {}}, protocol=4)  # FRAME, SHORT_BINUNICODE...
    write_zip(path, {"archive/data.pkl": pickled, "archive/byteorder": b"little"})
    with pytest.raises(CheckpointError, match="its pickle uses FRAME, an opcode torch.save never writes"):
        read_sat_checkpoint(path, "module", fix=FIX)


# views and records that do not fit their storage


BAD_VIEWS = {
    "past the end": (View(Storage("0", 8), 4, (3, 2), (2, 1)), "reaches element 10 of storage data/0, which"),
    "an offset past the end": (View(Storage("0", 8), 9, (0,), (1,)), "offset 9"),
    "a negative stride": (View(Storage("0", 8), 7, (4,), (-1,)), "negative"),
    "a negative size": (View(Storage("0", 8), 0, (-1,), (1,)), "negative"),
    "a shape and strides of different lengths": (View(Storage("0", 8), 0, (2, 2), (1,)), "strides"),
    "stride 0 over more elements than stored": (
        View(Storage("0", 8), 0, (4, 4), (0, 1)),
        "would hold 16 elements but its storage data/0, which has 8 elements",
    ),
    "2**62 elements": (View(Storage("0", 8), 0, (2**31, 2**31), (0, 0)), "4611686018427387904 elements"),
    "a size that is not an int": (View(Storage("0", 8), 0, ("8",), (1,)), "shape"),
}


@pytest.mark.parametrize("case", sorted(BAD_VIEWS))
def test_a_view_that_does_not_fit_its_storage_is_refused_clearly(tmp_path, case):
    view, expected = BAD_VIEWS[case]
    path = crafted(tmp_path / "bad.pt", {"w": view}, {"0": floats(8)})
    with pytest.raises(CheckpointError) as refused:
        read_sat_checkpoint(path, "module", fix=FIX)
    message = str(refused.value)
    assert type(refused.value) is CheckpointError
    assert message.startswith(f"{path} could not be read as a torch checkpoint (") and message.endswith(FIX)
    assert expected in message, message


BAD_RECORDS = {
    "larger than its tensors need": ({"0": floats(1024)}, "data/0 holds 4096 bytes, its tensors need 32"),
    "shorter than its tensors need": ({"0": floats(4)}, "data/0 holds 16 bytes, its tensors need 32"),
    "stored deflated": ({"0": deflated(floats(8))}, "data/0 is stored deflated"),
    "missing": ({}, "no record data/0"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_a_storage_record_that_does_not_match_its_tensors_is_refused_before_it_is_read(tmp_path, case):
    data, expected = BAD_RECORDS[case]
    path = crafted(tmp_path / "bad.pt", {"w": View(Storage("0", 8), 0, (8,), (1,))}, data)
    with pytest.raises(CheckpointError, match="could not be read as a torch checkpoint") as refused:
        read_sat_checkpoint(path, "module", fix=FIX)
    assert expected in str(refused.value)


def test_views_that_fit_their_storage_still_load(tmp_path):
    """Shared storages, offsets, transposes, strided slices, empty tensors, a broadcast that fits."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    module = {
        "base": base,
        "transposed": base.T,
        "rows": base[1:3],
        "strided": base[:, ::2],
        "empty": torch.empty(0, 5),
        "scalar": torch.tensor(3.5),
        "broadcast": torch.ones(1, 6).expand(1, 6),
        "bf16": torch.ones(3, dtype=torch.bfloat16),
    }
    path = tmp_path / "fine.pt"
    torch.save({"module": module, "args": {"lr": 1e-4}}, path)
    loaded = read_sat_checkpoint(path, "module", fix=FIX)
    assert loaded.keys() == module.keys()
    for key, value in module.items():
        assert torch.equal(loaded[key], value) and loaded[key].dtype == value.dtype, key
    assert loaded["transposed"].untyped_storage().data_ptr() == loaded["base"].untyped_storage().data_ptr()
    assert load_sat_pickle(path).skipped == ()
