"""The whole pipeline in one command, offline, in a few minutes on a laptop CPU:

    python demo.py                      # outputs in demo_output/
    python demo.py --pretrained_codec   # with network access: the real DAC 44.1 kHz weights

1. about a minute of procedural music (chords, bass, melody, drums) -> DAC codes (a datasets folder),
2. train a small Mamba/attention hybrid on them (run_clm_audio.py's training, in this process),
3. evaluate it on the validation track (per-codebook loss, top-1 / top-5 accuracy, table + JSON),
4. generate a few seconds of music, unconditionally and as a continuation of a validation track -> WAV files,
5. plot the training curves and the per-codebook metrics -> PNG files.

Offline the codec is DAC's full-size architecture with *random* weights, because the pretrained weights cannot be
downloaded: its codes keep the music's repetitions (so the model has something to learn) but decode to noise-like
audio. With --pretrained_codec (network needed) the same pipeline produces real music codes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

RANDOM_CODEC_WARNING = (
    "WARNING: offline demo: the DAC codec has RANDOM weights (full-size 44.1 kHz architecture, seed 0). Its codes "
    "carry no musical meaning and the generated WAV files will sound like noise. The pipeline, metrics and plots are "
    "real; run with --pretrained_codec (network access needed) for the pretrained descript/dac_44khz codec."
)


@dataclass
class DemoSettings:
    output_dir: str = "demo_output"
    pretrained_codec: bool = False
    small_codec: bool = False  # the shrunk random codec: for the test of this script only
    num_tracks: int = 8
    track_seconds: float = 8.0
    model_preset: str = "hybrid-small"
    segment_length: int = 256
    batch_size: int = 4
    max_steps: int = 100
    learning_rate: float = 2e-3
    sample_seconds: float = 3.0
    seed: int = 0


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    try:
        run_demo(settings)
    except ValueError as error:  # no network for --pretrained_codec, an output folder in use, a bad setting
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def parse_args(argv: list[str] | None) -> DemoSettings:
    defaults = DemoSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=defaults.output_dir, help="where everything is written")
    parser.add_argument("--pretrained_codec", action="store_true",
                        help="encode with the pretrained descript/dac_44khz weights (downloads them)")
    parser.add_argument("--num_tracks", type=int, default=defaults.num_tracks, help="procedural tracks to make")
    parser.add_argument("--track_seconds", type=float, default=defaults.track_seconds, help="length of each track")
    parser.add_argument("--model_preset", default=defaults.model_preset, help="model architecture preset")
    parser.add_argument("--segment_length", type=int, default=defaults.segment_length,
                        help="positions per training crop (frames + 9)")
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size, help="crops per training step")
    parser.add_argument("--max_steps", type=int, default=defaults.max_steps, help="training steps")
    parser.add_argument("--learning_rate", type=float, default=defaults.learning_rate, help="peak learning rate")
    parser.add_argument("--sample_seconds", type=float, default=defaults.sample_seconds,
                        help="seconds of new audio per generated sample")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the music, training and sampling")
    return DemoSettings(**vars(parser.parse_args(argv)))


def run_demo(settings: DemoSettings) -> dict:
    """Run the five stages; returns the paths written (also printed)."""
    started = time.time()
    paths = {
        "codes": os.path.join(settings.output_dir, "codes"),
        "model": os.path.join(settings.output_dir, "model"),
        "samples": os.path.join(settings.output_dir, "samples"),
    }
    if not settings.pretrained_codec:
        print(RANDOM_CODEC_WARNING, flush=True)

    stage(1, f"{settings.num_tracks} procedural tracks x {settings.track_seconds:g} s -> DAC codes")
    dataset = build_codes(settings, paths["codes"])
    validation_track = dataset["validation"][0]["track_id"]

    stage(2, f"training {settings.model_preset} for {settings.max_steps} steps, then 3: evaluation")
    results = train_model(settings, paths["codes"], paths["model"])

    stage(4, f"generating {settings.sample_seconds:g} s of music, unconditionally and continuing {validation_track}")
    paths["wavs"] = generate_samples(settings, paths["model"], paths["samples"], validation_track)

    stage(5, "plots")  # written by the training run next to the model
    paths["plots"] = [os.path.join(paths["model"], name) for name in ("training_curves.png", "codebook_metrics.png")]
    paths["eval_results"] = os.path.join(paths["model"], "eval_results.json")
    print_summary(settings, paths, results, time.time() - started)
    return paths


def stage(number: int, description: str) -> None:
    print(f"\n=== {number}/5 {description}", flush=True)


def build_codes(settings: DemoSettings, codes_dir: str):
    from data.build_dataset import build_dataset

    return build_dataset(
        output_dir=codes_dir,
        source="procedural",
        procedural_tracks=settings.num_tracks,
        procedural_seconds=settings.track_seconds,
        procedural_seed=settings.seed,
        codec="transformers" if settings.pretrained_codec else "random",
        codec_small=settings.small_codec,
        validation_fraction=0.15,
        overwrite=True,
    )


def train_model(settings: DemoSettings, codes_dir: str, model_dir: str) -> dict:
    from run_clm_audio import AudioTrainingArguments, DataTrainingArguments, ModelArguments, run_training

    return run_training(
        ModelArguments(model_preset=settings.model_preset),
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
            eval_steps=max(1, settings.max_steps // 3),
            save_steps=settings.max_steps,
            save_total_limit=1,
            seed=settings.seed,
        ),
    )


def generate_samples(settings: DemoSettings, model_dir: str, samples_dir: str, validation_track: str) -> list[str]:
    """An unconditional sample and a continuation of the validation track's first two seconds (its original audio
    is written as reference.wav, and serves as the prompt)."""
    from data.sources import procedural_tracks
    from generation.pipeline import generate_audio
    from generation.streaming_wav import write_wav

    os.makedirs(samples_dir, exist_ok=True)
    track = next(t for t in procedural_tracks(settings.num_tracks, settings.track_seconds, settings.seed)
                 if t.track_id == validation_track)
    samples, sample_rate = track.fetch()
    reference = os.path.join(samples_dir, "reference.wav")
    prompt = os.path.join(samples_dir, "prompt.wav")
    write_wav(reference, samples, sample_rate)
    write_wav(prompt, samples[: 2 * sample_rate], sample_rate)
    common = dict(duration=settings.sample_seconds, seed=settings.seed, progress=True)
    unconditional = generate_audio(model_dir, samples_dir, prefix="unconditional", **common)
    continuation = generate_audio(model_dir, samples_dir, prompt=prompt, prefix="continuation", **common)
    return [reference, prompt] + [str(path) for path in unconditional.paths + continuation.paths]


def print_summary(settings: DemoSettings, paths: dict, results: dict, seconds: float) -> None:
    evaluation = results["eval"]
    lines = [
        f"\nDone in {seconds / 60:.1f} min. Validation: mean loss {evaluation['mean_loss']:.3f} nats, "
        f"top-1 {evaluation['mean_top1']:.1%}, top-5 {evaluation['mean_top5']:.1%} (table above). Outputs:",
        f"  {paths['codes']}/  tokenized dataset (DAC codes + codec.json), load with data.dataset_io",
        f"  {paths['model']}/  trained model: AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True); "
        "model card README.md, best/, a resumable checkpoint",
        f"  {paths['eval_results']}  per-codebook validation metrics",
        *[f"  {plot}" for plot in paths["plots"]],
        *[f"  {wav}" for wav in paths["wavs"]],
    ]
    if not settings.pretrained_codec:
        lines.append("  (random codec: the WAV files sound like noise; see the warning at the top)")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
