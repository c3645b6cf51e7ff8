"""The release's SAT/DeepSpeed .pt files load whatever training state their pickles carry, and nothing runs.

Tiny checkpoints in the release layout are rewritten with the extra state real training files carry:
(a) an argparse Namespace holding an object of a class whose module is absent when the file is loaded,
(b) DeepSpeed-like training state (optimizer, scheduler, ds_config, param_shapes, client state),
(c) objects whose unpickling would run a command (os.system, subprocess.call).
Each renders a video; the command never runs and the absent module is never imported.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from engine.errors import CheckpointError
from engine.generation.job import JobSpec
from engine.generation.pipeline import Pipeline
from engine.specs import get_spec
from engine.weights.layout import layout_for
from engine.weights.loading import load_vae, read_sat_checkpoint
from engine.weights.sat_pickle import load_sat_pickle
from engine.weights.tiny import ensure_tiny_release

TINY = get_spec("tiny")
ABSENT = "landiff_absent_training_lib"  # a module that exists only while the files are written

ABSENT_SOURCE = """
import enum
from pathlib import Path

Path(__file__).with_name("imported.marker").write_text("imported")  # importing it leaves a trace


class DictConfig:  # shaped like OmegaConf's: state set through __setstate__
    def __init__(self, content):
        self._content = content

    def __getstate__(self):
        return {"_content": self._content, "_metadata": {"ref_type": object}}


class ZeroStageEnum(enum.IntEnum):
    optimizer_states = 1
    gradients = 2


class Command:  # unpickling it runs a command
    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args
