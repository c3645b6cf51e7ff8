"""Engine-wide speed options of the diffusion transformer: attention kernel, fused q/k/v, torch.compile.

These are run options of an engine (chosen once, for every job), not job parameters: none of them changes
what a job asks for, and only an attention kernel other than `sdpa` changes the numbers (within kernel
rounding). `auto`, the default, picks the fastest exact kernel the device offers and says which and why.
"""

from __future__ import annotations

import importlib.util
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

# auto, then the kernels: sdpa (PyTorch's), cudnn (cuDNN's SDPA), flash2 (the flash-attn package,
# FlashAttention-2), flash3 (flash_attn_interface, FlashAttention-3 for Hopper), sage (sageattention, 8-bit)
ATTENTION_BACKENDS = ("auto", "sdpa", "cudnn", "flash2", "flash3", "sage")
ATTENTION_KERNELS = ATTENTION_BACKENDS[1:]
ATTENTION_ALIASES = {"flash": "flash2"}  # flash's former name: it never was more than FlashAttention-2
HALF = (torch.float16, torch.bfloat16)
EXTRA = "pip install 'landiff-tui[gpu]'"


class SpeedOptionError(ValueError):
    """A speed option that cannot be used here; the message says what to do instead."""


class MissingPackage(SpeedOptionError):
    """The option's optional package is not installed (the message names the pip install)."""


def auto_attention(device: torch.device, dtype: torch.dtype) -> tuple[str, str]:
    """The fastest exact kernel `device` offers in `dtype`, and why: FlashAttention-3 on Hopper (SM90)
    where its package is installed, else cuDNN's SDPA there, else PyTorch's SDPA (which picks its own
    backend). sage is never chosen: it quantises."""
    if device.type != "cuda":
        return "sdpa", f"auto: sdpa, the {device.type} device has no other kernel"
    if not torch.cuda.is_available():
        return "sdpa", "auto: sdpa, no CUDA GPU is visible"
    if dtype not in HALF:
        return "sdpa", f"auto: sdpa, the other kernels run in bf16 or fp16, not {dtype}"
    major, minor = torch.cuda.get_device_capability(device)
    if major == 9:
        if importlib.util.find_spec("flash_attn_interface") is not None:
            return "flash3", "auto: flash3, FlashAttention-3 on SM90"
        if torch.backends.cudnn.is_available():
            return "cudnn", "auto: cudnn, cuDNN's SDPA on SM90 (flash_attn_interface is not installed)"
    return "sdpa", f"auto: sdpa, SM{major}{minor} has no faster exact kernel here"


@dataclass(frozen=True)
class DiTOptions:
    """`attention`: auto (the default) or a kernel of ATTENTION_KERNELS; `chosen_because`, once resolved,
    says how auto chose (empty when a kernel was named). `compile` and `fuse_qkv`: None means on for CUDA,
    off elsewhere."""

    attention: str = "auto"
    compile: bool | None = None
    fuse_qkv: bool | None = None
    chosen_because: str = ""

    def resolved(self, device: torch.device, dtype: torch.dtype | None = None) -> DiTOptions:
        """Concrete choices for `device` and the run's `dtype` (default: bf16 on CUDA, else fp32);
        refuses an unknown backend or one that cannot run here."""
        attention = ATTENTION_ALIASES.get(self.attention, self.attention)
        if attention not in ATTENTION_BACKENDS:
            raise SpeedOptionError(
                f"attention backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {self.attention!r}"
            )
        cuda = device.type == "cuda"
        if self.compile and not cuda:
            raise SpeedOptionError(f"--compile needs a CUDA GPU (the device is {device}); use --no-compile")
        because = self.chosen_because
        if attention == "auto":
            run_dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
            attention, because = auto_attention(device, run_dtype)
        return DiTOptions(
            attention,
            cuda if self.compile is None else self.compile,
            cuda if self.fuse_qkv is None else self.fuse_qkv,
            because,
        )

    def record(self) -> dict:
        return asdict(self)


def attention_kernel(name: str, device: torch.device, dtype: torch.dtype) -> Attend | None:
    """The kernel for backend `name`, resolved (None: diffusers' own SDPA processor)."""
    name = ATTENTION_ALIASES.get(name, name)
    if name == "sdpa":
        return None
    if name not in ATTENTION_KERNELS:
        raise SpeedOptionError(
            f"attention kernel must be one of {', '.join(ATTENTION_KERNELS)}, got {name!r}"
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
    if name == "flash2":
        try:
            from flash_attn import flash_attn_func
        except ImportError as error:
            raise MissingPackage(
                f"--attention flash2 needs the flash-attn package ({error}): "
                f"{EXTRA} or pip install flash-attn"
            ) from None

        def flash2(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            return out.transpose(1, 2)

        return flash2
    if name == "flash3":
        try:
            from flash_attn_interface import flash_attn_func as flash3_func
        except ImportError as error:
            raise MissingPackage(
                f"--attention flash3 needs FlashAttention-3's flash_attn_interface ({error}): build it from "
                "flash-attention's hopper/ folder (it is not on PyPI)"
            ) from None

        def flash3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            out = flash3_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            out = out[0] if isinstance(out, tuple) else out  # some releases also return the log-sum-exp
            return out.transpose(1, 2)

        return flash3
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
                block._landiff_compiled = True  # type: ignore[assignment]  # torch's __setattr__ stub
        log.info("transformer blocks compiled on first use; cache in %s", folder)


class FirstCallTimer:
    """Times the first network call of each input shape: with compile on, that call compiles."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, 0.0
        self.seen: set[tuple[tuple[int, ...], ...]] = set()

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
