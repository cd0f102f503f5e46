"""The context-free baselines: scored on exactly the tokens the models are scored on, and right on codes whose
statistics are known."""

import math

import numpy as np
import pytest
from datasets import Dataset

from comparison.baselines import context_free_baselines, sample_bigram_codes
from data.dataset_io import CODES_FEATURES
from modeling_music_hybrid import MusicHybridConfig, MusicHybridForCausalLM
from training.evaluation import evaluate_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see conftest.py


def codes_dataset(tracks):
    rows = [{"codes": codes.tolist(), "track_id": f"t{i}", "start_frame": 0, "num_frames": codes.shape[1],
             "duration": 0.0, "genre": None, "source": "test", "text": None} for i, codes in enumerate(tracks)]
    return Dataset.from_list(rows, features=CODES_FEATURES)


def test_a_cycle_is_free_for_the_bigram_and_costs_the_unigram_log_of_its_length():
    cycle = np.arange(5)  # every codebook walks 0, 1, 2, 3, 4, 0, ...: uniform codes, deterministic successors
    train = codes_dataset([np.tile(np.roll(cycle, s), (9, 40)) for s in range(3)])
    validation = codes_dataset([np.tile(cycle, (9, 30))])
    baselines = context_free_baselines(train, validation, segment_length=64, num_codebooks=9, codebook_size=16)
    assert baselines["unigram"]["mean_loss"] == pytest.approx(math.log(5), abs=0.01)
    assert baselines["unigram"]["train_entropy"][0] == pytest.approx(math.log(5), abs=0.08)  # smoothing: unused codes
    # only each segment's first frame (no previous code) pays the unigram price
    first_frames = 3 / 150
    assert baselines["bigram"]["mean_loss"] < math.log(5) * first_frames + 0.05
    assert baselines["best"] == "bigram"


def test_the_baselines_score_the_tokens_the_models_are_scored_on():
    generator = np.random.default_rng(0)
    train = codes_dataset([generator.integers(0, 1024, size=(9, 120)) for _ in range(2)])
    validation = codes_dataset([generator.integers(0, 1024, size=(9, n)) for n in (70, 33)])
    baselines = context_free_baselines(train, validation, segment_length=41, num_codebooks=9, codebook_size=1024)
    model = MusicHybridForCausalLM(MusicHybridConfig.from_preset("transformer-tiny"))
    evaluation = evaluate_model(model, validation, segment_length=41, batch_size=4, progress=False)
    assert baselines["num_tokens"] == evaluation["num_tokens"]
    assert baselines["num_segments"] == evaluation["num_segments"]
    # random codes: nothing to learn, so both baselines sit near log(1024) (the unigram a bit above: smoothing)
    assert abs(baselines["unigram"]["mean_loss"] - math.log(1024)) < 0.2


def test_the_bigram_sampler_follows_the_training_transitions_and_is_seeded():
    cycle = np.tile(np.arange(3), 40)  # 0 1 2 0 1 2 ... in every codebook
    train = [np.stack([cycle + 10 * k for k in range(9)])]
    samples = sample_bigram_codes(train, num_samples=4, num_frames=30, codebook_size=128, seed=1, backoff_weight=1e-6)
    assert samples.shape == (4, 9, 30)
    steps = (samples[:, :, 1:] - samples[:, :, :-1]) % 3
    assert (steps == 1).all() and (samples // 10 == np.arange(9)[None, :, None]).all()
    again = sample_bigram_codes(train, num_samples=4, num_frames=30, codebook_size=128, seed=1, backoff_weight=1e-6)
    assert np.array_equal(samples, again)
