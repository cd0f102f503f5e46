"""Benchmark generation: frames per second and memory of our presets vs transformers' MusicgenForCausalLM.

Unconditional sampling (top-k 250) with random weights, since speed does not depend on what was learned:
hybrid-116m and transformer-162m against MusicgenForCausalLM of the same size as transformer-162m (hidden 768,
20 layers, 12 heads, ffn 3072, 9 codebooks), run without encoder states, so its cross-attention weights are
never read and it does the same work. All three produce the same number of frames with the same delay pattern.

The bound is batch size x the memory read bandwidth measured in the same run (the sum of a 1 GiB float32 tensor)
over the parameter bytes: a decoding step reads every weight once. The matmul ceiling is one step's matrix
products alone, run as our decoding runs them; where it sits below the bound, the matmul kernels, not memory,
stop us. The matmul + decays ceiling adds what every Mamba decoding step computes besides: the decays
exp(delta A) of its state, one exponential per sample, channel and state in each Mamba layer. Cache memory is
exact (the cache is allocated up front): what grows per frame is the attention layers' keys and values; Mamba
state has a fixed size. Each preset with Mamba layers also runs with memory caching in them
(`--memory-segment-length`, 0 to skip), whose cached states grow by one per segment and layer.

    python -m bench.bench_generation                          # MusicGen at 256 frames only
    python -m bench.bench_generation --with-slow-baselines    # MusicGen at 2048 frames too
    python -m bench.bench_generation --compile                # adds our presets with compile_decoding()
    python -m bench.bench_generation --device cuda --compile  # on a GPU: kernels, compiled steps as CUDA graphs
    python -m bench.bench_generation --presets hybrid-small --batches 1 --frames 2048 8192   # memory caching's cost
    python -m bench.bench_generation --quantize int8 --frames 256   # adds int8 rows, the load rows and quality
    python -m bench.bench_generation --quantize int8 --compile      # int8 with compiled steps too

With --quantize int8 our presets also run with `quantize_weights("int8")`, and two more measurements follow:
under load (a busy process pinned to one core) hybrid-116m int8 at batch 1 decodes with the default settings
(the thread count chosen at generation start) and with one thread, taking turns, beside its quiet speed; and
the quality table of bench/int8_quality.py (small presets trained here, validation cross entropy per codebook,
float32 vs int8).
"""

import contextlib
import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers
from packaging import version

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import (  # noqa: E402
    SKIPPED, add_machine_arguments, best_time, mib, new_parser, print_header, print_table, ratio_text, read_bandwidth,
    run_cli, setup_machine, synchronize,
)
from bench.int8_quality import int8_quality, print_quality_table, quality_is_kept  # noqa: E402
from configuration_music_hybrid import MusicHybridConfig  # noqa: E402
from fast_decoding_music_hybrid import QUANTIZATION_MODES, Int8Linear, few_row_linear, packed_weight  # noqa: E402
from mamba_music_hybrid import MambaMixer  # noqa: E402
from modeling_music_hybrid import MusicHybridForCausalLM  # noqa: E402
from selective_scan_music_hybrid import decay_exponents  # noqa: E402

MUSICGEN = "MusicgenForCausalLM"
TOP_K = 250
REAL_TIME_FPS = 44100 / 512
INT8_REAL_TIME_TARGET = 1.3  # the batch-1 int8 target: 1.3x real time
LOAD_KEEPS_AT_LEAST = 0.4  # under load, default settings keep this share of the quiet speed
LOAD_ROUNDS = 6  # generations of each setting under load, taking turns
MIN_FRAMES = 9  # one per codebook
MUSICGEN_MIN_TRANSFORMERS = "5.15"  # MusicgenForCausalLM.generate fails in earlier 5.x releases
MEMORY = " + memory caching"  # a variant of every preset with Mamba layers


