"""Audio in: decode with soundfile (path or bytes), downmix to mono, resample to 44.1 kHz with
soxr, check for silence and shortness, normalise loudness, and cut tracks into segments."""

import io
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import soundfile

from processing_music_hybrid import HOP_LENGTH, SAMPLE_RATE, num_frames_for, resample_to_codec_rate

from .decoder_messages import fd2_captured
from .rejects import RejectedInput

SEGMENT_MODES = ("whole", "first", "chunks")

# Leading bytes of containers libsndfile can read; a failing file that starts with one of
# these is a damaged audio file ("unreadable"), anything else is "not_audio".
_AUDIO_SIGNATURES = (b"RIFF", b"RIFX", b"RF64", b"fLaC", b"OggS", b"ID3", b"FORM", b"caff", b".snd", b"wvpk")
# What a file's first bytes say it is, for the reject report (libsndfile says "possibly a pipe?" for all of them).
_FORMAT_NAMES = {b"RIFF": "WAV", b"RIFX": "WAV", b"RF64": "WAV", b"fLaC": "FLAC", b"OggS": "Ogg", b"ID3": "MP3",
                 b"FORM": "AIFF", b"caff": "CAF", b".snd": "AU", b"wvpk": "WavPack"}
_HEAD_BYTES = 64


def read_track(payload, min_seconds=1.0, silence_db=-60.0, loudness_lufs=None, max_seconds=None,
               decoder_messages=None):
    """Mono float32 samples at 44.1 kHz from a file path, encoded bytes, or (samples, rate).

    Crops to `max_seconds` when given, then raises RejectedInput for empty, silent or
    too short audio, and normalises the integrated loudness to `loudness_lufs` when given.
    `decoder_messages`: see decode_audio."""
    if isinstance(payload, tuple):
        samples, rate = payload
    else:
        samples, rate = decode_audio(payload, max_seconds, decoder_messages)
    samples = to_mono_44k(samples, rate)
    if max_seconds is not None:
        samples = samples[: round(max_seconds * SAMPLE_RATE)]
    if samples.size == 0:
        raise RejectedInput("empty", "decoded to 0 samples")
    if samples.size < min_seconds * SAMPLE_RATE:
        raise RejectedInput("too_short", f"{samples.size / SAMPLE_RATE:.3f} s < {min_seconds} s")
    level = rms_dbfs(samples)
    if level < silence_db:
        raise RejectedInput("silent", f"RMS {level:.1f} dBFS < {silence_db} dBFS")
    return samples if loudness_lufs is None else normalize_loudness(samples, loudness_lufs)


