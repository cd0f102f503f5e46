"""How much of the music survives each codec's round trip, in log-mel terms: the fitted codec (per number of
codebooks decoded, so its residual structure shows) beside the small random DAC of the offline demo and a 16 kHz
low-pass round trip (resampled down and up with soxr), on held-out procedural tracks and, where Debian's
singularity-music package is installed (CC-licensed game music), on held-out excerpts of real music.

    python -m bench.bench_codec
    python -m bench.bench_codec --train_tracks 12 --centroids 256   # a quicker, rougher run

Log-mel L1 is the mean absolute difference in dB of 128-band log-mel spectrograms (80 dB range, see
metrics/log_mel.py), correlation the Pearson correlation of the same spectrograms. Each fit is timed."""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import codec_fitted_music_hybrid as fitted  # noqa: E402
from bench.machine import print_header, print_table, run_cli  # noqa: E402
from data.audio import decode_audio, to_mono_44k  # noqa: E402
from data.procedural_music import generate_track  # noqa: E402
from metrics.log_mel import log_mel_distance  # noqa: E402
from processing_music_hybrid import load_codec, random_codec_identity, resample_to_codec_rate  # noqa: E402

REAL_MUSIC_DIR = "/usr/share/games/singularity/music"
CODEBOOK_COUNTS = (1, 3, 6, 9)


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train_tracks", type=int, default=40, help="procedural tracks the codec is fitted on")
    parser.add_argument("--test_tracks", type=int, default=6, help="held-out procedural tracks (another seed)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each procedural track")
    parser.add_argument("--centroids", type=int, default=fitted.CODEBOOK_SIZE, help="centroids per codebook")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fit")
    parser.add_argument("--real_dir", default=REAL_MUSIC_DIR, help="folder of real music (skipped when missing)")
    parser.add_argument("--real_test_tracks", type=int, default=3, help="real tracks held out of the fit")
    parser.add_argument("--real_seconds", type=float, default=30.0, help="excerpt of each real track (from 20 s in)")
    args = parser.parse_args(argv)
    if min(args.train_tracks, args.test_tracks, args.real_test_tracks) < 1 or args.seconds <= 1:
        parser.error("track counts must be >= 1 and --seconds > 1")
    if not 1 <= args.centroids <= fitted.CODEBOOK_SIZE:
        parser.error(f"--centroids must lie in [1, {fitted.CODEBOOK_SIZE}]")
    return args


def main(argv=None):
    args = parse_arguments(argv)
    settings = {"procedural tracks (fit / held out)": f"{args.train_tracks} / {args.test_tracks} x {args.seconds:g} s",
                "centroids per codebook": args.centroids, "fit seed": args.seed}
    real_files = sorted(Path(args.real_dir).rglob("*.ogg")) if Path(args.real_dir).is_dir() else []
    settings["real music"] = f"{len(real_files)} files in {args.real_dir}" if real_files else "not installed"
    print_header("Codec round trips: log-mel L1 (dB) and correlation", _cpu(), settings)

    train = [generate_track(args.seed, index, args.seconds)[0] for index in range(args.train_tracks)]
    test = [generate_track(args.seed + 1, index, args.seconds)[0] for index in range(args.test_tracks)]
    rows = _fitted_rows("procedural", train, test, args)
    dac = load_codec(random_codec_identity(0, small=True), device="cpu")
    dac_audio = [dac.decode(dac.encode([clip])[0][None], clip.size)[0].numpy() for clip in test]
    rows.append(["procedural", "random DAC (small, seed 0), as the offline demo had", 9,
                 *_mean_distance(test, dac_audio)])
    rows.append(["procedural", "16 kHz low-pass round trip (soxr)", "-",
                 *_mean_distance(test, [_low_pass(clip) for clip in test])])
    if real_files:
        excerpts = [_excerpt(path, args.real_seconds) for path in real_files]
        held_out = args.real_test_tracks
        rows += _fitted_rows("real", excerpts[held_out:], excerpts[:held_out], args)
        rows.append(["real", "16 kHz low-pass round trip (soxr)", "-",
                     *_mean_distance(excerpts[:held_out], [_low_pass(clip) for clip in excerpts[:held_out]])])
    else:
        print(f"real music: no .ogg files in {args.real_dir} (Debian: apt-get install singularity-music); skipped\n")
    print_table(["audio", "codec", "codebooks", "log-mel L1 (dB)", "log-mel correlation"], rows)


def _fitted_rows(kind, train, test, args):
    """Fit on `train`, then one row per codebook count on the held-out `test` clips; prints the fit's time."""
    edges = fitted.band_edges()
    started = time.perf_counter()
    with tqdm(total=fitted.NUM_CODEBOOKS, desc=f"fit on {kind} audio", unit="codebook") as bar:
        centroids = fitted.fit_codec([fitted.band_features(clip, edges) for clip in train], args.seed, args.centroids,
                                     progress=lambda stage: bar.update())
    frames = sum(-(-clip.size // fitted.HOP_LENGTH) for clip in train)
    print(f"{kind}: fitted on {len(train)} clips ({frames} frames, at most {fitted.MAX_FIT_FRAMES} used) in "
          f"{time.perf_counter() - started:.1f} s\n", flush=True)
    codec = fitted.FittedCodec(centroids.float().double(), edges, identity={})  # as saved: float32
    codes = [codec.encode([clip])[0] for clip in test]
    rows = []
    for count in CODEBOOK_COUNTS:
        decoded = [codec.decode(clip_codes[None, :count], clip.size)[0].numpy()
                   for clip, clip_codes in zip(test, codes, strict=True)]
        rows.append([kind, f"fitted ({args.centroids} centroids, {len(train)} clips)", count,
                     *_mean_distance(test, decoded)])
    return rows


def _mean_distance(clips, round_trips):
    """Mean (L1 dB, correlation) of each clip against its round trip, formatted."""
    l1, correlation = np.mean([log_mel_distance(clip, other) for clip, other in zip(clips, round_trips, strict=True)], axis=0)
    return f"{l1:.2f}", f"{correlation:.3f}"


def _low_pass(clip):
    import soxr

    return resample_to_codec_rate(soxr.resample(clip, fitted.SAMPLE_RATE, 16000, quality="HQ"), 16000)[: clip.size]


def _excerpt(path, seconds, offset_seconds=20.0):
    """`seconds` of a real track from `offset_seconds` in (past a quiet intro), mono 44.1 kHz."""
    samples, rate = decode_audio(str(path), max_seconds=offset_seconds + seconds)
    mono = to_mono_44k(samples, rate)
    start = min(round(offset_seconds * fitted.SAMPLE_RATE), max(0, mono.size - round(seconds * fitted.SAMPLE_RATE)))
    return mono[start : start + round(seconds * fitted.SAMPLE_RATE)]


def _cpu():
    import torch

    return torch.device("cpu")


if __name__ == "__main__":
    run_cli(main)