def parse_args():
    parser = new_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["hybrid-116m", "transformer-162m"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--frames", type=int, nargs="+", default=[256, 2048], help="new frames per sample")
    parser.add_argument("--memory-frames", type=int, nargs="+", default=[2048, 8192], help="frames of the memory table")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--compile", action="store_true", help="also time our presets with compile_decoding()")
    parser.add_argument(
        "--memory-segment-length", type=int, default=256,
        help="segment length of the memory-caching variants of presets with Mamba layers (0: no such variants)",
    )
    parser.add_argument(
        "--quantize", choices=QUANTIZATION_MODES,
        help="also time our presets with quantize_weights(); adds the load and quality rows",
    )
    parser.add_argument("--quality-steps", type=int, default=300, help="training steps of the int8 quality models")
    parser.add_argument(
        "--with-slow-baselines", action="store_true", help="run MusicgenForCausalLM beyond 256 frames as well",
    )
    add_machine_arguments(parser)
    parser.set_defaults(repeats=2)
    return parser.parse_args()


def main():
    args = parse_args()
    device = setup_machine(args)
    if min(args.batches + args.frames + args.memory_frames) <= 0:
        raise ValueError("--batches, --frames and --memory-frames must be positive")
    if args.memory_segment_length < 0 or args.memory_segment_length % 16:
        raise ValueError("--memory-segment-length must be 0 or a positive multiple of 16")
    if min(args.frames) < MIN_FRAMES:
        raise ValueError(f"--frames must be at least {MIN_FRAMES}: {MUSICGEN} returns a shorter sequence below that")
    dtype = getattr(torch, args.dtype)
    if args.quantize and (device.type != "cpu" or dtype != torch.float32):
        raise ValueError("--quantize int8 is for CPU decoding of float32 models: use --device cpu --dtype float32")
    if args.quality_steps <= 0:
        raise ValueError(f"--quality-steps must be positive, got {args.quality_steps}")
    check_musicgen_generates()  # the environment, once the arguments are known to be right
    print_header(
        "Generation speed and memory", device,
        {"presets": args.presets, "baseline": MUSICGEN + " (hidden 768, 20 layers, 12 heads, ffn 3072)",
         "batches": args.batches, "frames": args.frames, "dtype": args.dtype, "sampling": f"top-k {TOP_K}",
         "repeats at <= 256 frames (best counts)": args.repeats,
         "compiled steps": compiled_steps_text(args, device),
         "quantized": f"{args.quantize} (quantize_weights)" if args.quantize else "no (--quantize int8)",
         "slow baselines": "run" if args.with_slow_baselines else "skipped (--with-slow-baselines)"},
    )
    bandwidth = read_bandwidth(device)
    print(f"memory read bandwidth (sum of a 1 GiB float32 tensor, best of 5): {bandwidth / 1e9:.1f} GB/s\n")

    # Every timed configuration: a name -> (model, runner). Compiled ones share the weights of the eager ones.
    positions = max(args.frames) + MIN_FRAMES  # learned position tables grow to fit the longest request
    models = {name: build_our_model(name, device, dtype, positions) for name in args.presets}
    if args.memory_segment_length:
        for name in args.presets:
            if can_cache_memory(models[name].config):
                models[name + MEMORY] = build_our_model(
                    name, device, dtype, positions, mamba_memory_segment_length=args.memory_segment_length
                )
    ours = list(models)
    models[MUSICGEN] = build_musicgen(device, dtype)
    runners = {name: our_runner(model) for name, model in models.items() if name != MUSICGEN}
    runners[MUSICGEN] = musicgen_runner(models[MUSICGEN])
    if args.compile:
        # Every model's steps compile here, once per kind of batch and thread count: more graphs of one function
        # than dynamo's default limit (8), past which it would run the remaining models' steps eagerly.
        limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        setattr(torch._dynamo.config, limit, 64)
        for name in args.presets:
            compiled = build_our_model(name, device, dtype, positions)
            compiled.load_state_dict(models[name].state_dict())
            compiled.compile_decoding(cuda_graph=True)  # CUDA graphs on a GPU, ignored on CPU
            models[compiled_name(name)] = compiled
            runners[compiled_name(name)] = our_runner(compiled)
    if args.quantize:
        for name in args.presets:
            quantized = build_our_model(name, device, dtype, positions)
            quantized.load_state_dict(models[name].state_dict())
            models[quantized_name(name, args)] = quantized.quantize_weights(args.quantize)
            runners[quantized_name(name, args)] = our_runner(quantized)
            if args.compile:  # the fastest CPU decoding: int8 weights and compiled steps
                compiled = copy.deepcopy(quantized)
                compiled.compile_decoding()
                models[compiled_name(quantized_name(name, args))] = compiled
                runners[compiled_name(quantized_name(name, args))] = our_runner(compiled)

    speeds = {}
    for name, run in runners.items():
        start = time.perf_counter()
        for batch in args.batches:  # warm-up (compiled steps: one compilation per kind of batch)
            run(batch, 8)
        print(f"{name}: warm-up (8 frames per batch size) took {time.perf_counter() - start:.1f} s", file=sys.stderr,
              flush=True)
        for batch in args.batches:
            for frames in args.frames:
                if name == MUSICGEN and frames > 256 and not args.with_slow_baselines:
                    speeds[name, batch, frames] = None
                    continue
                speeds[name, batch, frames] = time_generation(run, batch, frames, args, device)
                print(f"{name} batch {batch}, {frames} frames: {speeds[name, batch, frames]:.1f} frames/s",
                      file=sys.stderr, flush=True)
    print_speed_table(speeds, runners, args)
    ceilings = print_bound_table(speeds, models, bandwidth, args, device)
    print_memory_table({name: model for name, model in models.items() if name in ours + [MUSICGEN]}, args)
    load_speeds = quality = None
    if args.quantize and "hybrid-116m" in args.presets and 1 in args.batches:
        name = quantized_name("hybrid-116m", args)
        load_speeds = print_load_table(name, runners[name], speeds[name, 1, args.frames[0]], args, device)
    if args.quantize:
        quality = {preset: int8_quality(preset, args.quality_steps) for preset in ("hybrid-small", "transformer-small")}
        print_quality_table(quality)
    print_targets(speeds, models, ceilings, args, load_speeds, quality)


def musicgen_can_generate():
    return version.parse(transformers.__version__) >= version.parse(MUSICGEN_MIN_TRANSFORMERS)


def check_musicgen_generates():
    if not musicgen_can_generate():
        raise ValueError(
            f"the {MUSICGEN} baseline needs transformers >= {MUSICGEN_MIN_TRANSFORMERS} (its generate fails in "
            f"earlier releases); this is {transformers.__version__}: pip install -U transformers"
        )


def compiled_steps_text(args, device):
    if not args.compile:
        return "skipped (--compile)"
    return "compile_decoding(): torch.compile" + (" + CUDA graphs" if device.type == "cuda" else " (inductor)")


def compiled_name(name):
    return f"{name} (compiled)"


def quantized_name(name, args):
    return f"{name} ({args.quantize})"


def build_our_model(name, device, dtype, positions, **overrides):
    """A preset with random weights and at least `positions` learned positions (if it has them)."""
    torch.manual_seed(0)
    config = MusicHybridConfig.from_preset(name, **overrides)
    if positions > config.max_position_embeddings:
        config = MusicHybridConfig.from_preset(name, max_position_embeddings=positions, **overrides)
    return MusicHybridForCausalLM(config).to(device=device, dtype=dtype).eval()


def can_cache_memory(config):
    """Models with recurrent layers that do not cache memory already (bench_training's too)."""
    return "linear_attention" in config.layer_types and not config.mamba_memory


def build_musicgen(device, dtype):
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    config = MusicgenDecoderConfig(
        vocab_size=1024, hidden_size=768, num_hidden_layers=20, num_attention_heads=12, ffn_dim=3072,
        num_codebooks=9, max_position_embeddings=8192, pad_token_id=1024, bos_token_id=1024, dropout=0.0,
    )
    torch.manual_seed(0)
    return MusicgenForCausalLM(config).to(device=device, dtype=dtype).eval()


def our_runner(model):
    def run(batch, frames):
        codes = model.generate(max_new_tokens=frames, num_return_sequences=batch, do_sample=True, top_k=TOP_K)
        assert codes.shape == (batch, model.config.num_codebooks, frames)

    return run


def musicgen_runner(model):
    """MusicGen's generate from its start token; an explicit num_return_sequences=1 and the batch in the inputs
    (transformers 5.24 fails without it and mixes codebooks with more than one return sequence)."""
    num_codebooks, start = model.config.num_codebooks, model.config.bos_token_id

    def run(batch, frames):
        input_ids = torch.full((batch * num_codebooks, 1), start, device=model.device)
        codes = model.generate(
            input_ids, max_new_tokens=frames + num_codebooks - 1, do_sample=True, top_k=TOP_K,
            num_return_sequences=1, decoder_start_token_id=start, pad_token_id=start,
        )
        assert codes.shape == (batch, num_codebooks, frames)

    return run


def time_generation(run, batch, frames, args, device, repeats=None):
    """Frames per second summed over the batch: the best of `repeats` (--repeats) runs, one beyond 256 frames."""
    best = float("inf")
    for _ in range(1 if frames > 256 else repeats or args.repeats):
        synchronize(device)
        start = time.perf_counter()
        run(batch, frames)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return batch * frames / best


def fps_text(fps):
    return SKIPPED if fps is None else f"{fps:.1f}"


def print_speed_table(speeds, runners, args):
    rows = []
    for batch in args.batches:
        for frames in args.frames:
            baseline = speeds[MUSICGEN, batch, frames]
            for name in runners:
                fps = speeds[name, batch, frames]
                step_ms = None if fps is None else 1000 * batch / fps
                rows.append([
                    name, batch, frames, fps_text(fps), SKIPPED if fps is None else f"{step_ms:.1f}",
                    ratio_text(fps, baseline), ratio_text(fps, REAL_TIME_FPS * batch),
                ])
    print_table(
        ["model", "batch", "frames", "frames/s (all samples)", "ms/frame step", f"vs {MUSICGEN}",
         "x real time per sample"],
        rows,
    )


def parameter_bytes(model, per_step=True):
    """Bytes of the weights a decoding step reads: every parameter and buffer (int8 weights and their scales are
    buffers), except MusicGen's cross-attention weights, which are never read without encoder states, and (with
    `per_step`) the embedding tables, of which a step reads one row per codebook."""
    embeddings = [module for module in model.modules() if isinstance(module, torch.nn.Embedding)] if per_step else []
    tables = {id(module.weight) for module in embeddings}
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return sum(
        t.numel() * t.element_size() for name, t in tensors if ".encoder_attn." not in name and id(t) not in tables
    )


def print_bound_table(speeds, models, bandwidth, args, device):
    """Measured frames/s (first --frames length) against three ceilings per batch size. The bound: a step reads
    every parameter once, so batch x read bandwidth / parameter bytes. The matmul ceiling: one step's matrix
    products alone, run as our decoding runs them for that batch; where it sits below the bound, the matmul
    kernels, not memory, stop us. The matmul + decays ceiling: the products plus the Mamba layers' decays (the
    matmul ceiling for models without Mamba layers). Returns {(name, batch): (bound, matmul ceiling, matmul +
    decays ceiling)}."""
    frames = args.frames[0]
    rows, ceilings = [], {}
    for batch in args.batches:
        for name, model in models.items():
            bound = batch * bandwidth / parameter_bytes(model)
            mixers = [module for module in model.modules() if isinstance(module, MambaMixer)]
            matmul_seconds = step_seconds(model, batch, device, args.repeats)
            decays_seconds = step_seconds(model, batch, device, args.repeats, mixers) if mixers else matmul_seconds
            fps = speeds[name, batch, frames]
            ceilings[name, batch] = bound, batch / matmul_seconds, batch / decays_seconds
            rows.append([
                name, batch, f"{parameter_bytes(model) / 1e6:.0f}", f"{bound:.1f}", f"{batch / matmul_seconds:.1f}",
                f"{linear_bytes(model) / matmul_seconds / 1e9:.1f}", f"{batch / decays_seconds:.1f}", fps_text(fps),
                ratio_text(bound, fps),
            ])
    print_table(
        [f"model ({frames} frames)", "batch", "parameter MB", "bound frames/s", "matmul ceiling frames/s",
         "matmul GB/s", "matmul + decays ceiling frames/s", "measured frames/s", "bound / measured"],
        rows,
    )
    return ceilings


def decoding_linears(model):
    """The linear layers a decoding step runs, float or int8 (MusicGen's cross-attention ones stay unused)."""
    return [
        module for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Int8Linear)) and ".encoder_attn." not in name + "."
    ]


