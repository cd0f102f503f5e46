"""The published comparison in miniature, offline, in minutes on a laptop CPU:

    python demo.py                      # outputs in demo_output/
    python demo.py --pretrained_codec   # with network access: the real DAC 44.1 kHz weights

1. procedural music (styles, tempi, keys; each chord held for two sample-identical bars) -> codes of a codec fitted
   to the training tracks (9 codebooks x 1024, DAC's layout; codec_fitted_music_hybrid.py), split by track; a rerun
   reuses the codes,
2. context-free baselines fitted on the training codes (per-codebook unigram, bigram within each codebook), scored on
   the validation segments,
3. transformer-small and hybrid-small (shrunk to fit the budget, see --model_overrides), the hybrid with memory
   caching and with text conditioning (the procedural tracks' descriptions, read by a tiny random T5 encoder), and
   with Mamba-2 or Gated DeltaNet layers in place of Mamba-1, trained on the same codes with the same steps, batch,
   learning rate and seed, each evaluated on the same validation segments,
4. compare_models: per-codebook table, paired bootstrap intervals, Holm correction -> comparison.md/.json + plots;
   with --generate every model continues the same validation prompts with the same seeds -> WAV files, and the
   Frechet Audio Distance of each model's samples to the validation audio (log-mel frames offline), with a bootstrap
   interval over samples, between its floor (two halves of the validation audio) and its ceiling (a context-free
   bigram sampler's decoded codes); then the text-conditioned model writes one sample per validation description
   with classifier-free guidance.

The last lines say what the comparison found. Offline the codec is fitted to the demo's own training audio in
seconds (an offline, small-data codec, not a replacement for DAC): its samples decode to pitched music. --codec
random keeps the shrunk random-weight DAC of the tests, whose codes decode to noise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

from cli.arguments import ArgumentParser, report_error
from cli.progress import hide_transformers_bars

RANDOM_CODEC_WARNING = (
    "WARNING: --codec random: the DAC codec has RANDOM weights (44.1 kHz architecture with shrunk channels, seed 0). "
    "Its codes carry no musical meaning and the generated WAV files will sound like noise. The pipeline, metrics and "
    "plots are real; the default --codec fitted decodes to music offline."
)
CODECS = ("fitted", "random", "pretrained")
# The models compared, all trained alike: name -> (preset, config fields added to --model_overrides, text).
# The two published architectures, then the reference post's next steps on the hybrid: memory caching in its Mamba
# layers (a segment is a quarter of a training crop) and text conditioning on the procedural descriptions (which
# name the style, so they give all a genre would, and the key, mode and tempo besides); then the hybrid with Mamba-2
# or Gated DeltaNet layers in place of Mamba-1.
MODELS = {
    "transformer-small": ("transformer-small", "", False),
    "hybrid-small": ("hybrid-small", "", False),
    "hybrid-small-memory": ("hybrid-small", "mamba_memory_segment_length=32", False),
    "hybrid-small-text": ("hybrid-small", "", True),
    # The field's other recurrent layers in place of Mamba-1 (Zonos / Granite 4 / Nemotron-H; Qwen3-Next, Kimi).
    "hybrid-small-mamba2": ("hybrid-small", "recurrent_mixer=mamba2,mamba2_d_state=64,mamba2_headdim=32", False),
    "hybrid-small-gdn": ("hybrid-small", "recurrent_mixer=gated_deltanet,gdn_num_heads=2,gdn_head_dim=48", False),
}
TEXT_ENCODER_DIR = "text-encoder"  # in --output_dir: the tiny random T5 encoder (offline; see training/text_encoders.py)
GUIDANCE_SCALE = 3.0  # MusicGen's, for the one sample per description of the text-conditioned model
REQUIRED_MARGIN = 0.1  # nats every model must stay below the best context-free baseline
NUM_STAGES = 4


@dataclass
class DemoSettings:
    output_dir: str = "demo_output"
    codec: str = "fitted"
    codec_centroids: int = 128
    num_tracks: int = 36
    track_seconds: float = 5.0
    model_overrides: str = "hidden_size=128,intermediate_size=512,num_hidden_layers=4,max_position_embeddings=1024"
    segment_length: int = 128
    batch_size: int = 8
    max_steps: int = 60
    learning_rate: float = 3e-3
    samples_per_model: int = 4
    prompt_seconds: float = 1.0
    sample_seconds: float = 2.0
    num_resamples: int = 1000
    seed: int = 0
    threads: int = 0


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    hide_transformers_bars()
    try:
        run_demo(settings)
    except ValueError as error:  # no network for --pretrained_codec, codes made with other settings, a bad setting
        return report_error(str(error))
    return 0


def parse_args(argv: list[str] | None) -> DemoSettings:
    defaults = DemoSettings()
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=defaults.output_dir, help="where everything is written")
    parser.add_argument("--codec", choices=CODECS, default=defaults.codec,
                        help="fitted: fitted to the training tracks, offline (default); random: random-weight DAC "
                             "(tests); pretrained: descript/dac_44khz (downloads it)")
    parser.add_argument("--pretrained_codec", dest="codec", action="store_const", const="pretrained",
                        help="the same as --codec pretrained")
    parser.add_argument("--codec_centroids", type=int, default=defaults.codec_centroids,
                        help="centroids per codebook of the fitted codec (up to DAC's 1024; the demo's few minutes "
                             "of audio fill fewer)")
    parser.add_argument("--num_tracks", type=int, default=defaults.num_tracks, help="procedural tracks to make")
    parser.add_argument("--track_seconds", type=float, default=defaults.track_seconds, help="length of each track")
    parser.add_argument("--model_overrides", default=defaults.model_overrides,
                        help="config fields changed in both presets (run_clm_audio's --config_overrides); '' for none")
    parser.add_argument("--segment_length", type=int, default=defaults.segment_length,
                        help="positions per training crop and validation segment (frames + 9)")
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size, help="crops per training step")
    parser.add_argument("--max_steps", type=int, default=defaults.max_steps, help="training steps of each model")
    parser.add_argument("--learning_rate", type=float, default=defaults.learning_rate, help="peak learning rate")
    parser.add_argument("--samples_per_model", type=int, default=defaults.samples_per_model,
                        help="generated samples per model for the FAD")
    parser.add_argument("--prompt_seconds", type=float, default=defaults.prompt_seconds,
                        help="seconds of a validation track each sample continues")
    parser.add_argument("--sample_seconds", type=float, default=defaults.sample_seconds,
                        help="seconds of new audio per sample")
    parser.add_argument("--num_resamples", type=int, default=defaults.num_resamples, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the music, training and sampling")
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help="torch threads for the whole demo; 0: torch's own count or one, whichever runs a "
                             "training-sized product faster at the start (one, when other processes hold a core)")
    return DemoSettings(**vars(parser.parse_args(argv)))


def run_demo(settings: DemoSettings) -> dict:
    """Run the stages on the thread count `settings.threads` asks for; returns the results and the paths written
    (also printed)."""
    import torch

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(demo_threads(settings))
        return run_stages(settings)
    finally:
        torch.set_num_threads(threads)


def demo_threads(settings: DemoSettings) -> int:
    """settings.threads, or for 0 torch's count or one, whichever multiplies the rows of a training step by the
    models' output layer faster now: products split over threads wait for the slowest core, so on a machine whose
    other processes hold a core one thread trains several times faster. Decided once, at the start."""
    import torch

    from configuration_music_hybrid import MusicHybridConfig
    from fast_decoding_music_hybrid import available_cores, fastest_thread_count
    from training.loop import parse_config_overrides

    if settings.threads < 0:
        raise ValueError(f"--threads must be 0 (choose at the start) or a thread count, not {settings.threads}")
    if settings.threads:
        return settings.threads
    threads = torch.get_num_threads()
    if threads == 1 or available_cores() == 1:
        return threads
    config = MusicHybridConfig.from_preset("hybrid-small", **parse_config_overrides(settings.model_overrides))
    head = torch.nn.Linear(config.hidden_size, config.num_codebooks * config.codebook_size, bias=False)
    try:
        chosen = fastest_thread_count(head, settings.batch_size * settings.segment_length, threads)
    finally:  # the calibration sets thread counts itself
        torch.set_num_threads(threads)
    print(f"torch threads: {chosen} of {threads} (the faster on a training-sized product now; --threads to set)",
          flush=True)
    return chosen


def run_stages(settings: DemoSettings) -> dict:
    started = time.time()
    out = settings.output_dir
    paths = {
        "codes": os.path.join(out, "codes"),
        "text_encoder": os.path.join(out, TEXT_ENCODER_DIR),
        "models": {name: os.path.join(out, name) for name in MODELS},
        "comparison": os.path.join(out, "comparison"),
    }
    if settings.codec == "random":
        print(RANDOM_CODEC_WARNING, flush=True)

    stage(1, started, f"{settings.num_tracks} procedural tracks x {settings.track_seconds:g} s -> codes "
                      f"({settings.codec} codec)")
    dataset = build_codes(settings, paths["codes"])

    stage(2, started, "context-free baselines fitted on the training codes, scored on the validation segments")
    baselines = compute_baselines(settings, dataset)
    print(format_baselines(baselines), flush=True)

    evaluations = {}
    save_random_text_encoder(paths["text_encoder"], seed=settings.seed)
    for name, model_dir in paths["models"].items():
        stage(3, started, f"training {name} for {settings.max_steps} steps ({settings.batch_size} x "
                          f"{settings.segment_length} positions), then evaluating it")
        preset, overrides, text = MODELS[name]
        encoder = paths["text_encoder"] if text else None
        evaluations[name] = train_model(settings, preset, overrides, encoder, paths["codes"], model_dir)["eval"]

    stage(4, started, "compare_models: per-codebook differences, paired bootstrap, Holm; then "
                      f"{settings.samples_per_model} samples per model (same prompts and seeds) and their FAD")
    report = compare(settings, paths)
    fad = report["fad"]
    paths["wavs"] = [path for files in fad["sample_files"].values() for path in files]
    paths["description_wavs"] = one_sample_per_description(settings, paths, dataset["validation"])

    results = {"baselines": baselines, "evaluations": evaluations, "comparison": report, "fad": fad}
    print_summary(settings, paths, results, time.time() - started)
    return {"paths": paths, **results}


def stage(number: int, started: float, description: str) -> None:
    """The stage's banner with the minutes since the demo started, so the log shows where the time goes."""
    print(f"\n=== {number}/{NUM_STAGES} [{(time.time() - started) / 60:.1f} min] {description}", flush=True)


