"""Benchmark a training step: positions (and codec tokens) per second and peak memory of our presets.

One step = forward with labels, backward and an AdamW update, on random codes at a sequence length of 2048
positions (each position carries one token per codebook, 9 for DAC). The Mamba layers run the mamba-ssm kernels
where they are installed (CUDA), our chunked PyTorch scan elsewhere, and the hybrid presets run a second time with
that scan's chunks fused by torch.compile (`mamba_implementation="compiled"`); the slow baseline replaces the
scan with a plain state-carrying loop (autograd through every step). Each preset with Mamba layers also runs with
memory caching in them (`--memory-segment-length`, 0 to skip), timed against itself without.

    python -m bench.bench_training                          # a few minutes on a 2-core CPU
    python -m bench.bench_training --with-slow-baselines    # adds hybrid-116m with the plain-loop scan
    python -m bench.bench_training --presets hybrid-small --sequence-length 2048 8192   # memory caching's cost
"""

import contextlib
import sys
from pathlib import Path
from unittest import mock

import torch

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mamba_music_hybrid  # noqa: E402
from bench.bench_generation import can_cache_memory  # noqa: E402
from bench.bench_scan import plain_loop_scan  # noqa: E402
from bench.machine import (  # noqa: E402
    add_machine_arguments, best_time, mib, new_parser, peak_memory, print_header, print_table, ratio_text, run_cli,
    setup_machine,
)
from configuration_music_hybrid import MusicHybridConfig  # noqa: E402
from modeling_music_hybrid import MusicHybridForCausalLM, codes_to_model_inputs  # noqa: E402

COMPILED, PLAIN_LOOP = " (compiled scan chunks)", " (plain-loop scan)"  # variants of the hybrid presets
MEMORY = " + memory caching"  # a variant of every preset with Mamba layers


def parse_args():
    parser = new_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["hybrid-116m", "transformer-162m"])
    parser.add_argument("--sequence-length", type=int, nargs="+", default=[2048], help="positions per sample")
    parser.add_argument(
        "--memory-segment-length", type=int, default=256,
        help="segment length of the memory-caching variants of presets with Mamba layers (0: no such variants)",
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="autocast dtype")
    parser.add_argument(
        "--with-slow-baselines", action="store_true",
        help="also time hybrid-116m with the plain-loop scan (minutes per step on a 2-core CPU)",
    )
    add_machine_arguments(parser)
    parser.set_defaults(repeats=2)
    return parser.parse_args()


def main():
    args = parse_args()
    device = setup_machine(args)
    if args.batch <= 0:
        raise ValueError("--batch must be positive")
    if args.memory_segment_length < 0 or args.memory_segment_length % 16:
        raise ValueError("--memory-segment-length must be 0 or a positive multiple of 16")
    print_header(
        "Training step (forward, backward, AdamW)", device,
        {"presets": args.presets, "sequence lengths (positions)": args.sequence_length, "batch": args.batch,
         "memory caching variants": f"segments of {args.memory_segment_length}" if args.memory_segment_length
         else "skipped",
         "dtype": args.dtype, "repeats (best counts, after a warm-up step)": args.repeats,
         "slow baselines": "run" if args.with_slow_baselines else "skipped (--with-slow-baselines)"},
    )
    hybrids = [name for name in args.presets if name.startswith("hybrid")]
    runs = [(name, "") for name in args.presets] + [(name, COMPILED) for name in hybrids]
    if args.memory_segment_length:
        runs += [(name, MEMORY) for name in args.presets if can_cache_memory(MusicHybridConfig.from_preset(name))]
    if args.with_slow_baselines:
        runs += [(name, PLAIN_LOOP) for name in hybrids]
    results = {}
    for length in args.sequence_length:
        for name, variant in runs:
            results[name + variant, length] = measure(name, variant, args, device, length)
            print(f"{name + variant} at {length}: {results[name + variant, length]}", file=sys.stderr, flush=True)
    print_results(results, args)


def training_step_fn(name, args, device, sequence_length, mamba_implementation="auto", **overrides):
    """A closure running one training step of a fresh model of preset `name` on fixed random codes."""
    torch.manual_seed(0)
    config = MusicHybridConfig.from_preset(
        name, max_position_embeddings=max(8192, sequence_length), mamba_implementation=mamba_implementation,
        **overrides,
    )
    model = MusicHybridForCausalLM(config).to(device).train()
    num_frames = sequence_length - config.num_codebooks
    if num_frames <= 0:
        raise ValueError(f"--sequence-length must exceed the {config.num_codebooks} codebooks")
    codes = torch.randint(0, config.codebook_size, (args.batch, config.num_codebooks, num_frames), device=device)
    inputs = codes_to_model_inputs(codes, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.01)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bfloat16" else contextlib.nullcontext()
    )

    def step():
        with autocast:
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(name, variant, args, device, sequence_length):
    overrides = {"mamba_memory_segment_length": args.memory_segment_length} if variant == MEMORY else {}
    implementation = "compiled" if variant == COMPILED else "auto"
    step = training_step_fn(name, args, device, sequence_length, implementation, **overrides)
    plain_loop = variant == PLAIN_LOOP
    scan = mock.patch.object(mamba_music_hybrid, "selective_scan", plain_loop_scan) if plain_loop else None
    with scan or contextlib.nullcontext():
        with peak_memory(device) as peak:
            seconds = best_time(step, device, 1)  # warm-up: allocates the optimizer state (and compiles)
        if not plain_loop:
            seconds = best_time(step, device, args.repeats)
    positions = args.batch * sequence_length
    return {"seconds": seconds, "positions_per_s": positions / seconds, "peak_bytes": peak["bytes"]}


def print_results(results, args):
    rows = []
    for (label, length), result in results.items():
        reference = results[args.presets[-1], length]
        without_memory = results.get((label.removesuffix(MEMORY), length)) if label.endswith(MEMORY) else None
        rows.append([
            label, length, f"{result['seconds']:.2f}", f"{result['positions_per_s']:.0f}",
            f"{result['positions_per_s'] * 9:.0f}", mib(result["peak_bytes"]),
            ratio_text(result["positions_per_s"], reference["positions_per_s"]),
            ratio_text(result["seconds"], without_memory["seconds"]) if without_memory else "",
        ])
    print_table(
        ["model", "positions", "s / step", "positions/s", "codec tokens/s (x9)", "peak MiB (step incl. warm-up)",
         f"speed vs {args.presets[-1]}", "step time vs without memory"],
        rows,
    )


if __name__ == "__main__":
    run_cli(main)