def linear_bytes(model):
    return sum(module.weight.numel() * module.weight.element_size() for module in decoding_linears(model))


def step_seconds(model, batch, device, repeats, mixers=()):
    """Best time of one product per linear layer of a decoding step with `batch` rows, run as our decoding runs
    them (`few_row_linear`, with weights packed as a generation of that batch packs them), plus the decays
    exp(delta A) of the given Mamba mixers for the step (into one reused buffer: a fused step keeps them in
    cache)."""
    linears = decoding_linears(model)
    inputs = [
        torch.randn(batch, module.in_features, device=device, dtype=next(model.parameters()).dtype)
        for module in linears
    ]
    packed = [packed_weight(module, batch) if type(module) is torch.nn.Linear else None for module in linears]
    exponents = [decay_exponents(mixer.A_log.detach()) for mixer in mixers]
    deltas = [torch.rand(batch, mixer.d_inner, 1, device=device) for mixer in mixers]
    decays = torch.empty(batch, *exponents[0].shape, device=device) if mixers else None  # reused, as a fused step

    def step_work():
        with torch.no_grad():
            for module, x, weight in zip(linears, inputs, packed, strict=True):
                few_row_linear(module, x, weight)
            for delta, exponent in zip(deltas, exponents, strict=True):
                torch.mul(delta, exponent, out=decays).exp2_()

    step_work()
    return best_time(step_work, device, max(repeats, 5))


