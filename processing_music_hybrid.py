"""The DAC 44.1 kHz codec behind one interface: waveforms -> (9, T) codes -> waveforms.

Three backends share the same network (encoder, residual quantizer, decoder):
  * "transformers": `DacModel.from_pretrained("descript/dac_44khz")` (the default),
  * "dac": the descript-audio-codec package, when installed,
  * "random": the same architecture with seeded random weights (tests).
A fourth, "fitted" (codec_fitted_music_hybrid.py), has the same token layout but no network: band spectra, a
residual k-means quantizer fitted to the training audio, and a phase vocoder; its parameters file travels with
the dataset and with every checkpoint (save_codec_files), and `location` tells load_codec where to find it.
A codec is described by a JSON-able identity dict that travels with the datasets it
produced, so training and generation can check they use the same one.

save_pretrained ships this file with every checkpoint (the model imports it for decode_audio /
encode_audio), and codec_fitted_music_hybrid.py with it (a relative import, which transformers follows): they
import only torch, transformers, numpy, safetensors and huggingface_hub at the top; optional
packages (dac, soxr) are imported where they are needed, inside try blocks, which transformers'
remote-code import check skips.

Codes of a clip never depend on what it is batched with: clips are cut into windows
and only windows of equal length are stacked, so every window sees exactly the
samples (and zero padding) it would see alone. Long clips are encoded window by
window with overlap, keeping each window's central frames, so memory stays bounded.
"""

import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from transformers import DacConfig, DacModel
from transformers.models.dac.modeling_dac import Snake1d

try:  # inside a checkpoint folder loaded with trust_remote_code the shipped files form a package
    from .codec_fitted_music_hybrid import PARAMETERS_FILE, FittedCodec, load_parameters
except ImportError:  # from the repository root they are plain modules
    from codec_fitted_music_hybrid import PARAMETERS_FILE, FittedCodec, load_parameters

logger = logging.getLogger(__name__)

SAMPLE_RATE = 44100
HOP_LENGTH = 512
NUM_CODEBOOKS = 9
CODEBOOK_SIZE = 1024
PRETRAINED_MODEL_ID = "descript/dac_44khz"

# transformers.DacConfig arguments of the published 44.1 kHz model (about 76M parameters).
DAC_44KHZ_CONFIG = {
    "sampling_rate": SAMPLE_RATE,
    "encoder_hidden_size": 64,
    "downsampling_ratios": [2, 4, 8, 8],
    "decoder_hidden_size": 1536,
    "n_codebooks": NUM_CODEBOOKS,
    "codebook_size": CODEBOOK_SIZE,
    "codebook_dim": 8,
}
# Same rate, hop and codes, shrunk channels (about 0.6M parameters): fast enough for tests.
SMALL_CONFIG_OVERRIDES = {"encoder_hidden_size": 8, "decoder_hidden_size": 64}

BACKENDS = ("transformers", "dac", "random", "fitted")


class CodecUnavailableError(ValueError):
    """The requested codec weights cannot be loaded (no network, package missing, ...)."""


def _identity(backend, model_id=None, revision=None, seed=None, config_overrides=None):
    return {
        "backend": backend,
        "model_id": model_id,
        "revision": revision,
        "seed": seed,
        "config_overrides": config_overrides,
        "sample_rate": SAMPLE_RATE,
        "hop_length": HOP_LENGTH,
        "num_codebooks": NUM_CODEBOOKS,
        "codebook_size": CODEBOOK_SIZE,
    }


def pretrained_codec_identity(model_id=PRETRAINED_MODEL_ID, revision=None):
    """Identity of a transformers DacModel checkpoint (Hub id or local folder)."""
    return _identity("transformers", model_id=model_id, revision=revision)


def dac_package_identity(model_type="44khz", revision="latest"):
    """Identity of descript-audio-codec's own weights (`dac.utils.download(model_type, tag)`)."""
    return _identity("dac", model_id=model_type, revision=revision)


