"""Generate music with a music-hybrid checkpoint and write 44.1 kHz WAV files.

    python generate_audio.py runs/hybrid --output-dir samples --num-samples 4 --duration 10
    python generate_audio.py runs/hybrid --output-dir samples --prompt intro.mp3 --duration 20
    python generate_audio.py runs/transformer --output-dir samples --duration 300 --long-form window
    python generate_audio.py runs/hybrid --output-dir out --duration 60 --stream --top-k 250 250 250 100 50 50 50 50 50
    python generate_audio.py runs/hybrid --output-dir samples --duration 60 --quantize int8     # fastest on CPU
    python generate_audio.py runs/genres --list-genres
    python generate_audio.py runs/genres --output-dir samples --genre Rock --guidance-scale 3.0 --num-samples 2
    python generate_audio.py runs/genres --output-dir samples --genre Rock Jazz Folk --num-samples 3
    python generate_audio.py runs/text --output-dir samples --text "a calm piano ballad in D minor" --num-samples 2
    python generate_audio.py runs/text --output-dir samples --text "fast electronic drums" "a slow ballad" --num-samples 2

Codes are decoded with the codec recorded in the checkpoint's config, in overlapping chunks
while they are generated; each WAV file is appended to as the audio becomes final. With
--stream the files are written in place and stay valid WAVs at every moment (listen while
it renders, keep what was made if it is killed); without it each file appears, complete,
only when its sample is done.

Long form (beyond the model's positions): "window" restarts from the last --context-window
frames whenever the positions run out (any model); "sliding" lets attention see only the
last --context-window positions while the Mamba state carries on (models without learned
positions).
"""

import sys

from cli.arguments import ArgumentParser, report_error
from cli.interrupts import treat_sigterm_as_interrupt
from cli.paths import check_model
from cli.progress import hide_transformers_bars
from generation.request import DTYPE_NAMES, LONG_FORM_MODES, QUANTIZE_MODES, check_options