@contextlib.contextmanager
def busy_core(seconds):
    """A busy process pinned to one core (the last one) for at most `seconds`: the load of another program."""
    core = max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    spin = (
        "import os, time\n"
        f"core = {core}\n"
        "if core is not None: os.sched_setaffinity(0, {core})\n"
        f"end = time.monotonic() + {seconds}\n"
        "while time.monotonic() < end: pass\n"
    )
    process = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.2)  # running before the row starts
        yield
    finally:
        process.kill()
        process.wait()


def print_load_table(name, run, quiet_fps, args, device):
    """`name` at batch 1 under load (a busy process on one core), with the default settings (the thread count
    chosen at generation start) and with one thread, beside its quiet speed from the speed table. The two
    settings take turns, a generation each, for LOAD_ROUNDS rounds (more at a larger --repeats), so that both
    meet the same load and the same drift of the machine, each going first in every other round; the best of
    each counts. Returns {"quiet": ..., "default": ..., "one thread": ...} in frames/s."""
    frames = args.frames[0]
    rounds = max(args.repeats, LOAD_ROUNDS)
    budget = 2 * rounds * 4 * frames / quiet_fps + 30  # bounded: ends even if the rows were 4x slower than quiet
    threads = torch.get_num_threads()
    settings = {"default": threads, "one thread": 1}
    speeds = dict.fromkeys(settings, 0.0)
    with busy_core(budget):
        for round_index in range(rounds):
            turns = list(settings.items())
            for label, count in turns if round_index % 2 == 0 else turns[::-1]:  # neither always goes first
                torch.set_num_threads(count)
                try:
                    speeds[label] = max(speeds[label], time_generation(run, 1, frames, args, device, repeats=1))
                finally:
                    torch.set_num_threads(threads)
    for label in settings:
        print(f"{name} batch 1 under load, {label}: {speeds[label]:.1f} frames/s", file=sys.stderr, flush=True)
    speeds["quiet"] = quiet_fps
    print_table(
        [f"{name}, batch 1, {frames} frames", "frames/s", "vs quiet", "vs one thread under load"],
        [[label, f"{fps:.1f}", ratio_text(fps, quiet_fps), ratio_text(fps, speeds["one thread"], digits=2)]
         for label, fps in (("quiet, default settings", speeds["quiet"]),
                            ("busy core, default settings", speeds["default"]),
                            ("busy core, one thread", speeds["one thread"]))],
    )
    return speeds


