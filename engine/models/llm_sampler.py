"""Sampling semantic tokens from `SemanticLM`, step for step as the reference does it.

The token layout per 13-frame segment is START_OF_IFrame, I codes, END_OF_IFrame, then
per P-frame START_OF_PFrame, P codes, END_OF_PFrame; one EOS closes the sequence.
Structural tokens are forced but still consume one multinomial draw each, so a seed
replays the reference's random stream. Codes sampled as special ids are fed back as
themselves and written out clamped to the codebook.

Decoding never waits for the device: the layout's rules are tensors built once (which ids a step may
draw, which id it is forced to), looked up with gathers; every choice is a `torch.where`, the draw is
`multinomial` on the device's generator. A step attends over the KV cache rows written so far, rounded up
to whole segments, so its shapes change only from one window to the next: on CUDA each window's step is
captured once as a CUDA graph and replayed. The codes come back to the host once, at the end.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from engine.models.configs import LLMConfig
from engine.models.llm import GPT, SemanticLM
from engine.models.token_layout import Step, token_layout
from engine.params import by_name, defaults

JOB_DEFAULTS = defaults()
log = logging.getLogger(__name__)


class SamplingCancelled(Exception):
    """The caller's cancellation check asked to stop between two tokens."""


@dataclass(frozen=True)
class SamplingParams:
    """User-facing knobs of stage 1. `cfg` is the LLM guidance scale (off when 0 or 1)."""

    cfg: float = JOB_DEFAULTS["cfg"]
    temperature: float = JOB_DEFAULTS["temperature"]
    top_k: int | None = JOB_DEFAULTS["top_k"]
    top_p: float | None = JOB_DEFAULTS["top_p"]
    motion_score: float = JOB_DEFAULTS["motion_score"]
    num_frames: int = 13
    seed: int = JOB_DEFAULTS["seed"]

    def validate(self, config: LLMConfig) -> None:
        """Raise ValueError naming the parameter and its allowed range (the job schema's, engine.params)."""
        schema = by_name()
        for knob in fields(self):
            if knob.name in schema:
                schema[knob.name].check(getattr(self, knob.name))
        seg = config.frames_per_segment
        if not isinstance(self.num_frames, int) or self.num_frames < seg or self.num_frames % seg:
            raise ValueError(
                f"num_frames must be a positive multiple of {seg} semantic frames "
                f"(one segment = {seg}), got {self.num_frames}"
            )

    @property
    def guidance(self) -> bool:
        return self.cfg > 0 and self.cfg != 1


PROGRESS_EVERY = 32  # tokens between two progress reports


def next_token_probs(logits: torch.Tensor, step: Step, params: SamplingParams) -> torch.Tensor:
    """Guided float32 logits [1, V] -> the distribution the reference samples from (one step, on the host's
    terms: the decoding loop uses `StepRules`, which computes the same distribution on the device)."""
    logits = logits / params.temperature
    if step.allowed is not None:
        mask = torch.full_like(logits, float("-inf"))
        mask[:, list(step.allowed)] = 0
        return torch.softmax(logits + mask, dim=-1)
    return free_probs(logits, params)


def free_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Tempered logits -> probabilities over every id, with top-k and top-p when set."""
    if params.top_k is not None:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p is not None:
        probs = nucleus(probs, params.top_p)
    return probs


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest most-probable set whose mass reaches top_p, renormalised."""
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    reached = torch.cumsum(sorted_probs, dim=-1) >= top_p
    drop_sorted = torch.zeros_like(reached)
    drop_sorted[..., 1:] = reached[..., :-1]  # the token that crosses top_p is kept
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    probs = probs.masked_fill(drop, 0.0)
    return probs / probs.sum(dim=-1, keepdim=True)


def guided_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    if not params.guidance:
        return logits
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + params.cfg * (cond - uncond)


