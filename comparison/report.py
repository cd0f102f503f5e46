"""The work behind compare_models.py: load or evaluate each model on the same segments, compare each with the
reference (paired bootstrap, Holm), and write comparison.md, comparison.json and the plots."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from comparison.paired_statistics import compare_losses, holm_adjust, mean_interval

RESULTS_FILENAME = "eval_results.json"
REPORT_FILENAMES = {
    "markdown": "comparison.md",
    "json": "comparison.json",
    "loss_plot": "loss_per_codebook.png",
    "difference_plot": "loss_difference.png",
    "position_plot": "loss_by_position.png",
}
_REQUIRED_RESULT_KEYS = (
    "segment_length",
    "segment_ids",
    "codebook_loss",
    "codebook_top1",
    "codebook_top5",
    "mean_loss",
    "mean_top1",
    "mean_top5",
    "perplexity",
    "segment_codebook_loss",
)


@dataclass
class EvaluatedModel:
    name: str
    source: str
    num_parameters: int | None
    results: dict




def load_or_evaluate(models, names, validation_data, split, segment_length, batch_size, max_segments):
    from cli.paths import check_codes_dataset, check_model

    checkpoints = [source for source in models if not _is_results_file(source)]
    if checkpoints and validation_data is None:
        raise ValueError("checkpoints are evaluated here, so --validation-data is required")
    for source in checkpoints:  # every name, before the first evaluation
        check_model(str(source), "model")
    if checkpoints:
        check_codes_dataset(str(validation_data), "--validation-data")
    validation = None
    evaluated = []
    for name, source in zip(names, models):
        if _is_results_file(source):
            results = _read_results(source)
            num_parameters = results.get("num_parameters") or _count_parameters_next_to(source)
        else:
            if validation is None:
                validation = _load_validation(validation_data, split)
            results, num_parameters = evaluate_checkpoint(source, validation, segment_length, batch_size, max_segments)
        evaluated.append(EvaluatedModel(name, str(source), num_parameters, results))
    _check_same_segments(evaluated)
    return evaluated


def evaluate_checkpoint(source, validation, segment_length, batch_size, max_segments):
    """Score one checkpoint with evaluation.evaluate_model; returns (results, parameter count)."""
    import torch

    from modeling_music_hybrid import MusicHybridForCausalLM
    from training.evaluation import evaluate_model

    dataset, identity = validation
    model = MusicHybridForCausalLM.from_pretrained(source)
    if model.config.codec is not None and identity is not None and model.config.codec != identity:
        raise ValueError(
            f"{source} was trained on codes of codec {model.config.codec}, but the validation data uses {identity}"
        )
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    results = evaluate_model(
        model, dataset, segment_length=segment_length, batch_size=batch_size, max_segments=max_segments, progress=True
    )
    return results, model.num_parameters()


def build_report(evaluated, reference, num_resamples, confidence, alpha, seed):
    """Everything the markdown, JSON and plots show, as one JSON-able dict."""
    first = evaluated[0].results
    report = {
        "segment_length": first["segment_length"],
        "num_segments": len(first["segment_ids"]),
        "confidence": confidence,
        "alpha": alpha,
        "num_resamples": num_resamples,
        "seed": seed,
        "reference": evaluated[reference].name,
        "segment_weighting": "frames" if _segment_weights(evaluated[reference]) else "equal",
        "models": [_model_summary(model, num_resamples, confidence, seed) for model in evaluated],
        "comparisons": [],
        # Each model's full evaluation (with per-segment losses), so the comparison can be redone from this file.
        "evaluations": {model.name: model.results for model in evaluated},
    }
    for index, candidate in enumerate(evaluated):
        if index != reference:
            report["comparisons"].append(
                _compare_pair(evaluated[reference], candidate, num_resamples, confidence, alpha, seed)
            )
    return report


def _model_summary(model, num_resamples, confidence, seed):
    results = model.results
    _, ci_low, ci_high = mean_interval(
        results["segment_codebook_loss"],
        weights=_segment_weights(model),
        num_resamples=num_resamples,
        confidence=confidence,
        seed=seed,
    )
    summary = {"name": model.name, "source": model.source, "num_parameters": model.num_parameters}
    for key in ("codebook_loss", "codebook_top1", "codebook_top5", "mean_loss", "mean_top1", "mean_top5", "perplexity"):
        summary[key] = results[key]
    summary["codebook_loss_ci_low"] = ci_low.tolist()
    summary["codebook_loss_ci_high"] = ci_high.tolist()
    if _has_buckets(model):
        intervals = [
            mean_interval(losses, weights, num_resamples=num_resamples, confidence=confidence, seed=seed)
            for losses, weights in _bucket_losses(model)
        ]
        summary["bucket_positions"] = results["bucket_positions"]
        summary["bucket_mean_loss"] = results["bucket_mean_loss"]
        summary["bucket_mean_loss_ci_low"] = [float(low[0]) for _, low, _ in intervals]
        summary["bucket_mean_loss_ci_high"] = [float(high[0]) for _, _, high in intervals]
    return summary


def _compare_pair(reference, candidate, num_resamples, confidence, alpha, seed):
    """Candidate minus reference: per-codebook tests (Holm over codebooks) and the mean over codebooks."""
    losses_reference = np.asarray(reference.results["segment_codebook_loss"], dtype=np.float64)
    losses_candidate = np.asarray(candidate.results["segment_codebook_loss"], dtype=np.float64)
    settings = dict(
        weights=_segment_weights(reference), num_resamples=num_resamples, confidence=confidence, alpha=alpha, seed=seed
    )
    per_codebook = compare_losses(losses_reference, losses_candidate, **settings).to_dict()
    # The mean over codebooks is one extra test outside the codebook family, so it is not Holm-corrected.
    mean = compare_losses(losses_reference.mean(axis=1), losses_candidate.mean(axis=1), **settings).to_dict()
    differences = np.asarray(per_codebook["difference"])
    comparison = {
        "reference": reference.name,
        "candidate": candidate.name,
        "loss_difference": per_codebook,
        "mean_loss_difference": {key: mean[key][0] for key in ("difference", "ci_low", "ci_high", "p_value")},
        "top1_difference": _difference(candidate.results["codebook_top1"], reference.results["codebook_top1"]),
        "top5_difference": _difference(candidate.results["codebook_top5"], reference.results["codebook_top5"]),
        "codebooks_lower_loss": int(np.sum(differences < 0)),
        "codebooks_significantly_lower": int(np.sum((differences < 0) & np.asarray(per_codebook["significant"]))),
        "codebooks_significantly_higher": int(np.sum((differences > 0) & np.asarray(per_codebook["significant"]))),
    }
    comparison["summary"] = _summary_sentence(comparison, len(differences))
    if _has_buckets(reference) and _has_buckets(candidate):
        comparison["bucket_loss_difference"] = _compare_buckets(reference, candidate, settings)
    return comparison


def _compare_buckets(reference, candidate, settings):
    """Candidate minus reference of the mean loss over codebooks in each position bucket: paired bootstrap over
    segments (each segment weighted by its tokens in the bucket), Holm over the buckets."""
    settings = {key: value for key, value in settings.items() if key != "weights"}
    tests = []
    for (losses_reference, weights), (losses_candidate, _) in zip(
        _bucket_losses(reference), _bucket_losses(candidate), strict=True
    ):
        tests.append(compare_losses(losses_reference, losses_candidate, weights=weights, **settings).to_dict())
    p_value_holm = holm_adjust([test["p_value"][0] for test in tests])
    result = {key: [test[key][0] for test in tests] for key in ("difference", "ci_low", "ci_high", "p_value")}
    result["p_value_holm"] = p_value_holm.tolist()
    result["significant"] = (p_value_holm < settings["alpha"]).tolist()
    result["bucket_positions"] = reference.results["bucket_positions"]
    return result


def _has_buckets(model):
    return "segment_bucket_codebook_loss" in model.results


def _bucket_losses(model):
    """Per bucket: the mean over codebooks of each segment's loss there (segments,) and the segment's tokens there
    as weights (a bucket left empty by a track's padded end weighs nothing)."""
    losses = np.asarray(model.results["segment_bucket_codebook_loss"], dtype=np.float64).mean(axis=2)
    weights = np.asarray(model.results["segment_bucket_num_tokens"], dtype=np.float64)
    return [(losses[:, b], weights[:, b]) for b in range(losses.shape[1])]


def _summary_sentence(comparison, num_codebooks):
    candidate, reference = comparison["candidate"], comparison["reference"]
    sentence = (
        f"{candidate} has a lower validation loss than {reference} on {comparison['codebooks_lower_loss']} of "
        f"{num_codebooks} codebooks; significantly lower (Holm-corrected) on "
        f"{comparison['codebooks_significantly_lower']}, significantly higher on "
        f"{comparison['codebooks_significantly_higher']}."
    )
    if comparison["codebooks_significantly_lower"] == num_codebooks:
        sentence += f' The claim "{candidate} wins on every codebook" holds.'
    return sentence


def write_report(report, output_dir):
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(output_dir / REPORT_FILENAMES["json"], json.dumps(report, indent=2).encode())
    _write_atomically(output_dir / REPORT_FILENAMES["markdown"], render_markdown(report).encode())
    plot_losses(report, output_dir / REPORT_FILENAMES["loss_plot"])
    plot_differences(report, output_dir / REPORT_FILENAMES["difference_plot"])
    if all("bucket_mean_loss" in model for model in report["models"]):
        plot_loss_by_position(report, output_dir / REPORT_FILENAMES["position_plot"])


def render_markdown(report):
    percent = round(100 * report["confidence"])
    lines = [
        "## Validation comparison",
        "",
        f"All models are scored on the same {report['num_segments']} validation segments of "
        f"{report['segment_length']} positions. Losses are cross entropy in nats without label smoothing; "
        f"Δ = model − {report['reference']} (negative: lower loss). Intervals are {percent}% paired bootstrap "
        f"intervals over segments ({report['num_resamples']} resamples); * marks a difference significant at "
        f"α = {report['alpha']} after Holm correction over the codebooks.",
        "",
        "| Model | Parameters | Mean loss | Perplexity | Mean top-1 | Mean top-5 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for model in report["models"]:
        lines.append(
            f"| {model['name']} | {_format_parameters(model['num_parameters'])} | {model['mean_loss']:.3f} | "
            f"{model['perplexity']:.1f} | {_format_percent(model['mean_top1'])} | "
            f"{_format_percent(model['mean_top5'])} |"
        )
    models = {model["name"]: model for model in report["models"]}
    for comparison in report["comparisons"]:
        lines += [
            "",
            *_pair_tables(models[comparison["reference"]], models[comparison["candidate"]], comparison, percent),
        ]
    if report.get("fad"):
        lines += ["", *_fad_lines(report["fad"])]
    return "\n".join(lines) + "\n"


def fad_summary_lines(fad):
    """One line per model (FAD with its interval) and the embedding's caveat, for the terminal."""
    if not fad:
        return []
    lines = [
        f"FAD of {name}'s {result['num_samples']} samples to the validation audio: {result['fad']:.4g} "
        f"[{result['ci_low']:.4g}, {result['ci_high']:.4g}] ({round(100 * result['confidence'])}% bootstrap over "
        f"samples; embedding {fad['embedding']})"
        for name, result in fad["models"].items()
    ]
    return lines + [fad_scale_line(fad)] + ([fad["note"]] if fad.get("note") else [])


def fad_scale_line(fad):
    """The floor and ceiling that a model's FAD is read between."""
    floor, ceiling = fad["floor"], fad["ceiling"]
    return (f"FAD scale: floor {floor['fad']:.4g} ({floor['what']}), ceiling {ceiling['fad']:.4g} "
            f"({ceiling['what']}); a model earns credit below the ceiling, and nothing is read below the floor")


def _fad_lines(fad):
    """The audio-level result: FAD of each model's samples to the validation audio (comparison.generated_audio)."""
    any_model = next(iter(fad["models"].values()))
    percent = round(100 * any_model["confidence"])
    lines = [
        "### Frechet Audio Distance of generated samples",
        "",
        f"Each model continued the same {fad['prompt_frames']}-frame validation prompts with the same seed for "
        f"{fad['new_frames']} frames ({fad['num_samples']} samples); the FAD compares the continuations with the "
        f"validation audio (its codes decoded by the same codec), embedding: {fad['embedding']}. Lower is closer; "
        f"{percent}% bootstrap intervals over samples.",
        "",
        "| Model | FAD | " + f"{percent}% CI | Sample frames | Reference frames |",
        "|---|---:|---|---:|---:|",
    ]
    for name, result in fad["models"].items():
        lines.append(
            f"| {name} | {result['fad']:.4g} | [{result['ci_low']:.4g}, {result['ci_high']:.4g}] | "
            f"{result['num_sample_frames']} | {result['num_reference_frames']} |"
        )
    ceiling = fad["ceiling"]
    lines.append(f"| ceiling: {ceiling['what']} | {ceiling['fad']:.4g} | | {ceiling['num_sample_frames']} | "
                 f"{ceiling['num_reference_frames']} |")
    lines.append(f"| floor: {fad['floor']['what']} | {fad['floor']['fad']:.4g} | | | |")
    if fad.get("note"):
        lines += ["", f"**{fad['note']}**"]
    return lines


def _pair_tables(reference, candidate, comparison, percent):
    ref, cand = reference["name"], candidate["name"]
    test = comparison["loss_difference"]
    num_codebooks = len(test["difference"])
    lines = [
        f"### {cand} vs {ref}",
        "",
        f"| Codebook | {ref} Loss | {cand} Loss | Δ | {percent}% CI | p (Holm) |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for k in range(num_codebooks):
        lines.append(
            f"| {_codebook_label(k, num_codebooks)} | {reference['codebook_loss'][k]:.3f} | "
            f"{candidate['codebook_loss'][k]:.3f} | {test['difference'][k]:+.3f}{_significance_mark(test, k)} | "
            f"[{test['ci_low'][k]:+.3f}, {test['ci_high'][k]:+.3f}] | {_format_p(test['p_value_holm'][k])} |"
        )
    mean = comparison["mean_loss_difference"]
    lines += [
        f"| Mean | {reference['mean_loss']:.3f} | {candidate['mean_loss']:.3f} | {mean['difference']:+.3f} | "
        f"[{mean['ci_low']:+.3f}, {mean['ci_high']:+.3f}] | {_format_p(mean['p_value'])} (uncorrected) |",
        "",
        f"Parameters: {ref} {_format_parameters(reference['num_parameters'])}, "
        f"{cand} {_format_parameters(candidate['num_parameters'])}. {comparison['summary']}",
        "",
        f"| Codebook | {ref} Top-1 | {cand} Top-1 | Δ Top-1 | {ref} Top-5 | {cand} Top-5 | Δ Top-5 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k in range(num_codebooks):
        lines.append(
            f"| {_codebook_label(k, num_codebooks)} | {_format_percent(reference['codebook_top1'][k])} | "
            f"{_format_percent(candidate['codebook_top1'][k])} | "
            f"{_format_percent(comparison['top1_difference'][k], sign=True)} | "
            f"{_format_percent(reference['codebook_top5'][k])} | {_format_percent(candidate['codebook_top5'][k])} | "
            f"{_format_percent(comparison['top5_difference'][k], sign=True)} |"
        )
    lines.append(
        f"| Mean | {_format_percent(reference['mean_top1'])} | {_format_percent(candidate['mean_top1'])} | "
        f"{_format_percent(candidate['mean_top1'] - reference['mean_top1'], sign=True)} | "
        f"{_format_percent(reference['mean_top5'])} | {_format_percent(candidate['mean_top5'])} | "
        f"{_format_percent(candidate['mean_top5'] - reference['mean_top5'], sign=True)} |"
    )
    if "bucket_loss_difference" in comparison:
        lines += ["", *_bucket_table(reference, candidate, comparison["bucket_loss_difference"], percent)]
    return lines


def _bucket_table(reference, candidate, test, percent):
    """Mean loss over codebooks by position in the segment: where in the segment the two models differ."""
    ref, cand = reference["name"], candidate["name"]
    lines = [
        f"Loss by position in the segment (mean over codebooks; p Holm-corrected over the "
        f"{len(test['difference'])} buckets):",
        "",
        f"| Positions | {ref} Loss | {cand} Loss | Δ | {percent}% CI | p (Holm) |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for b, (first, last) in enumerate(test["bucket_positions"]):
        mark = "*" if test["significant"][b] else ""
        lines.append(
            f"| {first}-{last} | {reference['bucket_mean_loss'][b]:.3f} | {candidate['bucket_mean_loss'][b]:.3f} | "
            f"{test['difference'][b]:+.3f}{mark} | [{test['ci_low'][b]:+.3f}, {test['ci_high'][b]:+.3f}] | "
            f"{_format_p(test['p_value_holm'][b])} |"
        )
    return lines


def plot_losses(report, path):
    """Per-codebook loss of every model with its bootstrap interval, models side by side."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 4.5))
    num_models = len(report["models"])
    for index, model in enumerate(report["models"]):
        loss = np.asarray(model["codebook_loss"])
        codebooks = np.arange(loss.size) + (index - (num_models - 1) / 2) * 0.8 / num_models
        error = [loss - model["codebook_loss_ci_low"], np.asarray(model["codebook_loss_ci_high"]) - loss]
        axes.errorbar(codebooks, loss, yerr=np.clip(error, 0, None), fmt="o", capsize=3, label=model["name"])
    axes.set_xticks(range(len(report["models"][0]["codebook_loss"])))
    axes.set_xlabel("codebook (0 = coarsest)")
    axes.set_ylabel("validation loss (nats)")
    axes.set_title(f"Per-codebook loss with {round(100 * report['confidence'])}% bootstrap intervals")
    axes.legend()
    _save_figure(figure, path)


def plot_differences(report, path):
    """Loss difference to the reference per codebook, with intervals; filled markers are Holm-significant."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 4.5))
    axes.axhline(0.0, color="grey", linewidth=1)
    num_pairs = len(report["comparisons"])
    for index, comparison in enumerate(report["comparisons"]):
        test = comparison["loss_difference"]
        difference = np.asarray(test["difference"])
        codebooks = np.arange(difference.size) + (index - (num_pairs - 1) / 2) * 0.8 / max(num_pairs, 1)
        error = [difference - test["ci_low"], np.asarray(test["ci_high"]) - difference]
        color = f"C{index}"
        axes.errorbar(codebooks, difference, yerr=np.clip(error, 0, None), fmt="none", capsize=3, color=color)
        significant = np.asarray(test["significant"])
        label = f"{comparison['candidate']} − {comparison['reference']}"
        axes.plot(codebooks, difference, "o", color=color, markerfacecolor="none", label=label)
        axes.plot(codebooks[significant], difference[significant], "o", color=color)
    axes.set_xticks(range(len(report["models"][0]["codebook_loss"])))
    axes.set_xlabel("codebook (0 = coarsest)")
    axes.set_ylabel("loss difference (nats)")
    axes.set_title(
        f"Loss difference with {round(100 * report['confidence'])}% paired bootstrap intervals "
        "(filled: significant after Holm)"
    )
    axes.legend()
    _save_figure(figure, path)


def plot_loss_by_position(report, path):
    """Mean loss over codebooks against position in the segment (bucket centres), one line per model, with
    bootstrap intervals: long-range memory shows as a loss that keeps falling late in the segment."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for model in report["models"]:
        centres = [(first + last) / 2 for first, last in model["bucket_positions"]]
        loss = np.asarray(model["bucket_mean_loss"])
        error = [loss - model["bucket_mean_loss_ci_low"], np.asarray(model["bucket_mean_loss_ci_high"]) - loss]
        axes.errorbar(centres, loss, yerr=np.clip(error, 0, None), fmt="o-", capsize=3, label=model["name"])
    axes.set_xlabel("position in the segment")
    axes.set_ylabel("validation loss (nats, mean over codebooks)")
    axes.set_title(f"Loss by position with {round(100 * report['confidence'])}% bootstrap intervals")
    axes.legend()
    _save_figure(figure, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save_figure(figure, path):
    temporary = path.with_name(path.name + ".tmp")
    figure.tight_layout()
    figure.savefig(temporary, format="png", dpi=120)
    _pyplot().close(figure)
    os.replace(temporary, path)


def _write_atomically(path, content):
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(content)
    os.replace(temporary, path)


def display_names(models, names):
    if len(models) < 2:
        raise ValueError(f"need at least two models to compare, got {len(models)}")
    if names is None:
        names = [_default_name(source) for source in models]
    elif len(names) != len(models):
        raise ValueError(f"--names has {len(names)} entries for {len(models)} models")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"model names must be unique, {duplicates} repeat; pass --names")
    return list(names)


def _default_name(source):
    path = Path(source)
    return path.parent.name if _is_results_file(source) else path.name


def _is_results_file(source):
    return str(source).endswith(".json")


def _read_results(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    missing = [key for key in _REQUIRED_RESULT_KEYS if key not in results]
    if missing:
        raise ValueError(f"{path} lacks {missing}; re-evaluate with the current evaluation.py")
    return results


def _count_parameters_next_to(results_path):
    """Parameter count of the checkpoint saved beside an eval_results.json, without loading its weights."""
    folder = Path(results_path).parent
    if not (folder / "config.json").is_file():
        return None
    import torch

    from configuration_music_hybrid import MusicHybridConfig
    from modeling_music_hybrid import MusicHybridForCausalLM

    with torch.device("meta"):
        model = MusicHybridForCausalLM(MusicHybridConfig.from_pretrained(folder))
    return model.num_parameters()


def _load_validation(validation_data, split):
    from data.dataset_io import load_codes_dataset

    dataset, identity = load_codes_dataset(validation_data)
    if split not in dataset:
        raise ValueError(f"{validation_data} has no split {split!r}; it has {sorted(dataset)}")
    return dataset[split], identity


def _check_same_segments(evaluated):
    first = evaluated[0]
    for other in evaluated[1:]:
        if other.results["segment_length"] != first.results["segment_length"]:
            raise ValueError(
                f"{other.name} was evaluated with segment length {other.results['segment_length']}, "
                f"{first.name} with {first.results['segment_length']}"
            )
        if other.results["segment_ids"] != first.results["segment_ids"]:
            raise ValueError(
                f"{other.name} and {first.name} were evaluated on different validation segments "
                f"({len(other.results['segment_ids'])} vs {len(first.results['segment_ids'])}); "
                "evaluate both on the same data with the same --segment-length and --max-segments"
            )
    for model in evaluated:
        losses = np.asarray(model.results["segment_codebook_loss"])
        if losses.shape != (len(model.results["segment_ids"]), len(model.results["codebook_loss"])):
            raise ValueError(
                f"{model.name}: segment_codebook_loss has shape {losses.shape}, inconsistent with its segments"
            )


def _segment_weights(model):
    """Frames per segment when the evaluation recorded them, so bootstrap means are token-weighted like the table.

    Without them every segment counts equally, which differs from the token-weighted table only through the
    shorter last segment of each track.
    """
    return model.results.get("segment_num_frames")


def _difference(candidate, reference):
    return (np.asarray(candidate) - np.asarray(reference)).tolist()


def _codebook_label(k, num_codebooks):
    if k == 0:
        return "0 (coarsest)"
    return f"{k} (finest)" if k == num_codebooks - 1 else str(k)


def _format_parameters(count):
    return "n/a" if count is None else f"{count / 1e6:.2f}M"


def _format_percent(fraction, sign=False):
    return f"{100 * fraction:+.2f}%" if sign else f"{100 * fraction:.2f}%"


def _significance_mark(test, k):
    return "*" if test["significant"][k] else ""


def _format_p(p_value):
    return "<0.001" if p_value < 0.001 else f"{p_value:.3f}"