def cache_bytes(config, batch, frames, dtype):
    """Bytes of our preallocated cache for `frames` new frames (built on the meta device: nothing allocated)."""
    with torch.device("meta"):
        model = MusicHybridForCausalLM(config).to(dtype)
    cache = model.model.new_cache(batch, frames + config.num_codebooks)
    return sum(t.numel() * t.element_size() for t in cache.tensors())


def musicgen_cache_bytes(model, batch, frames, dtype):
    """MusicGen's self-attention keys and values: every layer, every position."""
    config = model.config
    positions = frames + config.num_codebooks
    return 2 * config.num_hidden_layers * batch * positions * config.hidden_size * dtype.itemsize


def print_memory_table(models, args):
    dtype = getattr(torch, args.dtype)
    rows = []
    for name, model in models.items():
        if name == MUSICGEN:
            per_frame = musicgen_cache_bytes(model, 1, 1, dtype) - musicgen_cache_bytes(model, 1, 0, dtype)
            caches = [musicgen_cache_bytes(model, 1, frames, dtype) for frames in args.memory_frames]
        else:  # the growth over the longest table length: memory caching grows by a slot per segment
            longest = max(args.memory_frames)
            growth = cache_bytes(model.config, 1, longest, dtype) - cache_bytes(model.config, 1, 0, dtype)
            per_frame = growth / longest
            caches = [cache_bytes(model.config, 1, frames, dtype) for frames in args.memory_frames]
        weights = parameter_bytes(model, per_step=False)
        rows.append(
            [name, f"{per_frame / 1024:.1f}", mib(weights)]
            + [f"{mib(cache)} / {mib(weights + cache)}" for cache in caches]
        )
    print_table(
        ["model (batch 1)", "cache KiB per frame", "weights MiB"]
        + [f"cache / weights+cache MiB at {frames} frames" for frames in args.memory_frames],
        rows,
    )


