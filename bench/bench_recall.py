"""Long-range recall: does memory caching let a Mamba model recall a motif from beyond its segment?

Synthetic code sequences: filler frames drawn from the first --filler-codes codes, in which a motif of
--motif-frames frames drawn from the other codes (distinct within the motif) appears and recurs after a gap longer
than the memory segment (--segment-length positions). The motif's codes appear nowhere else, so its first frame
in the recurrence points at the earlier occurrence and the rest can be copied from there (an induction-head task).
Three models of about the same size train for the same steps on the same batches: pure Mamba, the same with memory
caching (gated), and an attention hybrid (the last layer attention). Reported, on held-out sequences, the loss on
the recurring frames (after the first frame of the recurrence: ln(motif codes) without recall, 0 with it) and
elsewhere (filler and first occurrences: unpredictable), with 95% bootstrap intervals over the sequences, and the
issue's target: memory caching closes at least half of the gap between pure Mamba and the attention hybrid on the
recurring frames, at under 1.3x the training step time of pure Mamba (the step times are taken in alternating
rounds on fresh copies, after the training). The target is reported, not asserted.

    python -m bench.bench_recall                 # about 8 minutes on one thread of a loaded 2-core CPU
    python -m bench.bench_recall --steps 5000    # longer training
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import add_machine_arguments, new_parser, print_header, print_table, run_cli, setup_machine  # noqa: E402
from comparison.paired_statistics import bootstrap_means, percentile_interval  # noqa: E402
from configuration_music_hybrid import MusicHybridConfig  # noqa: E402
from modeling_music_hybrid import IGNORE_INDEX, MusicHybridForCausalLM, codes_to_model_inputs  # noqa: E402

PURE_MAMBA, MEMORY, HYBRID = "pure Mamba", "Mamba + memory caching (gated)", "attention hybrid"
CONFIDENCE = 0.95


def parse_args():
    parser = new_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2500, help="training steps of each model")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=64, help="frames per sequence")
    parser.add_argument("--segment-length", type=int, default=16, help="memory segment in positions (multiple of 16)")
    parser.add_argument("--motif-frames", type=int, default=16)
    parser.add_argument("--codebooks", type=int, default=1)
    parser.add_argument("--codebook-size", type=int, default=32)
    parser.add_argument("--filler-codes", type=int, default=4,
                        help="filler frames draw from the first this many codes, motifs from the others")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-sequences", type=int, default=256)
    parser.add_argument("--num-resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    add_machine_arguments(parser)
    parser.set_defaults(threads=1)  # models this small run fastest on one thread, above all on a loaded machine
    return parser.parse_args()


def main():
    args = parse_args()
    device = setup_machine(args)
    check_settings(args)
    configs = model_configs(args)
    print_header(
        "Long-range recall: a motif recurring beyond the memory segment", device,
        {"training steps x batch": f"{args.steps} x {args.batch}", "frames per sequence": args.frames,
         "codebooks x codes": f"{args.codebooks} x {args.codebook_size}",
         "filler codes / motif codes": f"{args.filler_codes} / {args.codebook_size - args.filler_codes}",
         "motif frames": args.motif_frames,
         "gap between the occurrences (frames)": f"{min_gap(args)}-{max_gap(args)}",
         "memory segment (positions)": args.segment_length, "layers x d_model": f"{args.layers} x {args.hidden_size}",
         "learning rate (AdamW, cosine)": args.lr, "held-out sequences": args.eval_sequences, "seed": args.seed},
    )
    evaluation = recall_sequences(args, args.eval_sequences, torch.Generator().manual_seed(args.seed + 1))
    results = {}
    for name, config in configs.items():
        start = time.perf_counter()
        model = train(config, args, device, name)
        recurring, elsewhere = per_sequence_losses(model, evaluation, device, args)
        results[name] = dict(parameters=model.num_parameters(), recurring=recurring, elsewhere=elsewhere)
        print(f"{name}: trained and evaluated in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    print("timing the training steps in alternating rounds", file=sys.stderr, flush=True)
    for name, seconds in interleaved_step_seconds(configs, args, device).items():
        results[name]["step_seconds"] = seconds
    print_results(results, args)


def check_settings(args):
    for name in ("steps", "batch", "frames", "motif_frames", "codebooks", "codebook_size", "filler_codes", "layers",
                 "hidden_size", "eval_sequences", "num_resamples"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if args.segment_length <= 0 or args.segment_length % 16:
        raise ValueError("--segment-length must be a positive multiple of 16")
    if args.motif_frames < 2:
        raise ValueError("--motif-frames must be at least 2 (the first frame of a recurrence reveals the motif)")
    if args.motif_frames > args.codebook_size - args.filler_codes:
        raise ValueError(
            f"--motif-frames {args.motif_frames} needs as many distinct motif codes; --codebook-size "
            f"{args.codebook_size} less --filler-codes {args.filler_codes} leaves "
            f"{args.codebook_size - args.filler_codes}"
        )
    if max_gap(args) < min_gap(args):
        raise ValueError(
            f"--frames {args.frames} leaves no room for two {args.motif_frames}-frame motifs more than "
            f"--segment-length {args.segment_length} positions apart: use more frames"
        )


def min_gap(args):
    """Frames between the end of the first occurrence and the start of the second: more than a segment."""
    return args.segment_length + 1


def max_gap(args):
    return min(2 * args.segment_length, args.frames - 2 * args.motif_frames - 1)


def model_configs(args):
    """Three models of about the same size: Mamba layers with MLPs, the same with memory caching, and the same
    with the last layer attention (RoPE)."""
    common = dict(
        num_codebooks=args.codebooks, codebook_size=args.codebook_size, vocab_size=args.codebook_size + 3,
        pad_token_id=args.codebook_size, bos_token_id=args.codebook_size + 1, eos_token_id=args.codebook_size + 2,
        hidden_size=args.hidden_size, num_hidden_layers=args.layers, num_attention_heads=4,
        intermediate_size=2 * args.hidden_size, mamba_mlp=True, mamba_d_state=16, position_embedding_type="rope",
        max_position_embeddings=args.frames + args.codebooks + 1, mamba_implementation="torch",
    )
    mamba_only = ["linear_attention"] * args.layers
    return {
        PURE_MAMBA: MusicHybridConfig(layer_types=mamba_only, **common),
        MEMORY: MusicHybridConfig(
            layer_types=mamba_only, mamba_memory_segment_length=args.segment_length, mamba_memory_aggregation="gated",
            **common,
        ),
        HYBRID: MusicHybridConfig(layer_types=mamba_only[:-1] + ["full_attention"], **common),
    }


def recall_sequences(args, count, generator):
    """(codes (count, K, frames), recurring (count, frames) bool): random filler codes with a random motif of the
    other codes at frame a, recurring at frame b = a + motif + gap; `recurring` marks the frames of the recurrence
    after its first."""
    codes = torch.randint(0, args.filler_codes, (count, args.codebooks, args.frames), generator=generator)
    motif_codes = args.codebook_size - args.filler_codes
    recurring = torch.zeros(count, args.frames, dtype=torch.bool)
    motif = args.motif_frames
    for i in range(count):
        gap = int(torch.randint(min_gap(args), max_gap(args) + 1, (1,), generator=generator))
        first = int(torch.randint(0, args.frames - 2 * motif - gap + 1, (1,), generator=generator))
        second = first + motif + gap
        pattern = torch.stack([
            torch.randperm(motif_codes, generator=generator)[:motif] for _ in range(args.codebooks)
        ]) + args.filler_codes
        codes[i, :, first : first + motif] = pattern
        codes[i, :, second : second + motif] = pattern
        recurring[i, second + 1 : second + motif] = True
    return codes, recurring


def train(config, args, device, name):
    """A fresh model trained on the same batches as every other (seeded)."""
    torch.manual_seed(args.seed)
    model, optimizer = new_model_and_optimizer(config, args, device)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.1)
    data = torch.Generator().manual_seed(args.seed)
    for step in range(1, args.steps + 1):
        loss = training_step(model, optimizer, model_inputs(args, data, config, device))
        schedule.step()
        if step % 100 == 0 or step == args.steps:
            print(f"{name}: step {step}/{args.steps}, loss {loss.item():.3f}", file=sys.stderr, flush=True)
    return model.eval()


def interleaved_step_seconds(configs, args, device, rounds=10, steps_per_round=5):
    """The median training-step time of each model, timed on fresh copies in alternating rounds on one batch: the
    models train one after another, so a change in the machine's load would skew times taken during training."""
    copies = {name: new_model_and_optimizer(config, args, device) for name, config in configs.items()}
    data = torch.Generator().manual_seed(args.seed)
    inputs = {name: model_inputs(args, data, config, device) for name, config in configs.items()}
    seconds = {name: [] for name in configs}
    for _ in range(rounds):
        for name, (model, optimizer) in copies.items():
            for _ in range(steps_per_round):
                start = time.perf_counter()
                training_step(model, optimizer, inputs[name])
                seconds[name].append(time.perf_counter() - start)
    return {name: float(np.median(times)) for name, times in seconds.items()}


