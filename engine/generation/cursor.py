"""Where a long video's render stands between two chunks (stage2.render_chunks moves it on; a parallel
group's rank 0 sends it to its helpers; a resume checkpoint saves it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RenderCursor:
    """Where a long video's render stands between two chunks: what the next chunk continues from exactly.

    `render_chunks` starts at one (a fresh one: chunk 0, the generator seeded) and moves it past each chunk
    before it yields that chunk's latents, so a checkpoint taken then resumes the render bit for bit."""

    index: int = 0  # the next chunk
    generator: torch.Tensor | None = None  # the random generator's state (get_state); None: seeded afresh
    prefix: torch.Tensor | None = None  # the last `overlap` latent frames of the chunk before, float32
