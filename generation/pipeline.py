"""The work behind generate_audio.py: check the request, load model and codec, generate codes in batches,
decode them in chunks as they arrive, and write each sample as a WAV file (streamed or complete on finish)."""

import json
import math
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
from tqdm.auto import tqdm

from cli.paths import check_codec_available, load_checkpoint_config
from data.audio import decode_audio, to_mono_44k
from data.rejects import RejectedInput
from generation.chunked_decoder import ChunkedDecoder
from generation.request import (
    PARTIAL_SUFFIX,
    check_options,
    check_quantize,
    output_paths,
    sample_genres,
)
from generation.streaming_wav import StreamingWavWriter
from processing_music_hybrid import SAMPLE_RATE

CODEC_FIX = "connect to the Hugging Face Hub once (the weights are cached), or install what it needs"
DEFAULT_GUIDANCE_SCALE = 3.0  # MusicGen's, used whenever a genre or a description is asked for
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class GenerationResult:
    paths: list  # one WAV per sample
    codes: torch.Tensor  # (num_samples, K, prompt frames + new frames), natural layout
    audio_seconds: float  # new audio generated, all samples together
    elapsed_seconds: float  # generation and decoding, after loading

    @property
    def times_real_time(self):
        """Seconds of audio made per second of computation: above 1 is faster than real time."""
        return self.audio_seconds / self.elapsed_seconds


