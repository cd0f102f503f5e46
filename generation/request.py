"""The checks of a generation request that need neither the model nor torch: option values and combinations, and
the files the request would write. generate_audio.py runs them right after parsing (a mistake answers at once) and
generation.pipeline runs them again for callers of the function; checks against the checkpoint come in
pipeline.plan_generation. A new option's rules go into `check_options`."""

import math
import re
from pathlib import Path

LONG_FORM_MODES = ("window", "sliding")
DTYPE_NAMES = ("float32", "bfloat16", "float16")
QUANTIZE_MODES = ("int8",)  # MusicHybridForCausalLM.quantize_weights: CPU decoding of float32 weights
PARTIAL_SUFFIX = ".partial"
FILE_NAME_WORDS = 5  # of a description, in its sample's file name


def check_options(
    output_dir, num_samples=1, duration=10.0, temperature=1.0, top_k=250, top_p=1.0, batch_size=4, long_form=None,
    chunk_seconds=1.0, dtype="float32", prefix="sample", overwrite=False, genre=None,
    guidance_scale=None, reference=None, quantize=None, device=None, text=None, **other_options,
):
    """Raise ValueError naming the option and the fix for the first value or combination that cannot work."""
    for name, value in (("--num-samples", num_samples), ("--batch-size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if not duration or not math.isfinite(duration) or duration <= 0:
        raise ValueError(f"--duration must be a positive number of seconds, got {duration}")
    if not math.isfinite(chunk_seconds) or chunk_seconds <= 0:
        raise ValueError(f"--chunk-seconds must be positive, got {chunk_seconds}")
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"--dtype must be one of {list(DTYPE_NAMES)}, got {dtype!r}")
    check_quantize(quantize, dtype, device)
    if long_form not in (None, *LONG_FORM_MODES):
        raise ValueError(f"--long-form must be one of {list(LONG_FORM_MODES)}, got {long_form!r}")
    for value in per_codebook_values(temperature):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"--temperature must be positive, got {value:g}; for the most likely codes use a small temperature "
                "(0.1) or --top-k 1"
            )
    for value in per_codebook_values(top_k):
        if int(value) != value or value < 0:
            raise ValueError(f"--top-k must be a whole number of codes, 0 for off, got {value:g}")
    for value in per_codebook_values(top_p):
        if not (0 < value <= 1):
            raise ValueError(f"--top-p must be above 0 and at most 1 (1: off), got {value:g}")
    genres = sample_genres(genre, num_samples)
    if genres is not None and len(genres) != num_samples:
        raise ValueError(f"--genre takes one genre or one per sample ({num_samples}), got {len(genres)}")
    texts = sample_genres(text, num_samples)
    if texts is not None and len(texts) != num_samples:
        raise ValueError(f"--text takes one description or one per sample ({num_samples}), got {len(texts)}")
    if guidance_scale is not None and (not math.isfinite(guidance_scale) or guidance_scale < 1):
        raise ValueError(f"--guidance-scale must be a number >= 1 (1: no guidance), got {guidance_scale}")
    if reference is not None:
        reference_audio_files(reference)
    check_output_files(output_dir, output_paths(output_dir, num_samples, prefix, genres, texts), prefix, overwrite)


def check_quantize(quantize, dtype, device):
    """int8 weights decode on CPU from float32 ones; `device` None is checked again once it is resolved."""
    if quantize is None:
        return
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"--quantize must be one of {list(QUANTIZE_MODES)}, got {quantize!r}")
    on_cpu = device is None or str(device).split(":")[0] == "cpu"
    if dtype != "float32" or not on_cpu:
        raise ValueError(
            f"--quantize {quantize} is for CPU decoding of float32 weights (here: {dtype} on {device}); on a GPU "
            "use --dtype bfloat16"
        )


def reference_audio_files(folder):
    """The audio files under --reference (recursively), which the FAD compares the samples with; refused when the
    folder is missing or holds none."""
    from data.sources import AUDIO_EXTENSIONS  # imports torch: paid only by requests with --reference

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--reference {folder} is not a directory")
    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file())
    if not files:
        raise ValueError(f"--reference {folder} holds no audio files ({' '.join(sorted(AUDIO_EXTENSIONS))})")
    return files


def sample_genres(genre, num_samples):
    """The genre (or description) of every sample as asked (None: none asked for): one for all, or one per sample."""
    if genre is None:
        return None
    names = [genre] if isinstance(genre, str) else list(genre)
    return names * num_samples if len(names) == 1 else names


def output_paths(output_dir, num_samples, prefix, genres=None, texts=None) -> list:
    return [Path(output_dir) / sample_file_name(prefix, index, genres, texts) for index in range(num_samples)]


def sample_file_name(prefix, index, genres, texts=None):
    """PREFIX_000.wav, PREFIX_000_Hip-Hop.wav with the sample's genre, PREFIX_000_a-calm-piano-ballad.wav with the
    first words of its description (made safe for any file system)."""
    parts = [f"{prefix}_{index:03d}"]
    if genres is not None:
        parts.append(re.sub(r"[^A-Za-z0-9]+", "-", genres[index]).strip("-") or "genre")
    if texts is not None and texts[index]:
        parts.append(re.sub(r"[^A-Za-z0-9]+", "-", " ".join(texts[index].split()[:FILE_NAME_WORDS])).strip("-"))
    return "_".join(part for part in parts if part) + ".wav"


def check_output_files(output_dir, paths, prefix, overwrite) -> None:
    """Finished files are replaced only with --overwrite."""
    if output_dir is None:
        raise ValueError("--output-dir is required (a folder for the WAV files)")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output-dir {str(output_dir)!r} is a file, not a folder; choose a folder")
    if "/" in prefix or not prefix:
        raise ValueError(f"--prefix must be a plain file name start, got {prefix!r}")
    existing = [path for path in paths if path.exists()]
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise ValueError(
            f"{existing[0]}{more} already exist(s): pass --overwrite to replace them, or choose another --output-dir "
            "or --prefix"
        )


def per_codebook_values(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]