def new_model_and_optimizer(config, args, device):
    model = MusicHybridForCausalLM(config).to(device).train()
    return model, torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)


def model_inputs(args, generator, config, device):
    """A batch of fresh recall sequences as model inputs (input_ids and labels)."""
    codes, _ = recall_sequences(args, args.batch, generator)
    return {key: value.to(device) for key, value in codes_to_model_inputs(codes, config).items()}


def training_step(model, optimizer, inputs):
    loss = model(**inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


@torch.no_grad()
def per_sequence_losses(model, evaluation, device, args):
    """Mean cross entropy over codebooks of each held-out sequence on its recurring frames and elsewhere."""
    codes, recurring = evaluation
    recurring_losses, other_losses = [], []
    for start in range(0, codes.shape[0], args.batch):
        batch_codes, batch_recurring = codes[start : start + args.batch], recurring[start : start + args.batch]
        inputs = codes_to_model_inputs(batch_codes, model.config)
        logits = model(inputs["input_ids"].to(device)).logits[:, :, :-1].float().cpu()
        targets = inputs["labels"][:, :, 1:]
        token_losses = torch.nn.functional.cross_entropy(
            logits.transpose(1, -1), targets.clamp(min=0).transpose(1, -1), reduction="none"
        ).transpose(1, -1)
        # codebook k of frame f is predicted at target index f + k (the start column comes first)
        frame_of = torch.arange(targets.shape[2])[None, :] - torch.arange(codes.shape[1])[:, None]
        in_range = (frame_of >= 0) & (frame_of < codes.shape[2]) & (targets != IGNORE_INDEX)
        is_recurring = batch_recurring[:, frame_of.clamp(0, codes.shape[2] - 1)] & in_range
        for mask, out in ((is_recurring, recurring_losses), (in_range & ~is_recurring, other_losses)):
            out.append(((token_losses * mask).sum((1, 2)) / mask.sum((1, 2))).numpy())
    return np.concatenate(recurring_losses), np.concatenate(other_losses)


def print_results(results, args):
    names = list(results)
    rng = np.random.default_rng(args.seed)
    # One set of resamples of the sequences for every model and both kinds of frames: the intervals of the gap
    # fraction below are paired.
    columns = np.stack([results[name][kind] for kind in ("recurring", "elsewhere") for name in names], axis=1)
    replicates = bootstrap_means(columns, np.ones(columns.shape[0]), args.num_resamples, rng)
    low, high = percentile_interval(replicates, CONFIDENCE)
    means = columns.mean(axis=0)
    rows = []
    for i, name in enumerate(names):
        result = results[name]
        j = i + len(names)
        rows.append([
            name, f"{result['parameters'] / 1e3:.1f}k", f"{result['step_seconds'] * 1e3:.0f}",
            f"{means[i]:.3f} [{low[i]:.3f}, {high[i]:.3f}]", f"{means[j]:.3f} [{low[j]:.3f}, {high[j]:.3f}]",
        ])
    percent = round(100 * CONFIDENCE)
    print_table(
        ["model", "parameters", "ms / training step (median, interleaved)", f"loss on recurring frames [{percent}% CI]",
         f"loss elsewhere [{percent}% CI]"],
        rows,
    )
    mamba, memory, hybrid = (names.index(name) for name in (PURE_MAMBA, MEMORY, HYBRID))
    fractions = (replicates[:, mamba] - replicates[:, memory]) / (replicates[:, mamba] - replicates[:, hybrid])
    fraction = (means[mamba] - means[memory]) / (means[mamba] - means[hybrid])
    fraction_low, fraction_high = np.quantile(fractions, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    time_ratio = results[MEMORY]["step_seconds"] / results[PURE_MAMBA]["step_seconds"]
    # A gap exists when the hybrid's loss on the recurring frames is lower than pure Mamba's beyond the noise.
    gap = replicates[:, mamba] - replicates[:, hybrid]
    has_gap = np.quantile(gap, (1 - CONFIDENCE) / 2) > 0
    verdict = ("met" if fraction >= 0.5 else "NOT met") if has_gap else (
        "undefined: the hybrid is not better than pure Mamba on the recurring frames (no gap to close; train longer)"
    )
    print_table(
        ["target", "wanted", "measured", ""],
        [
            ["share of the pure Mamba -> attention hybrid gap on recurring frames closed by memory caching", ">= 0.5",
             f"{fraction:.2f} [{fraction_low:.2f}, {fraction_high:.2f}]", verdict],
            ["training step time, memory caching / pure Mamba", "< 1.3x", f"{time_ratio:.2f}x",
             "met" if time_ratio < 1.3 else "NOT met"],
        ],
    )


if __name__ == "__main__":
    run_cli(main)
