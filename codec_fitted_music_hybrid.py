"""The fitted codec: a small offline codec with DAC 44.1 kHz's token layout (9 codebooks x 1024 codes, one frame per
512 samples), fitted to the training audio instead of downloaded.

Analysis: one magnitude spectrum per frame (2048-sample Hann window, hop 512), pooled into bands on a mel-like
scale (one FFT bin per band at low frequencies, wider bands above), amplitude compressed to the power 0.2, so that
a squared distance between frames weighs quiet and loud parts alike. Quantization: 9 residual k-means stages, each
coding what the stages before left over. Synthesis: band amplitudes back to bin magnitudes, phases from a phase
vocoder locked to the spectral peaks (each peak advances at its own interpolated frequency, the bins around it
follow it), refined by a few Griffin-Lim iterations; the whole clip in one pass, scaled down if it would clip.

The fitted parameters live in one safetensors file; the codec identity names its SHA-256, so codes are never decoded
with another fit. save_pretrained of a model copies the file into the checkpoint folder (see
processing_music_hybrid.save_codec_files). Everything here is deterministic for a seed, whatever the thread count:
nearest centroids as float64 decides them, sums in a fixed order, a seeded initialisation.
"""

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import torch

SAMPLE_RATE = 44100
HOP_LENGTH = 512
NUM_CODEBOOKS = 9
CODEBOOK_SIZE = 1024
N_FFT = 2048
MEL_POINTS = 256  # band edges before merging the ones that fall in the same FFT bin
COMPRESSION = 0.2
FORMAT_VERSION = 1
PARAMETERS_FILE = "codec_fitted.safetensors"
KMEANS_ITERATIONS = 10
MAX_FIT_FRAMES = 16384
GRIFFIN_LIM_ITERATIONS = 8
PEAK_LIMIT = 0.99
_DISTANCE_CHUNK = 8192


class FittedCodecFileError(ValueError):
    """The parameters file is not the one the codec identity names (another fit, another format version)."""


def band_edges():
    """FFT-bin edges of the bands: mel-spaced, at least one bin wide (an int64 array, first 0, last N_FFT // 2 + 1)."""
    top_mel = 2595 * np.log10(1 + (SAMPLE_RATE / 2) / 700)
    frequencies = 700 * (10 ** (np.linspace(0, top_mel, MEL_POINTS + 1) / 2595) - 1)
    edges = np.unique(np.round(frequencies / SAMPLE_RATE * N_FFT).astype(np.int64))
    edges[-1] = N_FFT // 2 + 1
    return edges


def band_features(waveform, edges):
    """A mono waveform (n,) -> (ceil(n / 512), bands) float64 compressed band amplitudes."""
    spectrum = _stft(torch.as_tensor(waveform, dtype=torch.float64).reshape(-1))
    power = spectrum.abs().square()
    sums = np.add.reduceat(power.numpy(), edges[:-1], axis=1)
    return (sums / np.diff(edges)) ** (COMPRESSION / 2)


