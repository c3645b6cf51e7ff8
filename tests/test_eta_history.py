"""A job's ETA (issue 26, point 9): it starts from the history of finished jobs of the same model on the
same device, and leans on what the job measures as it runs, so it neither starts far too low nor climbs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.daemon.store import Store
from engine.generation.lengths import plan_length, rules_for
from engine.generation.progress import JobClock, prior_costs

# a finished job's costs: a denoising step, a chunk's decode + write, both text encoders, tokens per segment
STEP_S, FINISH_S, TEXT_S, TOKENS_S = 1.5, 10.0, 4.0, 20.0
STEPS = 20


def finished_job(store: Store, folder: Path, device: str, scale: float = 1.0, **params) -> None:
    """A finished job of the tiny model as the engine records it: its row and its record's device."""
    plan = plan_length(rules_for("tiny"), params.get("frames"), params.get("overlap"))
    row = store.add_job({"prompt": "a cat", "steps": STEPS, **params}, "tiny", "test")
    sidecar = folder / f"{row.id}.json"
    sidecar.write_text(json.dumps({"device": device, "stage1": {"device": device, "ahead": False}}))
    chunk = {"denoise_s": STEPS * STEP_S * scale, "decode_s": 0.75 * FINISH_S * scale}
    chunks = [{"index": index, **chunk, "write_s": 0.25 * FINISH_S * scale} for index in range(plan.chunks)]
    timings = {
        "text": TEXT_S * scale,
        "tokens": (TOKENS_S * plan.segments + 3.0) * scale,
        "tokens_compile": 3.0 * scale,
        "denoise": plan.chunks * STEPS * STEP_S * scale,
    }
    store.update(
        row.id,
        status="finished",
        finished_at=1.0,
        timings=timings,
        chunk_timings=chunks,
        sidecar_path=str(sidecar),
    )


@pytest.fixture
def history(tmp_path) -> Path:
    store = Store(tmp_path / "landiff.db")
    for scale in (0.9, 1.0, 1.1):  # the medians are the middle job's
        finished_job(store, tmp_path, "cpu", scale)
    finished_job(store, tmp_path, "cpu", 1.0, frames=int(plan_length(rules_for("tiny")).frames * 2.5))
    finished_job(store, tmp_path, "cuda", 0.01)  # another device: not this one's estimate
    return tmp_path / "landiff.db"


def test_the_costs_come_from_the_history_of_the_same_model_and_device(history):
    costs = prior_costs("tiny", "cpu", history)
    assert costs == pytest.approx(
        {"denoise_step_s": STEP_S, "chunk_finish_s": FINISH_S, "text_s": TEXT_S, "tokens_segment_s": TOKENS_S}
    )
    assert prior_costs("tiny", "cuda", history)["denoise_step_s"] == pytest.approx(STEP_S * 0.01)
    assert prior_costs("tiny", "mps", history) == {}  # never ran there
    assert prior_costs("tiny", "cpu", history.parent / "none.db") == {}  # no history yet


def true_remaining(plan, steps: int) -> list[tuple[str, int, int, float, float]]:
    """A job that runs exactly as its history did: (stage, step, total, stage ETA, seconds left) at each
    report, in the order the pipeline reports them."""
    tokens_total = 40 * plan.segments
    per_token = TOKENS_S * plan.segments / tokens_total
    chunk_cost = steps * STEP_S + FINISH_S
    stage2 = TEXT_S / 2 + plan.chunks * chunk_cost
    reports = [("text", 1, 2, TEXT_S / 2, TOKENS_S * plan.segments + stage2)]
    for step in range(1, tokens_total + 1):
        left = (tokens_total - step) * per_token
        reports.append(("tokens", step, tokens_total, left, left + stage2))
    reports.append(("text", 2, 2, 0.0, plan.chunks * chunk_cost))
    for chunk in range(plan.chunks):
        after = (plan.chunks - chunk - 1) * chunk_cost
        for step in range(1, steps + 1):
            left = (steps - step) * STEP_S
            reports.append(("denoise", step, steps, left, left + FINISH_S + after))
    return reports


def test_the_eta_of_a_job_like_its_history_is_right_from_the_first_report(history):
    plan = plan_length(rules_for("tiny"))
    clock = JobClock(plan, STEPS, prior_costs("tiny", "cpu", history))
    etas = []
    for stage, step, total, stage_eta, left in true_remaining(plan, STEPS):
        if stage == "denoise":  # the pipeline times each step into the clock before it reports
            clock.denoise_s += STEP_S
            clock.denoise_steps += 1
        eta = clock.eta(stage, step, total, stage_eta)
        assert eta == pytest.approx(left, rel=0.02), (stage, step, total)
        etas.append(eta)
    assert all(
        later <= earlier + 1e-6 for earlier, later in zip(etas, etas[1:], strict=False)
    )  # never climbs


def test_the_first_denoising_steps_lean_on_the_history():
    """A slow first step (weights arriving, kernels warming) does not make the whole job's estimate jump."""
    plan = plan_length(rules_for("tiny"))
    clock = JobClock(plan, STEPS, {"denoise_step_s": STEP_S, "chunk_finish_s": FINISH_S})
    clock.denoise_s, clock.denoise_steps = 6 * STEP_S, 1  # the first step took six times its usual
    with_history = clock.eta("denoise", 1, STEPS, None)
    alone = JobClock(plan, STEPS, {})
    alone.denoise_s, alone.denoise_steps = 6 * STEP_S, 1
    true_left = (STEPS - 1) * STEP_S + FINISH_S
    assert with_history is not None and true_left < with_history < 2 * true_left
    assert alone.eta("denoise", 1, STEPS, None) == pytest.approx((STEPS - 1) * 6 * STEP_S)  # 4x the true one
    assert JobClock(plan, STEPS, {}).eta("tokens", 3, 40, 1.0) is None  # nothing known: no job ETA
