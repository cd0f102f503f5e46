"""The Gated DeltaNet mixer ("gated_deltanet"): fla's GatedDeltaNet names and shapes, the chunked delta rule exact in
float64 against a per-step recurrence (outputs, states, gradients) and against fla's own naive references, the
layer's semantics written out step by step, and decoding equal to the full forward pass (the whole model's checks,
shared by every kind, are in test_mixer_registry.py)."""

import copy
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import gated_deltanet_music_hybrid
from configuration_music_hybrid import MusicHybridConfig
from gated_deltanet_music_hybrid import GatedDeltaNetMixer, chunked_gated_delta_rule, gated_delta_step
from modeling_music_hybrid import MusicHybridForCausalLM, codes_to_model_inputs
from tests.upstream_references import reference_functions


def naive_delta_rule(q, k, v, g, beta, state):
    """One step at a time: S = exp(g) S, S += k (beta (v - S^T k))^T, o = S^T q."""
    outputs = []
    for t in range(q.shape[1]):
        state = state * g[:, t].exp()[..., None, None]
        correction = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhkv,bhk->bhv", state, k[:, t]))
        state = state + k[:, t, :, :, None] * correction[:, :, None, :]
        outputs.append(torch.einsum("bhkv,bhk->bhv", state, q[:, t]))
    return torch.stack(outputs, dim=1), state


