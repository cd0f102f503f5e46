"""Multi-query associative recall (MQAR, Arora et al. 2023, "Zoology"): does memory caching give a recurrent
model back the recall it loses once the key-value pairs outgrow its state?

An MQAR sequence opens with n key-value pairs (keys from the lower half of the vocabulary, values from the upper,
distinct within a sequence), then asks for each key once, at even offsets after the pairs drawn from Zoology's
power law (exponent 0.01: most queries come soon); every other position holds a random token. Only the query
positions are scored (the model must predict the key's value there): loss and accuracy on the answers alone.
Training mixes the pair counts; evaluation reports each count on its own.

Arms, each of `--layers` layers with MLPs: the attention hybrid (the first recurrent kind, then attention), and
for every recurrent kind in the mixer registry (`modeling_music_hybrid.MIXERS`) the pure model without memory,
with gated and with residual memory caching (kinds whose mixer takes the memory settings), and a within-segment
positive control: the first recurrent kind on sequences one memory segment long (pairs and queries inside one
segment), which shows that the training can teach the task at all. Each arm trains at every `--lrs` value with
every seed; the learning rate with the best mean accuracy on a held-out validation split is kept, and its
accuracy on a separate test split is reported with 95% bootstrap intervals over test sequences (each sequence's
accuracy averaged over the seeds: the seeds and arms are paired). Where attention reaches 95%, the model without
memory 80% at the fewest pairs and the gap is 10 points or more, the share of the gap that caching closes is
given, with its paired interval; for gated caching, the weight its softmax puts on the cached segment that holds
the queried pair, against the uniform weight (and the layers' gates).

    python -m bench.bench_mqar --quick                 # about a minute: the settings the test suite runs
    python -m bench.bench_mqar                         # the full run (CPU: hours; see docs/memory-caching.md)
    python -m bench.bench_mqar --device cuda
"""

import contextlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import memory_caching_music_hybrid  # noqa: E402
from bench.machine import (  # noqa: E402
    add_machine_arguments, new_parser, print_header, print_table, run_cli, setup_machine,
)
from comparison.paired_statistics import bootstrap_means, percentile_interval  # noqa: E402
from configuration_music_hybrid import ATTENTION, MIXER_LAYER_TYPES, MusicHybridConfig  # noqa: E402
from modeling_music_hybrid import MIXERS, MusicHybridForCausalLM  # noqa: E402
from training.loop import parameter_groups  # noqa: E402

CONFIDENCE = 0.95
POWER_A = 0.01  # Zoology's power law of the query offsets
AGGREGATIONS = ("gated", "residual")
# Where the share of the gap is defined (the conditions)
ATTENTION_FLOOR, BASE_FLOOR, GAP_FLOOR = 0.95, 0.80, 0.10
QUICK = dict(
    sequence_length=64, segment_length=16, pairs=[4, 8], layers=2, hidden_size=32, d_state=8, vocab=256, steps=12,
    batch=8, lrs=[1e-3, 3e-3, 1e-2], seeds=[0, 1], validation_sequences=8, test_sequences=16, num_resamples=200,
)


def parse_args(argv=None):
    parser = new_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about a minute: the settings of QUICK (the test suite)")
    parser.add_argument("--sequence-length", type=int, default=256)
    parser.add_argument("--segment-length", type=int, default=64, help="memory segment in positions (multiple of 16)")
    parser.add_argument("--pairs", type=int, nargs="+", default=[4, 8, 16, 32, 64], help="key-value pair counts")
    parser.add_argument("--kinds", nargs="+", default=None,
                        help="recurrent mixer kinds to run (default: every registered one)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--d-state", type=int, default=16, help="state size per channel of the Mamba layers")
    parser.add_argument("--vocab", type=int, default=1024, help="tokens (Zoology's default is 8192)")
    parser.add_argument("--steps", type=int, default=1000, help="training steps of each run")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2], help="learning rates swept")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--validation-sequences", type=int, default=64, help="per pair count, to pick the lr")
    parser.add_argument("--test-sequences", type=int, default=256, help="per pair count, reported")
    parser.add_argument("--num-resamples", type=int, default=2000)
    parser.add_argument("--output", default="outputs/bench_mqar.json",
                        help="the JSON results, rewritten after every run")
    add_machine_arguments(parser)
    parser.set_defaults(threads=1)  # models this small run fastest on one thread, above all on a loaded machine
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    return args


