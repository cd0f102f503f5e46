"""Audio collection -> DAC codes as a Hugging Face DatasetDict: the command and the function.

    python -m data.build_dataset --output_dir codes/ --fma_dir fma_small   # + --help
    from data.build_dataset import build_dataset; build_dataset(output_dir="codes/", codec="random")

Flow (data/builder.py): check the options, the source and the codec, then list the tracks, give each process
every n-th one, decode in worker threads, encode on the process's device, commit parts to OUTPUT_DIR/_build as
work is done (a killed run resumes where it stopped), and when every shard is done assemble the splits,
rejects.jsonl, decoder_warnings.jsonl, codec.json and README.md in OUTPUT_DIR. Under `accelerate launch` nothing
waits on a collective: the last process to finish merges, or run the same command with --merge_only.

This module holds only the options and the entry points, so that --help and option errors answer before torch,
transformers and datasets are imported.
"""

import sys
from dataclasses import dataclass, field
from typing import Literal, Optional

from cli.arguments import parse_dataclasses, report_error
from cli.interrupts import treat_sigterm_as_interrupt
from cli.progress import hide_transformers_bars



@dataclass
class BuildArguments:
    output_dir: str = field(metadata={"help": "Folder of the dataset (save_to_disk layout), rejects.jsonl, _build/."})
    source: Optional[Literal["procedural", "folder", "fma", "hf"]] = field(
        default=None, metadata={"help": "Where audio comes from; inferred from the option given, procedural if none."}
    )
    audio_dir: Optional[str] = field(default=None, metadata={"help": "Folder of mp3/ogg/flac/wav files, recursive."})
    fma_dir: Optional[str] = field(default=None, metadata={"help": "FMA archive folder (fma_small/000/000002.mp3)."})
    fma_metadata: Optional[str] = field(
        default=None, metadata={"help": "FMA's tracks.csv (default: fma_metadata/tracks.csv beside --fma_dir, if any)."}
    )
    fma_subset: Optional[Literal["small", "medium", "large", "full"]] = field(
        default=None, metadata={"help": "Which FMA subset --fma_dir holds (default: from its name)."}
    )
    hf_dataset: Optional[str] = field(
        default=None, metadata={"help": "Hugging Face dataset: Hub id, save_to_disk folder, or parquet/arrow files."}
    )
    hf_config: Optional[str] = field(default=None, metadata={"help": "Config name of --hf_dataset."})
    hf_split: str = field(default="train", metadata={"help": "Split of --hf_dataset to read."})
    audio_column: str = field(default="audio", metadata={"help": "Audio column of --hf_dataset."})
    id_column: Optional[str] = field(default=None, metadata={"help": "Track id column (default: the row number)."})
    genre_column: Optional[str] = field(default=None, metadata={"help": "Genre column of --hf_dataset, if any."})
    text_column: Optional[str] = field(
        default=None,
        metadata={"help": "Description column of --hf_dataset (a caption, or a list of tags), if any: the dataset's "
                          "`text` column, for text conditioning."},
    )
    streaming: bool = field(default=False, metadata={"help": "Stream --hf_dataset instead of downloading it first."})
    procedural_tracks: int = field(default=8, metadata={"help": "Number of generated tracks (procedural source)."})
    procedural_seconds: float = field(default=8.0, metadata={"help": "Length of each generated track."})
    procedural_seed: int = field(default=0, metadata={"help": "Seed of the generated music."})
    max_tracks: Optional[int] = field(default=None, metadata={"help": "Use only the first N tracks (a trial run)."})
    codec: Literal["transformers", "dac", "random", "fitted"] = field(
        default="transformers",
        metadata={"help": "transformers: pretrained DacModel; dac: descript-audio-codec; random: seeded weights; "
                          "fitted: a small offline codec fitted to the training split's audio (--codec_seed)."},
    )
    codec_model: Optional[str] = field(
        default=None, metadata={"help": "Hub id or local folder of the DacModel (default: descript/dac_44khz)."}
    )
    codec_revision: Optional[str] = field(default=None, metadata={"help": "Hub revision of --codec_model / dac tag."})
    codec_seed: int = field(default=0, metadata={"help": "Seed of the random codec's weights or of the fit."})
    codec_centroids: int = field(default=1024, metadata={"help": "Centroids per codebook of the fitted codec."})
    codec_small: bool = field(default=False, metadata={"help": "Random codec with shrunk channels (tests)."})
    device: Optional[str] = field(default=None, metadata={"help": "Device (default: this process's GPU, else CPU)."})
    batch_size: Optional[int] = field(
        default=None, metadata={"help": "Windows encoded per forward pass (default: 8 on GPU, 1 on CPU)."}
    )
    window_seconds: float = field(default=30.0, metadata={"help": "Longer audio is encoded in windows of this size."})
    window_overlap_seconds: float = field(default=1.0, metadata={"help": "Overlap of consecutive windows."})
    segment: Literal["whole", "first", "chunks"] = field(
        default="whole", metadata={"help": "Per track keep the whole track, the first N seconds, or N-second chunks."}
    )
    segment_seconds: float = field(default=30.0, metadata={"help": "N for --segment first / chunks."})
    min_seconds: float = field(default=1.0, metadata={"help": "Shorter tracks are rejected as too_short."})
    silence_db: float = field(default=-60.0, metadata={"help": "Tracks with RMS below this (dBFS) are rejected."})
    loudness_lufs: Optional[float] = field(
        default=None, metadata={"help": "Normalise integrated loudness (BS.1770) to this many LUFS; off by default."}
    )
    split_mode: Literal["random", "fma", "file"] = field(
        default="random", metadata={"help": "random: hash of (seed, track id); fma: FMA's split; file: --split_file."}
    )
    validation_fraction: float = field(default=0.1, metadata={"help": "Share of tracks in validation (random)."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the random split."})
    split_file: Optional[str] = field(
        default=None, metadata={"help": "JSON {split: [track ids]} or CSV rows track_id,split (split_mode file)."}
    )
    num_workers: int = field(default=2, metadata={"help": "Threads decoding audio ahead of the codec (0: inline)."})
    part_tracks: int = field(default=64, metadata={"help": "Commit finished work every N tracks."})
    merge_only: bool = field(default=False, metadata={"help": "Only assemble the dataset from finished parts."})
    overwrite: bool = field(default=False, metadata={"help": "Discard earlier work in --output_dir first."})
    push_to_hub: Optional[str] = field(default=None, metadata={"help": "Also push the dataset to this Hub repo id."})
    hub_private: bool = field(default=False, metadata={"help": "Make the pushed dataset private."})


def build_dataset(**kwargs):
    """The command as a function: build_dataset(output_dir=..., **options). Returns the
    DatasetDict, or None in a process that leaves the merge to another."""
    return run(BuildArguments(**kwargs))


def run(args):
    from .builder import run_build

    return run_build(args)


def main(argv=None):
    """Every user mistake (and an unreachable codec) is refused before any work: one `error:` line, exit code 2."""
    try:
        (args,) = parse_dataclasses([BuildArguments], argv, description=__doc__.split("\n\n")[0])
    except ValueError as error:
        sys.exit(report_error(str(error)))
    treat_sigterm_as_interrupt()
    hide_transformers_bars()
    try:
        run(args)
    except ValueError as error:
        sys.exit(report_error(str(error)))
    except KeyboardInterrupt as interrupt:
        from .parts import BuildInterrupted  # imported already when the encoding ran

        if isinstance(interrupt, BuildInterrupted):
            print(interrupt.message(args.output_dir), file=sys.stderr)
        else:  # before or after the encoding
            print(f"interrupted: finished parts are kept in {args.output_dir}/_build (nothing half-written); rerun "
                  "the same command to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