def random_codec_identity(seed=0, small=False):
    """Identity of the 44.1 kHz DAC architecture with seeded random weights."""
    return _identity("random", seed=int(seed), config_overrides=dict(SMALL_CONFIG_OVERRIDES) if small else None)


def check_identity(identity):
    """Raise ValueError unless `identity` describes a 44.1 kHz, hop 512, 9 x 1024 codec we can load."""
    if not isinstance(identity, dict) or identity.get("backend") not in BACKENDS:
        raise ValueError(f"codec identity must be a dict with backend in {BACKENDS}, got {identity!r}")
    expected = {
        "sample_rate": SAMPLE_RATE,
        "hop_length": HOP_LENGTH,
        "num_codebooks": NUM_CODEBOOKS,
        "codebook_size": CODEBOOK_SIZE,
    }
    wrong = {key: identity.get(key) for key, value in expected.items() if identity.get(key) != value}
    if wrong:
        raise ValueError(f"unsupported codec identity {wrong}; this project uses {expected}")
    if identity["backend"] == "random" and identity.get("seed") is None:
        raise ValueError("a random codec identity needs a seed")
    if identity["backend"] == "fitted" and not (identity.get("config_overrides") or {}).get("parameters_sha256"):
        raise ValueError("a fitted codec identity needs the SHA-256 of its parameters file")


def load_codec(identity, device=None, batch_size=8, window_seconds=30.0, window_overlap_seconds=1.0, location=None):
    """Build the Codec an identity describes, on `device` (default: CUDA when present). A fitted codec's parameters
    file is looked for among the files this process has read or written, then in `location` (a folder, or a Hub
    model or dataset id); a missing file raises CodecUnavailableError, another fit's or version's a ValueError
    (codec_fitted_music_hybrid.FittedCodecFileError)."""
    check_identity(identity)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backend = identity["backend"]
    if backend == "fitted":
        path = find_codec_parameters(identity, location)
        codec = FittedCodec(*load_parameters(path, identity), dict(identity), device, batch_size)
        remember_codec_parameters(identity, path)
        return codec
    if backend == "random":
        model, identity = _random_dac(identity), dict(identity)
    elif backend == "transformers":
        model, identity = _pretrained_dac(identity)
    else:
        model, identity = _descript_dac(identity), dict(identity)
    _compute_snake_in_place(model)
    return Codec(model.to(device).eval(), identity, device, batch_size, window_seconds, window_overlap_seconds)


# SHA-256 -> a local copy of that fitted codec's parameters file, for every file this process has read or written.
_KNOWN_PARAMETER_FILES = {}


def remember_codec_parameters(identity, path):
    """Note where the parameters file of a fitted codec `identity` is (a dataset's, a fresh fit's)."""
    if identity.get("backend") == "fitted":
        _KNOWN_PARAMETER_FILES[identity["config_overrides"]["parameters_sha256"]] = Path(path)


def find_codec_parameters(identity, location=None):
    """The local path of a fitted codec's parameters file: known to this process, in the folder `location`, or
    downloaded from the Hub repository `location` (model or dataset)."""
    overrides = identity["config_overrides"]
    known = _KNOWN_PARAMETER_FILES.get(overrides["parameters_sha256"])
    if known is not None and known.is_file():
        return known
    name = overrides.get("parameters_file", PARAMETERS_FILE)
    if location is not None and Path(location).is_dir():
        path = Path(location) / name
        if path.is_file():
            return path
    elif location is not None:
        for repo_type in ("model", "dataset"):
            try:
                return Path(hf_hub_download(str(location), name, repo_type=repo_type))
            except Exception:  # not on the Hub, not this kind of repository, offline: try the next, then refuse
                continue
    raise CodecUnavailableError(
        f"the fitted codec's parameters file {name} is missing"
        + (f" from {location}" if location is not None else "")
        + ": it is saved beside codec.json in the dataset folder and in every checkpoint folder trained on it; "
        "copy it back, or re-tokenize the audio with data.build_dataset --codec fitted"
    )


