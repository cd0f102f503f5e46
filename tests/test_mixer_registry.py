"""A sequence mixer from outside the project plugs in through register_mixer: built, trained, decoded equal to the
full forward pass, generated from, saved and reloaded, with no edit to the project's files."""

import importlib.util
import textwrap

import pytest
import torch

from configuration_music_hybrid import MusicHybridConfig
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


def codes(batch=2, frames=20, seed=1):
    return torch.randint(0, 1024, (batch, 9, frames), generator=torch.Generator().manual_seed(seed))


def test_config_files_the_outside_kind_under_linear_attention(outside_kind):
    config = outside_model(outside_kind).config
    assert config.layer_types == ["linear_attention", "full_attention"] * 2
    with pytest.raises(ValueError, match="unknown kinds.*register_mixer"):
        MusicHybridConfig.from_preset("hybrid-tiny", mixer_types=["nobody"] * 4)


def test_outside_mixer_trains_decodes_generates_saves_and_reloads(outside_kind, tmp_path):
    model = outside_model(outside_kind)
    inputs = codes_to_model_inputs(codes(), model.config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert model.model.layers[0].mixer.decay_logit.grad.abs().sum() > 0

    model.eval()
    input_ids = inputs["input_ids"]
    with torch.no_grad():
        full = model(input_ids).logits
        cache = model.model.new_cache(2, input_ids.shape[2])
        pieces = [model(input_ids[:, :, :7], cache=cache).logits]
        pieces += [model(input_ids[:, :, t : t + 1], cache=cache).logits for t in range(7, input_ids.shape[2])]
    assert torch.cat(pieces, dim=2).sub(full).abs().max() <= 1e-4

    prompt = codes(batch=1, frames=4, seed=2)
    greedy = model.generate(prompt, max_new_tokens=6, do_sample=False)
    # Greedy decoding picks, frame by frame, what the full forward pass of its own output predicts.
    with torch.no_grad():
        logits = model(codes_to_model_inputs(greedy, model.config)["input_ids"]).logits
    for k in range(9):
        predicted = logits[0, k, 4 + k : 10 + k].argmax(-1)  # position p predicts frame p - k of codebook k
        assert torch.equal(predicted, greedy[0, k, 4:10])

    model.save_pretrained(tmp_path / "checkpoint")
    reloaded = MusicHybridForCausalLM.from_pretrained(tmp_path / "checkpoint").eval()
    assert reloaded.config.mixer_types == model.config.mixer_types
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids).logits, full)
