"""Where the weights live on disk, and what the release consists of.

The root is `$LANDIFF_HOME` when set, else `./ckpts` when it holds a `LanDiff` folder (the
reference's own location, beside the working directory), else `weights/` in the data dir
(`$LANDIFF_DATA_DIR` when set, else the user data dir: engine.paths.data_dir), so a data dir moved
to a big disk takes the weights with it. The LanDiff bundle (Hugging Face repo yinaoxiong/LanDiff)
sits in `<root>/LanDiff/`; the flan-T5 encoder that stage 1 needs is not part of that bundle and sits in
`<root>/flan-t5-xxl/` (Hugging Face layout of google/flan-t5-xxl). The `tiny` model uses
the same layout under `<root>/tiny/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine import settings

HOME_ENV = settings.HOME.name
RELEASE_REPO = "yinaoxiong/LanDiff"
FLAN_T5_REPO = "google/flan-t5-xxl"
TINY_CHECKSUMS = "CHECKSUM.md5"  # the tiny bundle's own checksum list, beside its LanDiff/ folder


@dataclass(frozen=True)
class RootCandidate:
    rule: str
    path: Path | None  # None: the rule names no place (the variable is unset)
    applies: bool
    chosen: bool = False


def root_candidates() -> list[RootCandidate]:
    """Every place the weights may live, in the order they are tried; exactly one is chosen."""
    from engine.paths import data_dir

    configured = settings.HOME.raw()
    beside = Path.cwd() / "ckpts"
    # the data dir as the engine keeps its database there: $LANDIFF_DATA_DIR, else the user data dir
    data = "$" + settings.DATA_DIR.name if settings.DATA_DIR.raw() else "the user data dir"
    places = [
        (f"${HOME_ENV}", Path(configured).expanduser() if configured else None, bool(configured)),
        ("./ckpts holding LanDiff/", beside, (beside / "LanDiff").is_dir()),
        (f"weights/ in {data}", data_dir() / "weights", True),
    ]
    first = next(index for index, (_, _, applies) in enumerate(places) if applies)
    return [RootCandidate(*place, chosen=index == first) for index, place in enumerate(places)]


def weights_root() -> Path:
    chosen = next(place for place in root_candidates() if place.chosen)
    assert chosen.path is not None  # the chosen rule applies, so it names a place
    return chosen.path


def where_it_looked(ckpts: Path | None) -> list[dict]:
    """The candidates as plain data (for `weights status --json` and the engine's reply)."""
    if ckpts is not None:
        return [{"rule": "--ckpts", "path": str(ckpts), "applies": True, "chosen": True}]
    return [
        {"rule": p.rule, "path": p.path and str(p.path), "applies": p.applies, "chosen": p.chosen}
        for p in root_candidates()
    ]


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

    @property
    def clip_dir(self) -> Path:
        """The optional CLIP the quality probe scores frames with (not part of the release)."""
        return self.root / CLIP_FOLDER


def layout_for(model_name: str, root: Path | None = None) -> ReleaseLayout:
    """Where the files of spec `model_name` live: its `weights_folder` under the weights root."""
    from engine.specs import get_spec

    root = weights_root() if root is None else root
    return ReleaseLayout(root / get_spec(model_name).weights_folder)


RELEASE_SOURCE = "the Hugging Face repo yinaoxiong/LanDiff"
FLAN_T5_SOURCE = "the Hugging Face repo google/flan-t5-xxl"
# The quality probe's CLIP: optional, fetched only when asked (`weights download --clip`), checked by the
# hub's digests as flan-T5's files are. The tiny model has a random one of the same layout.
CLIP_REPO = "openai/clip-vit-base-patch32"
# The repo's main branch holds its weights as pytorch_model.bin only; the hub's safetensors conversion
# (pull request refs/pr/66) holds model.safetensors beside the same other files: that commit, pinned.
CLIP_REVISION = "c237dc49a33fc61debc9276459120b7eac67e7ef"
CLIP_FOLDER = "clip-vit-base-patch32"
CLIP_FILES = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)
CLIP_HINT = "`landiff-engine weights download --clip` fetches them"


# The sources a download may use (`weights download --source`): Hugging Face, or ModelScope, which the
# LanDiff release's README names as its second home. Each Hugging Face repo the weights come from -> its
# ModelScope id, or None where ModelScope holds no copy this project can use. ONE table: the downloader
# reads only this.
SOURCES = ("huggingface", "modelscope")
MODELSCOPE_REVISION = "master"  # ModelScope's default branch
MODELSCOPE_REPOS: dict[str, str | None] = {
    # confirmed: the release's README ("or you can also download the model weights from ModelScope",
    # https://www.modelscope.cn/models/yinaoxiong/LanDiff, `modelscope download yinaoxiong/LanDiff`)
    RELEASE_REPO: "yinaoxiong/LanDiff",
    # NOT confirmed from the release or ModelScope's own pages: the AI-ModelScope organisation's mirror of
    # google/flan-t5-xxl, as third-party code maps it; whether it holds the same safetensors shards and index
    # is unknown here. A file it does not list fails by name; `--source huggingface` fetches it instead.
    FLAN_T5_REPO: "AI-ModelScope/flan-t5-xxl",
    # none: the CLIP is pinned to a Hugging Face commit (its safetensors conversion), which no ModelScope
    # copy is known to match; `--clip` with `--source modelscope` is refused in words.
    CLIP_REPO: None,
}


