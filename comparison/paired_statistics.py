"""Bootstrap confidence intervals and Holm correction for per-codebook model comparisons.

The unit of resampling is the validation segment: both models are scored on the same
segments, so resampling segments jointly (paired bootstrap) cancels the large
segment-to-segment variation that both models share and leaves only the variation in
their difference. Pure numpy; no model or torch code here.

Conventions: losses are arrays of shape (num_segments, num_codebooks); a difference is
`losses_b - losses_a`, so a negative difference means model b has the lower loss.
"""

from dataclasses import asdict, dataclass

import numpy as np

# Bounds the (resamples x segments) count matrix built per batch to ~32 MB of float64.
_MAX_COUNT_MATRIX_ELEMENTS = 4_000_000


@dataclass
class DifferenceTest:
    """Per-codebook result of comparing two models; every field is a list of K floats/bools."""

    difference: list
    ci_low: list
    ci_high: list
    p_value: list
    p_value_holm: list
    significant: list
    confidence: float
    alpha: float
    num_resamples: int
    paired: bool

    def to_dict(self):
        return asdict(self)


def compare_losses(
    losses_a,
    losses_b,
    weights=None,
    paired=True,
    num_resamples=10_000,
    confidence=0.95,
    alpha=0.05,
    seed=0,
):
    """Test `losses_b - losses_a` on every codebook: bootstrap interval, p-value, Holm significance.

    weights: optional (num_segments,) token counts, so the point estimate is the
    token-weighted mean that the evaluation table reports. With paired=False the two
    models are resampled independently (the wrong analysis for shared segments, kept for
    comparison and for models scored on different segments).
    """
    losses_a, weights_a = _validated_losses(losses_a, weights, "losses_a")
    losses_b, weights_b = _validated_losses(losses_b, weights, "losses_b")
    if losses_a.shape[1] != losses_b.shape[1]:
        raise ValueError(f"the two models have different codebook counts: {losses_a.shape[1]} and {losses_b.shape[1]}")
    if paired and losses_a.shape != losses_b.shape:
        raise ValueError(
            "a paired comparison needs the same segments for both models, "
            f"got shapes {losses_a.shape} and {losses_b.shape}"
        )
    rng = np.random.default_rng(seed)
    difference = _weighted_mean(losses_b, weights_b) - _weighted_mean(losses_a, weights_a)
    if paired:
        replicates = bootstrap_means(losses_b - losses_a, weights_a, num_resamples, rng)
    else:
        replicates = bootstrap_means(losses_b, weights_b, num_resamples, rng) - bootstrap_means(
            losses_a, weights_a, num_resamples, rng
        )
    ci_low, ci_high = percentile_interval(replicates, confidence)
    p_value = bootstrap_p_values(replicates)
    p_value_holm = holm_adjust(p_value)
    return DifferenceTest(
        difference=difference.tolist(),
        ci_low=ci_low.tolist(),
        ci_high=ci_high.tolist(),
        p_value=p_value.tolist(),
        p_value_holm=p_value_holm.tolist(),
        significant=(p_value_holm < alpha).tolist(),
        confidence=confidence,
        alpha=alpha,
        num_resamples=num_resamples,
        paired=paired,
    )


def mean_interval(losses, weights=None, num_resamples=10_000, confidence=0.95, seed=0):
    """Per-codebook mean of one model's losses and its bootstrap interval: (mean, low, high), each (K,)."""
    losses, weights = _validated_losses(losses, weights, "losses")
    replicates = bootstrap_means(losses, weights, num_resamples, np.random.default_rng(seed))
    low, high = percentile_interval(replicates, confidence)
    return _weighted_mean(losses, weights), low, high


def bootstrap_means(values, weights, num_resamples, rng):
    """Weighted column means of `num_resamples` resamples (with replacement) of the rows: (num_resamples, K).

    A resample is represented by how often it draws each row, so its weighted mean is a
    matrix product instead of a (resamples x rows x K) gather. A resample that draws only rows of
    weight zero (segments with no tokens in a late position bucket, say) has no mean: NaN, which
    the interval and the p-values leave out.
    """
    num_rows = values.shape[0]
    weighted_values = values * weights[:, None]
    batch_size = max(1, _MAX_COUNT_MATRIX_ELEMENTS // num_rows)
    means = []
    for start in range(0, num_resamples, batch_size):
        batch = min(batch_size, num_resamples - start)
        draws = rng.integers(0, num_rows, size=(batch, num_rows))
        flat_draws = (draws + num_rows * np.arange(batch)[:, None]).ravel()
        counts = np.bincount(flat_draws, minlength=batch * num_rows).reshape(batch, num_rows).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            means.append((counts @ weighted_values) / (counts @ weights)[:, None])
    return np.concatenate(means, axis=0)


def percentile_interval(replicates, confidence):
    """Percentile bootstrap interval per column: (low, high)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    tail = (1.0 - confidence) / 2.0
    low, high = np.nanquantile(replicates, [tail, 1.0 - tail], axis=0)
    return low, high


def bootstrap_p_values(replicates):
    """Two-sided p-value per column for "the mean difference is zero".

    Twice the smaller share of replicates on either side of zero, so p < alpha exactly
    when zero lies outside the (1 - alpha) percentile interval; the +1 terms keep a
    finite number of resamples from ever reporting p = 0.
    """
    num_resamples = np.sum(~np.isnan(replicates), axis=0)
    at_or_below = (np.sum(replicates <= 0.0, axis=0) + 1) / (num_resamples + 1)
    at_or_above = (np.sum(replicates >= 0.0, axis=0) + 1) / (num_resamples + 1)
    return np.minimum(1.0, 2.0 * np.minimum(at_or_below, at_or_above))


def holm_adjust(p_values):
    """Holm-Bonferroni adjusted p-values (same order as given); reject where adjusted < alpha.

    Controls the family-wise error rate over all the tests given (here: the codebooks)
    without assuming they are independent.
    """
    p_values = np.asarray(p_values, dtype=np.float64)
    num_tests = p_values.size
    order = np.argsort(p_values, kind="stable")
    step_down = (num_tests - np.arange(num_tests)) * p_values[order]
    adjusted_sorted = np.minimum(1.0, np.maximum.accumulate(step_down))
    adjusted = np.empty_like(adjusted_sorted)
    adjusted[order] = adjusted_sorted
    return adjusted


def _validated_losses(losses, weights, name):
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim == 1:
        losses = losses[:, None]
    if losses.ndim != 2 or losses.shape[0] < 2:
        raise ValueError(f"{name} must have shape (num_segments >= 2, num_codebooks), got {losses.shape}")
    if not np.all(np.isfinite(losses)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if weights is None:
        return losses, np.ones(losses.shape[0])
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (losses.shape[0],) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(
            f"weights must be {losses.shape[0]} non-negative numbers (one per segment) with a positive sum"
        )
    return losses, weights


def _weighted_mean(values, weights):
    return (weights @ values) / weights.sum()