"""


@pytest.fixture
def absent_module(tmp_path, monkeypatch):
    """Import the training library to write the files, then make it absent again (and its trace empty)."""
    folder = tmp_path / "site"
    (folder / ABSENT).mkdir(parents=True)
    (folder / ABSENT / "__init__.py").write_text(ABSENT_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module(ABSENT)
    yield module
    sys.modules.pop(ABSENT, None)


def forget(module) -> Path:
    """Remove the module from this process and from the path; return the file its import would write."""
    sys.modules.pop(module.__name__, None)
    sys.path.remove(str(Path(module.__file__).parents[1]))
    marker = Path(module.__file__).with_name("imported.marker")
    marker.unlink()
    return marker


def training_args(module) -> argparse.Namespace:
    return argparse.Namespace(
        base=["configs/landiff.yaml"],
        model_config=module.DictConfig({"num_layers": 30, "hidden_size": 1920}),
        lr=1e-4,
        mode="inference",
    )


def deepspeed_state(module, tensors: dict[str, torch.Tensor]) -> dict:
    params = list(tensors.values())
    return {
        "optimizer": {
            "state": {
                i: {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.ones_like(p)}
                for i, p in enumerate(params)
            },
            "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "params": list(range(len(params)))}],
        },
        "lr_scheduler": {"last_epoch": 1000, "base_lrs": [1e-4]},
        "ds_config": {"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}},
        "param_shapes": [OrderedDict((key, value.shape) for key, value in tensors.items())],
        "global_steps": 1000,
        "global_samples": 64000,
        "ds_version": "0.14.0",
        "client_state": {"zero_stage": module.ZeroStageEnum.gradients},
        "mp_world_size": 1,
        "dp_world_size": 8,
    }


def add_state(layout, extra) -> list[Path]:
    """Rewrite the three SAT/DeepSpeed files of a tiny release with extra top-level state."""
    files = [layout.control_file, layout.dit_file, layout.vae_file]
    for path in files:
        content = torch.load(path, weights_only=True)
        tensors = content.get("module", content.get("state_dict"))
        torch.save({**content, **extra(tensors)}, path)
    return files


def render(root: Path, tmp_path: Path) -> Path:
    pipeline = Pipeline.for_model("tiny", root, device=torch.device("cpu"))
    result = pipeline.run(JobSpec(prompt="A lighthouse in a storm.", out=tmp_path / "out" / "v.mp4", steps=2))
    assert result.video.is_file() and result.frames == TINY.video_frames(3)
    return result.video


@pytest.fixture
def release(tmp_path):
    layout = layout_for("tiny", tmp_path / "weights")
    ensure_tiny_release(layout, TINY)
    return layout


def test_training_arguments_of_an_absent_library_load_and_render(release, absent_module, tmp_path, caplog):
    files = add_state(release, lambda tensors: {"args": training_args(absent_module)})
    marker = forget(absent_module)
    with caplog.at_level(logging.INFO, logger="engine.weights.sat_pickle"):
        render(release.root.parent, tmp_path)
    assert not marker.exists() and ABSENT not in sys.modules  # nothing named in the file was imported
    loaded = load_sat_pickle(files[0])
    assert loaded.skipped == ("builtins.object", f"{ABSENT}.DictConfig") and loaded.suspect == ()
    assert isinstance(loaded.content["args"], argparse.Namespace) and loaded.content["args"].lr == 1e-4
    assert f"skipped 2 kind(s) of non-tensor object: builtins.object, {ABSENT}.DictConfig" in caplog.text


def test_deepspeed_training_state_loads_and_renders(release, absent_module, tmp_path):
    files = add_state(release, lambda tensors: deepspeed_state(absent_module, tensors))
    forget(absent_module)
    render(release.root.parent, tmp_path)
    assert load_sat_pickle(files[1]).skipped == (f"{ABSENT}.ZeroStageEnum",)


@pytest.mark.parametrize("call", ["os.system", "subprocess.call"])
def test_an_object_that_would_run_a_command_renders_and_runs_nothing(
    release, absent_module, tmp_path, call, caplog
):
    ran = tmp_path / "the-command-ran"
    target = {"os.system": (__import__("os").system, (f"touch {ran}",))}
    target["subprocess.call"] = (__import__("subprocess").call, (["touch", str(ran)],))
    function, args = target[call]
    files = add_state(release, lambda tensors: {"client_state": absent_module.Command(function, args)})
    forget(absent_module)
    with caplog.at_level(logging.INFO, logger="engine.weights.sat_pickle"):
        render(release.root.parent, tmp_path)
    assert not ran.exists()
    loaded = load_sat_pickle(files[0])
    # pickle names subprocess.call by its Python 2 name, commands.call
    named = "posix.system" if call == "os.system" else "commands.call"
    assert loaded.skipped == (named,) and repr(loaded.content["client_state"]) == f"<skipped {named}>"
    if call == "os.system":
        assert loaded.suspect == ("posix.system",) and "no training run saves" in caplog.text
    assert "posix" in torch._weights_only_unpickler._blocklisted_modules  # torch's guard is back in place


def test_skipped_state_is_never_read_into_memory(tmp_path):
    """Tensors are memory-mapped: 256 MiB of optimizer state beside a small module costs no resident RAM."""
    path = tmp_path / "mp_rank_00_model_states.pt"
    moments = torch.ones(64, 2**20)  # 256 MiB
    torch.save({"module": {"w": torch.ones(4)}, "optimizer": {"state": {0: {"exp_avg": moments}}}}, path)
    del moments
    gc.collect()
    before = resident_bytes()
    tensors = read_sat_checkpoint(path, "module", fix="re-download it")
    assert torch.equal(tensors["w"], torch.ones(4))
    assert resident_bytes() - before < 64 * 2**20


def resident_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    import resource

    return pages * resource.getpagesize()


def test_a_truly_broken_file_is_still_refused_with_the_file_named(release):
    content = torch.load(release.vae_file, weights_only=True)
    torch.save(
        {"args": content.keys().__class__.__name__, "weights": content["state_dict"]}, release.vae_file
    )
    with pytest.raises(
        CheckpointError, match=r"3d-vae.pt has no 'state_dict' dictionary of tensors. Re-download"
    ):
        load_vae(release, TINY.vae, device="cpu", dtype=torch.float32)
    release.vae_file.write_bytes(release.vae_file.read_bytes()[:1000])
    with pytest.raises(
        CheckpointError, match=r"3d-vae.pt could not be read as a torch checkpoint .*Re-download"
    ):
        load_vae(release, TINY.vae, device="cpu", dtype=torch.float32)
