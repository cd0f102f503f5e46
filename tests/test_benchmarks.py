"""The benchmark scripts run end to end on tiny settings and print their tables (the figures themselves are
measured by running them for real, never asserted here)."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import bench_mqar
from bench.machine import run_cli
from configuration_music_hybrid import MIXER_LAYER_TYPES
from modeling_music_hybrid import MIXERS, register_mixer

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


def test_training_benchmark_times_a_step_of_each_preset():
    output = run_benchmark(
        "bench.bench_training", "--presets", "hybrid-tiny", "transformer-tiny", "--sequence-length", "32", "48",
        "--memory-segment-length", "16",
    )
    for row in ("hybrid-tiny", "hybrid-tiny (compiled scan chunks)", "transformer-tiny", "step time vs without memory"):
        assert row in output
    memory_rows = [line for line in output.splitlines() if line.startswith("| hybrid-tiny + memory caching")]
    assert len(memory_rows) == 2 and all(line.rstrip(" |").endswith("x") for line in memory_rows)


def test_mqar_quick_run_trains_every_arm_and_reports_accuracy_share_and_gate_weights(tmp_path):
    """The Mamba-1 arms only (--kinds mamba), to keep the suite short; the other kinds' arms are checked below."""
    output = run_benchmark_without_repeats(
        "bench.bench_mqar", "--quick", "--kinds", "mamba", "--output", str(tmp_path / "mqar.json")
    )
    arms = ["attention hybrid", "mamba", "mamba + gated caching", "mamba + residual caching",
            "mamba, within one segment (control)"]
    for row in [f"| {arm} " for arm in arms] + ["4 pairs [95% CI]", "8 pairs [95% CI]",
                                                 "weight on the cached segment holding the pair", "verdict: "]:
        assert row in output
    results = json.loads((tmp_path / "mqar.json").read_text())
    assert list(results["arms"]) == arms
    assert len(results["runs"]) == len(arms) * 3 * 2  # three learning rates, two seeds
    accuracy = {(entry["arm"], entry["pairs"]): entry for entry in results["summary"]["accuracy"]}
    assert set(accuracy) == {(arm, n) for arm in arms[:-1] for n in (4, 8)} | {(arms[-1], 4)}
    assert all(0 <= entry["low"] <= entry["mean"] <= entry["high"] <= 1 for entry in accuracy.values())
    assert results["summary"]["holding_weights"]["mamba + gated caching"]["queries"] > 0


def test_mqar_sequences_score_each_key_once_at_its_query_after_the_pairs():
    tokens, answers, value_positions = bench_mqar.mqar_batch(20, 8, 64, 256, torch.Generator().manual_seed(0))
    for row, scored, holding in zip(tokens, answers, value_positions, strict=True):
        keys, values = row[0:16:2], row[1:16:2]
        assert (keys < 128).all() and (values >= 128).all() and len(set(keys.tolist())) == 8
        queries = (scored >= 0).nonzero().flatten()
        assert len(queries) == 8 and (queries >= 16).all() and (queries % 2 == 0).all()
        for query in queries:
            pair = keys.tolist().index(row[query])
            assert scored[query] == values[pair] and holding[query] == 2 * pair + 1
        assert (holding[scored < 0] == -1).all()


def test_mqar_arms_follow_the_mixer_registry():
    """A recurrent kind registered beside "mamba" gets its own arm (without memory caching: its mixer takes no
    memory settings)."""
    class Recurrent(torch.nn.Module):
        def __init__(self, config, layer_idx):
            super().__init__()

    register_mixer("outside_recurrent", Recurrent)
    try:
        arms = bench_mqar.arm_configs(bench_mqar.parse_args(["--quick"]))
    finally:
        MIXERS.pop("outside_recurrent")
        MIXER_LAYER_TYPES.pop("outside_recurrent")
    assert "outside_recurrent" in arms and "outside_recurrent + gated caching" not in arms
    for kind in ("mamba", "mamba2", "gated_deltanet"):  # the built-in kinds all take memory caching
        assert {kind, f"{kind} + gated caching", f"{kind} + residual caching"} <= set(arms)
    assert list(arms)[0] == "attention hybrid" and list(arms)[-1] == "mamba, within one segment (control)"
    assert arms["outside_recurrent"]["config"].mixer_types == ["outside_recurrent"] * 2


def test_int8_products_benchmark_times_every_candidate_on_the_same_layers():
    output = run_benchmark("bench.int8_products", "--presets", "hybrid-tiny", "--batches", "1", "4")
    for candidate in ("float32: few_row_linear (ours)", "int8: Int8Linear (ours)",
                      "int8: torch's dynamic quantized linear", "int8: torch._weight_int8pack_mm (weight-only)",
                      "int8: torchao Int8WeightOnly (eager)"):
        rows = [line for line in output.splitlines() if f"| {candidate} " in line]
        assert len(rows) == 2, candidate  # one per batch size
    ours = [line for line in output.splitlines() if "Int8Linear (ours)" in line]
    assert all(line.rstrip(" |").endswith("1.0x") for line in ours)  # each row's own ratio to ours


def test_codec_benchmark_prints_the_fitted_codec_per_codebook_count_beside_its_baselines(tmp_path):
    output = run_benchmark_without_repeats(
        "bench.bench_codec", "--train_tracks", "3", "--test_tracks", "1", "--seconds", "2", "--centroids", "16",
        "--real_dir", str(tmp_path / "no_music"),
    )
    collapsed = " ".join(output.split())  # the table's columns are padded
    for codebooks in (1, 3, 6, 9):
        assert f"| procedural | fitted (16 centroids, 3 clips) | {codebooks} |" in collapsed
    assert "random DAC" in output and "16 kHz low-pass round trip" in output and "real music: no .ogg files" in output


def test_gpu_readiness_script_runs_its_rows_on_cpu_in_a_dry_run():
    output = run_benchmark_without_repeats("bench.gpu_readiness", "--dry-run")
    for row in ("kernel tests", "CUDA-graph test", "hybrid-tiny batch-1 decoding (compiled, CPU)",
                "hybrid-tiny training step (PyTorch Mamba)",
                "hybrid-mc-tiny training step (PyTorch Mamba, memory caching)", "x the hybrid-tiny step"):
        assert row in output
    assert "FAILED" not in output


def test_bad_settings_end_with_a_one_line_error_from_the_command_line():
    result = subprocess.run(
        [sys.executable, "-m", "bench.bench_scan", "--lengths", "0"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "must be positive" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("module, arguments, message", [
    ("bench.bench_generation", ["--frames", "-1"], "must be positive"),
    ("bench.bench_generation", ["--frames", "2"], "at least 9"),
    ("bench.bench_mqar", ["--segment-length", "20"], "multiple of 16"),
    ("bench.bench_mqar", ["--pairs", "4", "100"], "the pairs and their queries must fit"),
    ("bench.bench_mqar", ["--lrs", "0.001", "0.001"], "distinct"),
    ("bench.bench_generation", ["--quantize", "int8", "--dtype", "bfloat16"], "float32 models"),
    ("bench.int8_products", ["--batches", "0"], "must be positive"),
    *([("bench.gpu_readiness", [], "no CUDA device here")] if not torch.cuda.is_available() else []),
])
def test_bad_settings_end_with_a_one_line_error(module, arguments, message, monkeypatch, capsys):
    """What `python -m <module> <arguments>` runs (run_cli(main)), in this process: one import of torch for all."""
    monkeypatch.setattr(sys, "argv", [module, *arguments])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(importlib.import_module(module).main)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
