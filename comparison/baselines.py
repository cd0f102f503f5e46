"""Context-free baselines: what a model scores by knowing only how often each code occurs (unigram) or which code
follows which within a codebook (bigram), fitted on the training codes and scored on the same validation segments
as the models. A model whose validation loss is not clearly below them has learned code frequencies, not music."""

import math

import numpy as np

from training.evaluation import validation_segments

UNIGRAM_PSEUDOCOUNT = 0.5  # add-one-half (Krichevsky-Trofimov) smoothing over the codebook
# The bigram backs off to the unigram with this weight; the one best on the validation codes is kept, the setting
# most favourable to the baseline (so beating it is a conservative claim).
BIGRAM_BACKOFF_WEIGHTS = (1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0)


def context_free_baselines(train_dataset, validation_dataset, segment_length, num_codebooks, codebook_size):
    """{"unigram": ..., "bigram": ..., "best": name}: per-codebook validation cross entropy (nats) of each baseline,
    token-weighted like the models' table, and the unigram's entropy on the training codes."""
    train = [np.asarray(codes, dtype=np.int64) for codes in train_dataset["codes"]]
    unigram = np.stack([np.bincount(np.concatenate([t[k] for t in train]), minlength=codebook_size)
                        for k in range(num_codebooks)]).astype(np.float64) + UNIGRAM_PSEUDOCOUNT
    unigram /= unigram.sum(axis=1, keepdims=True)
    pair_counts = np.zeros((num_codebooks, codebook_size, codebook_size))
    for codes in train:
        for k in range(num_codebooks):
            np.add.at(pair_counts[k], (codes[k, :-1], codes[k, 1:]), 1)

    segments = _segment_codes(validation_dataset, segment_length, num_codebooks)
    unigram_loss = _mean_loss(segments, unigram, lambda k, previous, current: unigram[k, current])
    pair_totals = pair_counts.sum(axis=-1)
    bigram_losses = {}
    for weight in BIGRAM_BACKOFF_WEIGHTS:
        def bigram(k, previous, current, weight=weight):
            counts = pair_counts[k, previous, current]
            return (counts + weight * unigram[k, current]) / (pair_totals[k, previous] + weight)
        bigram_losses[weight] = _mean_loss(segments, unigram, bigram)
    weight = min(bigram_losses, key=lambda w: np.mean(bigram_losses[w]))
    entropy = -(unigram * np.log(unigram)).sum(axis=1)
    num_tokens = num_codebooks * sum(codes.shape[1] for codes in segments)
    results = {
        "unigram": _summary(unigram_loss, train_entropy=entropy.tolist()),
        "bigram": _summary(bigram_losses[weight], backoff_weight=weight),
        "num_segments": len(segments),
        "num_tokens": num_tokens,
    }
    results["best"] = min(("unigram", "bigram"), key=lambda name: results[name]["mean_loss"])
    return results


def _segment_codes(dataset, segment_length, num_codebooks):
    """The (K, frames) codes of each validation segment, the windows the models are evaluated on."""
    frames = segment_length - num_codebooks
    rows = {}
    segments = []
    for segment in validation_segments(dataset, segment_length, num_codebooks):
        if segment.row not in rows:
            rows[segment.row] = np.asarray(dataset[segment.row]["codes"], dtype=np.int64)
        segments.append(rows[segment.row][:, segment.row_offset : segment.row_offset + frames])
    return segments


def _mean_loss(segments, unigram, probability):
    """Per-codebook mean of -log probability(k, previous code, code) over every validation token; a segment's first
    frame has no previous code and gets the unigram, as the models predict it from the start token alone."""
    num_codebooks = segments[0].shape[0]
    sums, count = np.zeros(num_codebooks), 0
    for codes in segments:
        for k in range(num_codebooks):
            sums[k] -= np.log(unigram[k, codes[k, 0]]) + np.log(probability(k, codes[k, :-1], codes[k, 1:])).sum()
        count += codes.shape[1]
    return sums / count


def _summary(codebook_loss, **extra):
    mean = float(np.mean(codebook_loss))
    return {"codebook_loss": list(map(float, codebook_loss)), "mean_loss": mean, "perplexity": math.exp(mean), **extra}


def sample_bigram_codes(train_codes, num_samples, num_frames, codebook_size, seed=0, backoff_weight=1.0):
    """(num_samples, K, num_frames) int64 codes drawn from the context-free bigram of `train_codes` (a list of (K, T)
    arrays): each codebook a Markov chain over its own codes, started from its unigram, backing off to the unigram
    with `backoff_weight`. Decoded, they are the FAD's ceiling: audio with the right code statistics and no music."""
    train = [np.asarray(codes, dtype=np.int64) for codes in train_codes]
    num_codebooks = train[0].shape[0]
    generator = np.random.default_rng(seed)
    samples = np.zeros((num_samples, num_codebooks, num_frames), dtype=np.int64)
    for k in range(num_codebooks):
        # the training frequencies themselves, no pseudocount: a code never seen is never drawn
        unigram = np.bincount(np.concatenate([t[k] for t in train]), minlength=codebook_size).astype(np.float64)
        unigram /= unigram.sum()
        pairs = np.zeros((codebook_size, codebook_size))
        for codes in train:
            np.add.at(pairs, (codes[k, :-1], codes[k, 1:]), 1)
        transitions = (pairs + backoff_weight * unigram) / (pairs.sum(axis=1, keepdims=True) + backoff_weight)
        cumulative = np.cumsum(transitions, axis=1)
        current = np.minimum(np.searchsorted(np.cumsum(unigram), generator.random(num_samples)), codebook_size - 1)
        for frame in range(num_frames):
            samples[:, k, frame] = current
            draws = generator.random(num_samples)
            current = np.array([min(np.searchsorted(cumulative[code], draw), codebook_size - 1)
                                for code, draw in zip(current, draws, strict=True)])
    return samples
