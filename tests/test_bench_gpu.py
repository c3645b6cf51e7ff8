"""bench/gpu.py's CPU smoke: the tiny spec through the same sections the GPU run takes."""

from __future__ import annotations

import importlib.util
import json
import sys

from tests.harness import ROOT, WAIT_S

BENCH = ROOT / "bench"


def load_bench():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_bench_smoke_on_the_cpu(tmp_path, capsys):
    bench = load_bench()
    out = tmp_path / "bench.json"
    code = bench.main(
        ["--cpu", "--budget", str(WAIT_S), "--steps", "2", "--weights", str(tmp_path), "--json", str(out)]
    )
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = {row["section"]: row for row in report["sections"]}
    assert rows["write random weights"]["status"] == "ok"
    assert not list(tmp_path.glob("landiff-bench-*"))  # the random weights are deleted afterwards
    for profile in ("resident", "balanced", "low"):
        row = rows[f"job, memory {profile}"]
        assert row["status"] == "ok" and row["memory"]["profile"] == profile
        assert row["tokens"] > 0 and row["tokens_per_s"] > 0 and row["steps_per_s"] > 0
        assert {"text", "tokens", "denoise", "decode"} <= set(row["timings_s"])
        assert "denoise_floor_ratio" not in row  # the H200 floors are not ratios of a tiny CPU run
        assert row["llm_decoding"] == "eager: the cpu device has no CUDA graphs"  # the graph flag, and why
        assert f"job, memory {profile}" in printed
    assert rows["DiT call, attention sdpa"]["max_abs_dev"] == 0
    assert rows["DiT call, attention sdpa"]["sdpa_backend"] in ("flash (CPU)", "math (unfused)")
    assert rows["hash random weights"]["status"] == "ok"  # hashed once, before the jobs
    assert rows["job, memory balanced"]["later_timings_s"]["denoise"] > 0  # balanced runs a second job
    assert "cuda" in report and "cudnn" in report
    assert rows["job, parallel"]["status"].startswith("skipped: needs 2 or more CUDA GPUs")
    assert rows["jobs, llm lane"]["status"].startswith("skipped: needs 2 or more CUDA GPUs")
    assert "parallel, llm lane: skipped" in printed  # the reason is printed, and no speed-up is claimed
    assert rows["DiT call, attention flash2"]["status"].startswith("n/a: --attention flash2 needs a CUDA GPU")
    assert [row["attention"] for row in report["sections"] if "attention" in row] == [
        "sdpa",
        "cudnn",
        "flash2",
        "flash3",
        "sage",
    ]  # every kernel keeps its deviation row


def test_a_failing_section_is_a_row_and_the_rest_runs(tmp_path, monkeypatch):
    bench = load_bench()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bench, "write_random_release", broken)
    out = tmp_path / "bench.json"
    assert bench.main(["--cpu", "--budget", str(WAIT_S), "--weights", str(tmp_path), "--json", str(out)]) == 1
    rows = {row["section"]: row for row in json.loads(out.read_text())["sections"]}
    assert rows["write random weights"]["status"] == "failed: RuntimeError: disk full"
    assert rows["DiT call, attention sdpa"]["status"] == "ok"  # the sections after it still ran


def test_out_of_budget_sections_are_skipped(tmp_path):
    bench = load_bench()
    out = tmp_path / "bench.json"
    bench.main(["--cpu", "--budget", "0", "--weights", str(tmp_path), "--json", str(out)])
    statuses = [row["status"] for row in json.loads(out.read_text())["sections"]]
    assert statuses and all(status.startswith("skipped") for status in statuses)


def test_the_llm_lane_section_runs_two_jobs_with_their_tokens_made_ahead(home, tmp_path):
    """Where two GPUs are, `jobs, llm lane` runs on cuda:0 and cuda:1; here the same code on the CPU twice."""
    import torch  # noqa: F401  (the bench module needs it loaded)

    from engine.specs import get_spec
    from engine.weights.layout import layout_for

    bench = load_bench()
    spec = get_spec("tiny")
    row = bench.lane_jobs(
        spec, layout_for("tiny", home), 2, bench.Budget(WAIT_S), tmp_path, False, 1.0, devices=("cpu", "cpu")
    )
    assert (
        row["section"] == "jobs, llm lane" and row["wall_s"] > 0 and row["lane_speedup"] == 2 / row["wall_s"]
    )
    assert sorted(path.name for path in tmp_path.glob("lane-*.mp4")) == ["lane-0.mp4", "lane-1.mp4"]


def test_the_plan_shows_the_gpu_run_fits_its_budget_with_the_margin(capsys):
    bench = load_bench()
    assert bench.main(["--plan"]) == 0
    printed = capsys.readouterr().out
    for part in ("write random weights", "hash random weights", "job, balanced (second)", "attention rows"):
        assert part in printed
    assert "fits 338 s" in printed  # 450 s less 25 %
    assert bench.main(["--plan", "--budget", "100"]) == 1  # and says when it does not
    assert "does NOT fit" in capsys.readouterr().out
