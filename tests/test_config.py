"""Presets reproduce the published parameter counts; bad configs fail with the field's name."""

import pytest

from configuration_music_hybrid import ATTENTION, MAMBA, PRESETS, MusicHybridConfig
from presets_table import parameter_count


@pytest.mark.parametrize("name, published", [("transformer-162m", 162.08e6), ("hybrid-116m", 115.78e6)])
def test_published_presets_match_parameter_counts(name, published):
    assert abs(parameter_count(MusicHybridConfig.from_preset(name)) - published) / published < 0.005


def test_matched_hybrid_is_within_two_percent_of_the_transformer():
    transformer = parameter_count(MusicHybridConfig.from_preset("transformer-162m"))
    matched = parameter_count(MusicHybridConfig.from_preset("hybrid-matched"))
    assert abs(matched - transformer) / transformer < 0.02


def test_hybrid_layout_is_three_mamba_then_attention():
    config = MusicHybridConfig.from_preset("hybrid-116m")
    assert config.layer_types == [MAMBA, MAMBA, MAMBA, ATTENTION] * 5
    assert config.mamba_dt_rank_value == 48 and config.mamba_d_inner == 1536 and not config.mamba_mlp


def test_every_preset_builds_and_has_a_description():
    for name, preset in PRESETS.items():
        assert preset["description"]
        config = MusicHybridConfig.from_preset(name)
        assert len(config.layer_types) == config.num_hidden_layers


def test_overriding_width_and_depth_keeps_derived_fields_valid():
    config = MusicHybridConfig.from_preset("hybrid-116m", hidden_size=512, num_attention_heads=8, num_hidden_layers=8)
    assert config.head_dim == 64
    assert config.mamba_d_inner == 1024
    assert config.layer_types == [MAMBA, MAMBA, MAMBA, ATTENTION] * 2
    assert MusicHybridConfig.from_preset("hybrid-tiny", hidden_size=96).mamba_dt_rank_value == 6


def test_config_round_trips_through_json(tmp_path):
    config = MusicHybridConfig.from_preset("hybrid-tiny", codec={"backend": "random", "seed": 3})
    config.save_pretrained(tmp_path)
    loaded = MusicHybridConfig.from_pretrained(tmp_path)
    assert loaded.layer_types == config.layer_types
    assert loaded.codec == config.codec
    assert loaded.to_dict() == config.to_dict()


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(num_attention_heads=5), "num_attention_heads"),
        (dict(num_key_value_heads=3), "num_key_value_heads"),
        (dict(layer_types=[ATTENTION] * 3), "layer_types"),
        (dict(layer_types=[ATTENTION, "convolution"]), "layer_types"),
        (dict(pad_token_id=7), "pad_token_id"),
        (dict(bos_token_id=1024), "bos_token_id"),
        (dict(vocab_size=1024), "vocab_size"),
        (dict(num_codebooks=0), "num_codebooks"),
        (dict(position_embedding_type="alibi"), "position_embedding_type"),
        (dict(mamba_dt_rank=-1), "mamba_dt_rank"),
        (dict(codebook_loss_weights=[1.0, 2.0]), "codebook_loss_weights"),
        (dict(label_smoothing=1.5), "label_smoothing"),
        (dict(mamba_implementation="cuda"), "mamba_implementation"),
    ],
)
def test_bad_config_raises_value_error_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        MusicHybridConfig.from_preset("transformer-tiny", **overrides)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="hybrid-116m"):
        MusicHybridConfig.from_preset("hybrid-1b")
