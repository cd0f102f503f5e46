"""Memory caching of the matrix-memory mixers ("mamba2", "gated_deltanet") with Mamba-1's settings: the first
segment is the plain mixer's, later ones read the cached memories; a prefill, a continuation across segment ends
and single steps give the full forward pass exactly (float64), as do fixed-shape (compiled) decoding steps; the
chunked scans' segment-end states are the per-step recurrence's."""

import pytest
import torch

from compile_helpers import CountingBackend
from configuration_music_hybrid import MusicHybridConfig
from gated_deltanet_music_hybrid import chunked_gated_delta_rule
from mamba2_music_hybrid import ssd_scan
from modeling_music_hybrid import MusicHybridForCausalLM, codes_to_model_inputs
from tests.test_gated_deltanet import delta_rule_inputs, naive_delta_rule
from tests.test_mamba2 import naive_ssd, ssd_inputs

PRESETS = ["hybrid-mamba2-tiny", "hybrid-gdn-tiny"]


def model_of(name, seed=0, **overrides):
    torch.manual_seed(seed)
    config = MusicHybridConfig.from_preset(name, codec=None, **overrides)
    return MusicHybridForCausalLM(config).double().eval()


@pytest.mark.parametrize("start", [0, 5, 21])
def test_scans_return_the_recurrence_states_at_segment_ends(start):
    """Inputs at positions start..start+T: the states after positions 15, 31, ... (segments of 16) inside them."""
    x, dt, A, B, C, state = ssd_inputs(length=60)
    q, k, v, g, beta, memory = delta_rule_inputs(length=60)
    _, _, ssd_states = ssd_scan(x, dt, A, B, C, state, chunk_size=16, start=start, segment_length=16)
    _, _, delta_states = chunked_gated_delta_rule(q, k, v, g, beta, memory, chunk_size=16, start=start, segment_length=16)
    ends = [t for t in range(60) if (start + t + 1) % 16 == 0]
    assert ssd_states.shape[1] == delta_states.shape[1] == len(ends)
    for index, end in enumerate(ends):
        _, expected = naive_ssd(x[:, : end + 1], dt[:, : end + 1], A, B[:, : end + 1], C[:, : end + 1], state)
        torch.testing.assert_close(ssd_states[:, index], expected, rtol=1e-11, atol=1e-11)
        inputs = (t[:, : end + 1] for t in (q, k, v, g, beta))
        torch.testing.assert_close(delta_states[:, index], naive_delta_rule(*inputs, memory)[1], rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("aggregation", ["gated", "sparse", "residual"])
def test_decoding_equals_the_full_forward_and_the_first_segment_is_plain(name, aggregation):
    """At the "full" initialisation the memories take part from the first segment end on; at the default "base"
    one the layer computes its plain layer's outputs everywhere (the gate starts at 0)."""
    memory = dict(mamba_memory_segment_length=16, mamba_memory_aggregation=aggregation, mamba_memory_top_k=1)
    model = model_of(name, mamba_memory_init="full", **memory)
    plain = model_of(name)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and {key.split(".mixer.")[1] for key in unexpected} == {"memory_query.weight", "memory_gate"}
    input_ids = torch.randint(0, 1024, (2, 9, 60), generator=torch.Generator().manual_seed(1))
    base = model_of(name, **memory)
    base.load_state_dict(model.state_dict())
    with torch.no_grad():
        for layer in base.model.layers:
            if hasattr(layer.mixer, "memory_gate"):
                layer.mixer.memory_gate.zero_()
        torch.testing.assert_close(base(input_ids).logits, plain(input_ids).logits, rtol=1e-12, atol=1e-12)
        full = model(input_ids).logits
        cache = model.model.new_cache(2, 64)
        pieces = [model(input_ids[:, :, :21], cache=cache).logits, model(input_ids[:, :, 21:40], cache=cache).logits]
        pieces += [model(input_ids[:, :, t : t + 1], cache=cache).logits for t in range(40, 60)]
        plain_logits = plain(input_ids).logits
    torch.testing.assert_close(torch.cat(pieces, dim=2), full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(plain_logits[:, :, :16], full[:, :, :16], rtol=1e-12, atol=1e-12)
    assert (plain_logits[:, :, 16:] - full[:, :, 16:]).abs().max() > 1e-4


@pytest.mark.parametrize("name", PRESETS)
def test_memory_query_trains_and_compiled_decoding_equals_eager(name):
    torch.manual_seed(0)
    config = MusicHybridConfig.from_preset(
        name, codec=None, mamba_memory_segment_length=16, mamba_memory_max_segments=2, mamba_memory_init="full"
    )
    model = MusicHybridForCausalLM(config)
    codes = torch.randint(0, 1024, (2, 9, 40), generator=torch.Generator().manual_seed(2))
    model(**codes_to_model_inputs(codes, config)).loss.backward()
    assert model.model.layers[0].mixer.memory_query.weight.grad.abs().sum() > 0
    model.eval()
    prompt = codes[:1, :, :5]
    eager = model.generate(prompt, max_new_tokens=50, do_sample=False)
    model.compile_decoding(backend=CountingBackend())
    assert torch.equal(model.generate(prompt, max_new_tokens=50, do_sample=False), eager)