def main():
    args = parse_args()
    device = setup_machine(args)
    check_settings(args)
    arms = arm_configs(args)
    print_header(
        "MQAR: associative recall beyond the state's capacity" + (" (--quick)" if args.quick else ""), device,
        {"sequence length / memory segment": f"{args.sequence_length} / {args.segment_length}",
         "key-value pairs (mixed in training)": " ".join(map(str, args.pairs)), "vocabulary": args.vocab,
         "layers x d_model (Mamba d_state)": f"{args.layers} x {args.hidden_size} ({args.d_state})",
         "training steps x batch": f"{args.steps} x {args.batch}", "learning rates": " ".join(map(str, args.lrs)),
         "seeds": " ".join(map(str, args.seeds)),
         "validation / test sequences per pair count": f"{args.validation_sequences} / {args.test_sequences}"},
    )
    started = time.perf_counter()
    runs = {}
    total = len(arms) * len(args.lrs) * len(args.seeds)
    for name, arm in arms.items():
        for lr in args.lrs:
            for seed in args.seeds:
                label = f"[{len(runs) + 1}/{total}] {name}, lr {lr:g}, seed {seed}"
                runs[(name, lr, seed)] = train_and_evaluate(arm, args, lr, seed, device, label)
                write_json(args, arms, runs, None, time.perf_counter() - started)
    summary = summarise(args, arms, runs)
    print_summary(args, arms, summary)
    write_json(args, arms, runs, summary, time.perf_counter() - started)
    print(f"wall time {time.perf_counter() - started:.0f} s; results in {args.output}", file=sys.stderr)