class StepRules:
    """The token layout as device tensors: per step, the ids its draw may pick and the id fed after it.

    Steps fall into a few kinds (a free code, a choice among structural ids, ...): `bias[kind]` is 0 for
    an allowed id and -inf otherwise, `restricted[kind]` whether the kind limits the choice at all.
    `feed[i]` is the id forced after step i, or -1 where the draw is fed.
    """

    def __init__(
        self, steps: list[Step], vocab_size: int, device: torch.device, feed: list[int] | None = None
    ):
        kinds: dict[tuple[int, ...] | None, int] = {}
        for step in steps:
            kinds.setdefault(step.allowed, len(kinds))
        bias = torch.zeros(len(kinds), vocab_size)
        for allowed, kind in kinds.items():
            if allowed is not None:
                bias[kind] = float("-inf")
                bias[kind, list(allowed)] = 0.0
        self.bias = bias.to(device)
        self.restricted = torch.tensor([allowed is not None for allowed in kinds], device=device)
        self.kind = torch.tensor([kinds[step.allowed] for step in steps], device=device)
        forced = [-1 if step.forced is None else step.forced for step in steps]
        if feed is not None:  # teacher forcing: the given ids win wherever they are set
            forced = [given if given >= 0 else own for given, own in zip(feed, forced, strict=True)]
        self.feed = torch.tensor(forced, device=device)
        self.is_code = torch.tensor([step.is_code for step in steps], device=device)

    def probs(self, logits: torch.Tensor, step: torch.Tensor, params: SamplingParams) -> torch.Tensor:
        """The distribution of step `step` (a device tensor of one element) from guided logits [1, V]."""
        logits = logits / params.temperature
        kind = pick(self.kind, step)
        restricted = torch.softmax(logits + pick(self.bias, kind), dim=-1)
        return torch.where(pick(self.restricted, kind).view(1, 1), restricted, free_probs(logits, params))

    def forced(self, step: torch.Tensor) -> torch.Tensor:
        """[1]: the id fed after step `step` (a device tensor of one element), -1 where the draw is fed."""
        return pick(self.feed, step)


