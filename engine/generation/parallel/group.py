"""The ranks of one parallel render and the few collectives they use, all torch.distributed's own.

Every rank builds, from one rendezvous file, the whole group (rank 0's commands and the job's inputs),
its sequence group (the ranks that share a guidance half; they gather keys, values and the video tokens,
and with the step cache add up its signal's sums) and its guidance group (the ranks holding the same shard
of the two halves; they gather v, and with the step cache each half's run/skip decision). The groups
are ProcessGroup objects made on a store, not torch.distributed's process-wide default group: one engine
process leads a group per worker, several at once. Gloo on the CPU, NCCL on GPUs; nothing else differs.

Rank 0 drives: before each render it broadcasts RENDER and the inputs, and at every denoising step GO or
STOP, so the helpers stop where rank 0 stops. A render rank 0 left between steps (a failed decode, a
cancel between chunks) is closed with a STOP before the next command; one it left inside a network call
breaks the group (the helpers wait inside a collective), which is then rebuilt.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from engine import settings
from engine.generation.parallel.plan import ParallelPlan

GO, STOP, RENDER, EXIT = 0, 1, 2, 3
COLLECTIVE_TIMEOUT = timedelta(hours=2)  # a helper waits this long for rank 0's next command
GLOO_SOCKET_IFNAME = "GLOO_SOCKET_IFNAME"  # set for torch's gloo, never read here (see make_group)


class RankLost(RuntimeError):
    """A rank of the group stopped answering; the message names it. The group must be rebuilt."""


def loopback_interface() -> str:
    """The name of this machine's loopback interface: lo (Linux) or lo0 (macOS, the BSDs)."""
    names = {name for _, name in socket.if_nameindex()}
    for name in ("lo", "lo0"):
        if name in names:
            return name
    raise RuntimeError(f"no loopback interface (lo, lo0) among {sorted(names)}: a parallel group needs one")


def make_group(
    store: dist.Store, name: str, rank: int, ranks: list[int], device: torch.device, timeout: timedelta
) -> dist.ProcessGroup:
    """One process group of `ranks` on `store`, listening on loopback only: the backends' public
    constructors with a timeout, not torch.distributed.new_group, which needs the process-wide default
    group where one engine process leads a group per worker."""
    scoped = dist.PrefixStore(f"{name}/", store)
    index = ranks.index(rank)
    if device.type == "cuda":
        # NCCL's bootstrap listens on this interface (read when the group is made): loopback by default
        os.environ[settings.NCCL_SOCKET_IFNAME.name] = settings.NCCL_SOCKET_IFNAME.raw() or "lo"
        # torch's stubs list only the Options constructor, and make the backends plain Backends,
        # without the collectives they have
        return dist.ProcessGroupNCCL(scoped, index, len(ranks), timeout)  # type: ignore[arg-type, return-value]
    # gloo listens on the interfaces GLOO_SOCKET_IFNAME names (read when the group is made); unset, on
    # the address the machine's hostname resolves to, which may face the network. A single-box group
    # has no use for anything but loopback, whatever the environment says.
    os.environ[GLOO_SOCKET_IFNAME] = loopback_interface()
    return dist.ProcessGroupGloo(scoped, index, len(ranks), timeout)  # type: ignore[return-value]