def main(argv=None):
    """Every user mistake is refused before any work (one `error:` line, exit code 2, nothing written)."""
    args = parse_args(argv)
    try:
        check_model(args.model, "the model")  # a mistyped folder answers at once, before torch is imported
    except ValueError as error:
        return report_error(str(error))
    if args.list_genres:
        return list_genres(args.model)
    options = dict(
        num_samples=args.num_samples,
        duration=args.duration,
        prompt=args.prompt,
        continuation_only=args.continuation_only,
        temperature=one_or_list(args.temperature),
        top_k=one_or_list(args.top_k),
        top_p=one_or_list(args.top_p),
        seed=args.seed,
        batch_size=args.batch_size,
        long_form=args.long_form,
        context_window=args.context_window,
        stream=args.stream,
        chunk_seconds=args.chunk_seconds,
        codec=args.codec,
        device=args.device,
        dtype=args.dtype,
        prefix=args.prefix,
        compile_decoding=args.compile,
        quantize=args.quantize,
        overwrite=args.overwrite,
        genre=args.genre,
        guidance_scale=args.guidance_scale,
        text=args.text,
    )
    try:
        # the checks that need no model answer before torch is imported
        check_options(args.output_dir, reference=args.reference, **options)
    except ValueError as error:
        return report_error(str(error))
    treat_sigterm_as_interrupt()
    hide_transformers_bars()
    from generation.pipeline import GenerationInterrupted, generate_audio

    try:
        result = generate_audio(args.model, args.output_dir, **options)
    except (ValueError, FileNotFoundError) as error:
        return report_error(str(error))
    except GenerationInterrupted as interrupted:
        print(interruption_message(interrupted, args.output_dir), file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # while loading, before any file was opened
        print(f"interrupted before generation started: nothing written to {args.output_dir}", file=sys.stderr)
        return 130
    speed = result.times_real_time
    print(
        f"Wrote {len(result.paths)} file(s) to {args.output_dir}: {result.audio_seconds:.1f} s of new audio in "
        f"{result.elapsed_seconds:.1f} s, {speed:.2f}x real time ({'faster' if speed >= 1 else 'slower'} than "
        "playback)"
    )
    if args.reference:
        try:
            print_fad(result, args)
        except ValueError as error:  # no reference file readable: the samples are written all the same
            return report_error(str(error))
    return 0


def print_fad(result, args):
    """The FAD of the new audio (the prompt left out) to the --reference files, in the checkpoint's codec space."""
    from comparison.generated_audio import fad_to_reference_files
    from generation.request import reference_audio_files
    from configuration_music_hybrid import MusicHybridConfig
    from generation.pipeline import resolve_codec_identity
    from processing_music_hybrid import load_codec

    codec = load_codec(resolve_codec_identity(MusicHybridConfig.from_pretrained(args.model), args.codec),
                       device=args.device, location=args.model)
    rate, hop = codec.identity["sample_rate"], codec.identity["hop_length"]
    new_samples = round(result.audio_seconds * rate / len(result.paths))
    new_frames = -(-new_samples // hop)
    new_codes = result.codes[:, :, -new_frames:]
    fad = fad_to_reference_files(codec, list(codec.decode(new_codes, num_samples=new_samples)),
                                 reference_audio_files(args.reference), seed=args.seed)
    skipped = f", {fad['skipped_reference_files']} unreadable skipped" if fad["skipped_reference_files"] else ""
    if fad["reference_files_with_decoder_warnings"]:
        skipped += f", {fad['reference_files_with_decoder_warnings']} read despite mp3 decoder warnings"
    print(f"FAD of the {len(result.paths)} sample(s) to the {fad['num_reference_clips']} reference file(s) in "
          f"{args.reference}{skipped}: {fad['fad']:.4g} [{fad['ci_low']:.4g}, {fad['ci_high']:.4g}] (95% bootstrap "
          f"over samples; embedding {fad['embedding']}); its floor, the FAD between {fad['floor']['what']}: "
          f"{fad['floor']['fad']:.4g}")
    if fad["note"]:
        print(fad["note"])


def list_genres(model):
    from generation.pipeline import checkpoint_genres

    try:
        genres = checkpoint_genres(model)
    except ValueError as error:
        return report_error(str(error))
    print("\n".join(genres) if genres else f"{model} is unconditional: it takes no genre")
    return 0


def interruption_message(interrupted, output_dir) -> str:
    finished = ", ".join(path.name for path in interrupted.finished) or "none"
    message = f"interrupted: finished files in {output_dir}: {finished}"
    if interrupted.unfinished:
        unfinished = ", ".join(path.name for path in interrupted.unfinished)
        return f"{message}; streamed, unfinished (valid WAVs, shorter than asked): {unfinished}"
    return f"{message}; unfinished samples were removed"


def one_or_list(values):
    return values[0] if len(values) == 1 else values


def parse_args(argv=None):
    parser = ArgumentParser(
        description="Generate music with a music-hybrid checkpoint (unconditional or continuing an audio prompt) "
        "and write 44.1 kHz WAV files.",
    )
    parser.add_argument("model", help="checkpoint folder or Hub id")
    parser.add_argument("--output-dir", "--output_dir", help="folder for the WAV files (required to generate)")
    parser.add_argument(
        "--num-samples", "--num_samples", type=int, default=1, help="how many files to generate (default: 1)"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of new audio per file (default: 10)")
    parser.add_argument(
        "--prompt", help="audio file to continue (any format soundfile reads; resampled to 44.1 kHz mono)"
    )
    parser.add_argument(
        "--continuation-only", "--continuation_only", action="store_true",
        help="write only the continuation, not the prompt before it",
    )
    per_codebook = "one value, or one per codebook (coarsest first)"
    parser.add_argument(
        "--temperature", type=float, nargs="+", default=[1.0], help=f"sampling temperature: {per_codebook}"
    )
    parser.add_argument(
        "--top-k", "--top_k", type=int, nargs="+", default=[250], help=f"top-k (0: off): {per_codebook}"
    )
    parser.add_argument(
        "--top-p", "--top_p", type=float, nargs="+", default=[1.0], help=f"top-p in (0, 1] (1: off): {per_codebook}"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--batch-size", "--batch_size", type=int, default=4, help="samples generated together (default: 4)"
    )
    parser.add_argument("--long-form", "--long_form",
        choices=LONG_FORM_MODES,
        help="allow audio beyond the model's positions: 'window' (re-prefill the last frames) or 'sliding' "
        "(attention window, Mamba state carries on)",
    )
    parser.add_argument("--context-window", "--context_window",
        type=int,
        help="frames kept as context in long form (default: half the model's context for 'window', all of it for "
        "'sliding')",
    )
    parser.add_argument(
        "--stream", action="store_true", help="write the files in place as audio is produced (valid WAV at all times)"
    )
    parser.add_argument(
        "--chunk-seconds", "--chunk_seconds", type=float, default=1.0, help="audio decoded per chunk (default: 1 s)"
    )
    parser.add_argument(
        "--codec",
        help="codec expected (JSON identity, a JSON file, or a DAC model id); an error if the checkpoint's differs",
    )
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="float32", help="model weights dtype")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing files of the same names (without it: refused)"
    )
    parser.add_argument("--prefix", default="sample", help="file names: PREFIX_000.wav, PREFIX_001.wav, ...")
    parser.add_argument("--reference", metavar="DIR",
                        help="folder of audio files: print the Frechet Audio Distance of the new audio to them "
                        "(DAC encoder latents of the checkpoint's codec)")
    parser.add_argument(
        "--genre", nargs="+",
        help="genre-conditioned checkpoints: one genre for every sample, or one per sample (see --list-genres); "
        "file names carry it",
    )
    parser.add_argument(
        "--text", nargs="+",
        help="text-conditioned checkpoints: one description for every sample, or one per sample (quote each); "
        "file names carry its first words",
    )
    parser.add_argument(
        "--guidance-scale", "--guidance_scale", type=float,
        help="classifier-free guidance with --genre or --text: logits null + g * (condition - null); default 3.0 "
        "(MusicGen's), 1 for none; above 1 each step runs the samples twice, with and without the condition",
    )
    parser.add_argument("--list-genres", "--list_genres", action="store_true", help="print the checkpoint's genres")
    parser.add_argument(
        "--quantize", choices=QUANTIZE_MODES,
        help="int8: int8 weights for CPU decoding of a float32 checkpoint, the fastest CPU path (a quarter of the "
        "bytes a step reads; validation loss within 0.5%% in bench/int8_quality.py)",
    )
    parser.add_argument(
        "--compile", action="store_true",
        help="compile the decoding step (and replay it as a CUDA graph on GPUs): faster per frame after a one-off "
        "compilation of tens of seconds; worth it for long or many samples",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