def delta_rule_inputs(batch=2, length=150, heads=3, dk=4, dv=5, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    q, k = (F.normalize(draw(batch, length, heads, dk), dim=-1) for _ in range(2))
    v = draw(batch, length, heads, dv)
    g = -F.softplus(draw(batch, length, heads)) * 0.3
    beta = torch.sigmoid(draw(batch, length, heads))
    return q, k, v, g, beta, draw(batch, heads, dk, dv)


@pytest.mark.parametrize("length", [1, 64, 150])
def test_chunked_delta_rule_equals_the_per_step_recurrence_in_float64(length):
    q, k, v, g, beta, state = delta_rule_inputs(length=length)
    o, last = chunked_gated_delta_rule(q, k, v, g, beta, state)
    o_naive, last_naive = naive_delta_rule(q, k, v, g, beta, state)
    assert o.dtype == torch.float64 and last.dtype == torch.float64
    torch.testing.assert_close(o, o_naive, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(last, last_naive, rtol=1e-11, atol=1e-11)
    o_zero, _ = chunked_gated_delta_rule(q, k, v, g, beta)
    torch.testing.assert_close(o_zero, naive_delta_rule(q, k, v, g, beta, torch.zeros_like(state))[0], rtol=1e-11, atol=1e-11)


def test_chunked_delta_rule_gradients_equal_autograd_through_the_recurrence():
    inputs = [t.requires_grad_() for t in delta_rule_inputs(length=100)]
    weights = torch.randn(2, 100, 3, 5, dtype=torch.float64)
    gradients = []
    for rule in (chunked_gated_delta_rule, naive_delta_rule):
        o, last = rule(*inputs)
        gradients.append(torch.autograd.grad((o * weights).sum() + last.square().sum(), inputs))
    for chunked, naive in zip(*gradients, strict=True):
        torch.testing.assert_close(chunked, naive, rtol=1e-9, atol=1e-10)


def test_decoding_step_equals_one_step_of_the_recurrence():
    q, k, v, g, beta, state = delta_rule_inputs(length=1)
    stepped = state.clone()
    o = gated_delta_step(stepped, q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0])
    o_naive, last_naive = naive_delta_rule(q, k, v, g, beta, state)
    torch.testing.assert_close(o, o_naive[:, 0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stepped, last_naive, rtol=1e-12, atol=1e-12)


def test_delta_rule_equals_fla_naive_references(request):
    """fla's naive recurrent and chunked gated delta rule (they compute in float32, scale q themselves)."""
    references = reference_functions(
        request, "fla", "ops/gated_delta_rule/naive.py",
        ["naive_recurrent_gated_delta_rule", "naive_chunk_gated_delta_rule"],
    )
    q, k, v, g, beta, state = (t.float() for t in delta_rule_inputs(length=100))
    scale = q.shape[-1] ** -0.5
    o, last = chunked_gated_delta_rule(q * scale, k, v, g, beta, state)
    o_recurrent, last_recurrent = references["naive_recurrent_gated_delta_rule"](
        q, k, v, beta, g, scale=scale, initial_state=state, output_final_state=True
    )
    o_chunk, last_chunk = references["naive_chunk_gated_delta_rule"](
        q, k, v, g, beta, scale=scale, initial_state=state, output_final_state=True
    )
    for o_reference, last_reference in ((o_recurrent, last_recurrent), (o_chunk, last_chunk)):
        torch.testing.assert_close(o, o_reference, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(last, last_reference, rtol=1e-4, atol=1e-5)


def tiny_mixer(dtype=torch.float64, **overrides):
    torch.manual_seed(0)
    config = MusicHybridConfig.from_preset(
        "hybrid-gdn-tiny", num_hidden_layers=1, mixer_types=["gated_deltanet"], gdn_implementation="torch", **overrides
    )
    mixer = GatedDeltaNetMixer(config, 0).to(dtype)
    mixer.init_own_weights()
    return mixer


def layer_written_out(mixer, x):
    """fla's GatedDeltaNet forward spelled out, one step at a time, from the issue's description."""
    def short_conv(conv, inputs):  # depthwise causal conv with SiLU
        return F.silu(conv(inputs.transpose(1, 2))[..., : inputs.shape[1]].transpose(1, 2))

    batch, length, _ = x.shape
    q = short_conv(mixer.q_conv1d, mixer.q_proj(x)).view(batch, length, mixer.num_heads, mixer.head_k_dim)
    k = short_conv(mixer.k_conv1d, mixer.k_proj(x)).view(batch, length, mixer.num_heads, mixer.head_k_dim)
    v = short_conv(mixer.v_conv1d, mixer.v_proj(x)).view(batch, length, mixer.num_v_heads, mixer.head_v_dim)
    q = q / torch.sqrt(q.square().sum(-1, keepdim=True) + 1e-6) * mixer.head_k_dim**-0.5
    k = k / torch.sqrt(k.square().sum(-1, keepdim=True) + 1e-6)
    repeats = mixer.num_v_heads // mixer.num_heads  # value head j reads query/key head j // repeats
    q, k = q.repeat_interleave(repeats, dim=2), k.repeat_interleave(repeats, dim=2)
    beta = torch.sigmoid(mixer.b_proj(x))
    g = -torch.exp(mixer.A_log) * F.softplus(mixer.a_proj(x) + mixer.dt_bias)
    state = x.new_zeros(batch, mixer.num_v_heads, mixer.head_k_dim, mixer.head_v_dim)
    o, _ = naive_delta_rule(q, k, v, g, beta, state)
    gate = mixer.g_proj(x).view(batch, length, mixer.num_v_heads, mixer.head_v_dim)
    o = o / torch.sqrt(o.square().mean(-1, keepdim=True) + mixer.o_norm.eps) * mixer.o_norm.weight * F.silu(gate)
    return mixer.o_proj(o.reshape(batch, length, -1))


def test_mixer_equals_the_layer_written_out_in_float64():
    mixer = tiny_mixer()
    for parameter in (mixer.o_norm.weight, mixer.q_conv1d.weight):
        parameter.data.normal_()
    x = torch.randn(2, 90, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), layer_written_out(mixer, x), rtol=1e-10, atol=1e-10)


def test_prefill_and_steps_equal_the_full_forward_in_float64():
    mixer = tiny_mixer(gdn_conv_bias=True)
    hidden = torch.randn(2, 80, 64, dtype=torch.float64)
    with torch.no_grad():
        full = mixer(hidden)
        state = mixer.init_state(2, 80, "cpu", torch.float64)
        assert {t.dtype for t in state.values()} == {torch.float64}
        pieces = [mixer(hidden[:, start:end], state) for start, end in [(0, 2), (2, 70)] + [(t, t + 1) for t in range(70, 80)]]
    assert full.dtype == torch.float64
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-11, atol=1e-11)


def test_half_precision_runs_the_recurrence_in_float32():
    half = tiny_mixer(torch.bfloat16)
    hidden = torch.randn(1, 40, 64).bfloat16()
    state = half.init_state(1, 40, "cpu", torch.bfloat16)
    assert state["recurrent"].dtype == torch.float32 and state["q_conv"].dtype == torch.bfloat16
    with torch.no_grad():
        output = half(hidden, state)
        expected = copy.deepcopy(half).float()(hidden.float())
    assert output.dtype == torch.bfloat16
    assert (output.float() - expected).abs().max() < 0.03 * expected.abs().max()


def test_mixer_has_fla_gated_deltanet_names_shapes_attributes_and_initialisation():
    config = MusicHybridConfig.from_preset("hybrid-gdn-116m")
    mixer = GatedDeltaNetMixer(config, 0)
    mixer.init_own_weights()
    heads, head_k, head_v = config.gdn_num_heads, config.gdn_head_dim, 2 * config.gdn_head_dim
    key_dim, value_dim = heads * head_k, heads * head_v
    shapes = {name: tuple(p.shape) for name, p in mixer.named_parameters()}
    assert shapes == {
        "q_proj.weight": (key_dim, 768),
        "k_proj.weight": (key_dim, 768),
        "v_proj.weight": (value_dim, 768),
        "a_proj.weight": (heads, 768),
        "b_proj.weight": (heads, 768),
        "A_log": (heads,),
        "dt_bias": (heads,),
        "q_conv1d.weight": (key_dim, 1, 4),
        "k_conv1d.weight": (key_dim, 1, 4),
        "v_conv1d.weight": (value_dim, 1, 4),
        "g_proj.weight": (value_dim, 768),
        "o_norm.weight": (head_v,),
        "o_proj.weight": (768, value_dim),
    }
    assert (mixer.num_heads, mixer.num_v_heads, mixer.head_k_dim, mixer.head_v_dim) == (heads, heads, head_k, head_v)
    assert torch.exp(mixer.A_log).max() <= 16
    dt = F.softplus(mixer.dt_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001


def test_a_layout_overridden_in_depth_keeps_its_recurrent_kind():
    config = MusicHybridConfig.from_preset("hybrid-gdn-116m", num_hidden_layers=8)
    assert config.mixer_types == ["gated_deltanet"] * 3 + ["attention"] + ["gated_deltanet"] * 3 + ["attention"]
    assert config.layer_types == ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + ["full_attention"]
    with pytest.raises(ValueError, match="recurrent_mixer: must be a registered recurrent kind"):
        MusicHybridConfig.from_preset("hybrid-tiny", recurrent_mixer="attention")


def test_config_refuses_inconsistent_gated_deltanet_settings():
    with pytest.raises(ValueError, match="gdn_num_v_heads: 3 is not a multiple of gdn_num_heads=2"):
        MusicHybridConfig.from_preset("hybrid-gdn-tiny", gdn_num_v_heads=3)
    with pytest.raises(ValueError, match="gdn_expand_v"):
        MusicHybridConfig.from_preset("hybrid-gdn-tiny", gdn_expand_v=0.3)
    with pytest.raises(ValueError, match="gdn_implementation"):
        MusicHybridConfig.from_preset("hybrid-gdn-tiny", gdn_implementation="triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA and flash-linear-attention")
def test_real_fla_kernels_match_the_torch_path():
    pytest.importorskip("fla")
    gated_deltanet_music_hybrid.gated_delta_rule_kernels.cache_clear()
    models = []
    for implementation in ("torch", "kernels"):
        torch.manual_seed(0)
        config = MusicHybridConfig.from_preset("hybrid-gdn-tiny", gdn_implementation=implementation)
        models.append(MusicHybridForCausalLM(config).cuda().eval())
    codes = torch.randint(0, 1024, (2, 9, 40), device="cuda")
    inputs = codes_to_model_inputs(codes, models[0].config)
    outputs = [model(**inputs) for model in models]
    assert (outputs[0].logits - outputs[1].logits).abs().max() < 1e-3
    for output in outputs:
        output.loss.backward()
    for (name, p), q in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-3, rtol=1e-2), name
    generated = [model.generate(codes[:, :, :8], max_new_tokens=8, do_sample=False) for model in models]
    assert torch.equal(generated[0], generated[1])


def fla_kernel(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, **kwargs):
    """Stand-in for fla's chunk / fused_recurrent gated delta rule: q, k (B, T, H, K), v (B, T, HV, V), g (log
    decay) and beta (B, T, HV), state (N, HV, K, V) -> o, final state or None."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    state = q.new_zeros(q.shape[0], v.shape[2], q.shape[-1], v.shape[-1]) if initial_state is None else initial_state
    o, last = naive_delta_rule(q * scale, k, v, g, beta, state.float())
    return o, (last if output_final_state else None)


@pytest.fixture
def stand_in_kernels(monkeypatch):
    """Installs the stand-ins as fla's kernels; yields the names of the kernels called."""
    called = []

    def recorded(name):
        def call(*args, **kwargs):
            called.append(name)
            return fla_kernel(*args, **kwargs)

        return call

    for name in ("fla", "fla.ops"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    module = types.ModuleType("fla.ops.gated_delta_rule")
    module.chunk_gated_delta_rule = recorded("chunk_gated_delta_rule")
    module.fused_recurrent_gated_delta_rule = recorded("fused_recurrent_gated_delta_rule")
    monkeypatch.setitem(sys.modules, "fla.ops.gated_delta_rule", module)
    gated_deltanet_music_hybrid.gated_delta_rule_kernels.cache_clear()
    yield called
    gated_deltanet_music_hybrid.gated_delta_rule_kernels.cache_clear()


def test_kernel_path_matches_the_torch_path_in_training_and_decoding(stand_in_kernels):
    models = []
    for implementation in ("torch", "kernels"):
        torch.manual_seed(0)
        config = MusicHybridConfig.from_preset("hybrid-gdn-tiny", gdn_implementation=implementation)
        models.append(MusicHybridForCausalLM(config))
    codes = torch.randint(0, 1024, (2, 9, 12), generator=torch.Generator().manual_seed(1))
    results = []
    for model in models:
        inputs = codes_to_model_inputs(codes, model.config)
        output = model(**inputs)
        output.loss.backward()
        cache = model.model.new_cache(2, inputs["input_ids"].shape[2])
        with torch.no_grad():
            pieces = [model(inputs["input_ids"][:, :, :5], cache=cache).logits]
            pieces += [model(inputs["input_ids"][:, :, t : t + 1], cache=cache).logits for t in range(5, 20)]
        results.append((output.logits, {n: p.grad for n, p in model.named_parameters()}, torch.cat(pieces, dim=2)))
    assert set(stand_in_kernels) == {"chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule"}
    assert (results[0][0] - results[1][0]).abs().max() < 1e-5
    assert (results[0][2] - results[1][2]).abs().max() < 1e-5
    for name, grad in results[0][1].items():
        assert torch.allclose(grad, results[1][1][name], atol=1e-5, rtol=1e-4), name


def test_kernel_path_without_the_kernels_is_an_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "fla", None)
    gated_deltanet_music_hybrid.gated_delta_rule_kernels.cache_clear()
    try:
        config = MusicHybridConfig.from_preset("hybrid-gdn-tiny", gdn_implementation="kernels")
        with pytest.raises(ImportError, match="flash-linear-attention"):
            MusicHybridForCausalLM(config)(torch.zeros(1, 9, 4, dtype=torch.long))
    finally:
        gated_deltanet_music_hybrid.gated_delta_rule_kernels.cache_clear()
