"""generate(): layout, ordering, sampling settings, reproducibility, streaming, long form and input checks."""

import pytest
import torch

from configuration_music_hybrid import MusicHybridConfig
from modeling_music_hybrid import MusicHybridForCausalLM, apply_delay_pattern


def tiny_model(name="hybrid-tiny", **overrides):
    torch.manual_seed(0)
    return MusicHybridForCausalLM(MusicHybridConfig.from_preset(name, **overrides)).eval()


def prompt_codes(batch=2, frames=6, seed=3):
    return torch.randint(0, 1024, (batch, 9, frames), generator=torch.Generator().manual_seed(seed))


def test_unconditional_generation_returns_natural_int64_codes():
    codes = tiny_model().generate(max_new_tokens=12, num_return_sequences=3)
    assert codes.shape == (3, 9, 12) and codes.dtype == torch.int64
    assert codes.min() >= 0 and codes.max() < 1024


def test_prompt_rows_come_first_in_repeat_interleave_order():
    prompt = prompt_codes()
    codes = tiny_model().generate(prompt, max_new_tokens=5, num_return_sequences=3)
    assert codes.shape == (6, 9, 11)
    for row in range(6):
        assert torch.equal(codes[row, :, :6], prompt[row // 3])


def test_samples_of_one_prompt_are_independent():
    codes = tiny_model().generate(prompt_codes(batch=1), max_new_tokens=20, num_return_sequences=4)
    new = codes[:, :, 6:]
    for i in range(4):
        for j in range(i + 1, 4):
            assert (new[i] != new[j]).float().mean() > 0.5  # every codebook sampled per row, not shared


def test_same_seed_same_codes_and_different_seed_different_codes():
    model = tiny_model()
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        runs.append(model.generate(max_new_tokens=10))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_shipped_generation_config_samples_with_top_k_250():
    config = tiny_model().generation_config
    assert config.do_sample is True and config.top_k == 250 and config.temperature == 1.0


def test_greedy_generation_follows_the_argmax_of_a_full_forward():
    model = tiny_model("transformer-tiny")
    prompt = prompt_codes(batch=1, frames=3)
    codes = model.generate(prompt, max_new_tokens=4, do_sample=False)
    # Re-score the generated sequence: each new code must be the argmax given everything before it.
    start = torch.full((1, 9, 1), model.config.bos_token_id)
    delayed = torch.cat([start, apply_delay_pattern(codes, model.config.pad_token_id)], dim=2)
    predicted = model(delayed).logits.argmax(-1)
    for frame in range(3, 7):
        for k in range(9):
            position = 1 + frame + k
            assert delayed[0, k, position] == predicted[0, k, position - 1]


def test_per_codebook_top_k_restricts_only_its_codebook():
    model = tiny_model()
    torch.manual_seed(0)
    codes = model.generate(max_new_tokens=30, num_return_sequences=4, top_k=[1] + [0] * 8)
    greedy = model.generate(max_new_tokens=30, num_return_sequences=1, do_sample=False)
    # top_k=1 on codebook 0 makes it greedy: the same in every sample and equal to greedy decoding's first
    # codebook for the first frame (later frames depend on the sampled other codebooks).
    assert (codes[:, 0, 0] == greedy[0, 0, 0]).all()
    assert len({tuple(row) for row in codes[:, 5, :].tolist()}) == 4


def test_per_codebook_settings_must_match_the_codebook_count():
    with pytest.raises(ValueError, match="temperature"):
        tiny_model().generate(max_new_tokens=2, temperature=[1.0, 0.5])


class CollectingStreamer:
    def __init__(self):
        self.frames, self.ended = [], False

    def put(self, frames):
        self.frames.append(frames.clone())

    def end(self):
        self.ended = True


def test_streamer_receives_every_new_frame_in_order():
    streamer = CollectingStreamer()
    torch.manual_seed(0)
    codes = tiny_model().generate(prompt_codes(), max_new_tokens=7, streamer=streamer)
    assert streamer.ended and len(streamer.frames) == 7
    assert torch.equal(torch.cat(streamer.frames, dim=2), codes[:, :, 6:])


def test_windowed_long_form_goes_beyond_learned_positions():
    model = tiny_model("hybrid-tiny", max_position_embeddings=32)
    with pytest.raises(ValueError, match="long_form"):
        model.generate(max_new_tokens=40)
    prompt = prompt_codes(batch=1, frames=4)
    codes = model.generate(prompt, max_new_tokens=40, long_form="window", context_window=8)
    assert codes.shape == (1, 9, 44) and torch.equal(codes[:, :, :4], prompt)


def test_sliding_long_form_keeps_mamba_state_and_equals_plain_decoding_when_the_window_covers_all():
    model = tiny_model("hybrid-tiny", position_embedding_type="rope", max_position_embeddings=32)
    prompt = prompt_codes(batch=1, frames=4)
    torch.manual_seed(5)
    plain = model.generate(prompt, max_new_tokens=20)
    torch.manual_seed(5)
    sliding = model.generate(prompt, max_new_tokens=20, long_form="sliding", context_window=40)
    assert torch.equal(plain, sliding)
    long = model.generate(prompt, max_new_tokens=60, long_form="sliding", context_window=8)
    assert long.shape == (1, 9, 64)


def test_sliding_long_form_needs_a_model_without_learned_positions():
    with pytest.raises(ValueError, match="learned positions"):
        tiny_model().generate(max_new_tokens=4, long_form="sliding", context_window=8)


@pytest.mark.parametrize(
    "prompt, message",
    [
        (torch.zeros(9, 5, dtype=torch.long), "shape"),
        (torch.zeros(1, 4, 5, dtype=torch.long), "shape"),
        (torch.full((1, 9, 5), 1024), r"\[0, 1024\)"),
        (torch.full((1, 9, 5), -1), r"\[0, 1024\)"),
        (torch.zeros(1, 9, 5), "integers"),
    ],
)
def test_bad_prompts_raise_value_error(prompt, message):
    with pytest.raises(ValueError, match=message):
        tiny_model().generate(prompt, max_new_tokens=2)


def test_bad_lengths_and_arguments_raise_value_error():
    model = tiny_model()
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(max_new_tokens=0)
    with pytest.raises(ValueError, match="does not take temprature"):
        model.generate(max_new_tokens=2, temprature=0.5)
    with pytest.raises(ValueError, match="long_form"):
        model.generate(max_new_tokens=2, long_form="loop")
