"""Compare two or more checkpoints on the same validation segments: tables, intervals, plots.

Each model is either evaluated here (a checkpoint folder or Hub id, on `--validation-data`)
or read from an `eval_results.json` written by run_clm_audio.py. Every model must have been
scored on exactly the same deterministic segments, so differences can be tested per
segment (paired bootstrap) and corrected for the number of codebooks (Holm).

    python compare_models.py runs/transformer runs/hybrid --validation-data codes/fma --output-dir outputs/comparison
    python compare_models.py runs/transformer/eval_results.json runs/hybrid/eval_results.json --output-dir outputs/comparison

Writes comparison.md (ready for a model card), comparison.json, loss_per_codebook.png and
loss_difference.png into the output directory.

With --generate N every model also continues the same N validation prompts with the same seed; the samples are
written to OUTPUT_DIR/samples/ and their Frechet Audio Distance to the validation audio (DAC encoder latents of the
dataset's codec, with a bootstrap interval over samples) joins the report:

    python compare_models.py runs/transformer runs/hybrid --validation-data codes/fma --output-dir outputs/comparison \
        --generate 16 --generate-seconds 5
"""

import sys
from pathlib import Path

from cli.arguments import ArgumentParser, report_error
from cli.progress import hide_transformers_bars
from comparison.generated_audio import checkpoint_of, fad_of_checkpoints
from comparison.report import (
    REPORT_FILENAMES,
    build_report,
    display_names,
    fad_summary_lines,
    load_or_evaluate,
    write_report,
)


def main(argv=None):
    args = parse_args(argv)
    hide_transformers_bars()
    try:
        report = compare_models(
            args.models,
            output_dir=args.output_dir,
            names=args.names,
            validation_data=args.validation_data,
            split=args.split,
            segment_length=args.segment_length,
            batch_size=args.batch_size,
            max_segments=args.max_segments,
            reference=args.reference,
            num_resamples=args.num_resamples,
            confidence=args.confidence,
            alpha=args.alpha,
            seed=args.seed,
            generate=args.generate,
            generate_seconds=args.generate_seconds,
            prompt_seconds=args.prompt_seconds,
            fad_resamples=args.fad_resamples,
        )
    except (ValueError, FileNotFoundError) as error:
        return report_error(str(error))
    for comparison in report["comparisons"]:
        print(comparison["summary"])
    for line in fad_summary_lines(report.get("fad")):
        print(line)
    print(f"Wrote {', '.join(REPORT_FILENAMES.values())} to {args.output_dir}")
    return 0


def parse_args(argv=None):
    parser = ArgumentParser(
        description="Compare checkpoints per codebook on identical validation segments, with paired bootstrap "
        "intervals and Holm-corrected significance; writes markdown, JSON and PNG plots.",
    )
    parser.add_argument(
        "models",
        nargs="+",
        help="two or more checkpoint folders / Hub ids (evaluated here) or eval_results.json files",
    )
    parser.add_argument("--output-dir", "--output_dir", required=True, help="folder for comparison.md/.json and the plots")
    parser.add_argument("--names", nargs="+", help="display names, one per model (default: folder names)")
    parser.add_argument("--validation-data", "--validation_data", help="codes dataset (save_to_disk folder or Hub id) to evaluate checkpoints on"
    )
    parser.add_argument("--split", default="validation", help="dataset split to evaluate on (default: validation)")
    parser.add_argument("--segment-length", "--segment_length", type=int, default=2048, help="positions per validation segment")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=8, help="segments per evaluation batch")
    parser.add_argument("--max-segments", "--max_segments", type=int, help="evaluate only the first N segments (quick checks)")
    parser.add_argument(
        "--reference", type=int, default=0, help="index of the model every other model is compared against (default: 0)"
    )
    parser.add_argument("--num-resamples", "--num_resamples", type=int, default=10_000, help="bootstrap resamples (default: 10000)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval confidence level (default: 0.95)")
    parser.add_argument(
        "--alpha", type=float, default=0.05, help="family-wise error rate over codebooks (default: 0.05)"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (and sampling seed with --generate)")
    parser.add_argument("--generate", type=int, default=0, metavar="N",
                        help="generate N samples per model (same prompts, same seed) and report their FAD to the "
                        "validation audio (needs checkpoints and --validation-data)")
    parser.add_argument("--generate-seconds", "--generate_seconds", type=float, default=5.0,
                        help="seconds of new audio per sample (default: 5)")
    parser.add_argument("--prompt-seconds", "--prompt_seconds", type=float, default=1.0,
                        help="seconds of a validation track each sample continues (default: 1)")
    parser.add_argument("--fad-resamples", "--fad_resamples", type=int, default=200,
                        help="bootstrap resamples of the FAD interval over samples (default: 200)")
    return parser.parse_args(argv)


def compare_models(
    models,
    output_dir,
    names=None,
    validation_data=None,
    split="validation",
    segment_length=2048,
    batch_size=8,
    max_segments=None,
    reference=0,
    num_resamples=10_000,
    confidence=0.95,
    alpha=0.05,
    seed=0,
    generate=0,
    generate_seconds=5.0,
    prompt_seconds=1.0,
    fad_resamples=200,
):
    """Evaluate or load every model, compare each with the reference, write the report; returns its dict.

    generate: samples per model for the Frechet Audio Distance (0: none); see the module docstring."""
    names = display_names(models, names)
    if not 0 <= reference < len(models):
        raise ValueError(f"--reference must index one of the {len(models)} models, got {reference}")
    if num_resamples < 100:
        raise ValueError(f"--num-resamples must be at least 100, got {num_resamples}")
    if generate:
        check_generation_request(models, validation_data, generate, generate_seconds, prompt_seconds, fad_resamples)
    evaluated = load_or_evaluate(models, names, validation_data, split, segment_length, batch_size, max_segments)
    report = build_report(evaluated, reference, num_resamples, confidence, alpha, seed)
    if generate:
        report["fad"] = fad_of_checkpoints(
            models, names, validation_data, split, Path(output_dir) / "samples", generate, generate_seconds,
            prompt_seconds, seed=seed, num_resamples=fad_resamples, confidence=confidence,
        )
    write_report(report, Path(output_dir))
    return report


def check_generation_request(models, validation_data, generate, generate_seconds, prompt_seconds, fad_resamples):
    """Refuse an impossible --generate before any work."""
    if generate < 2:
        raise ValueError(f"--generate needs at least 2 samples per model (the interval is over samples), not {generate}")
    if validation_data is None:
        raise ValueError("--generate needs --validation-data: its tracks give the prompts and the reference audio")
    if generate_seconds <= 0 or prompt_seconds <= 0:
        raise ValueError("--generate-seconds and --prompt-seconds must be positive")
    if fad_resamples < 0:
        raise ValueError(f"--fad-resamples cannot be negative, got {fad_resamples}")
    for source in models:
        checkpoint_of(source)


if __name__ == "__main__":
    sys.exit(main())
