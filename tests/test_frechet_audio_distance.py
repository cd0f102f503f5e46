"""The Frechet Audio Distance: the evaluate module against an independent computation and known cases, loaded the
way a user loads it (evaluate.load on the folder, in a fresh offline process), and the DAC-latent embeddings."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from metrics.audio_embeddings import (
    LOG_MEL_EMBEDDING, dac_embeddings, describe_embedding, embedding_for, fad_floor, fad_with_interval,
    log_mel_embeddings,
)
from metrics.frechet_audio_distance.frechet_audio_distance import frechet_distance, gaussian_fit

MODULE = Path(__file__).resolve().parent.parent / "metrics" / "frechet_audio_distance"


def correlated_set(seed, rows, dims=12, scale=1.0, shift=0.0):
    generator = np.random.default_rng(seed)
    return generator.normal(size=(rows, dims)) @ generator.normal(size=(dims, dims)) * scale + shift


def scipy_frechet_distance(a, b):
    """The textbook formula with scipy's general matrix square root of the (non-symmetric) product."""
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * root))


def test_matches_scipy_on_sets_of_different_sizes():
    a, b = correlated_set(0, 400), correlated_set(1, 150, scale=1.5, shift=0.3)
    expected = scipy_frechet_distance(a, b)
    assert expected > 1
    assert frechet_distance(gaussian_fit(a), gaussian_fit(b)) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(gaussian_fit(b), gaussian_fit(a)) == pytest.approx(expected, rel=1e-9)


def test_identical_sets_are_at_distance_zero_even_with_fewer_rows_than_dimensions():
    a = correlated_set(2, 300)
    assert frechet_distance(gaussian_fit(a), gaussian_fit(a.copy())) == pytest.approx(0, abs=1e-8)
    few = correlated_set(3, 5)  # singular covariance: 5 rows in 12 dimensions
    assert frechet_distance(gaussian_fit(few), gaussian_fit(few)) == pytest.approx(0, abs=1e-8)


def test_a_mean_shift_costs_its_squared_norm():
    a = correlated_set(4, 200)
    shift = np.linspace(-1, 2, a.shape[1])
    distance = frechet_distance(gaussian_fit(a), gaussian_fit(a + shift))
    assert distance == pytest.approx(np.sum(shift**2), rel=1e-7)


def test_evaluate_load_of_the_folder_works_offline_in_a_fresh_process():
    a, b = correlated_set(5, 60, dims=4), correlated_set(6, 40, dims=4, shift=1.0)
    script = (
        "import evaluate, json, sys\n"
        f"fad = evaluate.load({str(MODULE)!r})\n"
        "a, b = json.loads(sys.stdin.read())\n"
        "print(json.dumps(fad.compute(predictions=[a], references=[b], embedding='toy')))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", script], input=json.dumps([a.tolist(), b.tolist()]), env=env,
                         capture_output=True, text=True, check=True, cwd="/")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["frechet_audio_distance"] == pytest.approx(scipy_frechet_distance(a, b), rel=1e-6)
    assert (result["num_predictions"], result["num_references"], result["embedding"]) == (60, 40, "toy")


def test_mismatched_or_tiny_sets_are_refused():
    with pytest.raises(ValueError, match="n >= 2"):
        gaussian_fit(np.zeros((1, 3)))


def test_dac_latents_of_the_random_codec_are_named_as_random_and_the_interval_covers_the_estimate(small_codec):
    generator = np.random.default_rng(0)
    clips = [generator.normal(size=4096).astype(np.float32) * 0.1 for _ in range(4)]
    embeddings = dac_embeddings(small_codec, clips)
    assert [e.shape for e in embeddings] == [(8, 128)] * 4  # 4096 samples = 8 frames of 128-dim latents
    name, note = describe_embedding(small_codec.identity)
    assert "random" in name and "random" in note
    louder = dac_embeddings(small_codec, [clip * 8 for clip in clips])
    result = fad_with_interval(louder, embeddings, num_resamples=50)
    # A percentile interval holds its estimate here, up to rounding (the quantiles of near-equal resamples)
    assert result["ci_low"] <= result["fad"] * (1 + 1e-6) and result["fad"] <= result["ci_high"] * (1 + 1e-6)
    assert result["fad"] > 0
    assert fad_with_interval(embeddings, embeddings, num_resamples=0)["fad"] == pytest.approx(0, abs=1e-9)


def test_offline_codecs_get_the_log_mel_embedding_and_its_floor_sits_far_below_other_music(small_codec):
    name, note, embed = embedding_for(small_codec)
    assert name == LOG_MEL_EMBEDDING and "random" in note and embed is log_mel_embeddings
    time = np.arange(2 * 44100) / 44100
    generator = np.random.default_rng(0)
    low = [np.sin(2 * np.pi * 220 * time) * 0.3 + generator.normal(size=time.size) * 0.01 for _ in range(3)]
    high = [np.sin(2 * np.pi * 1760 * time) * 0.3 + generator.normal(size=time.size) * 0.01 for _ in range(3)]
    low_embeddings = log_mel_embeddings(low)
    assert [rows.shape for rows in low_embeddings] == [(173, 128)] * 3  # 88200 samples: 173 frames, centred
    floor = fad_floor(low_embeddings)
    assert 0 <= floor < 0.05 * fad_with_interval(log_mel_embeddings(high), low_embeddings, num_resamples=0)["fad"]