def build_codes(settings: DemoSettings, codes_dir: str):
    """The codes dataset; a rerun with the same settings reuses the finished tracks (data.build_dataset resumes)."""
    from data.build_dataset import build_dataset

    return build_dataset(
        output_dir=codes_dir,
        source="procedural",
        procedural_tracks=settings.num_tracks,
        procedural_seconds=settings.track_seconds,
        procedural_seed=settings.seed,
        codec={"pretrained": "transformers"}.get(settings.codec, settings.codec),
        codec_small=settings.codec == "random",
        codec_centroids=settings.codec_centroids,
        validation_fraction=0.15,
    )


def compute_baselines(settings: DemoSettings, dataset) -> dict:
    from comparison.baselines import context_free_baselines
    from processing_music_hybrid import CODEBOOK_SIZE, NUM_CODEBOOKS

    return context_free_baselines(
        dataset["train"], dataset["validation"], settings.segment_length, NUM_CODEBOOKS, CODEBOOK_SIZE
    )


def format_baselines(baselines: dict) -> str:
    lines = ["| baseline | " + " | ".join(f"cb {k}" for k in range(9)) + " | mean |", "|---" * 11 + "|"]
    for name in ("unigram", "bigram"):
        losses = baselines[name]["codebook_loss"]
        lines.append(f"| {name} | " + " | ".join(f"{loss:.3f}" for loss in losses)
                     + f" | {baselines[name]['mean_loss']:.3f} |")
    entropy = baselines["unigram"]["train_entropy"]
    lines.append("| unigram entropy (training codes) | " + " | ".join(f"{h:.3f}" for h in entropy)
                 + f" | {sum(entropy) / len(entropy):.3f} |")
    lines.append(f"Validation cross entropy in nats; the bigram backs off to the unigram with weight "
                 f"{baselines['bigram']['backoff_weight']:g} (the best on the validation codes). Best: "
                 f"{baselines['best']}.")
    return "\n".join(lines)


