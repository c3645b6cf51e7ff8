"""`serve --ray auto|ADDRESS`: the engine's workers are Ray actors on a cluster's boxes, one per GPU.

Each worker is a JobWorker like a local one; its pipeline is a RemotePipeline (ray_pipeline.py) that runs
the job in its actor (ray_actor.py), so the events, the store and the outputs are those of a local job.
`RayWorkers` watches the cluster and adds a worker for every unit of the chosen resource (GPU, or a custom
one) on a live node, so a box that joins adds capacity; a node that leaves takes its actors with it, and the
job one was running goes back to the queue once (WorkerLost); one that dies idle is seen by its pending
`watch` call, which Ray fails, and is replaced. ray is imported only inside these calls, and only once
`--ray` is used.

Every box runs its own installed landiff (Ray brings no code: the actor class travels by name): an actor
first says its version (`hello`), and one of another version than the engine's is not admitted (one line in
the log, naming the node, both versions and the fix; status's no_worker while no worker is left). Its weights
are its box's (ray_actor.weights_layout): `fetch_on_nodes` makes them complete on every node at once
(`landiff-engine weights download --ray`), and a node's first job does it there otherwise.

The engine joins only a cluster that has Ray's token authentication on (RAY_AUTH_MODE=token on its nodes):
it needs the cluster's token here (Ray's own places: RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token or
RAY_AUTH_TOKEN), and before it joins, a probe without the token must be turned away. Anyone who can reach
an open cluster's ports can join it as a node, take jobs and send back what it likes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import engine
from engine import settings
from engine.daemon.backend import PipelineFactory
from engine.daemon.config import RunOptions
from engine.daemon.ray_pipeline import (
    RemotePipeline,
    actor_class,
    control,
    fetch_words,
    first_line,
    read_fetch_report,
    version_words,
)
from engine.daemon.startup import StartRefused

if TYPE_CHECKING:
    from ray.actor import ActorClass

    from engine.daemon.pool import WorkerPool
    from engine.daemon.ray_actor import PipelineHost
    from engine.daemon.worker import JobWorker

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 30.0  # joining a cluster that does not answer by then is refused
DISCOVERY_INTERVAL_S = 1.0  # how often the cluster's nodes are read: a joining box is used within this
ACTOR_READY_TIMEOUT_S = 300.0  # an actor not ready by then (its resource taken elsewhere, say) is given up
RETRY_AFTER_S = 30.0  # a node where an actor failed to start is tried again after this
REFUSED_RETRY_S = 120.0  # a node of another landiff version is asked again after this (once reinstalled)
TIDY_S = 20.0  # how long a stopping engine waits for its actors to remove their scratch folders
# Ray's own resources, which an actor asks for by their own options: never by --ray-resource
BUILTIN_RESOURCES = ("CPU", "memory", "object_store_memory")
BUILTIN_PREFIXES = ("node:", "accelerator_type:")
MAX_WHERE_CHARS = 200  # of each value an actor's ready() reports
TOKEN_HELP = "README: Many boxes"
# run with the token taken away: exits 0 when the cluster let it in (its authentication is off), prints
# the address it asked (auto resolved)
PROBE = """
import sys
from ray._private.services import canonicalize_bootstrap_address_or_die
from ray._raylet import GcsClient
address = canonicalize_bootstrap_address_or_die(sys.argv[1])
print(address, flush=True)
try:
    GcsClient(address=address).internal_kv_get(b"landiff-probe", None, timeout=float(sys.argv[2]))
except Exception as error:
    print(type(error).__name__, str(error).strip().splitlines()[0] if str(error).strip() else "", flush=True)
    sys.exit(3)
