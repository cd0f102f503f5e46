"""Delay pattern, forward pass, losses, input checks and cached decoding of MusicHybridForCausalLM."""

import pytest
import torch

from configuration_music_hybrid import MusicHybridConfig
from cache_music_hybrid import state_bytes_per_position
from modeling_music_hybrid import (
    MusicHybridAttention,
    MusicHybridForCausalLM,
    apply_delay_pattern,
    codes_to_model_inputs,
    undo_delay_pattern,
)
from training.loop import enable_activation_checkpointing

PRESETS_UNDER_TEST = ["transformer-tiny", "hybrid-tiny", "mamba-tiny"]


def tiny_model(name="hybrid-tiny", **overrides):
    torch.manual_seed(0)
    return MusicHybridForCausalLM(MusicHybridConfig.from_preset(name, **overrides)).eval()


def random_codes(batch=2, frames=20, num_codebooks=9, seed=1):
    return torch.randint(0, 1024, (batch, num_codebooks, frames), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch, num_codebooks, frames", [(1, 9, 1), (3, 9, 17), (2, 4, 5), (1, 1, 8), (2, 9, 0)])
def test_undo_delay_pattern_inverts_apply(batch, num_codebooks, frames):
    codes = torch.randint(0, 1024, (batch, num_codebooks, frames))
    delayed = apply_delay_pattern(codes, pad_token_id=1024)
    assert delayed.shape == (batch, num_codebooks, frames + num_codebooks - 1)
    assert torch.equal(undo_delay_pattern(delayed), codes)


def test_delay_pattern_shifts_codebook_k_by_k_frames():
    codes = torch.arange(3 * 4).view(1, 3, 4)
    delayed = apply_delay_pattern(codes, pad_token_id=-1)
    assert delayed[0].tolist() == [
        [0, 1, 2, 3, -1, -1],
        [-1, 4, 5, 6, 7, -1],
        [-1, -1, 8, 9, 10, 11],
    ]


def test_model_inputs_start_with_bos_and_mask_special_ids():
    config = MusicHybridConfig.from_preset("hybrid-tiny")
    codes = random_codes(frames=6)
    inputs = codes_to_model_inputs(codes, config)
    assert inputs["input_ids"].shape == (2, 9, 6 + 9)
    assert (inputs["input_ids"][:, :, 0] == config.bos_token_id).all()
    valid = inputs["labels"] != -100
    assert valid.sum() == codes.numel()
    assert torch.equal(inputs["labels"][valid], inputs["input_ids"][valid])


@pytest.mark.parametrize("name", PRESETS_UNDER_TEST)
def test_forward_returns_logits_over_real_codes_and_per_codebook_losses(name):
    model = tiny_model(name)
    inputs = codes_to_model_inputs(random_codes(), model.config)
    output = model(**inputs)
    assert output.logits.shape == (2, 9, 29, 1024)
    assert output.codebook_losses.shape == (9,)
    assert torch.allclose(output.loss, output.codebook_losses.mean())
    # An untrained model is close to uniform over the 1024 codes.
    assert abs(output.loss.item() - torch.log(torch.tensor(1024.0)).item()) < 0.5


def test_codebook_loss_is_cross_entropy_over_valid_positions_after_the_shift():
    model = tiny_model()
    inputs = codes_to_model_inputs(random_codes(frames=5), model.config)
    output = model(**inputs)
    logits, labels = output.logits[..., :-1, :], inputs["labels"][..., 1:]
    for k in range(9):
        valid = labels[:, k] != -100
        expected = torch.nn.functional.cross_entropy(logits[:, k][valid], labels[:, k][valid])
        assert torch.allclose(output.codebook_losses[k], expected, atol=1e-5)


def test_codebook_weights_and_label_smoothing_change_the_loss():
    inputs = codes_to_model_inputs(random_codes(), MusicHybridConfig.from_preset("hybrid-tiny"))
    plain = tiny_model()(**inputs)
    weights = [1.0] + [0.0] * 8
    weighted = tiny_model(codebook_loss_weights=weights)(**inputs)
    assert torch.allclose(weighted.loss, plain.codebook_losses[0])
    smoothed = tiny_model(label_smoothing=0.1)(**inputs)
    assert not torch.allclose(smoothed.loss, plain.loss)


def test_padded_frames_do_not_change_the_loss():
    model = tiny_model()
    codes = random_codes(batch=1, frames=10)
    padded = torch.nn.functional.pad(codes, (0, 6), value=model.config.pad_token_id)
    loss = model(**codes_to_model_inputs(codes, model.config)).codebook_losses
    padded_loss = model(**codes_to_model_inputs(padded, model.config)).codebook_losses
    assert torch.allclose(loss, padded_loss, atol=1e-6)


@pytest.mark.parametrize(
    "bad_input, message",
    [
        (torch.zeros(9, 10, dtype=torch.long), "shape"),
        (torch.zeros(1, 8, 10, dtype=torch.long), "shape"),
        (torch.full((1, 9, 10), 1027), r"\[0, 1027\)"),
        (torch.full((1, 9, 10), -3), r"\[0, 1027\)"),
        (torch.zeros(1, 9, 10), "integers"),
    ],
)
def test_bad_input_ids_raise_value_error(bad_input, message):
    with pytest.raises(ValueError, match=message):
        tiny_model()(input_ids=bad_input)


def test_bad_labels_raise_value_error():
    model = tiny_model()
    inputs = codes_to_model_inputs(random_codes(), model.config)
    with pytest.raises(ValueError, match="labels"):
        model(input_ids=inputs["input_ids"], labels=inputs["input_ids"])  # special ids are not targets
    with pytest.raises(ValueError, match="labels"):
        model(input_ids=inputs["input_ids"], labels=inputs["labels"][..., :5])


def test_too_long_sequence_with_learned_positions_is_a_value_error():
    model = tiny_model(max_position_embeddings=16)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(input_ids=torch.zeros(1, 9, 17, dtype=torch.long))


@pytest.mark.parametrize("name", PRESETS_UNDER_TEST)
@pytest.mark.parametrize("positions", ["learned", "rope", "none"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("fixed_shape", [False, True])
def test_prefill_then_decoding_equals_one_full_forward(name, positions, attention, fixed_shape):
    model = tiny_model(name, position_embedding_type=positions, num_key_value_heads=2)
    model.set_attn_implementation(attention)
    input_ids = codes_to_model_inputs(random_codes(frames=16), model.config)["input_ids"]
    full = model(input_ids).logits
    cache = model.model.new_cache(2, input_ids.shape[2], fixed_shape=fixed_shape)
    pieces = [model(input_ids[:, :, :6], cache=cache).logits]  # prefill
    pieces.append(model(input_ids[:, :, 6:11], cache=cache).logits)  # a block on top of a cache
    pieces += [model(input_ids[:, :, t : t + 1], cache=cache).logits for t in range(11, input_ids.shape[2])]
    assert torch.cat(pieces, dim=2).sub(full).abs().max() <= 1e-4
    assert cache.length == input_ids.shape[2]


def test_sliding_window_cache_equals_full_attention_when_the_window_covers_everything():
    model = tiny_model("hybrid-tiny", position_embedding_type="rope")
    input_ids = codes_to_model_inputs(random_codes(frames=12), model.config)["input_ids"]
    full = model(input_ids).logits
    cache = model.model.new_cache(2, 64, attention_window=64)
    pieces = [model(input_ids[:, :, :5], cache=cache).logits]
    pieces += [model(input_ids[:, :, t : t + 1], cache=cache).logits for t in range(5, input_ids.shape[2])]
    assert torch.cat(pieces, dim=2).sub(full).abs().max() <= 1e-4


@pytest.mark.parametrize("fixed_shape", [False, True])
@pytest.mark.parametrize("prefill", [2, 6])
def test_sliding_window_cache_matches_a_band_mask(fixed_shape, prefill):
    """Decoding with a ring of W positions equals a full forward that lets each position see its last W."""
    model = tiny_model("transformer-tiny", position_embedding_type="rope")
    model.set_attn_implementation("eager")
    window = 4
    input_ids = codes_to_model_inputs(random_codes(batch=1, frames=8), model.config)["input_ids"]
    banded = model(input_ids, cache=model.model.new_cache(1, 64, attention_window=window)).logits
    cache = model.model.new_cache(1, 64, attention_window=window, fixed_shape=fixed_shape)
    pieces = [model(input_ids[:, :, :prefill], cache=cache).logits]  # shorter or longer than the window
    pieces += [model(input_ids[:, :, t : t + 1], cache=cache).logits for t in range(prefill, input_ids.shape[2])]
    assert torch.cat(pieces, dim=2).sub(banded).abs().max() <= 1e-4
    assert banded.sub(model(input_ids).logits).abs().max() > 1e-3  # the window really cuts


def test_fixed_shape_cache_shows_attention_whole_blocks_of_slots():
    """Steps see the filled slots rounded up to a block: the same shapes for a block of positions at a time."""
    model = tiny_model("transformer-tiny")
    cache = model.model.new_cache(1, 600, fixed_shape=True)
    input_ids = codes_to_model_inputs(random_codes(batch=1, frames=6), model.config)["input_ids"]
    model.model(input_ids[:, :, :2], cache)
    key = torch.randn(1, model.config.num_key_value_heads, 1, model.config.head_dim)

    def step(position, visible):
        keys, values = MusicHybridAttention.update_state(cache.states[0], cache, key, key, torch.tensor([position]))
        assert keys.shape[2] == values.shape[2] == visible
        assert torch.equal(cache.states[0]["keys"][:, :, position], key[:, :, 0])  # written into the whole buffer
        mask = cache.single_position_mask(torch.tensor([position]), torch.float32)
        assert mask.shape == (1, 1, 1, visible)
        assert (mask[..., : position + 1] == 0).all() and (mask[..., position + 1 :] < -1e30).all()

    for position in (2, 3, 255):
        step(position, 256)
    cache.advance(254)  # 256 positions held: the next block becomes visible
    step(256, 512)
    cache.advance(300)
    step(556, 600)  # never beyond the buffer


def test_mamba_cache_does_not_grow_with_the_sequence():
    config = MusicHybridConfig.from_preset("hybrid-116m")
    with torch.device("meta"):
        model = MusicHybridForCausalLM(config)
    short, long = model.model.new_cache(1, 256), model.model.new_cache(1, 2048)
    mamba_layers = [i for i, kind in enumerate(config.mixer_types) if kind == "mamba"]
    assert all(set(short.states[i]) == {"conv", "ssm"} for i in mamba_layers)
    assert all(short.states[i][name].shape == long.states[i][name].shape for i in mamba_layers for name in ("conv", "ssm"))
    mixers = [layer.mixer for layer in model.model.layers]
    assert state_bytes_per_position(mixers, 1, 256, torch.float32) == 5 * 2 * 768 * 4


def test_gradients_reach_every_parameter():
    model = tiny_model("hybrid-tiny").train()
    model(**codes_to_model_inputs(random_codes(), model.config)).loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.filterwarnings("error:`gradient_checkpointing_enable` is deprecated:FutureWarning")  # (transformers 5.23+)
def test_gradient_checkpointing_gives_the_same_gradients():
    inputs = codes_to_model_inputs(random_codes(), MusicHybridConfig.from_preset("hybrid-tiny"))
    grads = []
    for checkpointing in (False, True):
        model = tiny_model("hybrid-tiny").train()
        if checkpointing:
            enable_activation_checkpointing(model)
            assert model.model.gradient_checkpointing
        model(**inputs).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
