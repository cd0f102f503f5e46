"""GPU readiness in one run: the checks this project cannot make on its CPU-only machines, as one table.

    python -m bench.gpu_readiness              # on a CUDA machine: under 8 minutes with torch, transformers, pytest
    python -m bench.gpu_readiness --dry-run    # anywhere: the same rows on CPU with a tiny preset (checks the script)

Rows: (1) the kernel tests (tests/test_mamba_kernels.py: the real mamba-ssm / causal-conv1d kernels against the
PyTorch path, where they are installed), (2) the CUDA-graph test (tests/test_generation_speed_paths.py, the
replayed step against eager decoding), (3) batch-1 decoding of hybrid-116m with the kernels (where installed) and
compiled steps replayed as CUDA graphs, against the target of 10x real time, (4) one training step of hybrid-116m
with the kernels (2048 positions, AdamW, bf16 autocast), whose loss must be finite, and (5) the same step of
hybrid-mc-116m (memory caching: its memory layers run the PyTorch chunked scan, which the issue asks to measure on
CUDA), with its time against (4)'s. Steps are timed after one untimed step. Without mamba-ssm and
causal-conv1d (`pip install ".[cuda]"`) the kernel rows are skipped and the other rows run the PyTorch Mamba path;
the table says which. The first --dry-run or CUDA run compiles the step (tens of seconds; cached by inductor).
"""

import subprocess
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import new_parser, print_header, print_table, run_cli, synchronize  # noqa: E402
from configuration_music_hybrid import MusicHybridConfig  # noqa: E402
from mamba_music_hybrid import mamba_kernels  # noqa: E402
from modeling_music_hybrid import MusicHybridForCausalLM, codes_to_model_inputs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL_TIME_FPS = 44100 / 512
GPU_REAL_TIME_TARGET = 10  # hybrid-116m at batch 1, CUDA graphs
# (preset, its memory-caching variant, decoded frames, training positions) on a GPU and in a dry run on CPU
SETTINGS = {"cuda": ("hybrid-116m", "hybrid-mc-116m", 512, 2048), "dry run": ("hybrid-tiny", "hybrid-mc-tiny", 16, 64)}


def parse_args():
    parser = new_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="run every row on CPU with a tiny preset")
    return parser.parse_args()


def main():
    args = parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        raise ValueError("no CUDA device here: this script checks a GPU machine (use --dry-run to try it on CPU)")
    device = torch.device("cpu" if args.dry_run else "cuda")
    preset, memory_preset, frames, positions = SETTINGS["dry run" if args.dry_run else "cuda"]
    kernels = mamba_kernels() is not None and device.type == "cuda"
    print_header("GPU readiness", device, {
        "mode": "dry run on CPU (tiny preset)" if args.dry_run else "CUDA",
        "mamba-ssm / causal-conv1d kernels": "installed" if kernels else "not in use (pip install '.[cuda]')",
        "decoding": f"{preset}, batch 1, {frames} frames, compiled step"
        + (" + CUDA graphs" if device.type == "cuda" else ""),
        "training step": f"{preset} and {memory_preset}, batch 1, {positions} positions",
    })
    plain_row, plain_seconds = training_row(preset, positions, device, kernels)
    memory_row, memory_seconds = training_row(memory_preset, positions, device, kernels)
    memory_row[-1] = f"{memory_seconds / plain_seconds:.2f}x the {preset} step"
    rows = [
        pytest_row("kernel tests", "tests/test_mamba_kernels.py", None, args.dry_run),
        pytest_row("CUDA-graph test", "tests/test_generation_speed_paths.py", "cuda_graph", args.dry_run),
        decoding_row(preset, frames, device, kernels),
        plain_row,
        memory_row,
    ]
    print_table(["check", "result", "measured", "wanted", ""], rows)


def pytest_row(label, path, selection, dry_run):
    """Run a test file (or its tests matching `selection`) in a fresh process; a row with the outcome counts."""
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", path]
    if selection:
        command += ["-k", selection]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr.strip()[-200:]
    verdict = "passed" if result.returncode == 0 else "FAILED"
    if dry_run and result.returncode == 0 and "skipped" in summary and "passed" not in summary:
        verdict = "skipped on CPU"
    return [label, verdict, summary, "no failures", f"{time.perf_counter() - start:.0f} s"]


def build_model(preset, device):
    torch.manual_seed(0)
    return MusicHybridForCausalLM(MusicHybridConfig.from_preset(preset)).to(device)


def decoding_row(preset, frames, device, kernels):
    """Batch-1 frames/s of the compiled step (as CUDA graphs on a GPU), after a warm-up generation."""
    model = build_model(preset, device).eval()
    model.compile_decoding(cuda_graph=True)
    model.generate(max_new_tokens=16)  # compiles the step, records the graph
    synchronize(device)
    start = time.perf_counter()
    codes = model.generate(max_new_tokens=frames)
    synchronize(device)
    fps = frames / (time.perf_counter() - start)
    shape_ok = tuple(codes.shape) == (1, model.config.num_codebooks, frames)
    multiple = fps / REAL_TIME_FPS
    met = shape_ok and multiple >= GPU_REAL_TIME_TARGET
    verdict = ("met" if met else "NOT met") if device.type == "cuda" else ("ran" if shape_ok else "FAILED")
    path = "kernels + CUDA graphs" if kernels else ("CUDA graphs, PyTorch Mamba" if device.type == "cuda"
                                                     else "compiled, CPU")
    return [f"{preset} batch-1 decoding ({path})", verdict, f"{fps:.1f} frames/s = {multiple:.1f}x real time",
            f">= {GPU_REAL_TIME_TARGET}x real time", "on CPU: not the GPU target" if device.type == "cpu" else ""]


def training_row(preset, positions, device, kernels):
    """The second of two forward + backward + AdamW steps (bf16 autocast on a GPU) on random codes (the first
    initialises kernels and allocator); the loss must be finite. Returns the row and the step's seconds."""
    model = build_model(preset, device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    frames = positions - model.config.num_codebooks
    codes = torch.randint(0, model.config.codebook_size, (1, model.config.num_codebooks, frames), device=device)
    inputs = codes_to_model_inputs(codes, model.config)
    for _ in range(2):
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        synchronize(device)
    seconds = time.perf_counter() - start
    finite = bool(torch.isfinite(loss))
    path = "kernels" if kernels else "PyTorch Mamba"
    if model.config.mamba_memory:
        path += ", memory layers on the PyTorch scan" if kernels else ", memory caching"
    row = [f"{preset} training step ({path})", "passed" if finite else "FAILED",
           f"{seconds:.2f} s, loss {loss.item():.3f}", "finite loss", ""]
    return row, seconds


if __name__ == "__main__":
    run_cli(main)
