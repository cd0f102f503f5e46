import numpy as np
import pytest

from comparison.paired_statistics import bootstrap_p_values, compare_losses, holm_adjust, mean_interval

NUM_SEGMENTS = 200
NUM_CODEBOOKS = 9
NUM_REPLICATES = 200
NUM_RESAMPLES = 1000


def correlated_models(rng, true_difference):
    """Per-segment losses of two models that share a large segment effect (how real validation losses behave)."""
    codebook_level = np.linspace(4.0, 5.7, NUM_CODEBOOKS)
    segment_effect = rng.normal(0.0, 0.5, size=(NUM_SEGMENTS, 1))
    losses_a = codebook_level + segment_effect + rng.normal(0.0, 0.05, size=(NUM_SEGMENTS, NUM_CODEBOOKS))
    losses_b = (
        codebook_level + true_difference + segment_effect + rng.normal(0.0, 0.05, size=(NUM_SEGMENTS, NUM_CODEBOOKS))
    )
    return losses_a, losses_b


def test_interval_covers_the_true_difference_about_95_percent_of_the_time():
    true_difference = np.linspace(-0.03, 0.0, NUM_CODEBOOKS)
    rng = np.random.default_rng(1)
    covered = []
    for replicate in range(NUM_REPLICATES):
        losses_a, losses_b = correlated_models(rng, true_difference)
        test = compare_losses(losses_a, losses_b, num_resamples=NUM_RESAMPLES, seed=replicate)
        covered.append((np.array(test.ci_low) <= true_difference) & (true_difference <= np.array(test.ci_high)))
    coverage = np.mean(covered)
    assert 0.9 <= coverage <= 0.99, coverage


def test_paired_intervals_are_narrower_than_unpaired_for_correlated_models():
    losses_a, losses_b = correlated_models(np.random.default_rng(2), true_difference=-0.02)
    paired = compare_losses(losses_a, losses_b, num_resamples=NUM_RESAMPLES)
    unpaired = compare_losses(losses_a, losses_b, paired=False, num_resamples=NUM_RESAMPLES)
    paired_width = np.subtract(paired.ci_high, paired.ci_low)
    unpaired_width = np.subtract(unpaired.ci_high, unpaired.ci_low)
    assert np.all(paired_width < 0.25 * unpaired_width)
    # The shared segment effect hides the difference from the unpaired analysis only.
    assert all(paired.significant) and not any(unpaired.significant)
    assert np.allclose(paired.difference, unpaired.difference)


def test_zero_true_difference_is_rarely_flagged_after_holm_correction():
    rng = np.random.default_rng(3)
    any_flagged = []
    for replicate in range(NUM_REPLICATES):
        losses_a, losses_b = correlated_models(rng, true_difference=0.0)
        test = compare_losses(losses_a, losses_b, num_resamples=NUM_RESAMPLES, seed=replicate)
        any_flagged.append(any(test.significant))
    assert np.mean(any_flagged) <= 0.07


def test_holm_adjustment_matches_hand_computation():
    # Sorted: 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(0.06, 1*0.04).
    adjusted = holm_adjust([0.01, 0.04, 0.03, 0.005])
    assert np.allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    assert np.allclose(holm_adjust([0.5, 0.9]), [1.0, 1.0])


def test_p_value_is_small_only_when_replicates_exclude_zero():
    replicates = np.stack([np.linspace(0.1, 0.2, 999), np.linspace(-1.0, 1.0, 999)], axis=1)
    p_values = bootstrap_p_values(replicates)
    assert p_values[0] == pytest.approx(2 / 1000)
    assert p_values[1] == pytest.approx(1.0)


def test_weights_give_the_token_weighted_difference():
    losses_a = np.array([[1.0], [2.0], [3.0]])
    losses_b = np.array([[1.5], [2.0], [3.0]])
    weights = np.array([2.0, 1.0, 1.0])
    test = compare_losses(losses_a, losses_b, weights=weights, num_resamples=200)
    assert test.difference == pytest.approx([0.5 * 2 / 4])
    mean, low, high = mean_interval(losses_a, weights=weights, num_resamples=200)
    assert mean == pytest.approx([(2 + 2 + 3) / 4])
    assert low[0] <= mean[0] <= high[0]


@pytest.mark.filterwarnings("error")
def test_resamples_that_draw_only_weightless_segments_are_left_out():
    """A late position bucket that only one segment of six reaches: about a third of the resamples miss it."""
    losses_a = np.arange(6.0)[:, None]
    weights = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 3.0])
    test = compare_losses(losses_a, losses_a + 0.5, weights=weights, num_resamples=300)
    assert test.difference == pytest.approx([0.5])
    assert np.isfinite(test.ci_low).all() and np.isfinite(test.ci_high).all()
    assert 0.0 < test.p_value[0] < 0.05
    mean, low, high = mean_interval(losses_a, weights=weights, num_resamples=300)
    assert mean[0] == low[0] == high[0] == 5.0

def test_results_are_reproducible_and_json_ready():
    losses_a, losses_b = correlated_models(np.random.default_rng(4), true_difference=0.01)
    first = compare_losses(losses_a, losses_b, num_resamples=300, seed=7).to_dict()
    second = compare_losses(losses_a, losses_b, num_resamples=300, seed=7).to_dict()
    assert first == second
    assert all(isinstance(value, float) for value in first["ci_low"])


@pytest.mark.parametrize(
    "losses_b, message",
    [
        (np.zeros((10, 4)), "same segments"),
        (np.zeros((20, 3)), "codebook counts"),
        (np.full((20, 4), np.nan), "NaN"),
    ],
)
def test_malformed_inputs_are_rejected(losses_b, message):
    with pytest.raises(ValueError, match=message):
        compare_losses(np.zeros((20, 4)), losses_b, num_resamples=10)
