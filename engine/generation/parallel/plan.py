"""`--parallel`: how one video's stage 2 is split across devices, parsed without torch.

Two axes multiply: classifier-free guidance (cfg, 1 or 2: the [uncond, cond] halves of every DiT call
on two rank groups) and sequence (seq: each rank of a group holds 1/seq of the video tokens; attention
gathers the others' keys and values). `--parallel N` takes cfg 2 when N is even (the split that costs
no communication inside the network), and the rest as sequence; `--parallel cfg=2,seq=3` says both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.specs import ModelSpec


class BadParallel(ValueError):
    """A --parallel value that cannot be served; its message is the one line to print."""


@dataclass(frozen=True)
class ParallelPlan:
    cfg: int = 1
    seq: int = 1

    @property
    def size(self) -> int:
        """Ranks (devices) that render one video together."""
        return self.cfg * self.seq

    def rank_position(self, rank: int) -> tuple[int, int]:
        """(guidance half, sequence shard) of `rank`: ranks 0..seq-1 hold the uncond half."""
        return divmod(rank, self.seq)

    def text(self) -> str:
        return f"cfg={self.cfg},seq={self.seq}"

    def check(self, spec: ModelSpec) -> ParallelPlan:
        """Refuse a sequence degree that leaves a rank without video tokens in the model's chunks."""
        frames, _, height, width = spec.latent_shape(spec.llm.frames_per_segment)
        patch = spec.dit.patch_size
        tokens = frames * (height // patch) * (width // patch)
        if self.seq > tokens:
            raise BadParallel(
                f"--parallel {self.text()}: the {spec.name} model's chunks have {tokens} video tokens, "
                f"too few for {self.seq} sequence ranks; give seq={tokens} or less"
            )
        return self


def parse_parallel(text: str) -> ParallelPlan:
    """ "4" -> cfg 2 x seq 2, "3" -> seq 3, "cfg=2,seq=3", "seq=2", "cfg=2". Raises BadParallel."""
    given = text.strip().lower().replace(" ", "")
    if given.isdigit():
        size = int(given)
        if size < 2:
            raise BadParallel(f"--parallel {text}: give 2 or more devices (one device needs no --parallel)")
        cfg = 2 if size % 2 == 0 else 1
        return ParallelPlan(cfg, size // cfg)
    parts = dict(re.findall(r"(cfg|seq)=(\d+)", given))
    if not re.fullmatch(r"(cfg|seq)=\d+(,(cfg|seq)=\d+)?", given) or len(parts) != given.count("="):
        raise BadParallel(
            f"--parallel {text!r} is not a split: give a device count (4) or cfg=2,seq=2 (cfg 1 or 2, seq 1+)"
        )
    cfg, seq = int(parts.get("cfg", 1)), int(parts.get("seq", 1))
    if cfg not in (1, 2):
        raise BadParallel(f"--parallel {text}: cfg is 1 or 2 (guidance has two halves), not {cfg}")
    if seq < 1:
        raise BadParallel(f"--parallel {text}: seq must be 1 or more")
    if cfg * seq < 2:
        raise BadParallel(f"--parallel {text}: that is one device; give cfg=2 or seq=2 or more")
    return ParallelPlan(cfg, seq)


def device_groups(plan: ParallelPlan, devices: list[str]) -> list[list[str]]:
    """The engine's devices cut into groups of `plan.size` consecutive ones, one group a worker."""
    if len(devices) % plan.size:
        raise BadParallel(
            f"--parallel {plan.text()} needs {plan.size} devices a group; {len(devices)} "
            f"({', '.join(devices)}) do not split into groups of {plan.size}"
        )
    return [devices[i : i + plan.size] for i in range(0, len(devices), plan.size)]


def parallel_devices(plan: ParallelPlan, given: list[str] | None, cuda_count: int) -> list[list[str]]:
    """The device groups of `--parallel`: `given` (--gpus's devices) cut into groups of the plan's size,
    or without --gpus the first plan.size GPUs, or plan.size CPU ranks on a machine with no GPU."""
    if given is None:
        if cuda_count == 0:
            given = [f"cpu:{index}" for index in range(plan.size)]
        elif cuda_count >= plan.size:
            given = [f"cuda:{index}" for index in range(plan.size)]
        else:
            raise BadParallel(
                f"--parallel {plan.text()} needs {plan.size} GPUs and this machine shows {cuda_count}; "
                "give a smaller split"
            )
    return device_groups(plan, given)