class ParallelGroup:
    def __init__(self, plan: ParallelPlan, rank: int, device: torch.device, store: dist.Store):
        self.plan, self.rank, self.device = plan, rank, device
        self.cfg_index, self.seq_index = plan.rank_position(rank)
        self.broken = False
        self.steps_left = 0  # rank 0: denoising steps of the render under way the helpers still expect
        self.explain: Callable[[BaseException], str] = lambda error: (
            f"a rank of the parallel group stopped answering ({error}); the group restarts for the next job"
        )
        # every rank creates its groups in the same order (world, sequence, guidance): no rank waits
        # in one group's rendezvous for a peer that is in another's
        self.world = make_group(store, "world", rank, list(range(plan.size)), device, COLLECTIVE_TIMEOUT)
        seq_ranks = [self.cfg_index * plan.seq + s for s in range(plan.seq)]
        cfg_ranks = [c * plan.seq + self.seq_index for c in range(plan.cfg)]
        self.seq_group = (
            make_group(store, f"seq{self.cfg_index}", rank, seq_ranks, device, COLLECTIVE_TIMEOUT)
            if plan.seq > 1
            else None
        )
        self.cfg_group = (
            make_group(store, f"cfg{self.seq_index}", rank, cfg_ranks, device, COLLECTIVE_TIMEOUT)
            if plan.cfg > 1
            else None
        )

    @classmethod
    def join(cls, plan: ParallelPlan, rank: int, rendezvous: Path, device: torch.device) -> ParallelGroup:
        """Join the group whose ranks meet in the file `rendezvous` (a private runtime dir's)."""
        store = dist.FileStore(str(rendezvous), plan.size)
        return cls(plan, rank, device, store)

    # collectives

    def _wait(self, work) -> None:
        try:
            work.wait()
        except Exception as error:  # gloo: a peer's socket closed; NCCL: aborted or timed out
            self.broken = True
            raise RankLost(self.explain(error)) from error

    @torch.compiler.disable  # a compiled block calls it as it is (a graph break), never traced
    def gather(self, tensor: torch.Tensor, group: dist.ProcessGroup, dim: int) -> torch.Tensor:
        """Every rank's `tensor` (all the same shape), concatenated along `dim` in rank order."""
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(group.size())]
        self._wait(group.allgather([parts], [tensor]))
        return torch.cat(parts, dim)

    @torch.compiler.disable
    def all_to_all(self, tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        """Piece i of `tensor`'s first dim goes to rank i; piece i of the result came from rank i."""
        tensor = tensor.contiguous()
        out = torch.empty_like(tensor)
        self._wait(group.alltoall_base(out, tensor, [], []))
        return out

    @torch.compiler.disable
    def all_reduce(self, tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        """The sum of every rank's `tensor` (all the same shape), on every rank."""
        tensor = tensor.contiguous().clone()
        self._wait(group.allreduce([tensor]))
        return tensor

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's `tensor` on every rank (the others pass one of the same shape and dtype)."""
        tensor = tensor.to(self.device).contiguous()
        self._wait(self.world.broadcast(tensor, 0))
        return tensor

    def command(self, value: int = -1) -> int:
        """Rank 0 says `value`; every rank returns it."""
        return int(self.broadcast(torch.tensor([value], dtype=torch.int64)).item())

    # rank 0

    def lead(self, header: dict, tensors: list[torch.Tensor], steps: int) -> None:
        """Start a render on the helpers: `header` (JSON values) and `tensors` as rank 0 has them;
        the render then takes `steps` denoising steps in all."""
        if self.steps_left:
            self.command(STOP)
        self.command(RENDER)
        meta = {
            "header": header,
            "tensors": [[list(t.shape), str(t.dtype).removeprefix("torch.")] for t in tensors],
        }
        data = torch.frombuffer(bytearray(json.dumps(meta).encode()), dtype=torch.uint8)
        self.broadcast(torch.tensor([data.numel()], dtype=torch.int64))
        self.broadcast(data)
        for tensor in tensors:
            self.broadcast(tensor)
        self.steps_left = steps

    def close(self) -> None:
        """Rank 0: tell the helpers to leave (after a STOP if they are mid-render). Every rank: drop the
        groups."""
        if self.rank == 0 and not self.broken:
            try:
                if self.steps_left:
                    self.command(STOP)
                self.command(EXIT)
            except RankLost:
                pass
        for group in (self.cfg_group, self.seq_group, self.world):
            if group is not None:
                with contextlib.suppress(Exception):  # already aborted: nothing left to free
                    group.shutdown()

    # helpers

    def receive(self) -> tuple[dict, list[torch.Tensor]]:
        """A helper's side of `lead` (after the RENDER command)."""
        size = int(self.broadcast(torch.zeros(1, dtype=torch.int64)).item())
        data = self.broadcast(torch.zeros(size, dtype=torch.uint8))
        meta = json.loads(bytes(data.cpu().numpy()).decode())
        tensors = [
            self.broadcast(torch.zeros(shape, dtype=getattr(torch, dtype)))
            for shape, dtype in meta["tensors"]
        ]
        return meta["header"], tensors

    # every rank

    def agreed(self, should_stop: Callable[[], bool] | None) -> Callable[[], bool]:
        """A stop check for the denoising loop that every rank answers alike: rank 0's."""

        def check() -> bool:
            if self.rank == 0:
                stop = should_stop is not None and should_stop()
                self.command(STOP if stop else GO)
                self.steps_left = 0 if stop else self.steps_left - 1
                return stop
            value = self.command()
            if value not in (GO, STOP):
                self.broken = True
                raise RankLost(f"rank {self.rank}: rank 0 sent command {value} in the middle of a render")
            return value == STOP

        return check