def check_settings(args):
    for name in ("sequence_length", "layers", "hidden_size", "d_state", "vocab", "steps", "batch",
                 "validation_sequences", "test_sequences", "num_resamples"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if args.segment_length <= 0 or args.segment_length % 16:
        raise ValueError("--segment-length must be a positive multiple of 16")
    if min(args.pairs) < 1 or 4 * max(args.pairs) > args.sequence_length:
        raise ValueError(f"--pairs must lie in [1, sequence length / 4 = {args.sequence_length // 4}]: "
                         "the pairs and their queries must fit")
    if 2 * max(args.pairs) > args.vocab // 2:
        raise ValueError(f"--vocab {args.vocab} has too few keys for {max(args.pairs)} distinct pairs")
    if not control_pairs(args):
        raise ValueError(f"--segment-length {args.segment_length} holds none of --pairs (a control needs 4 n <= it)")
    if min(args.lrs) <= 0 or len(set(args.lrs)) != len(args.lrs) or len(set(args.seeds)) != len(args.seeds):
        raise ValueError("--lrs must be positive and distinct, --seeds distinct")


def control_pairs(args):
    """The pair counts whose pairs and queries fit in one memory segment."""
    return [n for n in args.pairs if 4 * n <= args.segment_length]


# --------------------------------------------------------------------------------------------------------------------
# The arms
# --------------------------------------------------------------------------------------------------------------------


def recurrent_kinds():
    """Every registered mixer kind other than attention, in registration order."""
    return [kind for kind in MIXERS if MIXER_LAYER_TYPES[kind] != ATTENTION]


def arm_configs(args):
    """name -> dict(config, sequence_length, pairs, kind, aggregation)."""
    kinds = recurrent_kinds() if args.kinds is None else args.kinds
    unknown = sorted(set(kinds) - set(recurrent_kinds()))
    if unknown:
        raise ValueError(f"--kinds: {unknown} are not registered recurrent kinds; choose from {recurrent_kinds()}")
    common = dict(
        num_codebooks=1, codebook_size=args.vocab, vocab_size=args.vocab + 2, pad_token_id=args.vocab,
        bos_token_id=args.vocab + 1, eos_token_id=None, hidden_size=args.hidden_size,
        num_hidden_layers=args.layers, num_attention_heads=4, intermediate_size=2 * args.hidden_size, mamba_mlp=True,
        mamba_d_state=args.d_state, position_embedding_type="rope", max_position_embeddings=args.sequence_length,
        mamba_implementation="torch", codec=None,
    )

    def arm(kinds_of_layers, sequence_length=args.sequence_length, pairs=args.pairs, aggregation=None):
        memory = {} if aggregation is None else dict(
            mamba_memory_segment_length=args.segment_length, mamba_memory_aggregation=aggregation,
        )
        config = MusicHybridConfig(mixer_types=kinds_of_layers, **common, **memory)
        return dict(config=config, sequence_length=sequence_length, pairs=list(pairs), kind=kinds_of_layers[0],
                    aggregation=aggregation)

    arms = {"attention hybrid": arm([kinds[0]] * (args.layers - 1) + ["attention"])}
    for kind in kinds:
        arms[kind] = arm([kind] * args.layers)
        if takes_memory_caching(kind, arms[kind]["config"], args):
            for aggregation in AGGREGATIONS:
                arms[f"{kind} + {aggregation} caching"] = arm([kind] * args.layers, aggregation=aggregation)
    arms[f"{kinds[0]}, within one segment (control)"] = arm(
        [kinds[0]] * args.layers, sequence_length=args.segment_length, pairs=control_pairs(args)
    )
    return arms


def takes_memory_caching(kind, config, args):
    """Whether the kind's mixer caches memories when the config asks (it then has memory settings)."""
    memory_config = MusicHybridConfig.from_dict(
        {**config.to_dict(), "mamba_memory_segment_length": args.segment_length}
    )
    return getattr(MIXERS[kind](memory_config, 0), "memory", None) is not None


# --------------------------------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------------------------------


def mqar_batch(count, pairs, sequence_length, vocab, generator):
    """`count` MQAR sequences of `pairs` pairs: tokens (count, length), answers (count, length; -1 where no query is
    scored) and the position of each query's value in the context (count, length; -1 elsewhere)."""
    half = vocab // 2
    tokens = torch.randint(0, vocab, (count, sequence_length), generator=generator)
    answers = torch.full((count, sequence_length), -1, dtype=torch.long)
    value_positions = torch.full((count, sequence_length), -1, dtype=torch.long)
    slots = (sequence_length - 2 * pairs) // 2  # queries sit at even offsets after the pairs
    offset_weights = POWER_A * torch.arange(1, slots + 1, dtype=torch.float64) ** (POWER_A - 1)
    for row in range(count):
        keys = torch.randperm(half, generator=generator)[:pairs]
        values = half + torch.randperm(vocab - half, generator=generator)[:pairs]
        tokens[row, 0 : 2 * pairs : 2], tokens[row, 1 : 2 * pairs : 2] = keys, values
        queries = 2 * pairs + 2 * torch.multinomial(offset_weights, pairs, replacement=False, generator=generator)
        tokens[row, queries] = keys
        answers[row, queries] = values
        value_positions[row, queries] = 2 * torch.arange(pairs) + 1
    return tokens, answers, value_positions


def mixed_batch(arm, args, generator):
    """A training batch: each sequence's pair count drawn from the arm's counts."""
    counts = torch.tensor(arm["pairs"])[torch.randint(0, len(arm["pairs"]), (args.batch,), generator=generator)]
    parts = [mqar_batch(int((counts == n).sum()), n, arm["sequence_length"], args.vocab, generator)
             for n in arm["pairs"] if (counts == n).any()]
    return tuple(torch.cat(tensors) for tensors in zip(*parts, strict=True))


def answer_losses(model, tokens, answers):
    """Cross entropy at the query positions (each predicts its value), and the predictions there."""
    logits = model(tokens[:, None]).logits[:, 0]
    scored = answers >= 0
    return F.cross_entropy(logits[scored].float(), answers[scored]), logits.argmax(-1)


# --------------------------------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------------------------------


def train_and_evaluate(arm, args, lr, seed, device, label):
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = MusicHybridForCausalLM(arm["config"]).to(device).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.1), lr=lr, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=args.steps, pct_start=0.1)
    data = torch.Generator().manual_seed(1000 + seed)
    step_seconds = []
    for step in range(1, args.steps + 1):
        tokens, answers, _ = (tensor.to(device) for tensor in mixed_batch(arm, args, data))
        step_start = time.perf_counter()
        loss, _ = answer_losses(model, tokens, answers)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        step_seconds.append(time.perf_counter() - step_start)
        if not math.isfinite(loss.item()):
            break
        if step % max(1, args.steps // 5) == 0 or step == args.steps:
            print(f"{label}: step {step}/{args.steps}, answer loss {loss.item():.3f}", file=sys.stderr, flush=True)
    model.eval()
    result = {
        "validation": evaluate(model, arm, args, "validation", device)["accuracy"],
        **{f"test_{key}": value for key, value in evaluate(model, arm, args, "test", device).items()},
        "step_ms": 1e3 * float(np.median(step_seconds)),
        "gates": [layer.mixer.memory_gate.item() for layer in model.model.layers
                  if hasattr(layer.mixer, "memory_gate")],
    }
    mean_validation = np.mean([np.mean(v) for v in result["validation"].values()])
    print(f"{label}: validation accuracy {mean_validation:.3f} ({time.perf_counter() - start:.0f} s)",
          file=sys.stderr, flush=True)
    return result


def split_generator(split, pairs):
    """The same held-out sequences for every arm, seed and learning rate; validation and test never meet."""
    return torch.Generator().manual_seed({"validation": 1, "test": 2}[split] * 100_003 + pairs)


@torch.no_grad()
def evaluate(model, arm, args, split, device):
    """Per pair count: each sequence's answer accuracy, and (gated caching) the softmax weight on the cached
    segment holding each queried pair beside the uniform weight, summed over queries and layers."""
    count = args.validation_sequences if split == "validation" else args.test_sequences
    accuracy, weights = {}, {"holding": 0.0, "uniform": 0.0, "queries": 0}
    for pairs in arm["pairs"]:
        tokens, answers, value_positions = mqar_batch(
            count, pairs, arm["sequence_length"], args.vocab, split_generator(split, pairs)
        )
        per_sequence = []
        for start in range(0, count, args.batch):
            rows = slice(start, start + args.batch)
            with recorded_memory_weights() as records:
                _, predictions = answer_losses(model, tokens[rows].to(device), answers[rows].to(device))
            scored = answers[rows] >= 0
            correct = (predictions.cpu() == answers[rows]) & scored
            per_sequence.append((correct.sum(1) / scored.sum(1)).numpy())
            if arm["aggregation"] == "gated":
                add_holding_weights(weights, records, value_positions[rows], args.segment_length)
        accuracy[pairs] = np.concatenate(per_sequence).tolist()
    result = {"accuracy": accuracy}
    if arm["aggregation"] == "gated":
        result["weights"] = weights
    return result


@contextlib.contextmanager
def recorded_memory_weights():
    """The aggregation's cached weights (batch, T, n) of every memory layer's call, recorded around
    memory_caching_music_hybrid.memory_weights (the scan looks it up at each call)."""
    records, original = [], memory_caching_music_hybrid.memory_weights

    def recording(live_scores, scores, valid, settings, gate):
        records.append(memory_caching_music_hybrid.aggregation_weights(live_scores, scores, valid, settings)[1].cpu())
        return original(live_scores, scores, valid, settings, gate)

    memory_caching_music_hybrid.memory_weights = recording
    try:
        yield records
    finally:
        memory_caching_music_hybrid.memory_weights = original


def add_holding_weights(totals, records, value_positions, segment_length):
    """Add, for every query whose pair lies in an earlier (cached) segment, the weight on that segment and the
    uniform weight 1 / (cached segments + 1) over the live and cached memories."""
    rows, positions = torch.nonzero(value_positions >= 0, as_tuple=True)
    holding = value_positions[rows, positions] // segment_length
    cached = holding < positions // segment_length
    rows, positions, holding = rows[cached], positions[cached], holding[cached]
    for weights in records:
        totals["holding"] += float(weights[rows, positions, holding].sum())
        totals["uniform"] += float((1.0 / (positions // segment_length + 1)).sum())
        totals["queries"] += len(rows)


# --------------------------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------------------------


def summarise(args, arms, runs):
    """Per arm: the best learning rate on validation (mean over seeds and pair counts), and at it the test
    accuracy per pair count with paired bootstrap intervals, the gap share and the holding-segment weights."""
    best_lr = {
        name: max(args.lrs, key=lambda lr, name=name: np.mean([
            np.mean([np.mean(values) for values in runs[(name, lr, seed)]["validation"].values()])
            for seed in args.seeds
        ]))
        for name in arms
    }
    columns, keys = [], []
    for name, arm in arms.items():
        for pairs in arm["pairs"]:
            seeds = [runs[(name, best_lr[name], seed)]["test_accuracy"][pairs] for seed in args.seeds]
            columns.append(np.mean(seeds, axis=0))  # one value per test sequence: the seeds are paired
            keys.append((name, pairs))
    # the control's sequences differ from the others' (shorter): its columns are resampled with their own draws
    rng = np.random.default_rng(0)
    by_length = {}
    for index, (name, _) in enumerate(keys):
        by_length.setdefault(arms[name]["sequence_length"], []).append(index)
    replicates = np.empty((args.num_resamples, len(keys)))
    for indices in by_length.values():
        values = np.stack([columns[i] for i in indices], axis=1)
        replicates[:, indices] = bootstrap_means(values, np.ones(values.shape[0]), args.num_resamples, rng)
    low, high = percentile_interval(replicates, CONFIDENCE)
    table = {key: dict(mean=float(np.mean(columns[i])), low=float(low[i]), high=float(high[i]))
             for i, key in enumerate(keys)}
    summary = {"best_lr": best_lr, "accuracy": table, "gap_share": {}, "holding_weights": {}, "gates": {},
               "step_ms": {}}
    for name in arms:
        step_ms = [runs[(name, best_lr[name], seed)]["step_ms"] for seed in args.seeds]
        summary["step_ms"][name] = float(np.median(step_ms))
        summary["gates"][name] = [runs[(name, best_lr[name], seed)]["gates"] for seed in args.seeds]
        weights = [runs[(name, best_lr[name], seed)].get("test_weights") for seed in args.seeds]
        if weights[0] is not None and sum(w["queries"] for w in weights):
            queries = sum(w["queries"] for w in weights)
            summary["holding_weights"][name] = dict(
                holding=sum(w["holding"] for w in weights) / queries,
                uniform=sum(w["uniform"] for w in weights) / queries, queries=queries,
            )
    for name, arm in arms.items():
        if arm["aggregation"] is None:
            continue
        base, fewest = arm["kind"], min(arm["pairs"])
        for pairs in arm["pairs"]:
            attention, without = table[("attention hybrid", pairs)]["mean"], table[(base, pairs)]["mean"]
            defined = (attention >= ATTENTION_FLOOR and table[(base, fewest)]["mean"] >= BASE_FLOOR
                       and attention - without >= GAP_FLOOR)
            if not defined:
                continue
            a, b, c = (keys.index(key) for key in (("attention hybrid", pairs), (base, pairs), (name, pairs)))
            shares = (replicates[:, c] - replicates[:, b]) / (replicates[:, a] - replicates[:, b])
            share_low, share_high = np.nanquantile(shares, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
            summary["gap_share"][f"{name} @ {pairs}"] = dict(
                share=(table[(name, pairs)]["mean"] - without) / (attention - without),
                low=float(share_low), high=float(share_high),
            )
    summary["verdict"] = verdict(summary, arms)
    return summary


def verdict(summary, arms):
    control = next(name for name in arms if name.endswith("(control)"))
    control_accuracy = min(summary["accuracy"][(control, n)]["mean"] for n in arms[control]["pairs"])
    if control_accuracy < BASE_FLOOR:
        return (f"inconclusive: the within-segment control reached only {control_accuracy:.0%} (< {BASE_FLOOR:.0%}): "
                "the training does not teach the task; train longer or sweep other learning rates")
    if not summary["gap_share"]:
        return ("no gap share defined: attention, the models without memory or the gap miss their floors "
                f"(attention >= {ATTENTION_FLOOR:.0%}, base >= {BASE_FLOOR:.0%} at the fewest pairs, "
                f"gap >= {GAP_FLOOR:.0%})")
    best_key, best = max(summary["gap_share"].items(), key=lambda item: item[1]["share"])
    closes = "closes part of" if best["low"] > 0 else "does not reliably close"
    return (f"memory caching {closes} the attention gap: best {best_key}, share {best['share']:.2f} "
            f"[{best['low']:.2f}, {best['high']:.2f}]")


def print_summary(args, arms, summary):
    percent = round(100 * CONFIDENCE)
    rows = []
    for name, arm in arms.items():
        cells = []
        for pairs in args.pairs:
            entry = summary["accuracy"].get((name, pairs))
            cells.append("" if entry is None else f"{entry['mean']:.2f} [{entry['low']:.2f}, {entry['high']:.2f}]")
        rows.append([name, f"{summary['best_lr'][name]:g}", f"{summary['step_ms'][name]:.0f}", *cells])
    print_table(["arm", "best lr", "ms / step", *[f"{n} pairs [{percent}% CI]" for n in args.pairs]], rows)
    if summary["gap_share"]:
        print_table(["caching arm @ pairs", f"share of the attention gap closed [{percent}% CI]"],
                    [[key, f"{v['share']:.2f} [{v['low']:.2f}, {v['high']:.2f}]"]
                     for key, v in summary["gap_share"].items()])
    if summary["holding_weights"]:
        print_table(
            ["gated arm", "weight on the cached segment holding the pair", "uniform weight", "queries", "gates"],
            [[name, f"{v['holding']:.3f}", f"{v['uniform']:.3f}", v["queries"],
              " ".join(f"{g:.2f}" for seed in summary["gates"][name] for g in seed)]
             for name, v in summary["holding_weights"].items()],
        )
    print(f"verdict: {summary['verdict']}")


def write_json(args, arms, runs, summary, seconds):
    """Every finished run, and the summary once there is one: an interrupted run keeps what it measured."""
    settings = {key: value for key, value in vars(args).items() if key != "output"}
    document = {
        "settings": settings, "wall_seconds": seconds,
        "arms": {name: dict(kind=arm["kind"], aggregation=arm["aggregation"], pairs=arm["pairs"],
                            sequence_length=arm["sequence_length"]) for name, arm in arms.items()},
        "runs": [dict(arm=name, lr=lr, seed=seed, **result) for (name, lr, seed), result in runs.items()],
    }
    if summary is not None:
        document["summary"] = {
            **summary, "accuracy": [dict(arm=name, pairs=pairs, **value) for (name, pairs), value in
                                    summary["accuracy"].items()],
        }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(args.output).with_suffix(".json.partial")
    temporary.write_text(json.dumps(document, indent=1))
    temporary.replace(args.output)


if __name__ == "__main__":
    run_cli(main)
