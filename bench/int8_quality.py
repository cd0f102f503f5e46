"""What int8 weights cost in quality: validation cross entropy per codebook of a trained model, float32 vs int8.

Speed does not depend on what was learned, quality does: a model with random weights says nothing about it. So
a small preset is trained here for a few hundred steps on procedural codes (counters with random substitutions,
which it learns well below chance), then scored on held-out codes before and after
`quantize_weights("int8")`. bench_generation --quantize int8 prints this table; the test runs a smaller check.

    python -m bench.int8_quality                        # hybrid-small and transformer-small, 300 steps each
    python -m bench.int8_quality --presets hybrid-tiny --steps 100
"""

import copy
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import add_machine_arguments, new_parser, print_header, print_table, run_cli, setup_machine  # noqa: E402
from configuration_music_hybrid import MusicHybridConfig  # noqa: E402
from modeling_music_hybrid import MusicHybridForCausalLM, codes_to_model_inputs  # noqa: E402

# The quality guard: relative change of the validation cross entropy.
MAX_MEAN_CHANGE, MAX_CODEBOOK_CHANGE = 0.005, 0.01
SYMBOLS = 16  # codes used of the 1024: few enough to learn in a few hundred steps


def parse_args():
    parser = new_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["hybrid-small", "transformer-small"])
    parser.add_argument("--steps", type=int, default=300, help="training steps per preset")
    add_machine_arguments(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    device = setup_machine(args)
    if args.steps <= 0:
        raise ValueError(f"--steps must be positive, got {args.steps}")
    if device.type != "cpu":
        raise ValueError("int8 weights are for CPU decoding: run with --device cpu")
    print_header("int8 quality", device, {"presets": args.presets, "training steps": args.steps})
    print_quality_table({preset: int8_quality(preset, args.steps) for preset in args.presets})


def procedural_codes(batch, frames, generator, substitution=0.15):
    """(batch, 9, frames) codes: codebook k counts up with stride k + 1 from a random start, except that a
    `substitution` share of the codes is drawn at random (the count goes on from the drawn code)."""
    codes = torch.randint(0, SYMBOLS, (batch, 9, frames), generator=generator)
    counted = torch.rand(batch, 9, frames, generator=generator) >= substitution
    strides = torch.arange(1, 10)[None, :]
    for t in range(1, frames):
        codes[:, :, t] = torch.where(counted[:, :, t], (codes[:, :, t - 1] + strides) % SYMBOLS, codes[:, :, t])
    return codes


def train_small_model(preset, steps, frames=48, batch=16, seed=0):
    """A `preset` model trained for `steps` AdamW steps on procedural codes; returns it in eval mode with the
    validation inputs (held-out codes, the model's input layout)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    config = MusicHybridConfig.from_preset(preset)
    model = MusicHybridForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    start = time.perf_counter()
    for step in range(steps):
        loss = model(**codes_to_model_inputs(procedural_codes(batch, frames, generator), config)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if (step + 1) % 50 == 0:
            print(f"{preset}: step {step + 1}/{steps}, loss {loss.item():.3f}, {time.perf_counter() - start:.0f} s",
                  file=sys.stderr, flush=True)
    validation = codes_to_model_inputs(procedural_codes(64, frames, generator), config)
    return model.eval(), validation


@torch.no_grad()
def codebook_losses(model, validation):
    return model(**validation).codebook_losses.float()


def int8_quality(preset, steps):
    """{"float32": per-codebook CE, "int8": per-codebook CE} on held-out codes of a `preset` trained `steps` steps."""
    model, validation = train_small_model(preset, steps)
    float_losses = codebook_losses(model, validation)
    int8_losses = codebook_losses(copy.deepcopy(model).quantize_weights("int8"), validation)
    return {"float32": float_losses, "int8": int8_losses}


def relative_changes(losses):
    """(relative change of the mean CE, relative change per codebook) from float32 to int8."""
    float_losses, int8_losses = losses["float32"], losses["int8"]
    mean_change = (int8_losses.mean() / float_losses.mean() - 1).item()
    return mean_change, (int8_losses / float_losses - 1).tolist()


def quality_is_kept(losses):
    mean_change, codebook_changes = relative_changes(losses)
    return abs(mean_change) <= MAX_MEAN_CHANGE and max(map(abs, codebook_changes)) <= MAX_CODEBOOK_CHANGE


def print_quality_table(results):
    """Per preset: mean validation CE in float32 and int8, the relative change of the mean and of each codebook,
    and whether the guard holds (mean within 0.5%, every codebook within 1%)."""
    num_codebooks = len(next(iter(results.values()))["float32"])
    rows = []
    for preset, losses in results.items():
        mean_change, codebook_changes = relative_changes(losses)
        rows.append(
            [preset, f"{losses['float32'].mean():.4f}", f"{losses['int8'].mean():.4f}", f"{100 * mean_change:+.2f}"]
            + [f"{100 * change:+.2f}" for change in codebook_changes]
            + ["kept" if quality_is_kept(losses) else "NOT kept"]
        )
    print_table(
        ["model (trained here)", "float32 CE", "int8 CE", "mean change %"]
        + [f"cb{k} %" for k in range(num_codebooks)]
        + [f"guard (mean <= {100 * MAX_MEAN_CHANGE:.1f}%, codebook <= {100 * MAX_CODEBOOK_CHANGE:.0f}%)"],
        rows,
    )


if __name__ == "__main__":
    run_cli(main)
