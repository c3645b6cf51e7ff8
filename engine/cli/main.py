"""`landiff-engine`: the engine's command line.

User mistakes (bad parameters, missing or broken weights) print one clear message and
exit with status 2; they never show a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.progress import ProgressColumn, Task
from rich.text import Text

from engine.cli.device_option import parse_device
from engine.cli.output import output_closed
from engine.cli.param_options import add_param_options, add_prompt_argument, given_params
from engine.job_words import PROGRESS_STAGES, progress_words

if TYPE_CHECKING:
    import numpy as np
    from rich.console import Console

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class RateColumn(ProgressColumn):
    """The rate in the stage's unit (tokens/s, steps/s); stages without one (text, decode, write) show
    their seconds so far."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit")
        if unit is None:
            seconds = task.fields.get("seconds")
            return Text("" if seconds is None else f"{seconds:.1f} s", style="progress.elapsed")
        return Text(f"{task.speed:,.1f} {unit}/s" if task.speed else "", style="progress.data.speed")


def check_writable(path: Path, option: str) -> None:
    """Refuse before any work an output path that cannot be written (one line, exit 2, no traceback).

    Tried, not inferred from mode bits (root passes every access() check, and /proc or /sys refuse what
    their bits allow): a file is made and removed in the folder the output goes to, or, when that folder
    does not exist yet, a folder in the first one up that does (the run makes the missing ones there)."""
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder: give a file name inside it")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    refusal = f"{option} {path} cannot be written"
    if not folder.is_dir():
        raise ValueError(f"{refusal}: {folder} is not a folder; choose another {option}")
    probe = folder / f".landiff-write-check-{os.getpid()}"
    making = "a file" if folder == path.parent else "a folder"
    try:
        if folder == path.parent:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            probe.unlink()
        else:
            probe.mkdir(mode=0o700)
            probe.rmdir()
    except OSError as error:
        said = error.strerror or str(error)
        raise ValueError(
            f"{refusal}: making {making} in {folder} failed ({said}); choose another {option}"
        ) from None


client_handlers: dict[str, Callable[[argparse.Namespace], int]] = {}


