"""Where the weights live on disk: the release's file layout under one root folder.

The root is `$LANDIFF_HOME` when set, else `ckpts/` of this repository. The LanDiff
bundle (Hugging Face repo yinaoxiong/LanDiff) sits in `<root>/LanDiff/`; the flan-T5
encoder that stage 1 needs is not part of that bundle and sits in `<root>/flan-t5-xxl/`
(Hugging Face layout of google/flan-t5-xxl). The `tiny` model uses the same layout
under `<root>/tiny/`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
HOME_ENV = "LANDIFF_HOME"


def weights_root() -> Path:
    configured = os.environ.get(HOME_ENV)
    return Path(configured).expanduser() if configured else REPO_ROOT / "ckpts"


@dataclass(frozen=True)
class ReleaseLayout:
    """Paths of every file of one model's weights, in the release's layout."""

    root: Path

    @property
    def bundle(self) -> Path:
        return self.root / "LanDiff"

    @property
    def llm_file(self) -> Path:
        return self.bundle / "llm" / "model.safetensors"

    @property
    def tokenizer_file(self) -> Path:
        return self.bundle / "tokenizer" / "model.safetensors"

    @property
    def flan_t5_dir(self) -> Path:
        return self.root / "flan-t5-xxl"

    @property
    def t5_dir(self) -> Path:
        return self.bundle / "CogVideoX-2b-sat" / "t5-v1_1-xxl"

    @property
    def dit_file(self) -> Path:
        return self.bundle / "CogVideoX-2b-sat" / "transformer" / "1000" / "mp_rank_00_model_states.pt"

    @property
    def vae_file(self) -> Path:
        return self.bundle / "CogVideoX-2b-sat" / "vae" / "3d-vae.pt"

    @property
    def control_file(self) -> Path:
        return self.bundle / "diffusion" / "1" / "mp_rank_00_model_states.pt"


def layout_for(model_name: str, root: Path | None = None) -> ReleaseLayout:
    """The release model lives directly under the root; other specs in a subfolder of their name."""
    root = weights_root() if root is None else root
    return ReleaseLayout(root if model_name == "landiff" else root / model_name)


RELEASE_SOURCE = "the Hugging Face repo yinaoxiong/LanDiff"
FLAN_T5_SOURCE = "the Hugging Face repo google/flan-t5-xxl"


def redownload_hint(path: Path, source: str = RELEASE_SOURCE) -> str:
    return f"Re-download {path} from {source}, or set {HOME_ENV} to a folder that holds a complete copy."
