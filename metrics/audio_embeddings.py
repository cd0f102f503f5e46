"""What the Frechet Audio Distance compares: embeddings of audio clips, and the distance with a bootstrap interval.

The default embedding is the continuous output of the DAC encoder of the codec a model was trained with (one vector
per codec frame, before quantization): available wherever the codec is, and one of the embeddings published work
reports FAD in. Its name says which codec it came from; with the random offline codec the space is random, and
`describe_embedding` says so, so a number from it is never mistaken for a perceptual one.
"""

import numpy as np

from metrics.frechet_audio_distance.frechet_audio_distance import frechet_distance, gaussian_fit, pooled_rows


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