def pick(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Row `index` of `table`, kept as a batch of one ([1, ...]). Indexing with a 0-d tensor (`table[i]`)
    reads the index back to the host first (aten::_local_scalar_dense, a sync a CUDA graph refuses); a
    gather does not."""
    return table.index_select(0, index.reshape(1))


class Decoder:
    """One video's decoding state in fixed device buffers, advanced one token per `step()`.

    After prefill, `raw` holds the logits of step 0; each `step()` draws that step's id into `fed` and
    `ids`, feeds it at the next position and computes the next step's logits. Only tensors change, so
    the step can be captured as a CUDA graph and replayed. A step attends over the cache rows written so
    far rounded up to whole windows of `window` rows (`rows(index)`): its cost follows the filled length,
    not the whole video's, with one graph per window size.
    """

    def __init__(
        self,
        model: SemanticLM,
        prefix: torch.Tensor,
        rules: StepRules,
        params: SamplingParams,
        generator: torch.Generator,
        window: int | None = None,
        compiled: bool = False,
    ):
        self.model, self.rules, self.params, self.generator = model, rules, params, generator
        device = prefix.device
        self.batch, self.prefix_len = prefix.shape[0], prefix.shape[1]
        total = len(rules.feed)
        self.max_len = max_len = self.prefix_len + total
        self.window = window or max_len
        # one spare row: no window spans the whole cache, whose slice alone is contiguous, so one compiled
        # step (compile) serves every window
        self.cache = model.transformer.new_cache(self.batch, max_len + 1)
        self.cis = model.transformer.rope_table(max_len, device)
        self.slots = torch.arange(max_len, device=device)
        self.index = torch.zeros((), dtype=torch.long, device=device)  # the step whose logits are in `raw`
        self.ids = torch.full((total,), -1, dtype=torch.long, device=device)  # the id fed after each step
        self.dtype = prefix.dtype
        self.raw = model.transformer(prefix, torch.arange(self.prefix_len, device=device), self.cache)
        self.decode = model.transformer.decode
        self.compiled = NOT_COMPILED
        self.compile_s = 0.0
        if compiled:
            self.compile()

    def compile(self) -> None:
        """Run the network's step through torch.compile (one graph for every window size: the rows are a
        dynamic dimension), compiled here on a warm-up call so no draw is made twice; where compiling
        fails, the step stays eager and `compiled` says why."""
        self.compiled = "compiling"
        started = time.perf_counter()
        decode = compiled_decode(self.model.transformer)
        cis = torch.view_as_real(self.cis)  # inductor writes no kernels for complex numbers
        for tensor, dim in ((cis, 0), (self.cache.tensors, 4)):  # the video's length: one graph for all
            torch._dynamo.maybe_mark_dynamic(tensor, dim)
        position = torch.tensor([self.prefix_len], device=self.raw.device)
        features = self.features(torch.zeros_like(position))
        try:
            # writes its keys and values at the next position, which the first step overwrites
            decode(features, position, self.visible(position, self.rows(0)), cis, self.cache)
        except Exception as error:  # noqa: BLE001 - any compiler failure leaves the eager step, which works
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            log.warning("the decoding step runs without torch.compile: %s", reason)
            self.compiled = f"failed ({reason})"
            return
        finally:
            self.compile_s = time.perf_counter() - started
        self.decode, self.cis, self.compiled = decode, cis, "yes"

    def features(self, fed: torch.Tensor) -> torch.Tensor:
        """[B, 1, hidden]: the embedding of the id `fed` ([1]), the same for every batch row."""
        return self.model.embed_tokens(fed).to(self.dtype).view(1, 1, -1).expand(self.batch, 1, -1)

    def visible(self, position: torch.Tensor, rows: int | None) -> torch.Tensor:
        """[rows] bool: the cache rows written up to `position`; a dynamic size under torch.compile."""
        visible = self.slots[: rows or self.max_len] <= position
        if self.compiled != NOT_COMPILED:
            torch._dynamo.maybe_mark_dynamic(visible, 0)
        return visible

    def draw(self) -> torch.Tensor:
        """Pick the id of the current step and record it; returns it as [1]."""
        probs = self.rules.probs(guided_logits(self.raw, self.params), self.index, self.params)
        drawn = torch.multinomial(probs, 1, generator=self.generator).view(1)
        forced = self.rules.forced(self.index)
        fed = torch.where(forced >= 0, forced, drawn)
        self.ids.index_copy_(0, self.index.view(1), fed)
        return fed

    def rows(self, index: int) -> int:
        """The cache rows step `index` attends over: up to its own position, in whole windows."""
        needed = self.prefix_len + index + 1
        return min(self.max_len, -(-needed // self.window) * self.window)

    def step(self, rows: int | None = None) -> None:
        """Draw the current step's id, feed it, and compute the next step's logits into `raw`, attending
        over the cache's first `rows` rows (default: all; they must reach the current position)."""
        fed = self.draw()
        position = (self.index + self.prefix_len).view(1)
        features = self.features(fed)
        visible = self.visible(position, rows)
        self.raw.copy_(self.decode(features, position, visible, self.cis, self.cache))
        self.index += 1

    def codes(self) -> torch.Tensor:
        ids = self.ids[self.rules.is_code].cpu()  # the one transfer to the host
        return ids.clamp_(0, self.model.config.codebook_size - 1)


GRAPH = "cuda graph"  # how a decoding ran, when its steps were captured and replayed


@dataclass(frozen=True)
class Decoding:
    """How one video's tokens were decoded, told once at the end."""

    how: str  # GRAPH, or "eager: " and why; then, where compiling was asked for, "; compiled: " and whether
    compile_s: float = 0.0  # the step's torch.compile, part of the decoding's time


NOT_COMPILED = "not asked for"  # Decoder.compiled: whether the step runs through torch.compile


def compiled_decode(gpt: GPT) -> Callable[..., torch.Tensor]:
    """`gpt.decode` through torch.compile, made once per model: every decoder of it shares the code."""
    compiled = getattr(gpt, "_landiff_compiled_decode", None)
    if compiled is None:
        compiled = torch.compile(gpt.decode, fullgraph=True)
        # nn.Module.__setattr__ is annotated for tensors and modules only; it stores any object
        gpt._landiff_compiled_decode = compiled  # type: ignore[assignment]
    return compiled