def print_targets(speeds, models, ceilings, args, load_speeds=None, quality=None):
    """The issue's targets for hybrid-116m, eager, compiled and int8, measured in this run at every --frames
    length; with --quantize, the load and quality targets too. Where a speed target lies above the bound or a
    ceiling of its model and batch size, the row says which."""
    hybrid = "hybrid-116m"
    if hybrid not in models or "transformer-162m" not in models:
        return
    dtype = getattr(torch, args.dtype)
    rows = []

    def add(label, frames, wanted, value, met, needed=None, ceilings_of=None):
        verdict = "" if value is None else ("met" if met else "NOT met")
        if value is not None and not met and needed is not None:
            bound, matmul_ceiling, decays_ceiling = ceilings[ceilings_of]
            if needed > bound:
                verdict += f" (needs {needed:.0f} frames/s, above the {bound:.0f} frames/s bound)"
            elif needed > matmul_ceiling:
                verdict += f" (needs {needed:.0f} frames/s, above the {matmul_ceiling:.0f} frames/s matmul ceiling)"
            elif needed > decays_ceiling:
                verdict += (
                    f" (needs {needed:.0f} frames/s, above the {decays_ceiling:.0f} frames/s matmul + decays ceiling)"
                )
        rows.append([label, frames, wanted, SKIPPED if value is None else value, verdict])

    # (model, batch-1 frames/s wanted as a multiple of real time, batch-1 multiple of MusicGen wanted)
    quantized = [
        (name, INT8_REAL_TIME_TARGET, 4)
        for name in (quantized_name(hybrid, args), compiled_name(quantized_name(hybrid, args))) if args.quantize
    ]
    for name, real_time_multiple, musicgen_multiple in [(hybrid, 1, 3), (compiled_name(hybrid), 1, 3), *quantized]:
        if name not in models:
            continue
        for frames in args.frames:
            if 1 in args.batches:
                fps, baseline = speeds[name, 1, frames], speeds[MUSICGEN, 1, frames]
                bound = ceilings[name, 1][0]
                wanted_fps = real_time_multiple * REAL_TIME_FPS
                add(f"{name} batch 1 frames/s", frames, f">= {wanted_fps:.0f} ({real_time_multiple}x real time)",
                    f"{fps:.1f}", fps >= wanted_fps, wanted_fps, ceilings_of=(name, 1))
                if baseline is not None:
                    add(f"{name} batch 1 vs {MUSICGEN}", frames, f">= {musicgen_multiple}x",
                        ratio_text(fps, baseline), fps >= musicgen_multiple * baseline, musicgen_multiple * baseline,
                        ceilings_of=(name, 1))
                add(f"{name} batch 1 bound / measured", frames, "<= 1.5x", ratio_text(bound, fps), bound <= 1.5 * fps)
            if 8 in args.batches and speeds[MUSICGEN, 8, frames] is not None:
                fps, baseline = speeds[name, 8, frames], speeds[MUSICGEN, 8, frames]
                add(f"{name} batch 8 vs {MUSICGEN} (summed)", frames, ">= 3x", ratio_text(fps, baseline),
                    fps >= 3 * baseline, 3 * baseline, ceilings_of=(name, 8))
    if load_speeds is not None:
        name, frames, default = quantized_name(hybrid, args), args.frames[0], load_speeds["default"]
        add(f"{name} batch 1 under load: default settings vs one thread", frames, ">= 1.0x",
            ratio_text(default, load_speeds["one thread"], digits=2), default >= load_speeds["one thread"])
        add(f"{name} batch 1 under load: default settings vs quiet", frames, f">= {LOAD_KEEPS_AT_LEAST}x",
            ratio_text(default, load_speeds["quiet"]), default >= LOAD_KEEPS_AT_LEAST * load_speeds["quiet"])
    for preset, losses in (quality or {}).items():
        add(f"{preset} (trained here) int8 validation CE", "-", "mean within 0.5%, each codebook within 1%",
            "see quality table", quality_is_kept(losses))
    per_frame = {
        name: cache_bytes(models[name].config, 1, 1, dtype) - cache_bytes(models[name].config, 1, 0, dtype)
        for name in (hybrid, "transformer-162m")
    }
    share = per_frame[hybrid] / per_frame["transformer-162m"]
    add(f"{hybrid} cache per frame vs transformer-162m", "any", "<= 1/4", f"{share:.2f}", share <= 0.25)
    print_table(["target", "frames", "wanted", "measured", ""], rows)


if __name__ == "__main__":
    run_cli(main)