def build_parser() -> argparse.ArgumentParser:
    from engine.settings import help_epilog

    parser = argparse.ArgumentParser(
        prog="landiff-engine",
        description="LanDiff text-to-video engine.",
        epilog=help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the epilog's one variable a line
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tokens = commands.add_parser(
        "tokens",
        help="stage 1: write the semantic tokens (and optionally features) of a prompt",
        description="Run LanDiff stage 1: prompt -> semantic tokens (.npy), optionally -> semantic features.",
    )
    add_prompt_argument(tokens)
    tokens.add_argument(
        "--model", default="landiff", help="model spec: landiff (the release) or tiny (default: landiff)"
    )
    add_param_options(tokens, stages=("stage1",))
    tokens.add_argument(
        "--out", type=Path, default=None, help="tokens .npy path (default: results/<prompt>-s<seed>.npy)"
    )
    tokens.add_argument(
        "--features", type=Path, default=None, help="also decode and save semantic features (.npy)"
    )
    tokens.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")

    generate = commands.add_parser(
        "generate",
        help="prompt -> video: both stages, written as an mp4 with its tokens and a JSON record",
        description="Run LanDiff end to end in this process and write an mp4, its semantic tokens (.npy) "
        "and a JSON sidecar with every parameter, the weights' checksums, timings and peak memory.",
    )
    add_prompt_argument(generate)
    generate.add_argument(
        "--out", type=Path, default=None, help="mp4 path (default: results/<prompt>-s<seed>.mp4)"
    )
    generate.add_argument(
        "--model", default="landiff", help="landiff (the release) or tiny (default: landiff)"
    )
    generate.add_argument(
        "--ckpts", type=Path, default=None, help="weights root (default: $LANDIFF_HOME or ckpts/)"
    )
    add_param_options(generate)
    generate.add_argument(
        "--tokens", type=Path, default=None, help="reuse saved semantic tokens (.npy): stage 2 only"
    )
    generate.add_argument(
        "--device", default=None, help="torch device (default: cuda when present, else cpu)"
    )
    generate.add_argument(
        "--quality",
        action="store_true",
        help="then measure the video as the engine does (CLIP score against the prompt when the CLIP "
        "weights are there, flicker, motion) into its record's `quality` block",
    )
    add_run_options(generate)

    serve = commands.add_parser("serve", help="run the engine in the foreground (clients start it detached)")
    serve.add_argument("--model", default="landiff", help="landiff (the release) or tiny (default: landiff)")
    serve.add_argument(
        "--ckpts", type=Path, default=None, help="weights root (default: $LANDIFF_HOME or ckpts/)"
    )
    serve.add_argument(
        "--idle-release",
        type=float,
        default=600.0,
        help="seconds idle before the models are released (default 600)",
    )
    serve.add_argument(
        "--gpus",
        default=None,
        metavar="all|0,1,3|cpu:N",
        help="the devices to run jobs on, a worker with its own models each: all (every CUDA GPU), GPU "
        "indices, or cpu:N (N CPU workers); a job runs on one of them (default: one worker on the "
        "default device)",
    )
    serve.add_argument(
        "--parallel",
        default=None,
        metavar="N|cfg=2,seq=S",
        help="render each video on a group of N devices, for latency: cfg=2 splits guidance's two halves, "
        "seq=S the video tokens (N alone: cfg=2 when N is even, the rest seq); the devices (--gpus, "
        "else the first N GPUs, else N CPU ranks) form groups of N, one worker each",
    )
    serve.add_argument(
        "--llm-device",
        default=None,
        metavar="GPU|cpu",
        help="run stage 1 (the language model) on this device for every job, ahead of the workers: the "
        "next jobs' tokens are made while the workers render (default: each worker runs both stages)",
    )
    serve.add_argument(
        "--ray",
        default=None,
        metavar="auto|ADDRESS",
        help="run jobs on a Ray cluster's GPUs, an actor each with its models warm: auto (the cluster this "
        "box joined with `ray start`) or the head's address (HOST:6379); the cluster must be running",
    )
    serve.add_argument(
        "--on-finish",
        default=None,
        metavar="COMMAND",
        help="run COMMAND as each job ends (finished, failed, cancelled, interrupted), the job's record as "
        "JSON on its stdin: a notification, a webhook (curl --data-binary @- URL); split as a shell "
        "would, run without one (default: none)",
    )
    serve.add_argument(
        "--ray-resource",
        default="GPU",
        metavar="NAME",
        help="with --ray: the node resource an actor takes one unit of (default GPU: an actor per GPU)",
    )
    add_run_options(serve)

    from engine.cli.client_commands import add_client_commands

    client_handlers.update(add_client_commands(commands))
    from engine.cli.weights_commands import add_weights_commands

    client_handlers.update(add_weights_commands(commands))
    from engine.cli.quality_commands import add_quality_commands

    client_handlers.update(add_quality_commands(commands))
    from engine.cli.queue_commands import add_queue_commands

    client_handlers.update(add_queue_commands(commands))
    from engine.cli.verify_commands import add_verify_commands

    client_handlers.update(add_verify_commands(commands))
    from engine.cli.script_commands import add_script_commands

    client_handlers.update(add_script_commands(commands))

    tiny = commands.add_parser("tiny", help="write the random-weight tiny model in the release layout")
    tiny.add_argument("--force", action="store_true", help="rewrite even if the files exist")
    return parser


# engine.generation.memory.MEMORY_PROFILES and speed.ATTENTION_BACKENDS with its aliases (kept here so
# --help loads no torch; tests/test_dit_speed.py holds them equal)
MEMORY_CHOICES = ("auto", "resident", "balanced", "low", "offload")
ATTENTION_CHOICES = ("auto", "sdpa", "cudnn", "flash2", "flash3", "sage", "flash")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Engine-wide run options (not job parameters): the memory profile and the DiT's speed options."""
    parser.add_argument(
        "--memory",
        default="auto",
        choices=MEMORY_CHOICES,
        help="resident: every model on the GPU; balanced: encoders and LM only for their stage; low: also "
        "the DiT's blocks streamed in 8-bit and the VAE tiled (changes pixels); auto (default): by free "
        "GPU memory; offload: balanced's former name",
    )
    parser.add_argument(
        "--attention",
        default="auto",
        choices=ATTENTION_CHOICES,
        help="DiT attention kernel: auto (default: the fastest exact one here, recorded in the sidecar), "
        "sdpa (PyTorch's), cudnn, flash2 (flash-attn), flash3 (FlashAttention-3, Hopper), sage "
        "(sageattention, 8-bit); all but sdpa need CUDA; flash is flash2's former name",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the DiT's blocks and the language model's decoding step, cached between runs "
        "(default: on with CUDA, never on CPU)",
    )
    parser.add_argument(
        "--fuse-qkv",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one q/k/v projection per DiT block (default: on with CUDA)",
    )


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Pipeline's keyword arguments for the run options `add_run_options` parsed."""
    from engine.generation.speed import DiTOptions

    return {"memory": args.memory, "dit": DiTOptions(args.attention, args.compile, args.fuse_qkv)}


def slug(text: str, limit: int = 40) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return words[:limit].rstrip("-") or "video"


def save_npy_atomically(array: np.ndarray, path: Path) -> None:
    import numpy as np

    from engine.atomic import write_atomically

    write_atomically(path, lambda partial: np.save(partial, array))


def run_serve(args: argparse.Namespace) -> int:
    from engine.daemon.config import EngineConfig, ParallelGroups, RayPlacement, RunOptions
    from engine.daemon.devices import BadGpus, parse_gpus, parse_llm_device
    from engine.daemon.server import StartRefused, serve

    check_model_name(args.model)
    try:
        gpus = parse_gpus(args.gpus)
        llm_device = None if args.llm_device is None else parse_llm_device(args.llm_device)
        if llm_device is not None and args.ray is not None:
            raise BadGpus("--llm-device and --ray exclude each other: each Ray actor runs both stages")
        if args.compile and len(gpus) > 1 and getattr(args, "parallel", None) is None:
            raise BadGpus(
                "--compile with several --gpus workers: torch.compile is not thread-safe and the workers "
                "share one process; leave --compile out (it is then off)"
            )
    except BadGpus as error:
        print(f"landiff-engine serve: {error}", file=sys.stderr)
        return EXIT_USAGE
    ray = None
    if args.ray is not None:
        refusal = None
        if args.gpus is not None:
            refusal = "--gpus and --ray exclude each other: with --ray the workers are the cluster's GPUs"
        elif not args.ray.strip() or not args.ray_resource.strip():
            refusal = "--ray needs auto or the head's address (HOST:6379), --ray-resource a name (GPU)"
        else:
            from engine.daemon.ray_workers import resource_refusal

            refusal = resource_refusal(args.ray_resource.strip())
        if refusal is not None:
            print(f"landiff-engine serve: {refusal}", file=sys.stderr)
            return EXIT_USAGE
        ray = (args.ray.strip(), args.ray_resource.strip())
    parallel = None
    if args.parallel is not None:
        from engine.daemon.devices import cuda_device_count
        from engine.generation.parallel.plan import BadParallel, parallel_devices, parse_parallel
        from engine.specs import get_spec

        try:
            if ray is not None:
                raise BadParallel(
                    "--parallel and --ray exclude each other: --parallel splits this box's GPUs"
                )
            plan = parse_parallel(args.parallel).check(get_spec(args.model))
            given = None if args.gpus is None else gpus
            groups = parallel_devices(plan, given, cuda_device_count() if given is None else 0)
            parallel = (plan.text(), groups)
        except BadParallel as error:
            print(f"landiff-engine serve: {error}", file=sys.stderr)
            return EXIT_USAGE
    from engine.daemon.on_finish import BadHook, hook_command

    try:
        on_finish = () if args.on_finish is None else hook_command(args.on_finish)
    except BadHook as error:
        print(f"landiff-engine serve: {error}", file=sys.stderr)
        return EXIT_USAGE
    config = EngineConfig(
        args.model,
        args.ckpts,
        args.idle_release,
        RunOptions(args.memory, args.attention, args.compile, args.fuse_qkv),
        gpus=tuple(gpus),
        ray=None if ray is None else RayPlacement(*ray),
        parallel=None if parallel is None else ParallelGroups(parallel[0], tuple(map(tuple, parallel[1]))),
        llm_device=llm_device,
        on_finish=on_finish,
        command_options=tuple(args.command_options),
    )
    try:
        serve(config)
    except StartRefused as error:  # another engine, a dir not ours or not writable, a database that fails
        print(f"landiff-engine serve: {error}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def check_model_name(name: str) -> None:
    """Refuse an unknown model before anything starts, without loading the models' code."""
    from engine.specs import get_spec

    get_spec(name)


def run_tiny(args: argparse.Namespace) -> int:
    from engine.specs import get_spec
    from engine.weights.layout import layout_for
    from engine.weights.tiny import ensure_tiny_release, write_tiny_release

    layout = layout_for("tiny")
    if args.force:
        write_tiny_release(layout, get_spec("tiny"))
    elif not ensure_tiny_release(layout, get_spec("tiny")):
        print(f"tiny weights already in {layout.root} (use --force to rewrite)")
        return 0
    print(f"wrote tiny weights to {layout.root}")
    return 0


def run_tokens(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from engine.generation.job import sampling_params
    from engine.generation.lengths import plan_length, rules_for
    from engine.generation.prompt_tokens import check_prompt_fits
    from engine.generation.stage1 import SemanticStage
    from engine.params import check_params
    from engine.specs import get_spec
    from engine.weights.layout import layout_for
    from engine.weights.tiny import ensure_tiny_release

    console = Console(stderr=True)
    spec = get_spec(args.model)
    values = check_params({"prompt": args.prompt, **given_params(args, spec.name)})
    out = args.out or Path("results") / f"{slug(values['prompt'])}-s{values['seed']}.npy"
    check_writable(out, "--out")
    if args.features is not None:
        check_writable(args.features, "--features")
    plan = plan_length(rules_for(spec.name), values["frames"], values["overlap"])
    params = sampling_params(values, plan)
    params.validate(spec.llm)
    if plan.rounded:
        console.print(f"note: {plan.note()}")
    layout = layout_for(spec.name)
    if spec.random_weights and ensure_tiny_release(layout, spec):
        console.print(f"wrote tiny random weights to {layout.root}")
    check_prompt_fits(values["prompt"], spec, layout.flan_t5_dir)
    device = parse_device(args.device)
    started = time.perf_counter()
    with console.status(f"loading {spec.name} stage-1 models"):
        stage = SemanticStage.load(spec, layout, device=device)
    console.print(f"loaded {spec.name} on {stage.device} in {time.perf_counter() - started:.1f}s")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
    )
    with Progress(*columns, TimeRemainingColumn(), console=console, transient=False) as progress:
        name, unit = PROGRESS_STAGES["tokens"]
        task = progress.add_task(name, total=None, unit=unit)
        positions = [0]

        def on_token(done: int, total: int) -> None:
            positions[0] = total
            progress.update(task, completed=done, total=total)

        started = time.perf_counter()
        codes = stage.codes(values["prompt"], params, on_token=on_token)
        seconds = time.perf_counter() - started
    save_npy_atomically(codes.numpy(), out)
    console.print(
        f"{codes.numel()} semantic tokens ({positions[0]} positions with the frame markers) "
        f"in {seconds:.1f}s -> {out}"
    )
    if args.features is not None:
        features = stage.features(codes, params.num_frames)
        save_npy_atomically(features.numpy(), args.features)
        console.print(f"semantic features {list(features.shape)} -> {args.features}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

    from engine.cli.describe import describe_length
    from engine.generation.job import JobSpec
    from engine.generation.pipeline import Pipeline
    from engine.generation.prompt_tokens import check_prompt_fits
    from engine.params import check_params
    from engine.protocol import ProgressReport
    from engine.specs import get_spec
    from engine.weights.layout import layout_for
    from engine.weights.tiny import ensure_tiny_release

    console = Console(stderr=True)
    spec = get_spec(args.model)
    values = check_params({"prompt": args.prompt, **given_params(args, spec.name)})
    out = args.out or Path("results") / f"{slug(values['prompt'])}-s{values['seed']}.mp4"
    check_writable(out, "--out")  # its tokens, thumbnail and record go beside it
    job = JobSpec.from_params(values, out=out, tokens=args.tokens)
    job.validate(spec)
    layout = layout_for(spec.name, args.ckpts)
    if spec.random_weights and ensure_tiny_release(layout, spec):
        console.print(f"wrote tiny random weights to {layout.root}")
    if job.tokens is None:  # the language model reads the prompt only when it writes the tokens
        check_prompt_fits(job.prompt, spec, layout.flan_t5_dir)
    plan = job.plan(spec)
    if plan.rounded:
        console.print(f"note: {plan.note()}")
    console.print(describe_length(plan))
    pipeline = Pipeline(spec, layout, device=parse_device(args.device), **run_options(args))
    console.print(f"memory profile {pipeline.memory} ({pipeline.memory_choice.reason})")
    columns = (TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), RateColumn())
    with Progress(*columns, TimeRemainingColumn(), console=console) as progress:
        tasks: dict[str, TaskID] = {}

        def on_progress(event: ProgressReport) -> None:
            words = progress_words(event)
            if event.stage not in tasks:
                tasks[event.stage] = progress.add_task(words.name, total=event.total, unit=words.unit)
            seconds = event.step / event.rate if event.rate else None  # the stage's own time so far
            progress.update(
                tasks[event.stage],
                completed=event.step,
                total=event.total,
                description=words.name,
                seconds=seconds,
            )

        with console.status(f"loading the {spec.name} models on {pipeline.device}"):
            if job.tokens is None:
                pipeline.stage1()
            pipeline.stage2()
        result = pipeline.run(job, on_progress=on_progress)
    if plan.rounded:
        console.print(f"note: {plan.note()}")
    timings = ", ".join(f"{stage} {seconds:.1f}s" for stage, seconds in result.timings_s.items())
    console.print(f"{result.video} ({timings}; peak memory {result.peak_memory_bytes / 2**30:.2f} GiB)")
    console.print(f"tokens {result.tokens}, record {result.sidecar}")
    if result.interpolation is not None:
        console.print(
            f"video: {result.video_frames} frames at {result.fps} fps, interpolated from the model's "
            f"{result.frames} ({result.interpolation['method']})"
        )
    if args.quality:
        record_quality(result.video, result.sidecar, job.prompt, layout.root, spec.name, console)
    return 0


def record_quality(video: Path, sidecar: Path, prompt: str, root: Path, model: str, console: Console) -> None:
    """`generate --quality`: the video measured into its sidecar, and said (a video that could not be
    read gets its error there; the video itself is made, so the exit status stays 0)."""
    from engine.generation.video_quality import measure_into_sidecar
    from engine.job_words import quality_lines
    from engine.protocol import QualityRecord

    with console.status("measuring the video's quality"):
        record = measure_into_sidecar(video, sidecar, prompt, root, model)
    for label, text in quality_lines(QualityRecord.model_validate(record)):
        console.print(f"{label:>12}: {text}", markup=False, highlight=False)


def serve_command_options(argv: list[str]) -> list[str]:
    """`serve`'s options as given (`argv` from "serve" on) but --model, which a restart may change, and
    with --ckpts made absolute (the client restarting the engine may be in another folder)."""
    kept, rest = [], list(argv[1:])
    while rest:
        option = rest.pop(0)
        name, equals, value = option.partition("=")
        if name in ("--model", "--ckpts") and not equals and rest:
            value = rest.pop(0)
        if name == "--ckpts":
            kept += ["--ckpts", str(Path(value).expanduser().resolve())]
        elif name != "--model":
            kept.append(option)
    return kept


def user_mistake(error: Exception) -> str:
    """A refusal in one line: a model's ValidationError (several lines of pydantic's) names each field in
    plain words (engine.cli.describe.plain_validation), the one place the CLI words them."""
    from pydantic import ValidationError

    from engine.cli.describe import plain_validation

    return plain_validation(error) if isinstance(error, ValidationError) else str(error)


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return run_command(argv)
        finally:  # a reader that left (`| head -1`) is found here, not in Python's own flush at exit
            sys.stdout.flush()
    except BrokenPipeError:  # the reader of the output left: quietly, status 141 (engine/cli/output.py)
        return output_closed()


def run_command(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        args.command_options = serve_command_options(sys.argv[1:] if argv is None else argv)
    from engine.client import EngineError, EngineUnavailable
    from engine.errors import CheckpointError

    handlers = {"tokens": run_tokens, "generate": run_generate, "tiny": run_tiny, "serve": run_serve}
    handlers.update(client_handlers)
    try:
        return handlers[args.command](args)
    except EngineUnavailable as error:  # the engine could not be started, or went away
        print(f"landiff-engine {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except EngineError as error:
        print(f"landiff-engine {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, CheckpointError) as error:
        print(f"landiff-engine {args.command}: {user_mistake(error)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"landiff-engine {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
