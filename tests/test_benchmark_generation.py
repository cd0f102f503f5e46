"""The generation benchmark runs end to end on the full-size presets for a few frames and prints its tables (the
figures are measured by running it for real, never asserted here). A file of its own: the suite's workers run files
in parallel, and this one takes about as long as the other benchmarks' tests together."""

import pytest
import transformers

from bench import bench_generation
from test_benchmarks import run_benchmark


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