"""


class SigtermNote:
    """Drops Ray's "SIGTERM handler is not set" warning: ray.init runs in a thread here on purpose (the
    engine keeps its own signal handlers), so it says nothing the user can act on."""

    @staticmethod
    def filter(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("SIGTERM handler is not set")


def resource_refusal(resource: str) -> str | None:
    """Why `--ray-resource NAME` cannot work (one line), or None: Ray's built-in resources are asked for by
    options of their own, and a name a node lacks gives no worker."""
    if resource in BUILTIN_RESOURCES or resource.startswith(BUILTIN_PREFIXES):
        return (
            f"--ray-resource {resource}: a resource of Ray's own, not one an actor can take a unit of; give "
            "GPU (the default) or a custom one the nodes offer (ray start --resources '{\"landiff_gpu\": 1}')"
        )
    if not resource.replace("_", "").replace("-", "").replace(".", "").isalnum():
        return f"--ray-resource {resource!r}: a resource is a name (letters, digits, _ - .)"
    return None


def loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_refusal(address: str) -> str | None:
    """Why the engine cannot take part in a cluster with token authentication from here (one line), or
    None: RAY_AUTH_MODE is token or unset, and a token is here, in a file only its owner can read."""
    mode = settings.RAY_AUTH_MODE.raw()
    turn_on = f"the engine joins only a Ray cluster with token authentication ({TOKEN_HELP})"
    if mode is not None and mode.lower() != "token":
        return f"--ray {address}: RAY_AUTH_MODE={mode}: {turn_on}; set RAY_AUTH_MODE=token"
    if settings.RAY_AUTH_TOKEN.raw() is not None:
        return None
    path = settings.RAY_AUTH_TOKEN_PATH.path() or Path.home() / ".ray" / "auth_token"
    try:
        info = path.stat()
    except OSError:
        named = "RAY_AUTH_TOKEN_PATH" if settings.RAY_AUTH_TOKEN_PATH.raw() else "the default"
        return (
            f"--ray {address}: no Ray token at {path} ({named}): {turn_on}; copy the cluster's token there "
            "(chmod 600), or make one with `ray get-auth-token --generate` and start the nodes with it"
        )
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"--ray {address}: the Ray token {path} can be read by other users: chmod 600 {path}"
    return None


def auth_probe(address: str, timeout_s: float) -> str:
    """The cluster's GCS address once a request without the token was turned away; StartRefused when it
    was let in (the cluster's authentication is off) or nothing answered."""
    kept = {name: value for name, value in os.environ.items() if not name.startswith("RAY_AUTH_TOKEN")}
    env = dict(kept)
    with tempfile.TemporaryDirectory(prefix="landiff-ray-probe-") as empty:
        env.update(RAY_AUTH_MODE="disabled", HOME=empty)  # no token of any of Ray's places
        try:
            done = subprocess.run(
                [sys.executable, "-c", PROBE, address, str(timeout_s)],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s + 30,  # python and ray's import, then the request's own limit
            )
        except subprocess.TimeoutExpired:
            raise StartRefused(f"--ray {address}: no Ray cluster answered within {timeout_s:g} s") from None
    lines = done.stdout.splitlines()
    if done.returncode == 0 and lines:
        raise StartRefused(
            f"--ray {address}: the Ray cluster at {lines[0]} has token authentication off (anyone who "
            "reaches its ports can join it and take jobs); restart its nodes with RAY_AUTH_MODE=token "
            f"({TOKEN_HELP})"
        )
    if done.returncode == 3 and len(lines) >= 2 and lines[1].startswith("AuthenticationError"):
        return lines[0]
    said = (lines[1:] or done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"])[0]
    raise StartRefused(f"--ray {address}: no Ray cluster to join ({said[:300]})")


def connect(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Join an existing Ray cluster with token authentication as a client; one line (StartRefused) when
    none answers, when its authentication is off or when this box lacks its token. Never starts a Ray
    instance of its own (that would listen on the network).

    ray.init retries an address where nothing answers for ever, so it runs in a thread given `timeout_s`,
    after a plain TCP check of a HOST:PORT address that refuses a closed port at once."""
    hint = (
        "start one with `ray start --head` on one box (and `ray start --address HEAD:6379` on the others), "
        "or give its address"
    )
    # a Ray call made while not connected (a late one, after the stop) must fail, not start a local Ray
    # instance that listens on the network: ray reads this once, at its import, which follows
    os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"
    mode = settings.RAY_AUTH_MODE.raw()
    if mode is not None and mode.lower() != "token":
        raise StartRefused(token_refusal(address) or f"--ray {address}: RAY_AUTH_MODE={mode}")
    os.environ["RAY_AUTH_MODE"] = "token"  # read by ray at its import: every request carries the token
    if loopback(address):  # a head on loopback only: this driver keeps 127.0.0.1 too (Ray's default
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # on Linux rewrites it to the box's address)
    try:
        import ray  # noqa: F401
    except ImportError:
        raise StartRefused(
            f"--ray {address}: Ray is not installed here; pip install 'landiff-tui[ray]' (on every box)"
        ) from None
    logging.getLogger("ray._private.worker").addFilter(SigtermNote)
    refusal = token_refusal(address)
    if refusal is not None:
        raise StartRefused(refusal)
    host, _, port = address.rpartition(":")
    if host and port.isdigit():
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
        except OSError as error:
            raise StartRefused(f"--ray {address}: nothing answers there ({error}); {hint}") from None
    gcs = auth_probe(address, timeout_s)  # the very cluster joined next (auto: the address it resolved)
    failure: list[BaseException] = []

    def join() -> None:
        import ray

        try:
            ray.init(address=gcs, namespace="landiff", log_to_driver=False, configure_logging=False)
        except BaseException as error:  # reported by the caller's thread
            failure.append(error)

    joining = threading.Thread(target=join, name="landiff-ray-connect", daemon=True)
    joining.start()
    joining.join(timeout_s)
    if joining.is_alive():
        raise StartRefused(f"--ray {address}: no Ray cluster answered within {timeout_s:g} s; {hint}")
    if failure:
        raise StartRefused(f"--ray {address}: no Ray cluster to join ({first_line(failure[0])}); {hint}")
    log.info("joined the Ray cluster at %s (token authentication on)", gcs)


def disconnect() -> None:
    import ray

    ray.shutdown()


@dataclass
class Starting:
    """An actor started on a node, not ready yet (its process loads torch and the pipeline's code)."""

    actor: Any
    node_id: str
    slot: int
    deadline: float
    phase: str = "hello"  # hello: its versions asked; ready: its code loading


class RayWorkers(threading.Thread):
    """Keeps one worker per unit of `resource` on every live node of the cluster. Every second it reads the
    nodes: where a node offers more units than it has workers (it joined, or an actor of it was lost) it
    starts actors, all at once; each that reports ready becomes a JobWorker in the pool. An idle worker of a
    node that left is retired."""

    def __init__(
        self,
        resource: str,
        model: str,
        ckpts: Path | None,
        run_options: RunOptions,
        new_worker: Callable[[PipelineFactory, str, str], JobWorker],
        pool: WorkerPool,
    ):
        """`resource`: GPU (one actor per GPU, num_gpus=1) or a custom resource name (one actor per unit);
        `new_worker(make_pipeline, label, device)` builds a JobWorker (not started) for `pool`."""
        super().__init__(name="landiff-ray-discovery", daemon=True)
        self.resource, self.new_worker, self.pool = resource, new_worker, pool
        # an explicit --ckpts is a path meant for every node (made absolute: an actor's working folder is
        # Ray's); without it each actor finds its own box's weights by the engine's rules there
        self.host_args = (model, None if ckpts is None else str(ckpts.expanduser().absolute()), run_options)
        self.workers: dict[str, list[JobWorker]] = {}  # node id -> its workers in the pool
        self.starting: dict[Any, Starting] = {}  # its hello() or ready() call's ref -> the actor it waits for
        self.started: dict[str, int] = {}  # node id -> actors started there so far (labels stay unique)
        self.retry_at: dict[str, float] = {}  # node id -> when to try again after a failed start
        self.refused: dict[str, str] = {}  # node id -> why its actors are not admitted (another version)
        self.watching: dict[Any, tuple[str, JobWorker, Any]] = {}  # a watch call's ref -> node, worker, actor
        self.units: int | None = None  # of the resource on the live nodes, as last read (None: not yet)
        self.live: set[str] = set()  # the live nodes' ids, as last read
        self.stopping = threading.Event()
        self.actor_class: ActorClass[PipelineHost] | None = None

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        self.actor_class = actor_class()
        warm = False
        while not self.stopping.is_set():
            try:
                self.survey()
            except Exception:  # the cluster's state could not be read: try again
                log.exception("reading the Ray cluster failed; retrying")
            if not warm:  # what each worker thread imports before its first claim, while the actors start
                import engine.generation.job  # noqa: F401
                import engine.generation.pipeline  # noqa: F401

                warm = True
            self.stopping.wait(DISCOVERY_INTERVAL_S)
        self.give_up(list(self.starting), "the engine stops")

    def survey(self) -> None:
        import ray

        self.collect_ready()
        self.collect_deaths()
        alive = {node["NodeID"]: node for node in ray.nodes() if node.get("Alive")}
        self.live = set(alive)
        total = 0
        for node_id, node in alive.items():
            units = int(node.get("Resources", {}).get(self.resource, 0))
            total += units
            working = [worker for worker in self.workers.get(node_id, []) if worker_usable(worker)]
            self.workers[node_id] = working
            starting = sum(1 for start in self.starting.values() if start.node_id == node_id)
            if time.monotonic() >= self.retry_at.get(node_id, 0.0):
                for _ in range(units - len(working) - starting):
                    try:
                        self.start_actor(node_id)
                    except Exception as error:  # Ray refused the request: once per RETRY_AFTER_S, one line
                        self.failed(node_id, first_line(error))
                        break
        self.count_units(total, len(alive))
        usable = any(worker_usable(worker) for working in self.workers.values() for worker in working)
        self.pool.no_worker = None if usable else self.why_none(total)
        for node_id in [node_id for node_id in self.workers if node_id not in alive]:
            gone = self.workers.pop(node_id)
            if gone:
                log.warning("Ray node %s left the cluster with %d worker(s)", node_id[:8], len(gone))
            for worker in gone:
                self.retire(worker, f"its Ray node {node_id[:8]} left the cluster")

    def count_units(self, total: int, nodes: int) -> None:
        """Say in the log when the cluster offers no unit of the resource (so no worker), and when it does
        again."""
        if total == 0 and self.units != 0:
            log.error(
                "the Ray cluster's %d live node(s) offer no %s: no worker, queued jobs wait until a node "
                "that has one joins (%s)",
                nodes,
                self.resource,
                "a box with a GPU"
                if self.resource == "GPU"
                else f"ray start --resources with {self.resource}",
            )
        elif total and self.units == 0:
            log.info("the Ray cluster offers %d %s again", total, self.resource)
        self.units = total

    def why_none(self, total: int) -> str:
        """Why there is no worker (status says it while there is none)."""
        if total == 0:
            offer = (
                "a box with a GPU"
                if self.resource == "GPU"
                else f"ray start --resources with {self.resource}"
            )
            return (
                f"the Ray cluster offers no {self.resource}: queued jobs wait for a node that does ({offer})"
            )
        refused = [why for node_id, why in self.refused.items() if node_id in self.live]
        if refused:
            more = f" (and {len(refused) - 1} other node(s))" if len(refused) > 1 else ""
            return refused[0] + more
        return f"its Ray actors are starting ({len(self.starting)} on the cluster's {total} {self.resource})"

    def start_actor(self, node_id: str) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        assert self.actor_class is not None  # run() makes it before its first survey
        slot = self.started.get(node_id, 0)
        self.started[node_id] = slot + 1
        placement = {"num_gpus": 1} if self.resource == "GPU" else {"resources": {self.resource: 1}}
        actor = self.actor_class.options(
            **placement, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
        ).remote(*self.host_args)
        deadline = time.monotonic() + ACTOR_READY_TIMEOUT_S
        self.starting[control(actor.hello).remote()] = Starting(actor, node_id, slot, deadline)

    def collect_ready(self) -> None:
        """Actors that reported ready join the pool; those that failed or took too long are given up."""
        import ray

        if not self.starting:
            return
        ready, waiting = ray.wait(list(self.starting), num_returns=len(self.starting), timeout=0)
        for ref in ready:
            start = self.starting.pop(ref)
            try:
                said = ray.get(ref)
                where = checked_where(said, ("landiff",) if start.phase == "hello" else ("ip", "device"))
            except Exception as error:  # it died starting (its node left, its box cannot import the engine)
                with contextlib.suppress(Exception):
                    ray.kill(start.actor)
                why = first_line(error)
                if "has no attribute 'hello'" in str(error):  # a landiff from before the version check
                    why = version_words(None, engine.__version__)
                self.failed(start.node_id, why)
                continue
            if start.phase == "hello":
                self.greet(start, where)
            else:
                self.admit(start, where)
        late = [ref for ref in waiting if time.monotonic() > self.starting[ref].deadline]
        self.give_up(late, f"not ready after {ACTOR_READY_TIMEOUT_S:g} s (is its resource taken elsewhere?)")

    def greet(self, start: Starting, said: dict[str, str]) -> None:
        """An actor said its versions: one of the engine's landiff version loads its code (ready); one of
        another is stopped, and its node is not asked again for REFUSED_RETRY_S."""
        import ray

        if said.get("landiff") == engine.__version__:
            self.refused.pop(start.node_id, None)
            ready = control(start.actor.ready).remote()
            self.starting[ready] = replace(start, phase="ready")
            return
        with contextlib.suppress(Exception):
            ray.kill(start.actor)
        why = f"Ray node {start.node_id[:8]} ({said.get('ip', '?')}) is not used: " + version_words(
            said.get("landiff"), engine.__version__
        )
        if self.refused.get(start.node_id) != why:  # said once, not at every retry
            log.error("%s; it is asked again every %g s", why, REFUSED_RETRY_S)
        self.refused[start.node_id] = why
        self.retry_at[start.node_id] = time.monotonic() + REFUSED_RETRY_S

    def admit(self, start: Starting, where: dict[str, str]) -> None:
        label = f"ray:{start.node_id[:8]}:{start.slot}"
        device = f"{where['ip']} {where['device']}"
        here = torch_version()
        if where.get("torch") not in (None, here) and here is not None:
            log.warning(
                "worker %s runs torch %s, the engine's box %s: the same job and seed may give slightly "
                "different frames there (pip install torch==%s on that box for identical ones)",
                label,
                where["torch"],
                here,
                here,
            )
        actor = start.actor
        worker = self.new_worker(lambda: RemotePipeline(actor, label), label, device)
        worker.checkpoints = False  # the actor writes the job's files in its own folder
        self.workers.setdefault(start.node_id, []).append(worker)
        watch = actor.watch.options(concurrency_group="watch").remote()
        self.watching[watch] = (start.node_id, worker, actor)
        self.pool.add(worker)
        log.info(
            "worker %s added: an actor on %s (Ray node %s), %s",
            label,
            device,
            start.node_id[:8],
            where.get("weights", "its weights not said"),
        )

    def collect_deaths(self) -> None:
        """Workers whose actor died (Ray failed its pending watch call): an idle one leaves the pool now,
        and its node gets a new actor; a busy one's job sees it too (WorkerLost)."""
        import ray

        if not self.watching:
            return
        ended, _ = ray.wait(list(self.watching), num_returns=len(self.watching), timeout=0)
        for ref in ended:
            node_id, worker, _ = self.watching.pop(ref)
            try:
                ray.get(ref)
                why = "its Ray actor's watch ended"
            except Exception as error:
                why = f"its Ray actor died ({first_line(error)[:200]})"
            if worker_usable(worker):
                log.warning("worker %s: %s", worker.label, why)
            self.retire(worker, why)

    def tidy(self) -> None:
        """The engine stops, its workers left their jobs: each actor removes its scratch folders (a job
        still running there stops) before the engine leaves the cluster."""
        import ray

        self.stop()
        self.join(DISCOVERY_INTERVAL_S * 5)
        actors = [actor for _, _, actor in self.watching.values()]
        calls = []
        for actor in actors:
            with contextlib.suppress(Exception):  # gone already: so is its process, the next sweeps it
                calls.append(control(actor.tidy).remote())
        if calls:
            with contextlib.suppress(Exception):
                ray.wait(calls, num_returns=len(calls), timeout=TIDY_S)

    def give_up(self, refs: list, why: str) -> None:
        import ray

        for ref in refs:
            start = self.starting.pop(ref)
            ray.kill(start.actor)
            self.failed(start.node_id, why)

    def failed(self, node_id: str, why: str) -> None:
        log.warning("no actor started on Ray node %s: %s", node_id[:8], why)
        self.retry_at[node_id] = time.monotonic() + RETRY_AFTER_S

    def retire(self, worker: JobWorker, why: str) -> None:
        """An idle worker whose actor is gone claims no more jobs and leaves the pool. A busy one is left
        alone: its job's stream fails, and WorkerLost puts the job back in the queue."""
        with worker.lock:  # the lock a claim takes: no job becomes current while this looks
            if worker.current is not None:
                return
            worker.lost = why
        worker.notify()
        self.pool.remove(worker)


def checked_where(where: object, needed: tuple[str, ...] = ("ip", "device")) -> dict[str, str]:
    """An actor's hello() or ready() answer, checked: a dict of short strings with the `needed` keys (an
    actor of a landiff that does not say its version passes, and is refused by it)."""
    if needed == ("landiff",) and isinstance(where, dict):
        where = {"landiff": "", **where}
    if not isinstance(where, dict) or not set(needed) <= set(where):
        raise ValueError("its actor answered with something else than where it runs")
    for key, value in where.items():
        if type(value) is not str or len(value) > MAX_WHERE_CHARS:
            said = (
                f"{type(value).__name__} of {len(value)} chars"
                if type(value) is str
                else type(value).__name__
            )
            raise ValueError(
                f"its actor's answer holds something else than short strings ({str(key)[:40]}: {said})"
            )
    return {str(key): value for key, value in where.items()}


def worker_usable(worker: JobWorker) -> bool:
    """Whether a worker still takes jobs (not lost, not stopped)."""
    return worker.lost is None and not worker.stopping.is_set() and worker.is_alive()


def torch_version() -> str | None:
    """This box's torch version, from its installed metadata (imports nothing); None without torch."""
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def fetch_on_nodes(
    model: str,
    ckpts: Path | None,
    resource: str,
    say: Callable[[str], None],
    only: str = "all",
    clip: bool = False,
    source: str = "huggingface",
) -> bool:
    """`weights download --ray`: on every live node that offers `resource` (where `serve --ray` puts its
    actors), the weights of `model` made complete on that box (ray_actor.fetch_weights, all nodes at once),
    one line per node as each ends; True when every node has them. A node of another landiff version is
    refused and fetches nothing. Needs `connect` first."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from engine.daemon.ray_actor import fetch_weights

    nodes = [
        node for node in ray.nodes() if node.get("Alive") and node.get("Resources", {}).get(resource, 0) > 0
    ]
    if not nodes:
        say(f"no live node of the Ray cluster offers {resource}: nothing to fetch (see --ray-resource)")
        return False
    task = ray.remote(fetch_weights)
    where = None if ckpts is None else str(ckpts.expanduser().absolute())
    pending = {}
    for node in nodes:
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        options = task.options(num_cpus=0, max_retries=0, scheduling_strategy=strategy)
        ref = options.remote(model, where, engine.__version__, only, clip, source)
        pending[ref] = node
    say(f"making the {model} weights complete on {len(nodes)} Ray node(s) offering {resource}")
    complete = True
    while pending:
        ended, _ = ray.wait(list(pending), num_returns=1)
        for ref in ended:
            node = pending.pop(ref)
            name = f"node {node['NodeID'][:8]} ({node.get('NodeManagerAddress', '?')})"
            try:
                report = read_fetch_report(ray.get(ref))
            except Exception as error:  # the node left, its landiff lacks fetch_weights, it sent nonsense
                complete = False
                say(f"{name}: failed ({first_line(error)[:300]})")
                continue
            complete = complete and report.outcome in ("ready", "fetched", "generated")
            complete = complete and report.landiff == engine.__version__
            say(f"{name}: {fetch_words(report, engine.__version__)}")
    return complete
