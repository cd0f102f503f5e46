"""Throughput of the data pipeline: seconds of audio encoded per second of wall time, and the
share of that time spent outside the codec's forward pass (decoding, resampling, batching,
writing). The target, under 15% outside, applies on a GPU; on CPU the codec dominates.

    python bench/bench_encode.py                       # 4 x 10 s mp3, full-size random DAC
    python bench/bench_encode.py --tracks 64 --seconds 30 --device cuda --batch_size 8

It writes procedural music as audio files first, so decoding is measured as in real use."""

import argparse
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.build_dataset import BuildArguments, run  # noqa: E402
from processing_music_hybrid import SAMPLE_RATE  # noqa: E402
from data.procedural_music import generate_track  # noqa: E402

FORMATS = {"mp3": ("MP3", "MPEG_LAYER_III"), "ogg": ("OGG", "VORBIS"), "flac": ("FLAC", None), "wav": ("WAV", None)}


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--tracks", type=int, default=4, help="number of tracks")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each track")
    parser.add_argument("--format", choices=sorted(FORMATS), default="mp3", help="file format the tracks are read from")
    parser.add_argument("--small_codec", action="store_true", help="the shrunk random DAC instead of the full-size one")
    parser.add_argument("--device", default=None, help="device (default: GPU if present, else CPU)")
    parser.add_argument("--batch_size", type=int, default=None, help="windows per forward pass (default: 8 GPU, 1 CPU)")
    parser.add_argument("--num_workers", type=int, default=2, help="decoding threads")
    parser.add_argument("--window_seconds", type=float, default=30.0, help="encoder window")
    args = parser.parse_args(argv)
    if args.tracks < 1 or args.seconds < 1:
        parser.error("--tracks must be >= 1 and --seconds >= 1")
    return args


@contextmanager
def timed(owner, name, seconds, key):
    """Add the time spent in owner.name(...) to seconds[key] (waiting for the GPU to finish)."""
    original = getattr(owner, name)

    def timed_call(*args, **kwargs):
        start = time.perf_counter()
        output = original(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds[key] += time.perf_counter() - start
        return output

    setattr(owner, name, timed_call)
    try:
        yield
    finally:
        setattr(owner, name, original)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv=None):
    args = parse_arguments(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as scratch:
        audio_dir = Path(scratch) / "audio"
        audio_dir.mkdir()
        audio_format, subtype = FORMATS[args.format]
        for index in range(args.tracks):
            samples, _ = generate_track(seed=0, index=index, seconds=args.seconds)
            path = audio_dir / f"{index:05d}.{args.format}"
            soundfile.write(path, samples, SAMPLE_RATE, format=audio_format, subtype=subtype)
        build = BuildArguments(
            output_dir=str(Path(scratch) / "codes"),
            audio_dir=str(audio_dir),
            codec="random",
            codec_small=args.small_codec,
            device=device,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            window_seconds=args.window_seconds,
        )
        from transformers import DacModel

        import data.builder

        seconds = {"forward": 0.0, "codec_load": 0.0}
        forward_timer = timed(DacModel, "encode", seconds, "forward")
        with forward_timer, timed(data.builder, "load_codec", seconds, "codec_load"):
            start = time.perf_counter()
            run(build)
            wall = time.perf_counter() - start - seconds["codec_load"]  # a one-off cost, not throughput
    audio_seconds = args.tracks * args.seconds
    machine = f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    machine += f", threads {torch.get_num_threads()}"
    if device.startswith("cuda"):
        machine += f", {torch.cuda.get_device_name(torch.device(device))}"
    print(f"machine: {machine}")
    print(
        f"settings: {args.tracks} x {args.seconds:g} s {args.format}, "
        f"codec {'small' if args.small_codec else 'full-size'} random DAC, device {device}, "
        f"batch {build.batch_size or 'default'}, workers {args.num_workers}, "
        f"window {args.window_seconds:g} s"
    )
    print(f"audio encoded: {audio_seconds / wall:.2f} s of audio per second ({audio_seconds:g} s in {wall:.1f} s)")
    print(
        f"time outside the codec forward pass: {100 * (1 - seconds['forward'] / wall):.1f}% "
        f"(forward {seconds['forward']:.1f} s of {wall:.1f} s; codec loading, {seconds['codec_load']:.1f} s, excluded)"
    )


if __name__ == "__main__":
    main()
