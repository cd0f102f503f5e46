"""What the Frechet Audio Distance compares: embeddings of audio clips, the distance with a bootstrap interval, and
its floor (the FAD between two halves of the reference audio).

`embedding_for` picks the embedding of a codec. With a pretrained DAC it is the continuous output of its encoder
(one vector per codec frame, before quantization), one of the embeddings published work reports FAD in. Offline
(the fitted codec, or the random DAC of tests) it is log-mel frames (metrics/log_mel.py): independent of the
codec and needing no download, so that a number means the same whichever codec made the audio. Every result
names its embedding.
"""

import numpy as np

from metrics.frechet_audio_distance.frechet_audio_distance import frechet_distance, gaussian_fit, pooled_rows
from metrics.log_mel import DYNAMIC_RANGE_DB, NUM_MELS, log_mel

LOG_MEL_EMBEDDING = f"log-mel frames ({NUM_MELS} mel bands, hop 512 at 44.1 kHz, dB over {DYNAMIC_RANGE_DB:g} dB)"
RANDOM_CODEC_NOTE = (
    "The codec has random weights: its decoded audio is noise whatever a model learned, so this FAD ranks noise. "
    "Use the fitted codec (data.build_dataset --codec fitted) or a pretrained one for audio that can be judged."
)


def embedding_for(codec):
    """(name, note, embed): embed(waveforms) -> one (frames, D) float64 array per waveform; note is None or a caveat.
    DAC encoder latents for a pretrained DAC, log-mel frames for the offline codecs (fitted, random)."""
    identity = codec.identity
    if identity["backend"] in ("transformers", "dac"):
        name, note = describe_embedding(identity)
        return name, note, lambda waveforms: dac_embeddings(codec, waveforms)
    return LOG_MEL_EMBEDDING, RANDOM_CODEC_NOTE if identity["backend"] == "random" else None, log_mel_embeddings


def log_mel_embeddings(waveforms):
    """One (frames, 128) float64 array of log-mel frames per 44.1 kHz mono waveform."""
    return [log_mel(np.asarray(waveform, dtype=np.float64)) for waveform in waveforms]


def dac_embeddings(codec, waveforms):
    """One (frames, D) float64 array of DAC encoder latents per waveform (44.1 kHz, mono)."""
    return [latents.T.double().numpy() for latents in codec.encoder_latents(waveforms)]


def describe_embedding(identity):
    """(name, note) of the DAC-latent embedding space of a codec identity; note is None unless it is random."""
    if identity["backend"] == "random":
        size = " small" if identity.get("config_overrides") else ""
        name = f"dac-encoder-latents (random{size} codec, seed {identity['seed']})"
        note = (
            "The codec has random weights, so its embedding space is random too: this FAD measures distance in a "
            "random feature space, not perceptual quality. Use a pretrained codec for a meaningful FAD."
        )
        return name, note
    revision = f"@{identity['revision']}" if identity.get("revision") else ""
    return f"dac-encoder-latents ({identity['model_id']}{revision})", None


def fad_with_interval(sample_embeddings, reference_embeddings, num_resamples=200, confidence=0.95, seed=0):
    """FAD between the pooled frames of the samples and of the reference clips, with a percentile bootstrap
    interval over samples (the samples are redrawn with replacement, the reference stays fixed).

    sample_embeddings, reference_embeddings: lists of (frames, D) arrays, one per clip.
    """
    reference_fit = gaussian_fit(pooled_rows(reference_embeddings))
    fad = frechet_distance(gaussian_fit(pooled_rows(sample_embeddings)), reference_fit)
    generator = np.random.default_rng(seed)
    resampled = []
    for _ in range(num_resamples):
        chosen = generator.integers(len(sample_embeddings), size=len(sample_embeddings))
        drawn = pooled_rows([sample_embeddings[i] for i in chosen])
        resampled.append(frechet_distance(gaussian_fit(drawn), reference_fit))
    tail = (1 - confidence) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail]) if resampled else (float("nan"), float("nan"))
    return {
        "fad": fad,
        "ci_low": float(low),
        "ci_high": float(high),
        "confidence": confidence,
        "num_resamples": num_resamples,
        "num_samples": len(sample_embeddings),
        "num_sample_frames": int(sum(len(rows) for rows in sample_embeddings)),
        "num_reference_clips": len(reference_embeddings),
        "num_reference_frames": int(sum(len(rows) for rows in reference_embeddings)),
    }


def fad_floor(reference_embeddings):
    """The FAD between the first and the second half of every reference clip (pooled): what two samples of the
    same music score, the floor under which no model's FAD can be read as better."""
    halves = [(rows[: len(rows) // 2], rows[len(rows) // 2 :]) for rows in reference_embeddings if len(rows) >= 2]
    return frechet_distance(gaussian_fit(pooled_rows([first for first, _ in halves])),
                            gaussian_fit(pooled_rows([second for _, second in halves])))