def save_codec_files(identity, directory, location=None):
    """Copy the files a codec needs besides its identity (a fitted codec's parameters) into `directory`."""
    if not identity or identity.get("backend") != "fitted":
        return
    source = find_codec_parameters(identity, location)
    target = Path(directory) / identity["config_overrides"].get("parameters_file", PARAMETERS_FILE)
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)


def _compute_snake_in_place(model):
    """Swap transformers' Snake1d modules for InPlaceSnake1d (other backends keep theirs)."""
    for module in model.modules():
        if type(module) is Snake1d:
            module.__class__ = InPlaceSnake1d


class InPlaceSnake1d(Snake1d):
    """Snake1d's arithmetic, x + sin(alpha x)^2 / (alpha + 1e-9), in one buffer instead of five
    (channels x samples) temporaries: bitwise-equal outputs, faster encoding on CPU
    (bench/bench_encode.py). In-place ops break autograd; the codec only runs under inference_mode."""

    def forward(self, hidden_states):
        shape = hidden_states.shape
        flat = hidden_states.reshape(shape[0], shape[1], -1)
        snake = torch.mul(flat, self.alpha).sin_().square_().mul_((self.alpha + 1e-9).reciprocal())
        return snake.add_(flat).reshape(shape)


def _random_dac(identity):
    # A message for the user, not a developer warning: logged, so it prints as one line without a source line.
    logger.warning(
        f"codec: DAC with RANDOM weights (seed {identity['seed']}); its codes carry no musical meaning. "
        "Use it for tests and offline demos only."
    )
    config = DacConfig(**{**DAC_44KHZ_CONFIG, **(identity.get("config_overrides") or {})})
    # Forked RNG: the same seed gives the same weights, whatever the caller's RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(identity["seed"])
        return DacModel(config)


def _pretrained_dac(identity):
    model_id, revision = identity["model_id"] or PRETRAINED_MODEL_ID, identity.get("revision")
    try:
        if not Path(model_id).is_dir():
            # Pin the commit actually used: the snapshot folder of the cached config is named after it.
            config_path = Path(hf_hub_download(model_id, "config.json", revision=revision))
            revision = config_path.parent.name if config_path.parent.parent.name == "snapshots" else revision
        model = DacModel.from_pretrained(model_id, revision=revision)
    except Exception as error:  # network, auth, missing repo, corrupt cache: all end the same way
        reason = (str(error).splitlines() or [""])[0]
        raise CodecUnavailableError(
            f"cannot load the pretrained DAC {model_id!r} ({type(error).__name__}: {reason}). "
            "Connect to the Hugging Face Hub, pass a downloaded copy with --codec_model PATH, "
            "or choose random weights explicitly with --codec random --codec_seed N "
            "(its codes carry no musical meaning)."
        ) from error
    config = model.config
    _check_model_config(config.sampling_rate, config.hop_length, config.n_codebooks, config.codebook_size)
    return model, {**identity, "model_id": model_id, "revision": revision}


def _descript_dac(identity):
    try:
        import dac
    except ImportError as error:
        raise CodecUnavailableError(
            "the 'dac' backend needs descript-audio-codec: pip install 'music-hybrid[dac]', "
            "or use --codec transformers (same weights) or --codec random --codec_seed N"
        ) from error
    try:
        model = dac.DAC.load(dac.utils.download(model_type=identity["model_id"], tag=identity["revision"]))
    except Exception as error:
        raise CodecUnavailableError(
            f"cannot download descript-audio-codec weights {identity['model_id']}/{identity['revision']} ({error}). "
            "Use --codec random --codec_seed N for random weights (no musical meaning)."
        ) from error
    _check_model_config(model.sample_rate, model.hop_length, model.n_codebooks, model.codebook_size)
    return _DescriptAdapter(model)


def _check_model_config(sample_rate, hop_length, num_codebooks, codebook_size):
    found = (sample_rate, hop_length, num_codebooks, codebook_size)
    if found != (SAMPLE_RATE, HOP_LENGTH, NUM_CODEBOOKS, CODEBOOK_SIZE):
        raise ValueError(
            f"codec has (sample_rate, hop, codebooks, codebook_size) = {found}; expected 44100, 512, 9, 1024"
        )