def _stft(waveform):
    """(n,) -> (ceil(n / 512), bins) complex spectra, scaled so that a full-scale sine peaks near 1."""
    num_frames = -(-waveform.numel() // HOP_LENGTH)
    padded = torch.nn.functional.pad(waveform, (0, num_frames * HOP_LENGTH - waveform.numel()))
    window = torch.hann_window(N_FFT, dtype=padded.dtype)
    spectrum = torch.stft(padded, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="constant",
                          return_complex=True)
    return spectrum[:, :num_frames].T / (window.sum() / 2)


def _istft(spectrum, num_samples):
    """The inverse of _stft: (frames, bins) -> (num_samples,). A last frame at the clip's end is repeated."""
    spectrum = torch.cat([spectrum, spectrum[-1:]]).T
    window = torch.hann_window(N_FFT, dtype=torch.float64)
    return torch.istft(spectrum * (window.sum() / 2), N_FFT, HOP_LENGTH, window=window, center=True,
                       length=num_samples)


class FittedCodec:
    """encode(waveforms) -> list of (9, T) codes; decode(codes) -> (B, T * 512) waveforms; the Codec interface."""

    renders_whole_clips = True  # a window decoded alone differs from the same frames in the whole clip

    def __init__(self, centroids, edges, identity, device=None, batch_size=1):
        self.centroids = torch.as_tensor(centroids, dtype=torch.float64)  # (stages, centroids, bands)
        self.edges = np.asarray(edges, dtype=np.int64)
        self.identity = identity
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.batch_size = batch_size

    @torch.inference_mode()
    def encode(self, waveforms):
        """waveforms: list of 1-D float arrays at 44.1 kHz, or a (B, n) tensor -> one (9, ceil(n / 512)) int64
        tensor each."""
        clips = [np.asarray(torch.as_tensor(waveform).detach().cpu().reshape(-1), dtype=np.float64)
                 for waveform in waveforms]
        if any(clip.size == 0 for clip in clips):
            raise ValueError("cannot encode an empty waveform")
        return [residual_codes(torch.from_numpy(band_features(clip, self.edges)), self.centroids) for clip in clips]

    @torch.inference_mode()
    def decode(self, codes, num_samples=None, griffin_lim_iterations=GRIFFIN_LIM_ITERATIONS):
        """codes: (B, 9, T) -> (B, T * 512) float32 at 44.1 kHz (trimmed to `num_samples`), each clip rendered whole
        and scaled down if its peak would pass PEAK_LIMIT. Fewer codebooks than 9 decode the coarser sum."""
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.dim() != 3 or not 1 <= codes.shape[1] <= NUM_CODEBOOKS:
            raise ValueError(f"codes must have shape (batch, {NUM_CODEBOOKS}, frames), got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= CODEBOOK_SIZE):
            raise ValueError(f"codes must lie in [0, {CODEBOOK_SIZE}); pad/bos/eos ids are not audio")
        # A fit with fewer centroids than codes (tests) never encodes the others, but a model may still sample them:
        # they add nothing (a zero row after the centroids).
        num_centroids = self.centroids.shape[1]
        stages, _, bands = self.centroids.shape
        table = torch.cat([self.centroids, self.centroids.new_zeros(stages, 1, bands)], dim=1)
        codes = codes.clamp(max=num_centroids)
        audio = torch.zeros(codes.shape[0], codes.shape[2] * HOP_LENGTH)
        for index, clip_codes in enumerate(codes):
            if clip_codes.shape[1]:
                features = sum(table[stage][clip_codes[stage]] for stage in range(clip_codes.shape[0]))
                audio[index] = synthesize(features.numpy(), self.edges, griffin_lim_iterations).float()
        return audio if num_samples is None else audio[:, :num_samples]


def residual_codes(features, centroids):
    """(T, bands) float64 features -> (stages, T) int64 codes: each stage codes the residual of the ones before."""
    residual = features.clone()
    codes = []
    for stage_centroids in centroids:
        nearest = nearest_centroids(residual, stage_centroids)
        residual -= stage_centroids[nearest]
        codes.append(nearest)
    return torch.stack(codes)


def nearest_centroids(points, centroids):
    """Index of the nearest centroid of each float64 row (squared Euclidean distance; ties: the lowest index).

    The float64 answer, whatever the thread count: distances are screened in float32 (faster), and the rows
    whose two best candidates lie closer than float32's error bound are decided again in float64."""
    if not len(points):
        return torch.zeros(0, dtype=torch.long)
    centroid_norms = centroids.square().sum(dim=1)
    centroids32, centroid_norms32 = centroids.float(), centroid_norms.float()
    tolerance = 1e-4 * (points.square().sum(dim=1) + centroid_norms.max())
    nearest = []
    for chunk, chunk_tolerance in zip(points.split(_DISTANCE_CHUNK), tolerance.split(_DISTANCE_CHUNK), strict=True):
        distances = torch.addmm(centroid_norms32, chunk.float(), centroids32.T, alpha=-2)
        smallest, best = distances.min(dim=1)
        if distances.shape[1] == 1:
            nearest.append(best)
            continue
        second = distances.scatter_(1, best[:, None], float("inf")).min(dim=1).values
        close = torch.nonzero(second - smallest <= chunk_tolerance).reshape(-1)
        if close.numel():
            best[close] = (centroid_norms - 2 * chunk[close] @ centroids.T).argmin(dim=1)
        nearest.append(best)
    return torch.cat(nearest)


def synthesize(features, edges, griffin_lim_iterations):
    """(T, bands) compressed band amplitudes -> (T * 512,) float64 waveform."""
    amplitudes = np.maximum(features, 0) ** (1 / COMPRESSION)
    magnitudes = np.repeat(amplitudes, np.diff(edges), axis=1)
    phases = peak_locked_phases(magnitudes)
    num_samples = len(features) * HOP_LENGTH
    magnitude_tensor = torch.from_numpy(magnitudes)
    spectrum = torch.polar(magnitude_tensor, torch.from_numpy(phases))
    audio = _istft(spectrum, num_samples)
    for _ in range(griffin_lim_iterations):
        rebuilt = _stft(audio)
        spectrum = torch.polar(magnitude_tensor, rebuilt.angle())
        audio = _istft(spectrum, num_samples)
    peak = audio.abs().max()
    return audio * (PEAK_LIMIT / peak) if peak > PEAK_LIMIT else audio


def peak_locked_phases(magnitudes):
    """Phase-vocoder phases for (T, bins) magnitudes with no phase of their own: each spectral peak advances by its
    frequency (quadratically interpolated between bins) over one hop, and the bins nearer to it than to another
    peak keep its phase with the half-turn per bin offset of a Hann-windowed sinusoid, so partials stay coherent."""
    num_bins = magnitudes.shape[1]
    bins = np.arange(num_bins)
    log_magnitudes = np.log(magnitudes + 1e-12)
    phases = np.zeros_like(magnitudes)
    previous = np.zeros(num_bins)
    for frame, log_magnitude in enumerate(log_magnitudes):
        middle = log_magnitude[1:-1]
        peaks = np.flatnonzero((middle > log_magnitude[:-2]) & (middle >= log_magnitude[2:])) + 1
        if not peaks.size:
            peaks = np.array([int(np.argmax(log_magnitude))])
        left, centre, right = (log_magnitude[np.clip(peaks + shift, 0, num_bins - 1)] for shift in (-1, 0, 1))
        curvature = left - 2 * centre + right
        offset = np.where(curvature < 0, 0.5 * (left - right) / np.where(curvature < 0, curvature, -1), 0)
        frequency = peaks + np.clip(offset, -0.5, 0.5)
        peak_phases = previous[peaks] + 2 * np.pi * HOP_LENGTH * frequency / N_FFT
        boundaries = (peaks[1:] + peaks[:-1]) / 2
        owner = np.searchsorted(boundaries, bins)
        phases[frame] = np.mod(peak_phases[owner] + np.pi * (bins - peaks[owner]), 2 * np.pi)
        previous = phases[frame]
    return phases


def fit_codec(feature_blocks, seed, num_centroids=CODEBOOK_SIZE, iterations=KMEANS_ITERATIONS,
              max_frames=MAX_FIT_FRAMES, progress=None):
    """Residual k-means over the frames of `feature_blocks` (a list of (T, bands) arrays) -> (stages, centroids,
    bands) float64. At most `max_frames` frames (a seeded draw) take part; `progress(stage)` is called after each
    stage. Raises ValueError when there are fewer frames than centroids."""
    points = np.concatenate([np.asarray(block, dtype=np.float64) for block in feature_blocks])
    if len(points) < num_centroids:
        raise ValueError(
            f"too little audio to fit the codec: {len(points)} frames ({len(points) * HOP_LENGTH / SAMPLE_RATE:.1f} s) "
            f"for {num_centroids} centroids per codebook; give more training audio"
        )
    generator = np.random.default_rng(seed)
    if len(points) > max_frames:
        points = points[np.sort(generator.choice(len(points), max_frames, replace=False))]
    residual = torch.from_numpy(points)
    stages = []
    for stage in range(NUM_CODEBOOKS):
        centroids = kmeans(residual, num_centroids, iterations, generator)
        residual = residual - centroids[nearest_centroids(residual, centroids)]
        stages.append(centroids)
        if progress:
            progress(stage)
    return torch.stack(stages)


def kmeans(points, num_centroids, iterations, generator):
    """Lloyd's k-means from distinct random frames; an emptied cluster takes the frame worst served by its own."""
    centroids = points[torch.from_numpy(generator.choice(len(points), num_centroids, replace=False))].clone()
    for _ in range(iterations):
        nearest = nearest_centroids(points, centroids)
        counts = torch.bincount(nearest, minlength=num_centroids)
        order = torch.argsort(nearest, stable=True)
        starts = np.concatenate([[0], np.cumsum(counts.numpy())[:-1]])
        used = counts.numpy() > 0
        sums = np.add.reduceat(points[order].numpy(), starts[used], axis=0)  # one fixed summation order
        centroids[torch.from_numpy(used)] = torch.from_numpy(sums) / counts[used, None]
        empty = np.flatnonzero(~used)
        if empty.size:
            errors = (points - centroids[nearest]).square().sum(dim=1)
            worst = torch.argsort(errors, descending=True, stable=True)[: empty.size]
            centroids[torch.from_numpy(empty)] = points[worst]
    return centroids


def fitted_identity(seed, parameters_sha256, num_centroids):
    """The identity of a fit: its seed, its centroid count, and the SHA-256 of its parameters file."""
    return {
        "backend": "fitted",
        "model_id": None,
        "revision": None,
        "seed": int(seed),
        "config_overrides": {"format_version": FORMAT_VERSION, "num_centroids": int(num_centroids),
                             "parameters_file": PARAMETERS_FILE, "parameters_sha256": parameters_sha256},
        "sample_rate": SAMPLE_RATE,
        "hop_length": HOP_LENGTH,
        "num_codebooks": NUM_CODEBOOKS,
        "codebook_size": CODEBOOK_SIZE,
    }


def save_parameters(centroids, path, seed):
    """Write the fit to `path` (safetensors, written aside and moved in); return its SHA-256."""
    from safetensors.torch import save_file

    path = Path(path)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")  # processes of one launch write the same fit
    tensors = {"centroids": torch.as_tensor(centroids, dtype=torch.float32).contiguous(),
               "band_edges": torch.from_numpy(band_edges())}
    save_file(tensors, str(partial), metadata={"format_version": str(FORMAT_VERSION), "seed": str(seed)})
    partial.replace(path)
    return file_sha256(path)


def file_sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_parameters(path, identity):
    """(centroids, band edges) from a parameters file, refused unless it is the one `identity` names."""
    from safetensors import safe_open

    overrides = identity.get("config_overrides") or {}
    if overrides.get("format_version") != FORMAT_VERSION:
        raise FittedCodecFileError(
            f"the fitted codec has format version {overrides.get('format_version')!r}, this code reads version "
            f"{FORMAT_VERSION}: re-tokenize the audio with this version (data.build_dataset --codec fitted)"
        )
    if file_sha256(path) != overrides.get("parameters_sha256"):
        raise FittedCodecFileError(
            f"{path} is not the fitted codec this identity names (its SHA-256 differs): it comes from another fit "
            "or version; use the file saved with the dataset or checkpoint these codes come from"
        )
    with safe_open(str(path), framework="pt") as file:
        return file.get_tensor("centroids").double(), file.get_tensor("band_edges").numpy()


def timed_fit(feature_blocks, seed, num_centroids, progress=None):
    """fit_codec, and the seconds it took."""
    started = time.perf_counter()
    centroids = fit_codec(feature_blocks, seed, num_centroids=num_centroids, progress=progress)
    return centroids, time.perf_counter() - started
