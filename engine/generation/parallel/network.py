"""The control DiT's call split across a parallel group; every rank returns the whole v.

Guidance split: the call's batch is [uncond, cond]; a rank computes its half and the guidance group
gathers v. A lone half would take different GEMM kernels than the pair where a layer sees one row (the
time embedding and the adaptive norms' projections of [B, D]): one row and two rows give other bits on
the CPU. So on this path those layers are fed two copies of the row and keep the first result, which
is the same arithmetic as the row inside the pair: the split gives the single process's bits.

Sequence split: after `embed`, each rank of a sequence group keeps a contiguous 1/seq of both streams'
video tokens (the last shard padded with zeros), text tokens whole on every rank. Tokens meet only in
attention. Where seq divides the heads, an all-to-all gives each rank every token of 1/seq of the heads
(Ulysses); otherwise each rank gathers the group's video keys and values behind the text ones. Either
way the padding is dropped before attention and every query sees every token in the single process's
order; the video tokens are gathered again before `head`.

Step caching (engine.models.step_cache) runs on the same split: each rank's StepCache sees its share of
the call (`RankShare`). The ranks of a sequence group add up the signal's sums (one all-reduce of [B, 3]
a call) and so decide alike; the ranks of a guidance group tell each other their half's decision (one
all-gather of a byte a call), for the counts and for the arithmetic: a half whose blocks run while the
other half skips runs them as a lone row, as the single process runs it, not as the first of a pair.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from engine.generation.parallel.group import ParallelGroup
from engine.models.control_dit import Attend, ControlDiT, JointAttentionProcessor, Streams, sdpa
from engine.models.step_cache import CacheCounts, StepCache

if TYPE_CHECKING:
    from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock


class SequenceShardAttention:
    """attend(q, k, v) for a rank's [text | own video shard] queries against every rank's tokens."""

    def __init__(self, group: ParallelGroup, kernel: Attend):
        self.group, self.kernel = group, kernel
        self.text_length = 0
        self.tokens = 0  # video tokens of the whole sequence, padding excluded

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        length, head_dim = self.text_length, k.shape[-1]
        local = torch.cat([k[:, :, length:], v[:, :, length:]], dim=-1)  # one gather for both
        every = self.group.gather(local, self.group.seq_group, dim=2)[:, :, : self.tokens]
        k_video, v_video = every.split(head_dim, dim=-1)
        k = torch.cat([k[:, :, :length], k_video], dim=2)
        v = torch.cat([v[:, :, :length], v_video], dim=2)
        return self.kernel(q, k, v)


class UlyssesAttention(SequenceShardAttention):
    """The same attention when the group size divides the heads (DeepSpeed-Ulysses): one all-to-all
    gives each rank every video token of 1/seq of the heads (text tokens it has already), it attends over
    the whole sequence for those heads, and a second all-to-all gives the video tokens back, every head
    each; the text queries' outputs are gathered over the heads. Each rank moves 4/seq of its q, k, v
    and output instead of gathering every rank's k and v."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        group, ranks, length = self.group, self.group.plan.seq, self.text_length
        batch, heads, _, head_dim = q.shape
        mine = slice(group.seq_index * heads // ranks, (group.seq_index + 1) * heads // ranks)
        video = torch.stack([q[:, :, length:], k[:, :, length:], v[:, :, length:]])  # [3, B, h, n, d]
        count = video.shape[3]
        video = video.unflatten(2, (ranks, heads // ranks)).permute(2, 0, 1, 3, 4, 5)  # [S, 3, B, h/S, n, d]
        video = group.all_to_all(video, group.seq_group)  # piece i: rank i's tokens, my heads
        video = video.permute(1, 2, 3, 0, 4, 5).flatten(3, 4)[:, :, :, : self.tokens]  # [3, B, h/S, N, d]
        q_all, k_all, v_all = (
            torch.cat([t[:, mine, :length], part], dim=2) for t, part in zip((q, k, v), video, strict=True)
        )
        out = self.kernel(q_all, k_all, v_all)  # [B, h/S, L + N, d]
        words = group.gather(out[:, :, :length], group.seq_group, dim=1)  # [B, h, L, d]
        back = out[:, :, length:]
        back = torch.cat(
            [back, back.new_zeros(batch, heads // ranks, ranks * count - self.tokens, head_dim)], 2
        )
        back = back.unflatten(2, (ranks, count)).permute(2, 0, 1, 3, 4)  # [S, B, h/S, n, d]
        back = group.all_to_all(back, group.seq_group)  # piece i: my tokens, rank i's heads
        back = back.permute(1, 0, 2, 3, 4).flatten(1, 2)  # [B, h, n, d]
        return torch.cat([words, back], dim=2)


def duplicate_single_rows(module: nn.Module) -> None:
    """Make every Linear of `module` compute a one-row [1, D] input as the first of two identical rows."""

    def before(linear: nn.Linear, args: tuple) -> tuple | None:
        x = args[0]
        doubled = x.ndim == 2 and x.shape[0] == 1 and not linear._landiff_alone
        # a plain flag: torch's Module.__setattr__ stub takes tensors and modules only
        linear._landiff_doubled = doubled  # type: ignore[assignment]
        return (torch.cat([x, x]),) if linear._landiff_doubled else None

    def after(linear: nn.Linear, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
        return out[:1] if linear._landiff_doubled else None

    for layer in module.modules():
        if isinstance(layer, nn.Linear) and not getattr(layer, "_landiff_two_rows", False):
            layer.register_forward_pre_hook(before)
            layer.register_forward_hook(after)
            layer._landiff_two_rows, layer._landiff_alone = True, False  # type: ignore[assignment]


@contextlib.contextmanager
def rows_alone(module: nn.Module, alone: bool = True) -> Iterator[None]:
    """While open (if `alone`): the Linears `duplicate_single_rows` changed compute a one-row input as one
    row again, the arithmetic of a batch of one (a branch the single process runs without the other)."""
    layers = [m for m in module.modules() if getattr(m, "_landiff_two_rows", False)] if alone else []
    for layer in layers:
        layer._landiff_alone = True  # type: ignore[assignment]  # see duplicate_single_rows
    try:
        yield
    finally:
        for layer in layers:
            layer._landiff_alone = False  # type: ignore[assignment]


class RankShare:
    """The DiT's parts (`embed`, `run_blocks`, `head`, `main`) as one rank computes its share of a call,
    for a StepCache: the rank's guidance half (the caller splits the batch) and, on a sequence group,
    the rank's own video tokens without the padding (the cache's signal and residual hold real tokens
    only); the blocks get the padded shard and `head` the gathered tokens, as `sequence_forward` does."""

    def __init__(self, network: ControlDiT, group: ParallelGroup, attention: SequenceShardAttention | None):
        self.network, self.group, self.attention = network, group, attention
        self.main = network.main
        self.tokens = self.per_rank = 0  # the call's video tokens, and a shard's (padding included)
        self.paired = True  # this call's blocks run for every guidance half (else for this one alone)

    def embed(
        self, latents: torch.Tensor, text: torch.Tensor, timesteps: torch.Tensor, semantic: torch.Tensor
    ) -> Streams:
        streams = self.network.embed(latents, text, timesteps, semantic)
        if self.group.seq_group is None:
            return streams
        self.tokens = streams.video.shape[1]
        self.per_rank = math.ceil(self.tokens / self.group.plan.seq)
        start = self.group.seq_index * self.per_rank
        own = slice(start, min(start + self.per_rank, self.tokens))
        streams.video, streams.control_video = streams.video[:, own], streams.control_video[:, own]
        assert self.attention is not None  # ParallelDiT makes one for a sequence group
        self.attention.text_length, self.attention.tokens = streams.words.shape[1], self.tokens
        return streams

    def run_blocks(self, streams: Streams) -> tuple[torch.Tensor, torch.Tensor]:
        own = streams.video.shape[1]
        if self.group.seq_group is not None:
            streams = replace(
                streams,
                video=shard(streams.video, 0, self.per_rank),
                control_video=shard(streams.control_video, 0, self.per_rank),
            )
        with rows_alone(self.network, not self.paired):
            video, words = self.network.run_blocks(streams)
        return video[:, :own], words

    def head(self, video: torch.Tensor, temb: torch.Tensor, latents_shape: torch.Size) -> torch.Tensor:
        if self.group.seq_group is not None:
            padded = shard(video, 0, self.per_rank)
            video = self.group.gather(padded, self.group.seq_group, dim=1)[:, : self.tokens]
        return self.network.head(video, temb, latents_shape)

    def reduce_sums(self, sums: torch.Tensor) -> torch.Tensor:
        """The step cache's signal sums of this rank's tokens -> of the sequence group's (every token)."""
        return self.group.all_reduce(sums, self.group.seq_group)

    def share_runs(self, run: torch.Tensor) -> torch.Tensor:
        """This rank's guidance half's run/skip decisions -> both halves' ([uncond, cond] order)."""
        mine = run.to(device=self.group.device, dtype=torch.uint8)
        every = self.group.gather(mine, self.group.cfg_group, dim=0).cpu().bool()
        self.paired = bool(every.all())
        return every


class ParallelDiT:
    """network(latents [2B, ...], text [2B, L, E], timesteps [2B], semantic) -> v [2B, ...] on every rank."""

    def __init__(self, network: ControlDiT, group: ParallelGroup):
        self.network, self.group = network, group
        self.attention: SequenceShardAttention | None = None
        if group.cfg_group is not None:
            duplicate_single_rows(network)
        if group.seq_group is not None:
            block = cast("CogVideoXBlock", network.blocks()[0])
            previous = block.attn1.processor
            kernel: Attend = previous.attend if isinstance(previous, JointAttentionProcessor) else sdpa
            if isinstance(kernel, SequenceShardAttention):
                kernel = kernel.kernel
            split = (
                UlyssesAttention if network.config.num_heads % group.plan.seq == 0 else SequenceShardAttention
            )
            self.attention = split(group, kernel)
            network.set_attention(self.attention)

    def __call__(
        self, latents: torch.Tensor, text: torch.Tensor, timesteps: torch.Tensor, semantic: torch.Tensor
    ) -> torch.Tensor:
        return self.split_guidance(self.sequence_forward, latents, text, timesteps, semantic)

    def step_cache(
        self,
        threshold: float,
        steps: int,
        counts: CacheCounts | None = None,
        ready: Callable[[nn.Module], None] | None = None,
    ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """The same split call with step caching, for one sampler run (a fresh one per chunk): `counts`
        gets every guidance half's calls and skips, as the single process counts them."""
        group = self.group
        share = RankShare(self.network, group, self.attention)
        cache = StepCache(
            share,
            threshold,
            steps,
            counts,
            ready,
            reduce_sums=share.reduce_sums if group.seq_group is not None else None,
            share_runs=share.share_runs if group.cfg_group is not None else None,
        )
        return functools.partial(self.split_guidance, cache)

    def split_guidance(
        self,
        forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        latents: torch.Tensor,
        text: torch.Tensor,
        timesteps: torch.Tensor,
        semantic: torch.Tensor,
    ) -> torch.Tensor:
        """`forward` on this rank's guidance half (the whole batch without cfg); v gathered over both."""
        group = self.group
        try:
            if group.cfg_group is not None:
                half = group.cfg_index
                latents, text, timesteps = (t.chunk(2)[half] for t in (latents, text, timesteps))
            v = forward(latents, text, timesteps, semantic)
            if group.cfg_group is not None:
                v = group.gather(v, group.cfg_group, dim=0)
            return v
        except BaseException:
            group.broken = True  # the other ranks may be waiting inside a collective of this call
            raise

    def sequence_forward(
        self, latents: torch.Tensor, text: torch.Tensor, timesteps: torch.Tensor, semantic: torch.Tensor
    ) -> torch.Tensor:
        network, group = self.network, self.group
        if group.seq_group is None:
            return ControlDiT.forward(network, latents, text, timesteps, semantic)
        streams = network.embed(latents, text, timesteps, semantic)
        tokens = streams.video.shape[1]
        per_rank = math.ceil(tokens / group.plan.seq)
        start = group.seq_index * per_rank
        streams.video = shard(streams.video, start, per_rank)
        streams.control_video = shard(streams.control_video, start, per_rank)
        assert self.attention is not None  # made with the sequence group
        self.attention.text_length, self.attention.tokens = streams.words.shape[1], tokens
        video, _ = network.run_blocks(streams)
        video = group.gather(video, group.seq_group, dim=1)[:, :tokens]
        return network.head(video, streams.temb, latents.shape)


def shard(video: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """Tokens [start, start + count) of [B, N, D], zero-padded past N."""
    piece = video[:, start : start + count]
    if piece.shape[1] < count:
        padding = piece.new_zeros(piece.shape[0], count - piece.shape[1], piece.shape[2])
        piece = torch.cat([piece, padding], dim=1)
    return piece


def attach(stage, group: ParallelGroup) -> None:
    """Make `stage` (a VideoStage) render as a rank of `group`: its DiT's forward becomes the split one
    (the stage, a compile timer or any caller calls the network as before)."""
    stage.parallel = group
    stage.network.forward = ParallelDiT(stage.network, group)