class _DescriptAdapter(torch.nn.Module):
    """Gives descript-audio-codec's DAC the two calls of transformers' DacModel that Codec uses."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def encode(self, input_values):
        return _Codes(self.model.encode(input_values)[1])

    def encoder(self, input_values):
        return self.model.encoder(input_values)

    def decode(self, audio_codes):
        quantized = self.model.quantizer.from_codes(audio_codes)[0]
        return _Audio(self.model.decode(quantized).squeeze(1))


@dataclass
class _Codes:
    audio_codes: torch.Tensor


@dataclass
class _Audio:
    audio_values: torch.Tensor


@dataclass(frozen=True)
class Window:
    """Frames [start, stop) go through the network; frames [keep_start, keep_stop) are kept."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int


def plan_windows(num_frames, window_frames, overlap_frames):
    """Cover `num_frames` with windows of `window_frames`; neighbours overlap by at least
    `overlap_frames` and split their overlap in the middle, so no kept frame sits near a
    window edge, except at the clip's own edges, where a one-shot pass has the same padding."""
    if num_frames <= window_frames:
        return [Window(0, num_frames, 0, num_frames)]
    stride = window_frames - overlap_frames
    starts = list(range(0, num_frames - window_frames, stride)) + [num_frames - window_frames]
    middles = [(next_start + start + window_frames) // 2 for start, next_start in zip(starts, starts[1:], strict=False)]
    bounds = [0] + middles + [num_frames]
    return [Window(start, start + window_frames, bounds[i], bounds[i + 1]) for i, start in enumerate(starts)]


def waveform_clips(waveform, sampling_rate):
    """Prompt audio -> a list of mono float32 clips at 44.1 kHz: (samples,) is one mono clip, (channels, samples)
    one clip whose channels are averaged, (batch, channels, samples) a batch. Other rates are resampled with soxr
    (high quality), imported only then."""
    waveform = torch.as_tensor(waveform).detach().float().cpu()
    if waveform.dim() not in (1, 2, 3) or waveform.shape[-1] == 0:
        raise ValueError(
            "waveform must be (samples,), (channels, samples) or (batch, channels, samples) with samples, "
            f"got shape {tuple(waveform.shape)}"
        )
    clips = waveform.reshape(-1, *waveform.shape[-2:]).mean(dim=1) if waveform.dim() > 1 else waveform[None]
    return [torch.from_numpy(resample_to_codec_rate(clip.numpy(), sampling_rate)) for clip in clips]


def resample_to_codec_rate(mono, rate):
    """A mono float32 numpy signal at `rate` -> at 44.1 kHz, with soxr (high quality), imported only when the rate
    differs: the one resampler of the data pipeline and of prompts given to a checkpoint."""
    if rate == SAMPLE_RATE or not mono.size:
        return mono
    try:
        import soxr
    except ImportError as error:
        raise ImportError(f"audio at {rate} Hz must be resampled to {SAMPLE_RATE} Hz: pip install soxr") from error
    return soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")


def num_frames_for(num_samples):
    """T = ceil(n / hop): the last partial hop is padded with zeros."""
    return math.ceil(num_samples / HOP_LENGTH)


def _pad_to_hop(clip):
    return torch.nn.functional.pad(clip, (0, num_frames_for(clip.numel()) * HOP_LENGTH - clip.numel()))


class Codec:
    """encode(waveforms) -> list of (9, T) codes; decode(codes) -> (B, n) waveforms, all at 44.1 kHz."""

    def __init__(self, model, identity, device, batch_size=8, window_seconds=30.0, window_overlap_seconds=1.0):
        self.model = model
        self.identity = identity
        self.device = device
        self.batch_size = batch_size
        self.window_frames = max(1, round(window_seconds * SAMPLE_RATE / HOP_LENGTH))
        self.overlap_frames = round(window_overlap_seconds * SAMPLE_RATE / HOP_LENGTH)
        if not 0 <= self.overlap_frames < self.window_frames:
            raise ValueError(
                f"window overlap ({window_overlap_seconds} s) must be shorter than the window ({window_seconds} s)"
            )

    @torch.inference_mode()
    def encode(self, waveforms):
        """waveforms: list of 1-D float arrays at 44.1 kHz, or a (B, n) tensor.
        Returns one (9, ceil(n_i / 512)) int64 CPU tensor per waveform."""
        return self._run_encoder(waveforms, lambda inputs: self.model.encode(input_values=inputs).audio_codes)

    @torch.inference_mode()
    def encoder_latents(self, waveforms):
        """The encoder's continuous output before quantization, one (D, ceil(n_i / 512)) float32 CPU tensor per
        waveform (D = 1024 for DAC 44.1 kHz): the default embedding of the Frechet Audio Distance."""
        return self._run_encoder(waveforms, lambda inputs: self.model.encoder(inputs))

    def _run_encoder(self, waveforms, run):
        """`run` on (batch, 1, samples) windows of every waveform, stitched into one (rows, frames) tensor each."""
        clips = [torch.as_tensor(waveform, dtype=torch.float32).cpu().reshape(-1) for waveform in waveforms]
        if any(clip.numel() == 0 for clip in clips):
            raise ValueError("cannot encode an empty waveform")
        padded = [_pad_to_hop(clip) for clip in clips]
        outputs = [None] * len(padded)
        jobs = [
            (index, window, clip[window.start * HOP_LENGTH : window.stop * HOP_LENGTH])
            for index, clip in enumerate(padded)
            for window in plan_windows(clip.numel() // HOP_LENGTH, self.window_frames, self.overlap_frames)
        ]
        for (index, window), window_output in self._run_batched(jobs, lambda inputs: run(inputs.unsqueeze(1))):
            if outputs[index] is None:
                outputs[index] = window_output.new_empty(window_output.shape[0], padded[index].numel() // HOP_LENGTH)
            keep = slice(window.keep_start - window.start, window.keep_stop - window.start)
            outputs[index][:, window.keep_start : window.keep_stop] = window_output[:, keep]
        return outputs

    @torch.inference_mode()
    def decode(self, codes, num_samples=None):
        """codes: (B, 9, T) integer tensor -> (B, T * 512) float32 CPU tensor at 44.1 kHz,
        trimmed to `num_samples` when given."""
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.dim() != 3 or codes.shape[1] != NUM_CODEBOOKS:
            raise ValueError(f"codes must have shape (batch, {NUM_CODEBOOKS}, frames), got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= CODEBOOK_SIZE):
            raise ValueError(f"codes must lie in [0, {CODEBOOK_SIZE}); pad/bos/eos ids are not audio")
        audio = torch.empty(codes.shape[0], codes.shape[2] * HOP_LENGTH)

        def run(inputs):
            return self.model.decode(audio_codes=inputs).audio_values

        jobs = [
            (index, window, codes[index, :, window.start : window.stop])
            for index in range(codes.shape[0])
            for window in plan_windows(codes.shape[2], self.window_frames, self.overlap_frames)
        ]
        for (index, window), window_audio in self._run_batched(jobs, run):
            offset = window.start * HOP_LENGTH
            keep_start, keep_stop = window.keep_start * HOP_LENGTH, window.keep_stop * HOP_LENGTH
            audio[index, keep_start:keep_stop] = window_audio[keep_start - offset : keep_stop - offset]
        return audio if num_samples is None else audio[:, :num_samples]

    def _run_batched(self, jobs, run):
        """Yield ((index, window), output) for every job, stacking only inputs of equal length."""
        by_length = {}
        for index, window, inputs in jobs:
            by_length.setdefault(inputs.shape[-1], []).append((index, window, inputs))
        for group in by_length.values():
            for first in range(0, len(group), self.batch_size):
                batch = group[first : first + self.batch_size]
                outputs = run(torch.stack([inputs for _, _, inputs in batch]).to(self.device)).cpu()
                for (index, window, _), output in zip(batch, outputs, strict=True):
                    yield (index, window), output
