"""The benchmark scripts run end to end on tiny settings and print their tables (the figures themselves are
measured by running them for real, never asserted here)."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from bench import bench_generation, bench_recall

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(module, *arguments):
    return run_benchmark_without_repeats(module, "--repeats", "1", *arguments)


def run_benchmark_without_repeats(module, *arguments):
    result = subprocess.run(
        [sys.executable, "-m", module, *arguments], cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_scan_benchmark_compares_our_mixers_with_the_baselines():
    output = run_benchmark("bench.bench_scan", "--lengths", "32", "--hidden-size", "32", "--d-state", "8")
    rows = ("ours (PyTorch chunked scan)", "ours (chunks fused by torch.compile)", "plain PyTorch loop",
            "transformers MambaMixer (torch)", "projections alone", "projections + decays",
            "Mamba-2 (PyTorch chunked SSD)", "transformers Mamba2Mixer (torch)", "Gated DeltaNet (PyTorch chunked WY)",
            "fwd+bwd: this / ours (Mamba-1)")
    for row in rows:
        assert row in output


@pytest.mark.skipif(
    not bench_generation.musicgen_can_generate(), reason="the MusicGen baseline cannot generate with this transformers"
)
def test_generation_benchmark_prints_speeds_bounds_memory_and_targets():
    """The full-size presets (the target table needs them) for a few frames, with their int8 rows, the load rows
    and the quality table (its models trained for two steps); --compile is left out (compiling them takes
    minutes; tests/test_generation_speed_paths.py checks the compiled step)."""
    output = run_benchmark(
        "bench.bench_generation", "--frames", "9", "--batches", "1", "8", "--memory-frames", "16",
        "--quantize", "int8", "--quality-steps", "2",
    )
    assert "memory read bandwidth" in output
    for row in ("hybrid-116m", "transformer-162m", "MusicgenForCausalLM", "bound / measured", "matmul + decays ceiling",
                "batch 8 vs MusicgenForCausalLM", "cache per frame vs transformer-162m", "hybrid-116m (int8)",
                "transformer-162m (int8)", "hybrid-116m + memory caching", "busy core, default settings",
                "busy core, one thread", "under load: default settings vs one thread", "cb8 %", "hybrid-small",
                "transformer-small"):
        assert row in output


def test_generation_benchmark_refuses_a_transformers_whose_musicgen_cannot_generate(monkeypatch):
    monkeypatch.setattr(transformers, "__version__", "5.14.1")
    with pytest.raises(ValueError, match="needs transformers >= 5.15"):
        bench_generation.check_musicgen_generates()


def test_training_benchmark_times_a_step_of_each_preset():
    output = run_benchmark(
        "bench.bench_training", "--presets", "hybrid-tiny", "transformer-tiny", "--sequence-length", "32", "48",
        "--memory-segment-length", "16",
    )
    for row in ("hybrid-tiny", "hybrid-tiny (compiled scan chunks)", "transformer-tiny", "step time vs without memory"):
        assert row in output
    memory_rows = [line for line in output.splitlines() if line.startswith("| hybrid-tiny + memory caching")]
    assert len(memory_rows) == 2 and all(line.rstrip(" |").endswith("x") for line in memory_rows)


def test_recall_benchmark_trains_the_three_models_and_reports_the_target():
    output = run_benchmark("bench.bench_recall", "--steps", "3", "--batch", "4", "--eval-sequences", "8",
                           "--num-resamples", "50")
    for row in ("| pure Mamba ", "| Mamba + memory caching (gated) ", "| attention hybrid ",
                "loss on recurring frames", "share of the pure Mamba -> attention hybrid gap",
                "training step time, memory caching / pure Mamba"):
        assert row in output


def test_recall_sequences_hide_a_motif_of_its_own_codes_that_recurs_beyond_a_segment():
    settings = argparse.Namespace(frames=64, segment_length=16, motif_frames=16, codebooks=2, codebook_size=32,
                                  filler_codes=4)
    codes, recurring = bench_recall.recall_sequences(settings, 50, torch.Generator().manual_seed(0))
    assert codes.shape == (50, 2, 64) and recurring.shape == (50, 64)
    for sequence, marked in zip(codes, recurring, strict=True):
        motif_frames = (sequence >= settings.filler_codes).all(0).nonzero().flatten()
        assert ((sequence >= settings.filler_codes).any(0).nonzero().flatten() == motif_frames).all()
        first, second = motif_frames[:16], motif_frames[16:]
        assert len(second) == 16 and (first.diff() == 1).all() and (second.diff() == 1).all()
        assert torch.equal(sequence[:, first], sequence[:, second])
        assert all(len(set(codebook.tolist())) == 16 for codebook in sequence[:, first])  # distinct within the motif
        assert second[0] - first[-1] - 1 > settings.segment_length  # the gap is longer than a memory segment
        assert marked.nonzero().flatten().tolist() == second[1:].tolist()  # after the frame that reveals the motif


def test_int8_products_benchmark_times_every_candidate_on_the_same_layers():
    output = run_benchmark("bench.int8_products", "--presets", "hybrid-tiny", "--batches", "1", "4")
    for candidate in ("float32: few_row_linear (ours)", "int8: Int8Linear (ours)",
                      "int8: torch's dynamic quantized linear", "int8: torch._weight_int8pack_mm (weight-only)",
                      "int8: torchao Int8WeightOnly (eager)"):
        rows = [line for line in output.splitlines() if f"| {candidate} " in line]
        assert len(rows) == 2, candidate  # one per batch size
    ours = [line for line in output.splitlines() if "Int8Linear (ours)" in line]
    assert all(line.rstrip(" |").endswith("1.0x") for line in ours)  # each row's own ratio to ours


def test_gpu_readiness_script_runs_its_rows_on_cpu_in_a_dry_run():
    output = run_benchmark_without_repeats("bench.gpu_readiness", "--dry-run")
    for row in ("kernel tests", "CUDA-graph test", "hybrid-tiny batch-1 decoding (compiled, CPU)",
                "hybrid-tiny training step (PyTorch Mamba)",
                "hybrid-mc-tiny training step (PyTorch Mamba, memory caching)", "x the hybrid-tiny step"):
        assert row in output
    assert "FAILED" not in output


@pytest.mark.parametrize("module, arguments, message", [
    ("bench.bench_scan", ["--lengths", "0"], "must be positive"),
    ("bench.bench_generation", ["--frames", "-1"], "must be positive"),
    ("bench.bench_generation", ["--frames", "2"], "at least 9"),
    ("bench.bench_recall", ["--segment-length", "20"], "multiple of 16"),
    ("bench.bench_recall", ["--frames", "40"], "no room"),
    ("bench.bench_recall", ["--filler-codes", "30"], "distinct motif codes"),
    ("bench.bench_generation", ["--quantize", "int8", "--dtype", "bfloat16"], "float32 models"),
    ("bench.int8_products", ["--batches", "0"], "must be positive"),
    *([("bench.gpu_readiness", [], "no CUDA device here")] if not torch.cuda.is_available() else []),
])
def test_bad_settings_end_with_a_one_line_error(module, arguments, message):
    result = subprocess.run([sys.executable, "-m", module, *arguments], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
