"""Deterministic validation segments and the metrics computed on them."""

import json
import math

import pytest
import torch
from training_helpers import synthetic_split

from configuration_music_hybrid import MusicHybridConfig
from modeling_music_hybrid import MusicHybridForCausalLM, codes_to_model_inputs
from training.evaluation import (
    evaluate_model,
    format_metrics_table,
    validation_segments,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see conftest.py

LENGTHS = [70, 130, 45]  # with 55-frame segments: 2 + 3 + 1 windows, the last one of each track padded


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MusicHybridForCausalLM(MusicHybridConfig.from_preset("hybrid-tiny", label_smoothing=0.1)).eval()


def test_segments_are_fixed_windows_ordered_by_track_and_start():
    dataset = synthetic_split(LENGTHS, "valid-")
    segments = validation_segments(dataset, segment_length=64, num_codebooks=9)
    assert [s.segment_id for s in segments] == [
        "valid-000:0", "valid-000:55", "valid-001:0", "valid-001:55", "valid-001:110", "valid-002:0",
    ]
    shuffled = dataset.select([2, 0, 1])
    assert [s.segment_id for s in validation_segments(shuffled, 64, 9)] == [s.segment_id for s in segments]
    first_two = validation_segments(dataset, 64, 9, max_segments=2)
    assert [s.segment_id for s in first_two] == ["valid-000:0", "valid-000:55"]


def test_metrics_match_the_model_loss_without_smoothing_and_do_not_depend_on_batching(model):
    dataset = synthetic_split(LENGTHS, "valid-")
    result = evaluate_model(model, dataset, segment_length=64, batch_size=4, progress=False)
    assert json.loads(json.dumps(result)) == result
    assert result["num_segments"] == 6 and len(result["segment_ids"]) == 6
    assert len(result["codebook_loss"]) == len(result["codebook_top1"]) == len(result["codebook_top5"]) == 9
    assert len(result["segment_codebook_loss"]) == 6 and all(len(row) == 9 for row in result["segment_codebook_loss"])
    assert result["segment_num_frames"] == [55, 15, 55, 55, 20, 45]
    assert result["num_tokens"] == 9 * sum(LENGTHS)
    assert result["perplexity"] == pytest.approx(math.exp(result["mean_loss"]))
    for top1, top5 in zip(result["codebook_top1"], result["codebook_top5"]):
        assert 0.0 <= top1 <= top5 <= 1.0

    # The loss is plain, token-weighted cross entropy: the model's own loss without label smoothing over the
    # whole tracks (each fits in one sequence here) gives the same per-codebook numbers.
    plain = MusicHybridForCausalLM(MusicHybridConfig.from_preset("hybrid-tiny"))
    plain.load_state_dict(model.state_dict())
    sums = torch.zeros(9, dtype=torch.float64)
    for track, length in enumerate(LENGTHS):
        inputs = codes_to_model_inputs(torch.tensor(dataset[track]["codes"]).unsqueeze(0), plain.config)
        with torch.no_grad():
            sums += plain(**inputs).codebook_losses.double() * length
    rebatched = evaluate_model(model, dataset, segment_length=64, batch_size=1, progress=False)
    assert rebatched["codebook_loss"] == pytest.approx(result["codebook_loss"], rel=1e-5)
    torch.testing.assert_close(
        torch.tensor(rebatched["segment_codebook_loss"]), torch.tensor(result["segment_codebook_loss"]), rtol=1e-5,
        atol=0,
    )
    long_segments = evaluate_model(model, dataset, segment_length=200, batch_size=2, progress=False)
    assert long_segments["num_segments"] == 3  # one segment of 200 positions holds a whole track
    assert long_segments["codebook_loss"] == pytest.approx((sums / sum(LENGTHS)).tolist(), rel=1e-4)


def test_table_has_one_row_per_codebook_and_the_mean(model):
    result = evaluate_model(model, synthetic_split([60], "v"), segment_length=64, batch_size=2, progress=False)
    table = format_metrics_table(result)
    lines = table.splitlines()
    assert lines[0] == "| codebook | loss | top-1 | top-5 |"
    assert [line.split("|")[1].strip() for line in lines[2:11]] == [str(k) for k in range(9)]
    assert lines[11].startswith("| mean | ")
    assert "Perplexity" in table


def test_losses_by_position_bucket_are_the_per_token_losses_grouped_by_position(model):
    """One 55-frame track is one 64-position segment: its bucket losses are the mean cross entropy of the tokens
    predicted at positions 1-7, 8-15, ..., 56-63, per codebook."""
    dataset = synthetic_split([55, 30], "v")
    result = evaluate_model(model, dataset, segment_length=64, batch_size=2, progress=False)
    assert result["position_buckets"] == 8 and result["bucket_positions"][0] == [1, 7]
    inputs = codes_to_model_inputs(torch.tensor(dataset[0]["codes"]).unsqueeze(0), model.config)
    with torch.no_grad():
        logits = model(inputs["input_ids"]).logits[:, :, :-1]
    targets = inputs["labels"][:, :, 1:]
    token_losses = torch.nn.functional.cross_entropy(
        logits.transpose(1, -1), targets.clamp(min=0).transpose(1, -1), reduction="none"
    ).transpose(1, -1)[0]
    valid = targets[0] != -100
    bucket_of = torch.arange(1, 64) * 8 // 64
    expected = torch.zeros(8, 9, dtype=torch.float64)
    for b in range(8):
        in_bucket = valid & (bucket_of == b)
        expected[b] = (token_losses * in_bucket).sum(-1).double() / in_bucket.sum(-1).clamp(min=1)
    segment_buckets = torch.tensor(result["segment_bucket_codebook_loss"], dtype=torch.float64)
    assert segment_buckets.shape == (2, 8, 9)
    torch.testing.assert_close(segment_buckets[0], expected, rtol=1e-5, atol=1e-6)
    tokens = (valid[:, None] & (bucket_of[None, None] == torch.arange(8)[None, :, None])).sum((0, 2))
    assert result["segment_bucket_num_tokens"][0] == tokens.tolist()
    # 30 frames fill positions up to 38 (codebook 8) of the second, padded segment: later buckets hold no token
    assert result["segment_bucket_num_tokens"][1][5:] == [0, 0, 0]


def test_evaluation_leaves_the_global_random_state_alone(model):
    """Training evaluates between steps: a draw from torch's global generator here would change the dropout masks
    of every later training step."""
    state = torch.random.get_rng_state()
    evaluate_model(model, synthetic_split([60], "v"), segment_length=64, batch_size=2, progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
