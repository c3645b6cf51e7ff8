"""LanDiff stage 1: the language model that writes semantic video tokens.

A 24-block Llama-style GPT (RMSNorm, bias-free attention with interleaved 1-D RoPE,
gated GELU-tanh MLP) over a prefix of [BOS, micro-conditions, text, START_OF_IFrame],
followed by generated codes. Parameter names match `llm/model.safetensors` of the
release. The flan-T5 encoder is a separate model: this module takes its hidden states.

Precision follows the reference: matmuls run in the dtype of the matmul weights (bf16
on a GPU), RMSNorm and the final LayerNorm + head run in float32.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.configs import MICRO_CONDITION_KEYS, LLMConfig
from engine.models.rope import apply_rope, rope_1d


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.square().mean(-1, keepdim=True) + self.eps)
        return (h * self.weight.float()).to(x.dtype)


class GatedMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.gelu(self.w1(x), approximate="tanh") * self.w3(x))


class KVCache:
    """Post-RoPE keys and values of every block, preallocated for the whole sequence."""

    def __init__(
        self, num_blocks: int, batch: int, heads: int, max_len: int, head_dim: int, *, like: torch.Tensor
    ):
        shape = (num_blocks, 2, batch, heads, max_len, head_dim)
        # zeros, not empty: decoding attends over unwritten rows (masked), and 0 * NaN would leak through
        self.tensors = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.length = 0

    def append(self, block: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store [B, H, n, D] new keys/values at the current end; return all keys/values so far."""
        end = self.length + key.shape[2]
        self.tensors[block, 0, :, :, self.length : end] = key
        self.tensors[block, 1, :, :, self.length : end] = value
        return self.tensors[block, 0, :, :, :end], self.tensors[block, 1, :, :, :end]

    def write(
        self, block: int, position: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rows: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one step's [B, H, 1, D] keys/values at `position` ([1], on the device); return the cache's
        first `rows` rows (a size the caller fixes on the host), whose unwritten ones the caller masks out:
        the shapes do not depend on the position, so a step can be captured once per `rows`."""
        keys, values = self.tensors[block, 0], self.tensors[block, 1]
        keys.index_copy_(2, position, key)
        values.index_copy_(2, position, value)
        return keys[:, :, :rows], values[:, :, :rows]


class LlamaBlock(nn.Module):
    def __init__(self, config: LLMConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.norm0 = RMSNorm(config.hidden_dim)
        self.norm1 = RMSNorm(config.hidden_dim)
        self.wqkv = nn.Linear(config.hidden_dim, 3 * config.hidden_dim, bias=False)
        self.wo = nn.Linear(config.hidden_dim, config.hidden_dim, bias=False)
        self.mlp = GatedMLP(config.hidden_dim, config.mlp_dim)

    def forward(
        self,
        x: torch.Tensor,
        cis: torch.Tensor,
        cache: KVCache | None,
        index: int,
        step: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """`step` = (position [1], additive mask [1, rows]) decodes one token against the cache's first
        rows; the mask (0 or -inf, in x's dtype) is built once per step for all blocks."""
        batch, length, _ = x.shape
        qkv = self.wqkv(self.norm0(x)).view(batch, length, 3, self.num_heads, -1)
        # q and k turn in one go: their heads side by side are one [B, n, 2 * heads, D] view
        qk = apply_rope(qkv[:, :, :2].flatten(2, 3), cis).view(batch, length, 2, self.num_heads, -1)
        q, k = (t.transpose(1, 2) for t in qk.unbind(dim=2))  # [B, H, n, D]
        v = qkv[:, :, 2].transpose(1, 2)
        if step is not None:
            position, mask = step
            assert cache is not None  # a step decodes against the cache
            k, v = cache.write(index, position, k, v, mask.shape[-1])
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + self.wo(attn.transpose(1, 2).reshape(batch, length, -1))
            return x + self.mlp(self.norm1(x))
        past_len = 0
        if cache is not None:
            past_len = cache.length
            k, v = cache.append(index, k, v)
        # New queries sit at the end of the sequence: causal within them, full over the past.
        causal = length > 1
        if causal and past_len:
            mask = torch.ones(length, past_len + length, dtype=torch.bool, device=x.device).tril(past_len)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        x = x + self.wo(attn.transpose(1, 2).reshape(batch, length, -1))
        return x + self.mlp(self.norm1(x))


class GPT(nn.Module):
    def __init__(self, config: LLMConfig):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(LlamaBlock(config) for _ in range(config.num_blocks))
        self.layer_norm = nn.LayerNorm(config.hidden_dim, eps=1e-5)
        self.head = nn.Linear(config.hidden_dim, config.vocab.size, bias=False)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        like = cast(LlamaBlock, self.blocks[0]).wqkv.weight
        c = self.config
        return KVCache(c.num_blocks, batch, c.num_heads, max_len, c.head_dim, like=like)

    def forward(
        self, features: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Logits [B, vocab] (float32) for the token after the last input position.

        features: [B, n, hidden]; positions: [n] absolute positions of these inputs. With a
        cache, the inputs continue the cached sequence and are appended to it.
        """
        c = self.config
        cis = rope_1d(positions, c.head_dim, c.rope_theta)
        x = features.to(cast(LlamaBlock, self.blocks[0]).wqkv.weight.dtype)
        for index, block in enumerate(self.blocks):
            x = block(x, cis, cache, index)
        if cache is not None:
            cache.length += features.shape[1]
        return self.logits(x)

    def decode(
        self,
        features: torch.Tensor,
        position: torch.Tensor,
        visible: torch.Tensor,
        cis_table: torch.Tensor,
        cache: KVCache,
    ) -> torch.Tensor:
        """Logits [B, vocab] after one more input [B, 1, hidden] at `position` ([1] on the device).

        Static shapes and no host synchronisation: the step attends over the cache's first `len(visible)`
        rows, `visible` ([rows] bool) masking those not written yet; `cis_table` is `rope_table`'s, complex
        or its real view (under torch.compile).
        """
        cis = cis_table.index_select(0, position)
        x = features.to(cast(LlamaBlock, self.blocks[0]).wqkv.weight.dtype)
        mask = torch.zeros(visible.shape, dtype=x.dtype, device=x.device).masked_fill_(~visible, -math.inf)
        for index, block in enumerate(self.blocks):
            x = block(x, cis, cache, index, step=(position, mask.view(1, -1)))
        return self.logits(x)

    def rope_table(self, max_len: int, device: torch.device) -> torch.Tensor:
        """cis for positions 0..max_len-1, [max_len, head_dim // 2]: built once, indexed per step."""
        c = self.config
        return rope_1d(torch.arange(max_len, device=device), c.head_dim, c.rope_theta)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        last = self.layer_norm(x[:, -1].float())
        return F.linear(last, self.head.weight.float())


class MLP2(nn.Module):
    def __init__(self, dim_in: int, hidden: int, dim_out: int):
        super().__init__()
        self.fc0 = nn.Linear(dim_in, hidden)
        self.fc1 = nn.Linear(hidden, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(F.gelu(self.fc0(x), approximate="tanh"))


class TextConditioner(nn.Module):
    """flan-T5 hidden states -> model space; a learned vector stands in for text when unconditional."""

    def __init__(self, config: LLMConfig):
        super().__init__()
        self.embeddings = MLP2(config.text_dim, config.hidden_dim, config.hidden_dim)
        self.null_text_embedding = nn.Parameter(torch.zeros(config.hidden_dim))

    def forward(self, text_states: torch.Tensor) -> torch.Tensor:
        return self.embeddings(text_states.to(self.embeddings.fc0.weight.dtype))

    def unconditional(self, length: int) -> torch.Tensor:
        dtype = self.embeddings.fc0.weight.dtype
        return self.null_text_embedding.to(dtype).expand(length, -1)


def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos(v f_k) | sin(v f_k)], f_k = exp(-ln(max_period) k / (dim/2)), float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = values.float()[:, None] * freqs.to(values.device)[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MicroConditioner(nn.Module):
    """Scalar conditions (frame count, motion score) -> one prefix token each."""

    def __init__(self, config: LLMConfig):
        super().__init__()
        self.frequency_dim = config.micro_frequency_dim
        self.mlps = nn.ModuleDict(
            {
                key: nn.Sequential(
                    nn.Linear(config.micro_frequency_dim, config.micro_hidden_dim),
                    nn.SiLU(),
                    nn.Linear(config.micro_hidden_dim, config.hidden_dim),
                )
                for key in MICRO_CONDITION_KEYS
            }
        )

    def forward(self, values: dict[str, float]) -> torch.Tensor:
        """[len(MICRO_CONDITION_KEYS), hidden] in the MLP dtype."""
        tokens = []
        for key in MICRO_CONDITION_KEYS:
            mlp = cast(nn.Sequential, self.mlps[key])
            weight = cast(nn.Linear, mlp[0]).weight
            value = torch.tensor([float(values[key])], device=weight.device)
            tokens.append(mlp(sinusoidal_embedding(value, self.frequency_dim).to(weight.dtype)))
        return torch.cat(tokens, dim=0)


class TokenEmbedding(nn.Module):
    def __init__(self, config: LLMConfig):
        super().__init__()
        self.tok_emb_code = nn.Embedding(config.vocab.size, config.hidden_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tok_emb_code(ids)


class SemanticLM(nn.Module):
    """The whole checkpoint of `llm/model.safetensors`: conditioners, embedding, GPT."""

    FLOAT32_PARTS = ("norm0", "norm1", "transformer.layer_norm", "transformer.head")

    def __init__(self, config: LLMConfig):
        super().__init__()
        self.config = config
        self.cond_model = TextConditioner(config)
        self.micro_condition = MicroConditioner(config)
        self.visual_embedding_model = TokenEmbedding(config)
        self.transformer = GPT(config)

    @classmethod
    def keeps_float32(cls, key: str) -> bool:
        """Parameters the reference computes with in float32 whatever the run dtype."""
        return any(part in key for part in cls.FLOAT32_PARTS)

    def cast_for_inference(self, dtype: torch.dtype) -> SemanticLM:
        """Matmul weights to `dtype`; norms, final LayerNorm and head stay float32."""
        for name, param in self.named_parameters():
            param.data = param.data.to(torch.float32 if self.keeps_float32(name) else dtype)
        return self

    def prefix_features(
        self, text_states: torch.Tensor, micro_conditions: dict[str, float], guidance: bool
    ) -> torch.Tensor:
        """[B, L+4, hidden] = [BOS, frames, motion, text x L, START_OF_IFrame].

        B = 2 ([cond, uncond]) with guidance, else 1.
        """
        vocab = self.config.vocab
        device = self.visual_embedding_model.tok_emb_code.weight.device
        special = self.visual_embedding_model(torch.tensor([vocab.bos, vocab.start_of_iframe], device=device))
        micro = self.micro_condition(micro_conditions)
        length = text_states.shape[-2]
        texts = [self.cond_model(text_states.reshape(length, -1))]
        if guidance:
            texts.append(self.cond_model.unconditional(length))
        dtype = cast(LlamaBlock, self.transformer.blocks[0]).wqkv.weight.dtype
        rows = [
            torch.cat([special[:1], micro.to(special.dtype), t.to(special.dtype), special[1:]]) for t in texts
        ]
        return torch.stack(rows).to(dtype)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.visual_embedding_model(ids)