def decode_audio(source, max_seconds=None, decoder_messages=None):
    """(samples (n, channels) float32, rate) from a path or encoded bytes, reading only the
    first `max_seconds` when given. Failures become RejectedInput with a reason.

    What the mp3 decoder prints about the file never reaches the terminal (data/decoder_messages.py); with a list
    as `decoder_messages` it is appended to it, unless the file is no audio at all."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise RejectedInput("empty", "0 bytes")
        head, size, opened = bytes(source[:_HEAD_BYTES]), len(source), io.BytesIO(source)
    else:
        if not os.path.exists(source):
            raise RejectedInput("missing", "no such file")
        if os.path.getsize(source) == 0:
            raise RejectedInput("empty", "0 bytes")
        try:
            with open(source, "rb") as file:
                head = file.read(_HEAD_BYTES)
        except OSError as error:
            raise RejectedInput("unreadable", str(error)) from error
        size, opened = os.path.getsize(source), source
    audio_format = _audio_format(head)
    # Only libmpg123 prints, whatever decoder_messages is: an mp3 can start with junk, so whatever is not another
    # known format is captured too.
    capturing = audio_format in ("MP3", None)
    messages = []
    try:
        with fd2_captured(messages) if capturing else nullcontext(), soundfile.SoundFile(opened) as file:
            frames = -1 if max_seconds is None else math.ceil(max_seconds * file.samplerate)
            samples = file.read(frames, dtype="float32", always_2d=True), file.samplerate
    except Exception as error:  # libsndfile reports damaged and foreign files alike, so say what the bytes are
        if audio_format is not None:
            if decoder_messages is not None:
                decoder_messages.extend(messages)
            raise RejectedInput("unreadable", f"{audio_format} file that cannot be decoded: truncated or corrupt "
                                              f"({size} bytes)") from error
        # what libmpg123 said while it searched a text or HTML file for frames is no news about audio
        raise RejectedInput("not_audio", f"{_what_it_is(head)}, not audio ({size} bytes)") from error
    if decoder_messages is not None:
        decoder_messages.extend(messages)
    return samples


def _audio_format(head):
    """The audio format the first bytes announce, or None."""
    mpeg_frame_sync = len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0
    if mpeg_frame_sync:
        return "MP3"
    return next((name for signature, name in _FORMAT_NAMES.items() if head.startswith(signature)), None)


def _what_it_is(head):
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    if text.startswith(b"<?xml") or text.startswith(b"<"):
        return "an XML/HTML document"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    if all(32 <= byte < 127 or byte in b"\t\r\n" for byte in head):
        return "a text file"
    return f"an unknown format (first bytes {head[:4].hex(' ')})"


def to_mono_44k(samples, rate):
    """Average the channels and resample to 44.1 kHz (soxr, high quality)."""
    samples = np.asarray(samples, dtype=np.float32)
    mono = samples.mean(axis=1, dtype=np.float32) if samples.ndim == 2 else samples
    return np.ascontiguousarray(resample_to_codec_rate(mono, rate), dtype=np.float32)


def rms_dbfs(samples):
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def integrated_loudness(samples, rate=SAMPLE_RATE):
    """ITU-R BS.1770-4 integrated loudness (LUFS) of a mono signal: K-weighting, 400 ms
    blocks every 100 ms, absolute gate at -70 LUFS, relative gate 10 LU below."""
    from scipy.signal import lfilter

    weighted = samples.astype(np.float64)
    for numerator, denominator in _k_weighting(rate):
        weighted = lfilter(numerator, denominator, weighted)
    block, step = round(0.4 * rate), round(0.1 * rate)
    energy = np.concatenate([[0.0], np.cumsum(weighted**2)])
    starts = np.arange(0, max(weighted.size - block, 0) + 1, step)
    block = min(block, weighted.size)
    powers = (energy[starts + block] - energy[starts]) / block
    with np.errstate(divide="ignore"):
        levels = -0.691 + 10 * np.log10(powers)
    gated = powers[levels > -70.0]
    if gated.size == 0:
        return -math.inf
    relative_gate = -0.691 + 10 * np.log10(gated.mean()) - 10.0
    gated = powers[(levels > -70.0) & (levels > relative_gate)]
    return float(-0.691 + 10 * np.log10(gated.mean()))


def _k_weighting(rate):
    """The two biquads of BS.1770 (high shelf, then high pass) for any sample rate, from the
    analogue prototypes that reproduce the standard's 48 kHz coefficients."""
    shelf_k = math.tan(math.pi * 1681.974450955533 / rate)
    shelf_q, high_gain = 0.7071752369554196, 10 ** (3.999843853973347 / 20)
    band_gain = high_gain**0.4996667741545416
    norm = 1 + shelf_k / shelf_q + shelf_k**2
    shelf = (
        [
            (high_gain + band_gain * shelf_k / shelf_q + shelf_k**2) / norm,
            2 * (shelf_k**2 - high_gain) / norm,
            (high_gain - band_gain * shelf_k / shelf_q + shelf_k**2) / norm,
        ],
        [1.0, 2 * (shelf_k**2 - 1) / norm, (1 - shelf_k / shelf_q + shelf_k**2) / norm],
    )
    pass_k, pass_q = math.tan(math.pi * 38.13547087602444 / rate), 0.5003270373238773
    norm = 1 + pass_k / pass_q + pass_k**2
    highpass = ([1.0, -2.0, 1.0], [1.0, 2 * (pass_k**2 - 1) / norm, (1 - pass_k / pass_q + pass_k**2) / norm])
    return [shelf, highpass]


def normalize_loudness(samples, target_lufs):
    """Scale to `target_lufs`; if that would clip, scale down to a 0.999 peak instead (the codec
    expects [-1, 1]), leaving the track quieter than the target."""
    loudness = integrated_loudness(samples)
    if not math.isfinite(loudness):
        return samples
    scaled = samples * np.float32(10 ** ((target_lufs - loudness) / 20))
    peak = float(np.max(np.abs(scaled)))
    return scaled * np.float32(0.999 / peak) if peak > 0.999 else scaled


@dataclass(frozen=True)
class Segment:
    """A row of the dataset: frames [start_frame, start_frame + num_frames) of a track's codes."""

    start_frame: int
    num_frames: int
    duration: float


def plan_segments(num_samples, mode="whole", segment_seconds=None, min_seconds=1.0):
    """The segments a track of `num_samples` (44.1 kHz) yields.

    whole / first: one segment (for "first" the audio was already cropped to N seconds);
    chunks: consecutive N-second chunks on frame boundaries; a last chunk shorter than
    `min_seconds` is dropped."""
    if mode != "chunks":
        return [Segment(0, num_frames_for(num_samples), num_samples / SAMPLE_RATE)]
    chunk_samples = max(1, round(segment_seconds * SAMPLE_RATE / HOP_LENGTH)) * HOP_LENGTH
    segments = []
    for start in range(0, num_samples, chunk_samples):
        length = min(chunk_samples, num_samples - start)
        if start > 0 and length < min(chunk_samples, min_seconds * SAMPLE_RATE):  # a short tail
            break
        segments.append(Segment(start // HOP_LENGTH, num_frames_for(length), length / SAMPLE_RATE))
    return segments
