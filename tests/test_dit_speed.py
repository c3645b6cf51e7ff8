"""The DiT's speed options on the CPU: interleaved control blocks, the attention processor, fused q/k/v,
streamed blocks, and the messages for options that cannot run here."""

from __future__ import annotations

import weakref
from dataclasses import replace

import pytest
import torch
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

from engine.generation.residency import Residency
from engine.generation.speed import DiTOptions, MissingPackage, SpeedOptionError, attention_kernel
from engine.models.control_dit import ControlDiT, JointAttentionProcessor
from engine.specs import TINY
from engine.weights.random_weights import randomise

CONFIG = replace(TINY.dit, num_layers=5, control_layers=3)  # tiny's 2 + 1 are too few to tell orders apart


def tiny_network(seed: int = 0) -> ControlDiT:
    return randomise(ControlDiT(CONFIG), torch.Generator().manual_seed(seed)).eval()


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    frames, channels, height, width = TINY.latent_shape(TINY.llm.frames_per_segment)
    latents = torch.randn(2, frames, channels, height, width, generator=g)
    text = torch.randn(2, 7, CONFIG.text_dim, generator=g)
    timesteps = torch.tensor([999.0, 500.0])
    semantic = torch.randn(1, frames, channels, height, width, generator=g)
    return latents, text, timesteps, semantic


def control_first(network: ControlDiT, latents, text, timesteps, semantic) -> torch.Tensor:
    """The previous forward: every control output computed and held, then the main blocks."""
    controls = network.control_outputs(latents, text, timesteps, semantic)
    video, words, temb = network.main.embed(latents, text, timesteps)
    length = words.shape[1]
    for index, block in enumerate(network.main.transformer_blocks):
        video, words = block(hidden_states=video, encoder_hidden_states=words, temb=temb)
        if index < len(controls):
            words = words + controls[index][:, :length]
            video = video + controls[index][:, length:]
    video = network.proj_out(network.norm_out(network.norm_final(video), temb=temb))
    batch, frames, _, height, width = latents.shape
    p = network.config.patch_size
    out = video.reshape(batch, frames, height // p, width // p, -1, p, p)
    return out.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)


@torch.no_grad()
def test_interleaved_control_blocks_give_the_same_bits():
    network, args = tiny_network(), inputs()
    assert torch.equal(network(*args), control_first(network, *args))


@torch.no_grad()
def test_one_control_output_alive_at_a_time():
    network, args = tiny_network(), inputs()
    outputs: list[weakref.ref] = []
    most_alive = []

    def record(module, args, out):
        most_alive.append(sum(ref() is not None for ref in outputs))
        outputs.append(weakref.ref(out))

    for linear in network.zero_linears:
        linear.register_forward_hook(record)
    network(*args)
    assert len(most_alive) == CONFIG.control_layers >= 3
    assert max(most_alive) <= 1  # the previous output (the next block's input) at most; before: all of them
    outputs.clear()
    most_alive.clear()
    network.control_outputs(*args)  # the inspection path keeps them all, so the hook does see a difference
    assert most_alive[-1] == CONFIG.control_layers - 1