def capture(decoder: Decoder, index: int, pool=None) -> tuple[Callable[[], None], str, object]:
    """The step of `index`'s window (`decoder.rows(index)`) as a replayable CUDA graph, or as it is where
    capture is not possible (CPU, a torch without graph-safe generators, a capture that fails): both run
    the same operations and draws. Returns it, how it runs (GRAPH, or "eager: " and why not) and the
    graph's memory pool, which the next window's capture shares (`pool`).

    The capture is thread-local (another worker thread's allocations and syncs go on while it records).
    A capture that fails leaves nothing behind: the caller's stream is current again, the graph's memory
    is freed, the buffers and the generator's state are as before it, and the draws continue on a fresh
    generator with that state (torch 2.5-2.12 leave a generator registered with a failed graph in
    capture mode, where its next draw raises)."""
    rows = decoder.rows(index)
    eager = functools.partial(decoder.step, rows)
    if decoder.raw.device.type != "cuda":
        return eager, f"eager: the {decoder.raw.device.type} device has no CUDA graphs", None
    graph = torch.cuda.CUDAGraph()
    register = getattr(graph, "register_generator_state", None)
    if register is None:
        return eager, f"eager: torch {torch.__version__} cannot capture a generator's draws", None
    position = decoder.prefix_len + index
    written = decoder.cache.tensors[:, :, :, :, position : position + 1]  # the rows the warm-up writes
    buffers = (decoder.raw, decoder.ids, decoder.index, written)
    saved = [buffer.clone() for buffer in buffers]
    state = decoder.generator.get_state()

    def restore() -> None:
        for buffer, value in zip(buffers, saved, strict=True):
            buffer.copy_(value)

    caller = torch.cuda.current_stream()
    side = torch.cuda.Stream()
    side.wait_stream(caller)
    with torch.cuda.stream(side):
        eager()  # a warm-up step outside the graph (allocator, kernel workspaces), then undone
    caller.wait_stream(side)
    restore()
    decoder.generator.set_state(state)
    try:
        register(decoder.generator)
        with torch.cuda.graph(graph, pool=pool, stream=side, capture_error_mode="thread_local"):
            eager()  # records the kernels without running them
    except RuntimeError as error:
        torch.cuda.set_stream(caller)  # a capture_end that raised left the capture stream current
        with contextlib.suppress(RuntimeError):
            graph.reset()  # its memory
        restore()
        fresh = torch.Generator(device=decoder.raw.device)
        fresh.set_state(state)
        decoder.generator = fresh
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        log.warning("decoding runs without a CUDA graph: capture failed (%s)", reason)
        return eager, f"eager: capture failed ({reason})", None
    return graph.replay, GRAPH, graph.pool()


class WindowSteps:
    """Advances a decoder one step at a time with the step of the step's window, captured on the first
    step in it (use_graph) where capture is possible; after one capture fails, every later window runs
    eager (a broken capture is not tried again)."""

    def __init__(self, decoder: Decoder, use_graph: bool):
        self.decoder = decoder
        self.steps: dict[int, Callable[[], None]] = {}
        self.eager = None if use_graph else "eager: asked for (use_graph=False)"
        self.pool: object = None

    def advance(self, index: int) -> None:
        rows = self.decoder.rows(index)
        step = self.steps.get(rows)
        if step is None:
            step = self.steps[rows] = self.prepare(index)
        step()

    def prepare(self, index: int) -> Callable[[], None]:
        if self.eager is None:
            step, how, pool = capture(self.decoder, index, self.pool)
            if how == GRAPH:
                self.pool = pool
                return step
            self.eager = how
        return functools.partial(self.decoder.step, self.decoder.rows(index))

    @property
    def how(self) -> str:
        """GRAPH when every window's step was captured, else "eager: " and why."""
        return self.eager or GRAPH


def segment_rows(config: LLMConfig) -> int:
    """The positions one segment adds: the window the decoding cache grows by."""
    return len(token_layout(config, config.frames_per_segment))


def decoding_inputs(
    model: SemanticLM,
    text_states: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    forced_ids: list[int] | None = None,
) -> tuple[torch.Tensor, StepRules, torch.Generator]:
    """What decoding one video starts from: the prefix features, the layout's rules on the model's
    device, and the generator of its draws (by default one seeded with params.seed on that device)."""
    config = model.config
    params.validate(config)
    device = model.transformer.head.weight.device
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    micro = {"frames": float(params.num_frames), "motion_score": float(params.motion_score)}
    prefix = model.prefix_features(text_states.to(device), micro, params.guidance)
    steps = token_layout(config, params.num_frames)
    if prefix.shape[1] + len(steps) > config.rope_max_len:
        raise ValueError(
            f"num_frames={params.num_frames} needs {prefix.shape[1] + len(steps)} positions, "
            f"more than the model's {config.rope_max_len}"
        )
    return prefix, StepRules(steps, config.vocab.size, device, forced_ids), generator


