"""Random crops, padding and the resumable data order (no model involved)."""

import itertools

import torch
from training_helpers import synthetic_split

from configuration_music_hybrid import MusicHybridConfig
from training.crops import (
    CodesCollator,
    CodesWindows,
    RandomCropBatchSampler,
    frames_per_segment,
)

LENGTHS = [40, 90, 70, 120, 25, 60, 100, 80]


def take(sampler, count):
    return list(itertools.islice(iter(sampler), count))


def test_crops_are_a_function_of_seed_and_sample_index():
    sampler = RandomCropBatchSampler(LENGTHS, frames=50, batch_size=4, seed=3)
    assert take(sampler, 5) == take(RandomCropBatchSampler(LENGTHS, 50, 4, seed=3), 5)
    assert take(sampler, 5) != take(RandomCropBatchSampler(LENGTHS, 50, 4, seed=4), 5)


def test_one_epoch_visits_every_row_once_within_its_bounds():
    sampler = RandomCropBatchSampler(LENGTHS, frames=50, batch_size=2, seed=0)
    crops = [crop for batch in take(sampler, len(LENGTHS) // 2) for crop in batch]
    assert sorted(row for row, _ in crops) == list(range(len(LENGTHS)))
    for row, start in crops:
        assert 0 <= start <= max(0, LENGTHS[row] - 50)
    next_epoch = [crop for batch in take(sampler, len(LENGTHS)) for crop in batch][len(LENGTHS):]
    assert next_epoch != crops  # a new order and new offsets


def test_accumulation_and_processes_split_the_same_samples():
    whole = [crop for batch in take(RandomCropBatchSampler(LENGTHS, 50, 4, seed=1), 3) for crop in batch]
    accumulated = [crop for batch in take(RandomCropBatchSampler(LENGTHS, 50, 2, seed=1), 6) for crop in batch]
    assert accumulated == whole
    rank0, rank1 = (take(RandomCropBatchSampler(LENGTHS, 50, 2, seed=1, num_processes=2, process_index=r), 3)
                    for r in (0, 1))
    assert [crop for pair in zip(rank0, rank1) for batch in pair for crop in batch] == whole


def test_resuming_at_a_micro_batch_continues_the_stream_without_redrawing():
    full = take(RandomCropBatchSampler(LENGTHS, 50, 3, seed=7), 10)
    assert take(RandomCropBatchSampler(LENGTHS, 50, 3, seed=7, start_batch=6), 4) == full[6:]


def test_short_rows_are_padded_and_masked_out_of_the_loss():
    config = MusicHybridConfig.from_preset("hybrid-tiny")
    frames = frames_per_segment(64, config.num_codebooks)
    assert frames == 55
    windows = CodesWindows(synthetic_split([20, 90], "t-"), frames, config.pad_token_id)
    short, cropped = windows[(0, 0)], windows[(1, 30)]
    assert short.shape == cropped.shape == (9, 55)
    assert (short[:, 20:] == config.pad_token_id).all() and (short[:, :20] < config.codebook_size).all()
    assert torch.equal(cropped[1, :3], torch.tensor([(30 * 2 + 1) % 32, (31 * 2 + 1) % 32, (32 * 2 + 1) % 32]))

    batch = CodesCollator(config)([short, cropped])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 9, 64)
    valid = batch["labels"] != -100
    assert valid[0].sum(dim=1).tolist() == [20] * 9  # every codebook predicts each real frame once
    assert valid[1].sum(dim=1).tolist() == [55] * 9