def save_random_text_encoder(folder: str, seed: int) -> str:
    from training.text_encoders import save_random_text_encoder as save

    return save(folder, seed=seed)


def train_model(settings: DemoSettings, preset: str, extra_overrides: str, text_encoder: str | None, codes_dir: str,
                model_dir: str) -> dict:
    """Train and evaluate one model; with `text_encoder` (a folder) conditioned on the dataset's descriptions."""
    from run_clm_audio import AudioTrainingArguments, DataTrainingArguments, ModelArguments, run_training

    overrides = ",".join(part for part in (settings.model_overrides, extra_overrides) if part)
    return run_training(
        ModelArguments(model_preset=preset, config_overrides=overrides or None,
                       text_conditioning=text_encoder is not None, text_encoder=text_encoder),
        DataTrainingArguments(dataset_name=codes_dir, segment_length=settings.segment_length),
        AudioTrainingArguments(
            output_dir=model_dir,
            overwrite_output_dir=True,
            do_train=True,
            do_eval=True,
            per_device_train_batch_size=settings.batch_size,
            per_device_eval_batch_size=settings.batch_size,
            max_steps=settings.max_steps,
            learning_rate=settings.learning_rate,
            warmup_steps=0.1,
            logging_steps=max(1, settings.max_steps // 12),
            save_steps=settings.max_steps,
            save_total_limit=1,
            seed=settings.seed,
        ),
    )


def compare(settings: DemoSettings, paths: dict) -> dict:
    """compare_models on the saved evaluations, with --generate: the report, its plots, the samples and their FAD."""
    from compare_models import compare_models
    from comparison.report import RESULTS_FILENAME, fad_summary_lines

    results = [os.path.join(model_dir, RESULTS_FILENAME) for model_dir in paths["models"].values()]
    report = compare_models(
        results, output_dir=paths["comparison"], names=list(paths["models"]), validation_data=paths["codes"],
        num_resamples=settings.num_resamples, seed=settings.seed, generate=settings.samples_per_model,
        generate_seconds=settings.sample_seconds, prompt_seconds=settings.prompt_seconds,
    )
    for line in [comparison["summary"] for comparison in report["comparisons"]] + fad_summary_lines(report["fad"]):
        print(line, flush=True)
    return report


def one_sample_per_description(settings: DemoSettings, paths: dict, validation) -> list[str]:
    """One sample of every validation track's description from the text-conditioned models, with classifier-free
    guidance: descriptions the models never trained on (a random encoder knows no language, so what carries over is
    what they share with the training descriptions byte for byte: style, key, tempo)."""
    from generation.pipeline import generate_audio

    descriptions = sorted({text for text in validation["text"] if text})
    files = []
    for name, (_, _, text) in MODELS.items():
        if not text:
            continue
        folder = os.path.join(paths["comparison"], "descriptions")
        result = generate_audio(
            paths["models"][name], folder, num_samples=len(descriptions), duration=settings.sample_seconds,
            seed=settings.seed, text=descriptions, guidance_scale=GUIDANCE_SCALE, prefix=name, progress=False,
        )
        files += result.paths
        print(f"{name}: one {settings.sample_seconds:g} s sample per validation description ({len(descriptions)}), "
              f"guidance scale {GUIDANCE_SCALE:g}, in {folder}:", flush=True)
        for path, description in zip(result.paths, descriptions, strict=True):
            print(f"  {os.path.basename(path)}: {description}", flush=True)
    return files


def print_summary(settings: DemoSettings, paths: dict, results: dict, seconds: float) -> None:
    from comparison.report import fad_scale_line

    report, baselines, fad = results["comparison"], results["baselines"], results["fad"]
    percent = round(100 * report["confidence"])
    best = baselines[baselines["best"]]["mean_loss"]
    lines = [f"\nDone in {seconds / 60:.1f} min. Outputs:",
             f"  {paths['codes']}/  tokenized dataset (codes + codec.json), load with data.dataset_io",
             *[f"  {model_dir}/  trained model, eval_results.json, training_curves.png, codebook_metrics.png"
               for model_dir in paths["models"].values()],
             f"  {paths['comparison']}/  comparison.md, comparison.json, loss_per_codebook.png, loss_difference.png",
             f"  {paths['comparison']}/samples/  {len(paths['wavs'])} WAV files (continuations of validation prompts)",
             f"  {paths['comparison']}/descriptions/  {len(paths['description_wavs'])} WAV files (one per validation "
             "description, guided)",
             "",
             f"Result on {report['num_segments']} validation segments of {report['segment_length']} positions "
             f"({settings.max_steps} steps each; {percent}% bootstrap intervals over segments):"]
    for model in report["models"]:
        margin = best - model["mean_loss"]
        verdict = "makes" if margin >= REQUIRED_MARGIN else "does NOT make"
        lines.append(
            f"  {model['name']} ({model['num_parameters'] / 1e6:.2f}M parameters): mean validation loss "
            f"{model['mean_loss']:.3f} nats, {margin:+.3f} below the best context-free baseline "
            f"({baselines['best']}, {best:.3f}): {verdict} the required {REQUIRED_MARGIN} nats"
        )
    for name, evaluation in results["evaluations"].items():
        for key, information in evaluation.items():
            if key.endswith("_information") and information.get("num_segments"):
                low, high = information["mean_information_ci"]
                value = information.get("described_as", key)
                lines.append(f"  {name}: {key.removesuffix('_information')} information (null-{value} minus "
                             f"true-{value} loss) {information['mean_information']:+.4f} nats [{low:+.4f}, "
                             f"{high:+.4f}] over {information['num_segments']} segments")
    for comparison in report["comparisons"]:
        mean = comparison["mean_loss_difference"]
        lines.append(
            f"  {comparison['candidate']} - {comparison['reference']}: {mean['difference']:+.3f} nats "
            f"[{mean['ci_low']:+.3f}, {mean['ci_high']:+.3f}], p = {mean['p_value']:.3g}. {comparison['summary']}"
        )
    for name, result in fad["models"].items():
        lines.append(
            f"  FAD of {name} to the validation audio: {result['fad']:.4g} [{result['ci_low']:.4g}, "
            f"{result['ci_high']:.4g}] ({result['num_samples']} samples; embedding {fad['embedding']})"
        )
    lines.append(f"  {fad_scale_line(fad)}")
    if fad["note"]:
        lines.append(f"  {fad['note']}")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