@torch.no_grad()
def test_joint_processor_with_sdpa_is_diffusers_processor():
    network, args = tiny_network(), inputs()
    default = network(*args)
    assert all(isinstance(b.attn1.processor, CogVideoXAttnProcessor2_0) for b in network.blocks())
    network.set_attention(lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    assert all(isinstance(b.attn1.processor, JointAttentionProcessor) for b in network.blocks())
    assert torch.equal(network(*args), default)
    network.set_attention(None)
    assert torch.equal(network(*args), default)


@torch.no_grad()
def test_fused_qkv_on_the_cpu():
    network, args = tiny_network(), inputs()
    before = network(*args)
    network.fuse_qkv()
    attn = network.blocks()[0].attn1
    assert attn.fused_projections and not hasattr(attn, "to_q")  # the separate matrices are gone
    after = network(*args)
    # one [3D, D] GEMM and three [D, D] ones reduce over the same inputs in the same order on this CPU
    assert torch.equal(after, before)


@torch.no_grad()
def test_a_swapped_kernel_is_used():
    network, args = tiny_network(), inputs()
    calls = []

    def counting(q, k, v):
        calls.append(q.shape)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    network.fuse_qkv()
    network.set_attention(counting)
    network(*args)
    assert len(calls) == CONFIG.num_layers + CONFIG.control_layers


@torch.no_grad()
def test_streamed_blocks_give_the_same_bits_and_8bit_stays_close():
    args = inputs()
    resident = tiny_network()(*args)
    network = tiny_network()
    residency = Residency(torch.device("cpu"), overlap=False)
    blocks = network.blocks()
    residency.adopt(network, skip=tuple(blocks))
    residency.stream(blocks, quantize=False)
    assert torch.equal(network(*args), resident)
    quantized = tiny_network()
    residency = Residency(torch.device("cpu"), overlap=False)
    blocks = quantized.blocks()
    residency.adopt(quantized, skip=tuple(blocks))
    residency.stream(blocks, quantize=True)
    assert blocks[3].attn1.to_q.weight.numel() == 0  # dropped after use: no full-precision copy is kept
    out = quantized(*args)
    deviation = (out - resident).abs().max() / resident.abs().max()
    assert 0 < deviation < 0.05


def test_options_refused_with_one_line():
    cpu = torch.device("cpu")
    assert DiTOptions().resolved(cpu) == DiTOptions(
        "sdpa", False, False, "auto: sdpa, the cpu device has no other kernel"
    )
    assert DiTOptions("sdpa").resolved(torch.device("cuda")) == DiTOptions("sdpa", True, True)
    assert DiTOptions("flash").resolved(torch.device("cuda")).attention == "flash2"  # its former name
    with pytest.raises(SpeedOptionError, match="--compile needs a CUDA GPU .* use --no-compile"):
        DiTOptions(compile=True).resolved(cpu)
    with pytest.raises(
        SpeedOptionError, match="one of auto, sdpa, cudnn, flash2, flash3, sage, got 'xformers'"
    ):
        DiTOptions(attention="xformers").resolved(cpu)
    with pytest.raises(SpeedOptionError, match="--attention cudnn needs a CUDA GPU .* use --attention sdpa"):
        attention_kernel("cudnn", cpu, torch.float32)
    assert attention_kernel("sdpa", cpu, torch.float32) is None


@pytest.mark.parametrize(
    ("gpu", "fa3", "cudnn", "dtype", "chosen"),
    [
        ((9, 0), True, True, torch.bfloat16, "flash3"),
        ((9, 0), False, True, torch.bfloat16, "cudnn"),
        ((9, 0), False, False, torch.bfloat16, "sdpa"),
        ((8, 0), True, True, torch.bfloat16, "sdpa"),
        ((9, 0), True, True, torch.float32, "sdpa"),
    ],
)
def test_auto_picks_the_fastest_exact_kernel_the_gpu_offers_and_says_why(
    gpu, fa3, cudnn, dtype, chosen, monkeypatch
):
    import importlib.util

    from engine.generation import speed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: gpu)
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: cudnn)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        speed.importlib.util,
        "find_spec",
        lambda name, *a: (object() if fa3 else None) if name == "flash_attn_interface" else real(name, *a),
    )
    options = DiTOptions().resolved(torch.device("cuda"), dtype)
    assert options.attention == chosen and options.chosen_because.startswith(f"auto: {chosen}, ")
    assert options.record()["chosen_because"] == options.chosen_because  # the sidecar's dit block says why
    assert DiTOptions("cudnn").resolved(torch.device("cuda"), dtype).chosen_because == ""  # named, not chosen


@pytest.mark.parametrize(
    ("name", "package"),
    [("flash2", "flash_attn"), ("flash3", "flash_attn_interface"), ("sage", "sageattention")],
)
def test_missing_kernel_package_names_the_install(name, package, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, package, None)  # an import of it now fails, installed or not
    with pytest.raises(MissingPackage, match=rf"--attention {name} needs .*(pip install|not on PyPI)"):  # n/a
        attention_kernel(name, torch.device("cuda"), torch.bfloat16)
    with pytest.raises(SpeedOptionError, match="runs in bf16 or fp16"):
        attention_kernel(name, torch.device("cuda"), torch.float32)


def test_cli_run_options(home, capsys):
    from engine.cli.main import ATTENTION_CHOICES, MEMORY_CHOICES, main
    from engine.generation.memory import MEMORY_PROFILES
    from engine.generation.speed import ATTENTION_ALIASES, ATTENTION_BACKENDS

    assert (MEMORY_PROFILES, ATTENTION_BACKENDS + tuple(ATTENTION_ALIASES)) == (
        MEMORY_CHOICES,
        ATTENTION_CHOICES,
    )
    argv = ["generate", "a fox", "--model", "tiny", "--ckpts", str(home), "--device", "cpu"]
    assert main([*argv, "--attention", "flash"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith("needs a CUDA GPU (the device is cpu); use --attention sdpa")
    assert main([*argv, "--compile"]) == 2
    assert "use --no-compile" in capsys.readouterr().err