def redownload_hint(path: Path, source: str = RELEASE_SOURCE) -> str:
    """The fix a missing or damaged weights file names: the command that fetches it, and the other ways."""
    return (
        f"Re-download {path} from {source}: `landiff-engine weights download` fetches what is missing "
        f"or damaged; or set {HOME_ENV} to a folder that holds a complete copy; `--model tiny` runs without "
        "them."
    )


# The release's ckpts/CHECKSUM.md5, paths relative to the LanDiff folder.
RELEASE_MD5 = {
    "CogVideoX-2b-sat/t5-v1_1-xxl/added_tokens.json": "abe4fe2e108e8ed9432b843545238e53",
    "CogVideoX-2b-sat/t5-v1_1-xxl/config.json": "874a573dae8c4f440916bab515dc0606",
    "CogVideoX-2b-sat/t5-v1_1-xxl/model-00001-of-00002.safetensors": "221271c19cda66748bba20871b37d0e9",
    "CogVideoX-2b-sat/t5-v1_1-xxl/model-00002-of-00002.safetensors": "64fc13b5063d462a73c000b54f1be785",
    "CogVideoX-2b-sat/t5-v1_1-xxl/model.safetensors.index.json": "ebfc181cf184f4dc9cfffebaeae24d06",
    "CogVideoX-2b-sat/t5-v1_1-xxl/special_tokens_map.json": "9583322ae544dfbdb0001350ab4c3fd9",
    "CogVideoX-2b-sat/t5-v1_1-xxl/spiece.model": "9d15ef55d09d5a425ceb63fa31f7cae3",
    "CogVideoX-2b-sat/t5-v1_1-xxl/tokenizer_config.json": "ae93f8b5fb04998524bc84b3c517b05d",
    "CogVideoX-2b-sat/transformer/1000/mp_rank_00_model_states.pt": "0c5f18a7b46ab52bae4ffec8a0195e59",
    "CogVideoX-2b-sat/transformer/latest": "ad865d2f63b9feb2552c220385fbb7e3",
    "CogVideoX-2b-sat/vae/3d-vae.pt": "e8be4352ababa00ebab19501d2e932bc",
    "diffusion/1/mp_rank_00_model_states.pt": "f91f8e8eec665115061866529d1ea735",
    "diffusion/latest": "c4ca4238a0b923820dcc509a6f75849b",
    "llm/model.safetensors": "db87f2939b0e0a0f4bc74ac8a04ce920",
    "tokenizer/model.safetensors": "a8b4ed9d4061759ea4314780898767e0",
}
# What stage 1 reads of google/flan-t5-xxl besides the weight shards that hold encoder tensors.
FLAN_T5_FILES = ("config.json", "spiece.model", "tokenizer_config.json", "special_tokens_map.json")
FLAN_T5_INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class WeightFile:
    """One file of the weights: where it comes from, where it goes, what checks it, who needs it."""

    repo: str
    path: str  # path inside the repo
    local: str  # path under the weights root
    groups: tuple[str, ...]  # "llm" (stage 1), "diffusion" (stage 2), "clip" (the quality probe, optional)
    md5: str | None = None
    revision: str | None = None  # a branch or commit of the repo; None: its main branch

    @property
    def optional(self) -> bool:
        """No job needs it: its absence never makes the weights incomplete."""
        return self.groups == ("clip",)


def release_files(checksums: dict[str, str] | None = None) -> list[WeightFile]:
    """The LanDiff bundle; `checksums` (path -> md5) replaces the release's list (the tiny test hub)."""
    checksums = RELEASE_MD5 if checksums is None else checksums
    files = []
    for path, md5 in sorted(checksums.items()):
        groups: tuple[str, ...]
        if path.startswith("llm/"):
            groups = ("llm",)
        elif path.startswith("tokenizer/"):
            groups = ("llm", "diffusion")  # stage 1 decodes features; stage 2 falls back to it
        else:
            groups = ("diffusion",)
        files.append(WeightFile(RELEASE_REPO, path, f"LanDiff/{path}", groups, md5))
    return files


def flan_t5_files(shards: list[str]) -> list[WeightFile]:
    """The flan-T5 files stage 1 needs; `shards` come from the repo's index (see `encoder_shards`)."""
    names = [*FLAN_T5_FILES, FLAN_T5_INDEX, *shards]
    return [WeightFile(FLAN_T5_REPO, name, f"flan-t5-xxl/{name}", ("llm",)) for name in names]


def encoder_shards(index: dict) -> list[str]:
    """The safetensors shards of a Hugging Face index that hold encoder (or shared embedding) tensors."""
    weight_map = index.get("weight_map", {})
    return sorted(
        {shard for key, shard in weight_map.items() if key.startswith("encoder.") or key == "shared.weight"}
    )


def clip_files() -> list[WeightFile]:
    """The quality probe's CLIP (optional)."""
    return [
        WeightFile(CLIP_REPO, name, f"{CLIP_FOLDER}/{name}", ("clip",), revision=CLIP_REVISION)
        for name in CLIP_FILES
    ]
