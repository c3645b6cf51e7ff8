"""A helper rank of a parallel group, as the engine starts it: `python -m engine.generation.parallel.rank
CONFIG` (CONFIG: a RankConfig as JSON). It loads stage 2 on its device, joins the group and renders what
rank 0 renders until told to leave; it dies with the engine."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger("engine.generation.parallel.rank")


def die_with(parent: int) -> None:
    """End this process when `parent` ends: at once by the kernel's parent-death signal (Linux), and by a
    watch on the parent's pid wherever that is missing."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent was gone before the signal was armed
        os._exit(3)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    config = json.loads(argv[1])
    die_with(config["parent"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ctrl-c reaches the engine, which stops us
    logging.basicConfig(level=logging.INFO, format=f"rank {config['rank']}: %(levelname)s %(message)s")
    from pathlib import Path

    import torch
    import torch.distributed as dist

    from engine.generation.parallel.group import ParallelGroup, RankLost
    from engine.generation.parallel.network import attach
    from engine.generation.parallel.plan import ParallelPlan
    from engine.generation.parallel.ranks import helper_stage, torch_device
    from engine.generation.parallel.render import follow_renders
    from engine.generation.speed import DiTOptions

    device = torch_device(config["device"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(config["threads"])
    ckpts = None if config["ckpts"] is None else Path(config["ckpts"])
    dit = DiTOptions(**config["dit"])
    stage = helper_stage(config["model"], ckpts, device, dit)
    plan = ParallelPlan(config["cfg"], config["seq"])
    store = dist.FileStore(config["rendezvous"], plan.size)
    store.set(f"ready/{config['rank']}", "1")
    group = ParallelGroup(plan, config["rank"], device, store)
    attach(stage, group)
    try:
        follow_renders(stage, group)
    except RankLost as lost:
        log.error("%s", lost)
        return 1
    finally:
        group.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