@torch.no_grad()
def sample_codes(
    model: SemanticLM,
    text_states: torch.Tensor,
    params: SamplingParams,
    *,
    generator: torch.Generator | None = None,
    on_token: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    forced_ids: list[int] | None = None,
    use_cache: bool = True,
    on_logits: Callable[[int, torch.Tensor], None] | None = None,
    use_graph: bool = True,
    on_decoding: Callable[[Decoding], None] | None = None,
    compiled: bool = False,
) -> torch.Tensor:
    """Generate the semantic codes of one video: int64 [num_codes], each in 0..codebook_size-1.

    text_states: flan-T5 hidden states [1, L, d] (or [L, d]) of the prompt, padding removed.
    generator: drives every draw; by default a CPU-or-device generator seeded with params.seed.
    on_token(done, total) reports progress every PROGRESS_EVERY positions and at the end; should_stop()
    is checked between positions and raises SamplingCancelled. forced_ids (teacher forcing, for tests)
    gives the id fed after each step (-1: the draw); on_logits(step, raw [B, V]) sees the raw logits before
    guidance (a copy: it costs a transfer per step). use_cache=False recomputes the whole sequence per
    step (a reference for tests); use_graph=False keeps CUDA from capturing the decoding step.
    on_decoding is told once, at the end, how the tokens were decoded (`Decoding`); compiled runs the
    network's step through torch.compile.
    """
    prefix, rules, generator = decoding_inputs(model, text_states, params, generator, forced_ids)
    device = prefix.device
    if not use_cache:
        if on_decoding is not None:
            on_decoding(Decoding("eager: without a KV cache (use_cache=False)"))
        return recompute_codes(model, prefix, rules, params, generator, on_logits)
    decoder = Decoder(
        model, prefix, rules, params, generator, window=segment_rows(model.config), compiled=compiled
    )
    steps = WindowSteps(decoder, use_graph)
    total = len(rules.feed)
    for index in range(total):
        if should_stop is not None and should_stop():
            raise SamplingCancelled(f"stopped after {index} of {total} tokens")
        if on_logits is not None:
            on_logits(index, decoder.raw.clone())
        if index + 1 < total:
            steps.advance(index)
        else:
            decoder.draw()  # the last step feeds nothing
        if on_token is not None and ((index + 1) % PROGRESS_EVERY == 0 or index + 1 == total):
            on_token(index + 1, total)
    how = steps.how if decoder.compiled == NOT_COMPILED else f"{steps.how}; compiled: {decoder.compiled}"
    log.info("decoded %d tokens on %s: %s", total, device, how)
    if on_decoding is not None:
        on_decoding(Decoding(how, decoder.compile_s))
    return decoder.codes()


def recompute_codes(
    model: SemanticLM,
    prefix: torch.Tensor,
    rules: StepRules,
    params: SamplingParams,
    generator: torch.Generator,
    on_logits: Callable[[int, torch.Tensor], None] | None,
) -> torch.Tensor:
    """The same draws without a KV cache: the whole sequence through the model at every step."""
    sequence, batch = prefix, prefix.shape[0]
    ids = []
    for index in range(len(rules.feed)):
        step = torch.tensor(index, device=prefix.device)
        raw = model.transformer(sequence, torch.arange(sequence.shape[1], device=prefix.device))
        if on_logits is not None:
            on_logits(index, raw)
        drawn = torch.multinomial(
            rules.probs(guided_logits(raw, params), step, params), 1, generator=generator
        )
        forced = rules.forced(step).view(())
        fed = torch.where(forced >= 0, forced, drawn.view(()))
        ids.append(fed)
        new = model.embed_tokens(fed.view(1)).to(prefix.dtype).expand(batch, 1, -1)
        sequence = torch.cat([sequence, new], dim=1)
    codes = torch.stack(ids)[rules.is_code].cpu()
    return codes.clamp_(0, model.config.codebook_size - 1)
