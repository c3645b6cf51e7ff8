"""Engine-wide speed options of the diffusion transformer: attention kernel, fused q/k/v, torch.compile.

These are run options of an engine (chosen once, for every job), not job parameters: none of them changes
what a job asks for, and only `attention` other than `sdpa` changes the numbers (within kernel rounding).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from engine import settings
from engine.models.control_dit import Attend, ControlDiT

log = logging.getLogger(__name__)

ATTENTION_BACKENDS = ("sdpa", "cudnn", "flash", "sage")
EXTRA = "pip install 'landiff-tui[gpu]'"


class SpeedOptionError(ValueError):
    """A speed option that cannot be used here; the message says what to do instead."""


class MissingPackage(SpeedOptionError):
    """The option's optional package is not installed (the message names the pip install)."""


@dataclass(frozen=True)
class DiTOptions:
    """`attention`: sdpa (PyTorch's, the exact default), cudnn, flash (flash-attn), sage (sageattention).
    `compile` and `fuse_qkv`: None means on for CUDA, off elsewhere."""

    attention: str = "sdpa"
    compile: bool | None = None
    fuse_qkv: bool | None = None

    def resolved(self, device: torch.device) -> DiTOptions:
        """Concrete choices for `device`; refuses an unknown backend or one that cannot run here."""
        if self.attention not in ATTENTION_BACKENDS:
            raise SpeedOptionError(
                f"attention backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {self.attention!r}"
            )
        cuda = device.type == "cuda"
        if self.compile and not cuda:
            raise SpeedOptionError(f"--compile needs a CUDA GPU (the device is {device}); use --no-compile")
        return DiTOptions(
            self.attention,
            cuda if self.compile is None else self.compile,
            cuda if self.fuse_qkv is None else self.fuse_qkv,
        )

    def record(self) -> dict:
        return asdict(self)


def attention_kernel(name: str, device: torch.device, dtype: torch.dtype) -> Attend | None:
    """The kernel for backend `name` (None: diffusers' own SDPA processor, the default)."""
    if name == "sdpa":
        return None
    if name not in ATTENTION_BACKENDS:
        raise SpeedOptionError(
            f"attention backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {name!r}"
        )
    if device.type != "cuda":
        raise SpeedOptionError(
            f"--attention {name} needs a CUDA GPU (the device is {device}); use --attention sdpa"
        )
    if name == "cudnn":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if not torch.backends.cudnn.is_available():
            raise SpeedOptionError("--attention cudnn: this torch has no cuDNN; use --attention sdpa")

        def cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v)

        return cudnn
    if dtype not in (torch.float16, torch.bfloat16):
        raise SpeedOptionError(f"--attention {name} runs in bf16 or fp16, not {dtype}; use --attention sdpa")
    if name == "flash":
        try:
            from flash_attn import flash_attn_func
        except ImportError as error:
            raise MissingPackage(
                f"--attention flash needs the flash-attn package ({error}): {EXTRA} or pip install flash-attn"
            ) from None

        def flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            return out.transpose(1, 2)

        return flash
    try:
        from sageattention import sageattn
    except ImportError as error:
        raise MissingPackage(
            f"--attention sage needs the sageattention package ({error}): "
            f"{EXTRA} or pip install sageattention"
        ) from None

    def sage(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return sageattn(q, k, v, tensor_layout="HND", is_causal=False)

    return sage


def compile_cache_dir() -> Path:
    """Where inductor keeps compiled kernels and FX graphs between runs ($TORCHINDUCTOR_CACHE_DIR wins)."""
    configured = settings.INDUCTOR_CACHE_DIR.path()
    if configured is not None:
        return configured
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("landiff")) / "torchinductor"


def enable_compile_cache() -> Path:
    folder = compile_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[settings.INDUCTOR_CACHE_DIR.name] = str(folder)  # inductor reads it there
    import torch._inductor.config as inductor

    inductor.fx_graph_cache = True
    inductor.autotune_local_cache = True
    return folder


def apply_dit_options(network: ControlDiT, options: DiTOptions, device: torch.device, dtype: torch.dtype):
    """Set up `network` as `options` (already resolved) say; idempotent per network."""
    kernel = attention_kernel(options.attention, device, dtype)
    if options.fuse_qkv:
        network.fuse_qkv()
    network.set_attention(kernel)
    if options.compile:
        folder = enable_compile_cache()
        # forward only, not the module's __call__: hooks (block streaming) stay outside the graph
        for block in network.blocks():
            if not getattr(block, "_landiff_compiled", False):
                block.forward = torch.compile(block.forward, dynamic=False)
                block._landiff_compiled = True
        log.info("transformer blocks compiled on first use; cache in %s", folder)


class FirstCallTimer:
    """Times the first network call of each input shape: with compile on, that call compiles."""

    def __init__(self, device: torch.device):
        self.device, self.seen, self.seconds = device, set(), 0.0

    def __call__(self, network, *args: torch.Tensor) -> torch.Tensor:
        key = tuple(tuple(a.shape) for a in args)
        if key in self.seen:
            return network(*args)
        self.seen.add(key)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        started = time.perf_counter()
        out = network(*args)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - started
        return out
