"""Which int8 product decodes fastest at a few rows: one decoding step's linear layers, per candidate.

A decoding step runs each linear layer of the model once on one row per sample, so its products read every weight
once; at one row the kernel's bandwidth and its fixed cost per call decide. Each candidate replaces the linear
layers of the same preset (random weights), and one step's products run as a generation runs them
(`few_row_linear`, bench_generation's matmul ceiling): the best of at least five timings.

    python -m bench.int8_products                              # hybrid-116m, batch 1
    python -m bench.int8_products --presets transformer-162m --batches 1 8

Candidates: float32 (our few-row products), ours (`Int8Linear` on this CPU's kernel: fbgemm's product for float
rows on x86), torch's dynamic quantized linear (the kernel of torch.ao's `quantize_dynamic`, ours where fbgemm is
missing), the maintained weight-only int8 ATen op `torch._weight_int8pack_mm`, and, where torchao is installed,
its Int8WeightOnly and Int8DynamicActivationInt8Weight layers in eager mode (rows say "skipped" without it).
"""

import copy
import sys
from pathlib import Path

import torch
from torch import nn

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_generation import build_our_model, linear_bytes, step_seconds  # noqa: E402
from bench.machine import (  # noqa: E402
    SKIPPED, add_machine_arguments, new_parser, print_header, print_table, ratio_text, run_cli, setup_machine,
)
from fast_decoding_music_hybrid import (  # noqa: E402
    Int8Linear, can_run_int8_products, dynamic_int8_product, int8_kernel, replace_linear_layers,
)

OURS = "int8: Int8Linear (ours)"
FLOAT32 = "float32: few_row_linear (ours)"


def parse_args():
    parser = new_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["hybrid-116m"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1], help="rows per product (samples decoded)")
    add_machine_arguments(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    device = setup_machine(args)
    if device.type != "cpu":
        raise ValueError("int8 products are for CPU decoding: run with --device cpu")
    if min(args.batches) <= 0:
        raise ValueError("--batches must be positive")
    if not can_run_int8_products():
        engines = torch.backends.quantized.supported_engines
        raise ValueError(f"this torch build has no int8 CPU products (quantized engines: {engines})")
    print_header(
        "int8 products at a few rows", device,
        {"presets": args.presets, "batches": args.batches, "repeats (best counts)": max(args.repeats, 5),
         "torch threads": torch.get_num_threads(), "our int8 kernel": int8_kernel().__name__},
    )
    rows = []
    for preset in args.presets:
        model = build_our_model(preset, device, torch.float32, positions=0)
        candidates = {
            FLOAT32: model,
            OURS: copy.deepcopy(model).quantize_weights("int8"),
            "int8: torch's dynamic quantized linear": replace_linear_layers(copy.deepcopy(model), DynamicInt8Linear),
            "int8: torch._weight_int8pack_mm (weight-only)": replace_linear_layers(
                copy.deepcopy(model), Int8PackLinear
            ),
        }
        for name, config in torchao_configs().items():
            candidates[name] = None if config is None else torchao_quantized(model, config)
        for batch in args.batches:
            times = {name: None if candidate is None else step_seconds(candidate, batch, device, args.repeats)
                     for name, candidate in candidates.items()}
            for name, seconds in times.items():
                # every int8 candidate holds the same int8 weights as ours (torchao's report another element size)
                weight_bytes = linear_bytes(candidates[FLOAT32 if name == FLOAT32 else OURS])
                rows.append([
                    preset, batch, name,
                    SKIPPED if seconds is None else f"{seconds * 1e3:.2f}",
                    SKIPPED if seconds is None else f"{weight_bytes / seconds / 1e9:.1f}",
                    ratio_text(times[FLOAT32], seconds), ratio_text(times[OURS], seconds),
                ])
    print_table(
        ["preset", "batch", "product", "ms per step (products only)", "weight GB/s", "speed vs float32",
         "speed vs ours"],
        rows,
    )


class DynamicInt8Linear(Int8Linear):
    """A candidate: `Int8Linear` on torch's dynamic quantized linear, the kernel behind torch.ao's
    `quantize_dynamic` (ours where fbgemm is missing)."""

    def forward(self, x):
        return self.scaled(dynamic_int8_product(x, self.weight))


class Int8PackLinear(Int8Linear):
    """A candidate: `Int8Linear`'s int8 weights and per-channel scales, multiplied by the maintained weight-only
    ATen op (the rows stay float32)."""

    def forward(self, x):
        out = torch._weight_int8pack_mm(x, self.weight, self.weight_scales)
        return out if self.bias is None else out + self.bias


def torchao_configs():
    """{candidate name: torchao config, or None where torchao is not installed}."""
    names = ("int8: torchao Int8WeightOnly (eager)", "int8: torchao Int8DynamicActivationInt8Weight (eager)")
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
    except ImportError:
        return dict.fromkeys(names)
    return dict(zip(names, (Int8WeightOnlyConfig(), Int8DynamicActivationInt8WeightConfig()), strict=True))


def torchao_quantized(model, config):
    from torchao.quantization import quantize_

    copied = copy.deepcopy(model)
    quantize_(copied, config, filter_fn=lambda module, name: isinstance(module, nn.Linear))
    return copied


if __name__ == "__main__":
    run_cli(main)