@dataclass
class Plan:
    """Everything checked before any work: settings, lengths, codec and prompt."""

    codec_identity: dict
    prompt_audio: np.ndarray | None  # mono, 44.1 kHz, cut to whole codec frames
    new_frames: int
    new_samples: int
    sampling: dict
    context_window: int | None
    genres: list | None  # one per sample (None: an unconditional model, or no genre asked for)
    guidance_scale: float | None
    texts: list | None = None  # one description per sample (None: none asked for)


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during generation, after the unfinished files were removed (or, streamed, kept valid)."""

    def __init__(self, finished, unfinished):
        super().__init__()
        self.finished = finished  # complete files
        self.unfinished = unfinished  # streamed files kept as valid, shorter WAVs


def generate_audio(
    model_name_or_path,
    output_dir,
    num_samples=1,
    duration=10.0,
    prompt=None,
    continuation_only=False,
    temperature=1.0,
    top_k=250,
    top_p=1.0,
    seed=0,
    batch_size=4,
    long_form=None,
    context_window=None,
    stream=False,
    chunk_seconds=1.0,
    codec=None,
    device=None,
    dtype="float32",
    prefix="sample",
    progress=True,
    compile_decoding=False,
    quantize=None,
    genre=None,
    guidance_scale=None,
    overwrite=True,
    text=None,
):
    """Generate `num_samples` WAV files of `duration` seconds of new audio each; see the module docstring.

    temperature / top_k / top_p: one value or a list with one value per codebook. prompt: an audio file path.
    codec: the codec identity (dict) or the --codec text expected; the checkpoint's recorded codec is used.
    quantize: "int8" quantizes the linear layers (`MusicHybridForCausalLM.quantize_weights`) for CPU decoding of a
    float32 checkpoint; None keeps its weights.
    compile_decoding: run the decoding steps compiled (`MusicHybridForCausalLM.compile_decoding`), as CUDA graphs
    on a GPU.
    genre: a genre of a conditional checkpoint for every sample, or a list with one per sample; file names carry
    it. text: a description for every sample of a text-conditioned checkpoint, or a list with one per sample (None
    or "": none); file names carry its first words. guidance_scale: classifier-free guidance (default 3.0 with a
    genre or a description; 1: none). overwrite: replace existing
    files of the same names; False refuses them (generate_audio.py passes False unless --overwrite is given).
    Every check runs before any file is written; an interrupt raises GenerationInterrupted after removing
    unfinished files (streamed ones stay, valid).
    """
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    check_options(output_dir, num_samples=num_samples, duration=duration, batch_size=batch_size,
                  long_form=long_form, chunk_seconds=chunk_seconds, dtype=dtype, prefix=prefix, overwrite=overwrite,
                  genre=genre, guidance_scale=guidance_scale, quantize=quantize, device=device, text=text, **sampling)
    plan = plan_generation(
        model_name_or_path, duration, prompt, sampling, long_form, context_window, codec, genre, guidance_scale,
        num_samples, text,
    )
    device = resolve_device(device)
    check_quantize(quantize, dtype, device)
    codec = load_checkpoint_codec(plan.codec_identity, device, location=model_name_or_path)
    model = load_model(model_name_or_path, device, dtype, quantize, compile_decoding)
    if device.type == "cpu" and progress and not (quantize and compile_decoding):
        print("note: on CPU, --quantize int8 --compile decodes fastest (a quarter of the weight bytes, compiled "
              "steps after about a minute of compiling; see docs/generation.md)", file=sys.stderr)
    if compile_decoding and progress:  # the compilation happens inside the first step: the bar would stall
        print("compiling the decoding step: the first frame takes a while (tens of seconds), the next ones are "
              "faster", file=sys.stderr)
    paths = output_paths(output_dir, num_samples, prefix, plan.genres, plan.texts)
    return write_samples(model, codec, plan, paths, seed=seed, batch_size=batch_size, long_form=long_form,
                         stream=stream, chunk_seconds=chunk_seconds, continuation_only=continuation_only,
                         progress=progress)


def resolve_device(device=None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_model(model_name_or_path, device, dtype="float32", quantize=None, compile_decoding=False):
    """The checkpoint's model on `device`, ready to decode: int8 weights with quantize="int8", compiled decoding
    steps (CUDA graphs on a GPU) with compile_decoding."""
    from modeling_music_hybrid import MusicHybridForCausalLM

    model = MusicHybridForCausalLM.from_pretrained(model_name_or_path, dtype=DTYPES[dtype]).to(device).eval()
    if quantize:
        model.quantize_weights(quantize)
    if compile_decoding:
        model.compile_decoding(cuda_graph=True)
    return model


def write_samples(
    model, codec, plan, paths, seed=0, batch_size=4, long_form=None, stream=False, chunk_seconds=1.0,
    continuation_only=False, progress=True, on_audio=None, stop=None,
):
    """Generate the planned samples with a loaded model and codec into `paths` (one WAV per sample, in batches).

    on_audio(sample_index, samples): called with each piece of audio as it is appended to a sample's file (the
    prompt first, unless continuation_only), for a caller that plays the samples while they render.
    stop: a threading.Event; once set, the generation ends at the next frame as if interrupted.
    Raises GenerationInterrupted after removing unfinished files (streamed ones stay, valid).
    """
    num_samples = len(paths)
    sample_rate = plan.codec_identity["sample_rate"]
    frame_rate = sample_rate / plan.codec_identity["hop_length"]
    num_batches = math.ceil(num_samples / batch_size)
    prompt_codes = None
    if plan.prompt_audio is not None:
        prompt_codes = codec.encode([plan.prompt_audio])[0][None]
    output_dir = Path(paths[0]).parent
    created_output_dir = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    started = time.perf_counter()
    written, codes, unfinished = [], [], []
    try:
        with tqdm(total=num_batches * plan.new_frames, unit="frame", desc="generating", disable=not progress) as bar:
            for batch_start in range(0, num_samples, batch_size):
                indices = range(batch_start, min(num_samples, batch_start + batch_size))
                batch_genres = None if plan.genres is None else [plan.genres[index] for index in indices]
                batch_texts = None if plan.texts is None else [plan.texts[index] for index in indices]
                batch_paths = [Path(paths[index]) for index in indices]
                # Without --stream a file is written as NAME.partial and takes its name only when complete.
                unfinished = [path if stream else path.with_name(path.name + PARTIAL_SUFFIX) for path in batch_paths]
                with ExitStack() as files:
                    writers = [files.enter_context(StreamingWavWriter(path, sample_rate)) for path in unfinished]
                    streamer = WavStreamer(
                        codec,
                        writers,
                        prompt_codes,
                        None if continuation_only else plan.prompt_audio,
                        plan.new_samples,
                        chunk_frames=max(1, round(chunk_seconds * frame_rate)),
                        progress=FrameProgress(bar, frame_rate),
                        on_audio=None if on_audio is None else SampleAudio(on_audio, batch_start),
                        stop=stop,
                    )
                    codes.append(
                        model.generate(
                            prompt_codes,
                            max_new_tokens=plan.new_frames,
                            num_return_sequences=len(batch_paths),
                            streamer=streamer,
                            long_form=long_form,
                            context_window=plan.context_window,
                            genre=batch_genres,
                            text=batch_texts,
                            guidance_scale=plan.guidance_scale,
                            **plan.sampling,
                        ).cpu()
                    )
                for partial, final in zip(list(unfinished), batch_paths, strict=True):
                    os.replace(partial, final)
                    written.append(final)
                    unfinished.remove(partial)
    except BaseException as error:
        kept = remove_unfinished(unfinished, stream, output_dir if created_output_dir and not written else None)
        if isinstance(error, KeyboardInterrupt):
            raise GenerationInterrupted(written, kept) from None
        raise
    elapsed = time.perf_counter() - started
    return GenerationResult(written, torch.cat(codes), num_samples * plan.new_samples / sample_rate, elapsed)


def load_checkpoint_codec(identity, device, location=None):
    """The checkpoint's codec (a fitted codec's parameters are looked for in the checkpoint `location`); one that
    cannot be loaded is refused with the fixes that apply here (the data pipeline's message names its own options)."""
    from processing_music_hybrid import CodecUnavailableError, load_codec

    if identity.get("backend") == "transformers" and identity.get("model_id"):
        check_codec_available(identity["model_id"], "the checkpoint's codec", fix=CODEC_FIX)
    try:
        return load_codec(identity, device=device, location=location)
    except CodecUnavailableError as error:
        if identity.get("backend") == "fitted":
            raise ValueError(str(error)) from None
        cause = error.__cause__ or error
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise ValueError(
            f"the checkpoint's codec ({identity.get('backend')} {identity.get('model_id') or ''}) cannot be loaded "
            f"({type(cause).__name__}: {reason}); {CODEC_FIX}"
        ) from None


def remove_unfinished(written_paths, stream, created_output_dir) -> list:
    """After a failure or interrupt: remove the `.partial` files (streamed files are valid WAVs: kept, and
    returned), and the output folder if this run created it and nothing is left in it."""
    if stream:
        return [path for path in written_paths if path.exists()]
    for path in written_paths:
        path.unlink(missing_ok=True)
    if created_output_dir is not None and not any(created_output_dir.iterdir()):
        created_output_dir.rmdir()
    return []


def plan_generation(
    model_name_or_path, duration, prompt, sampling, long_form, context_window, codec, genre=None,
    guidance_scale=None, num_samples=1, text=None,
):
    """Check the request against the checkpoint's config (not its weights); raise ValueError on the first problem."""
    config = load_checkpoint_config(str(model_name_or_path), "the model")
    genres, texts, guidance_scale = check_conditions(config, genre, text, guidance_scale, num_samples)
    codec_identity = resolve_codec_identity(config, codec)
    sample_rate, hop_length = codec_identity["sample_rate"], codec_identity["hop_length"]
    prompt_audio = None if prompt is None else load_prompt_audio(prompt, hop_length)
    new_samples = round(duration * sample_rate)
    new_frames = math.ceil(new_samples / hop_length)
    prompt_frames = 0 if prompt_audio is None else len(prompt_audio) // hop_length
    sampling = {name: _check_per_codebook(name, value, config.num_codebooks) for name, value in sampling.items()}
    frame_seconds = hop_length / sample_rate
    context_window = check_context(config, prompt_frames, new_frames, long_form, context_window, frame_seconds)
    return Plan(
        codec_identity, prompt_audio, new_frames, new_samples, sampling, context_window, genres, guidance_scale,
        texts,
    )


def checkpoint_genres(model_name_or_path):
    """The genres a checkpoint is conditioned on (--list-genres), None for an unconditional one."""
    return load_checkpoint_config(str(model_name_or_path), "the model").genres


def check_conditions(config, genre, text, guidance_scale, num_samples):
    """(genre of every sample or None, description of every sample or None, guidance scale) for the request;
    ValueError for what the checkpoint cannot do (their counts are checked in request.check_options). A genre or a
    description without --guidance-scale is sampled with MusicGen's guidance scale 3.0."""
    names, texts = sample_genres(genre, num_samples), sample_genres(text, num_samples)
    options = {"--genre": config.genres is not None, "--text": config.text_encoder is not None}
    if texts is not None and not any(texts):  # only empty descriptions: none asked for
        texts = None
    if not any(options.values()):
        if names is not None or texts is not None or guidance_scale is not None:
            option = "--genre" if names is not None else "--text" if texts is not None else "--guidance-scale"
            needed = {"--genre": "genre", "--text": "text", "--guidance-scale": "genre- or text"}[option]
            raise ValueError(f"{option} needs a {needed}-conditioned checkpoint; this one is unconditional")
        return None, None, None
    if names is not None and config.genres is None:
        raise ValueError("--genre needs a genre-conditioned checkpoint; this one is conditioned on text: use --text")
    if texts is not None and config.text_encoder is None:
        raise ValueError("--text needs a text-conditioned checkpoint; this one is conditioned on genres: use --genre")
    if names is not None:
        unknown = [name for name in names if name not in config.genres]
        if unknown:
            raise ValueError(f"unknown genre {unknown[0]!r}; this checkpoint knows: {', '.join(config.genres)}")
    if names is None and texts is None:
        if guidance_scale is not None:
            wanted = " or ".join(option for option, available in options.items() if available)
            raise ValueError(f"--guidance-scale needs {wanted}: guidance pushes the samples towards a condition")
        return None, None, None
    return names, texts, DEFAULT_GUIDANCE_SCALE if guidance_scale is None else guidance_scale

def load_prompt_audio(path, hop_length):
    """Read any soundfile-readable file the way the data pipeline does (what it is when it is no audio, the mp3
    decoder's notes kept off the terminal), downmix to mono, resample to 44.1 kHz (every codec's rate, as
    processing_music_hybrid checks); cut to whole codec frames (at most 11.6 ms)."""
    try:
        audio, file_rate = decode_audio(str(path), decoder_messages=[])
    except RejectedInput as rejected:
        raise ValueError(f"cannot read the prompt file {path}: {rejected.detail}") from None
    audio = to_mono_44k(audio, file_rate)
    whole_frames = len(audio) // hop_length * hop_length
    if whole_frames == 0:
        raise ValueError(
            f"the prompt file {path} holds less than one codec frame ({hop_length / SAMPLE_RATE * 1000:.1f} ms)"
        )
    return audio[:whole_frames]


def resolve_codec_identity(config, requested=None):
    """The codec recorded in the checkpoint, checked against the one requested (if any) and the model's codebooks."""
    from processing_music_hybrid import check_identity

    requested = parse_codec_argument(requested)
    recorded = config.codec
    if recorded is None and requested is None:
        raise ValueError("the checkpoint records no codec; name the one its codes come from with --codec")
    if recorded is not None and requested is not None:
        differing = {
            key: (recorded.get(key), value)
            for key, value in requested.items()
            if value is not None and recorded.get(key) != value
        }
        if differing:
            details = ", ".join(
                f"{key}: checkpoint {have!r}, requested {want!r}" for key, (have, want) in differing.items()
            )
            raise ValueError(f"the checkpoint was trained on a different codec than requested ({details})")
    identity = recorded if recorded is not None else requested
    check_identity(identity)
    if (identity["num_codebooks"], identity["codebook_size"]) != (config.num_codebooks, config.codebook_size):
        raise ValueError(
            f"the model predicts {config.num_codebooks} codebooks of {config.codebook_size} codes but the codec has "
            f"{identity['num_codebooks']} of {identity['codebook_size']}"
        )
    return identity


def parse_codec_argument(requested):
    """A codec identity from a dict, JSON text, a JSON file or a DAC model id (None stays None)."""
    from processing_music_hybrid import pretrained_codec_identity

    if requested is None or isinstance(requested, dict):
        return requested
    text = str(requested)
    try:
        if text.lstrip().startswith("{"):
            return json.loads(text)
        if text.endswith(".json"):
            return json.loads(Path(text).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read the codec identity {text!r}: {error}") from None
    return pretrained_codec_identity(text)


def check_context(config, prompt_frames, new_frames, long_form, context_window, frame_seconds):
    """The context window generate() gets; errors when the request does not fit the model's positions."""
    positions = config.max_position_embeddings
    frames_per_context = positions - config.num_codebooks  # start column + K - 1 delay slots
    if long_form is None:
        if prompt_frames > frames_per_context:
            raise ValueError(
                f"the prompt ({prompt_frames * frame_seconds:.1f} s) is longer than the model's context "
                f"({frames_per_context * frame_seconds:.1f} s); pass --long-form window or sliding"
            )
        if prompt_frames + new_frames > frames_per_context:
            raise ValueError(
                f"prompt + duration ({(prompt_frames + new_frames) * frame_seconds:.1f} s) exceed the model's context "
                f"({frames_per_context * frame_seconds:.1f} s); pass --long-form window or sliding"
            )
        return None
    if long_form == "sliding" and config.position_embedding_type == "learned":
        raise ValueError("--long-form sliding needs a model without learned positions (RoPE or none); use window")
    if context_window is None:
        return frames_per_context // 2 if long_form == "window" else positions
    limit = frames_per_context if long_form == "window" else None
    if context_window < 1 or (limit is not None and context_window >= limit):
        bound = f" below the model's {limit}" if limit is not None else ""
        raise ValueError(f"--context-window must be a positive number of frames{bound}, got {context_window}")
    return context_window


class FrameProgress:
    """Progress in frames with the seconds of audio they make."""

    def __init__(self, bar, frame_rate):
        self.bar = bar
        self.frame_rate = frame_rate

    def update(self, frames):
        self.bar.update(frames)
        self.bar.set_postfix_str(f"{self.bar.n / self.frame_rate:.1f} s of audio", refresh=False)


class WavStreamer:
    """A generate() streamer: decodes new frames in overlapping chunks and appends the audio to one WAV per row.

    The files start with the prompt audio (if any); each ends after exactly `max_new_samples` new samples.
    """

    def __init__(self, codec, writers, prompt_codes, prompt_audio, max_new_samples, chunk_frames, progress,
                 on_audio=None, stop=None):
        self.writers = writers
        self.progress = progress
        self.on_audio = on_audio  # on_audio(row, samples) after each append
        self.stop = stop
        self.remaining = [max_new_samples] * len(writers)
        prompt_frames = 0 if prompt_codes is None else prompt_codes.shape[-1]
        self.decoder = ChunkedDecoder(codec, chunk_frames=chunk_frames, start_frame=prompt_frames)
        if prompt_codes is not None:
            self.decoder.push(prompt_codes.expand(len(writers), -1, -1))  # decoding context only
        if prompt_audio is not None:
            for row, writer in enumerate(writers):
                writer.append(prompt_audio)
                if on_audio is not None:
                    on_audio(row, prompt_audio)

    def put(self, frames):
        if self.stop is not None and self.stop.is_set():
            raise KeyboardInterrupt  # handled like Ctrl-C: unfinished files removed, GenerationInterrupted raised
        self.progress.update(frames.shape[-1])
        self._append(self.decoder.push(frames))

    def end(self):
        self._append(self.decoder.flush())

    def _append(self, audio):
        for row, (writer, samples) in enumerate(zip(self.writers, audio, strict=True)):
            kept = samples[: self.remaining[row]]
            if kept.size:
                writer.append(kept)
                self.remaining[row] -= kept.size
                if self.on_audio is not None:
                    self.on_audio(row, kept)


class SampleAudio:
    """on_audio(sample index, samples) from a batch's on_audio(row, samples)."""

    def __init__(self, on_audio, first_index):
        self.on_audio = on_audio
        self.first_index = first_index

    def __call__(self, row, samples):
        self.on_audio(self.first_index + row, samples)


def _check_per_codebook(name, value, num_codebooks):
    values = value if isinstance(value, (list, tuple)) else [value]
    if len(values) not in (1, num_codebooks):
        raise ValueError(
            f"--{name.replace('_', '-')} takes one value or {num_codebooks} (one per codebook), got {len(values)}"
        )
    return list(values) if len(values) > 1 else values[0]


def one_or_list(values):
    return values[0] if len(values) == 1 else values
