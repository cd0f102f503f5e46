"""A sequence mixer from outside the project plugs in through register_mixer: built, trained, decoded equal to the
full forward pass, generated from, saved and reloaded, with no edit to the project's files; the built-in recurrent
kinds pass the same checks, quantized and compiled too."""

import importlib.util
import textwrap

import pytest
import torch

from configuration_music_hybrid import MusicHybridConfig
from model_checks import (
    assert_decoding_equals_the_forward_pass, assert_greedy_generation_follows_the_forward_pass, assert_reloads_the_same,
    assert_trains, random_codes,
)
from modeling_music_hybrid import MIXERS, MusicHybridForCausalLM, codes_to_model_inputs, register_mixer

OUTSIDE_MIXER = '''
import torch
from torch import nn


class DecayingAverage(nn.Module):
    """h_t = a * h_(t-1) + (1 - a) * W_in x_t per channel, y_t = W_out h_t: the smallest recurrent mixer."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.in_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.decay_logit = nn.Parameter(torch.zeros(config.hidden_size))

    def init_state(self, batch_size, max_positions, device, dtype, **settings):
        return {"h": torch.zeros(batch_size, self.in_proj.out_features, device=device, dtype=dtype)}

    def forward(self, hidden_states, state=None, **kwargs):
        decay = torch.sigmoid(self.decay_logit)
        inputs = (1 - decay) * self.in_proj(hidden_states)
        h = hidden_states.new_zeros(hidden_states.shape[0], hidden_states.shape[2]) if state is None else state["h"]
        outputs = []
        for t in range(hidden_states.shape[1]):
            h = decay * h + inputs[:, t]
            outputs.append(h)
        if state is not None:
            state["h"].copy_(h)
        return self.out_proj(torch.stack(outputs, dim=1))
'''


@pytest.fixture(scope="module")
def outside_kind(tmp_path_factory):
    path = tmp_path_factory.mktemp("elsewhere") / "decaying_average.py"
    path.write_text(textwrap.dedent(OUTSIDE_MIXER))
    spec = importlib.util.spec_from_file_location("decaying_average", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    register_mixer("decaying_average", module.DecayingAverage)
    yield "decaying_average"
    MIXERS.pop("decaying_average")


def outside_model(kind, seed=0):
    config = MusicHybridConfig.from_preset(
        "hybrid-tiny", mixer_types=[kind, "attention", kind, "attention"], position_embedding_type="rope", codec=None
    )
    torch.manual_seed(seed)
    return MusicHybridForCausalLM(config)


def test_config_files_the_outside_kind_under_linear_attention(outside_kind):
    config = outside_model(outside_kind).config
    assert config.layer_types == ["linear_attention", "full_attention"] * 2
    with pytest.raises(ValueError, match="unknown kinds.*register_mixer"):
        MusicHybridConfig.from_preset("hybrid-tiny", mixer_types=["nobody"] * 4)


def test_outside_mixer_trains_decodes_generates_saves_and_reloads(outside_kind, tmp_path):
    model = outside_model(outside_kind)
    inputs = codes_to_model_inputs(random_codes(), model.config)
    assert_trains(model, inputs, steps=8)
    assert model.model.layers[0].mixer.decay_logit.grad.abs().sum() > 0
    model.eval()
    assert_decoding_equals_the_forward_pass(model, inputs["input_ids"])
    assert_greedy_generation_follows_the_forward_pass(model, random_codes(batch=1, frames=4, seed=2))
    assert_reloads_the_same(model, tmp_path / "checkpoint", inputs["input_ids"])


@pytest.mark.parametrize("preset", ["hybrid-mamba2-tiny", "hybrid-gdn-tiny"])
def test_built_in_recurrent_kind_trains_decodes_generates_saves_reloads_quantizes_and_compiles(preset, tmp_path):
    torch.manual_seed(0)
    model = MusicHybridForCausalLM(MusicHybridConfig.from_preset(preset, codec=None))
    codes = random_codes()
    inputs = codes_to_model_inputs(codes, model.config)
    assert_trains(model, inputs, steps=5)
    model.eval()
    assert_decoding_equals_the_forward_pass(model, inputs["input_ids"])
    prompt = codes[:1, :, :4]
    assert_greedy_generation_follows_the_forward_pass(model, prompt)
    reloaded = assert_reloads_the_same(model, tmp_path / "checkpoint", inputs["input_ids"])
    reloaded.quantize_weights()
    reloaded.compile_decoding(backend="eager")
    quantized = reloaded.generate(prompt, max_new_tokens=4, do_sample=False)
    assert quantized.shape == (1, 9, 8) and torch.equal(quantized[:, :, :4], prompt)
