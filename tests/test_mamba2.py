"""The Mamba-2 mixer ("mamba2"): mamba_ssm's Mamba2 names and shapes, the chunked SSD scan exact in float64 against a
per-step recurrence (outputs, states, gradients) and against the authors' own references, decoding equal to the
full forward pass (the whole model's checks, shared by every kind, are in test_mixer_registry.py)."""

import copy
import sys
import types

import pytest
import torch
import torch.nn.functional as F
import transformers
from packaging.version import Version

import mamba2_music_hybrid
from configuration_music_hybrid import MusicHybridConfig
from mamba2_music_hybrid import GroupedGatedRMSNorm, Mamba2Mixer, ssd_scan, ssd_step
from modeling_music_hybrid import MusicHybridForCausalLM, codes_to_model_inputs
from tests.test_mamba_kernels import causal_conv1d_fn, causal_conv1d_update
from tests.upstream_references import reference_functions


def naive_ssd(x, dt, A, B, C, state):
    """The recurrence one step at a time: h = exp(dt A) h + dt x B^T, y = h C, head h reading group h // (H / G)."""
    heads_per_group = x.shape[2] // B.shape[2]
    B, C = (t.repeat_interleave(heads_per_group, dim=2) for t in (B, C))
    ys = []
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append((state * C[:, t, :, None, :]).sum(-1))
    return torch.stack(ys, dim=1), state


def ssd_inputs(batch=2, length=150, nheads=4, headdim=3, ngroups=2, d_state=5, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    x = draw(batch, length, nheads, headdim)
    dt = F.softplus(draw(batch, length, nheads) - 1)
    A = -torch.exp(draw(nheads))
    B, C = draw(batch, length, ngroups, d_state), draw(batch, length, ngroups, d_state)
    state = draw(batch, nheads, headdim, d_state)
    return x, dt, A, B, C, state


@pytest.mark.parametrize("length", [1, 64, 150])
def test_chunked_scan_equals_the_per_step_recurrence_in_float64(length):
    x, dt, A, B, C, state = ssd_inputs(length=length)
    y, last = ssd_scan(x, dt, A, B, C, state)
    y_naive, last_naive = naive_ssd(x, dt, A, B, C, state)
    assert y.dtype == torch.float64 and last.dtype == torch.float64
    torch.testing.assert_close(y, y_naive, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, last_naive, rtol=1e-12, atol=1e-12)
    y_zero, _ = ssd_scan(x, dt, A, B, C)
    torch.testing.assert_close(y_zero, naive_ssd(x, dt, A, B, C, torch.zeros_like(state))[0], rtol=1e-12, atol=1e-12)


def test_chunked_scan_gradients_equal_autograd_through_the_recurrence():
    inputs = [t.requires_grad_() for t in ssd_inputs(length=100)]
    weights = torch.randn(2, 100, 4, 3, dtype=torch.float64)
    gradients = []
    for scan in (ssd_scan, naive_ssd):
        y, last = scan(*inputs)
        gradients.append(torch.autograd.grad((y * weights).sum() + last.square().sum(), inputs))
    for chunked, naive in zip(*gradients, strict=True):
        torch.testing.assert_close(chunked, naive, rtol=1e-10, atol=1e-10)


def test_decoding_step_equals_one_step_of_the_recurrence():
    x, dt, A, B, C, state = ssd_inputs(length=1)
    stepped = state.clone()
    y = ssd_step(stepped, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
    y_naive, last_naive = naive_ssd(x, dt, A, B, C, state)
    torch.testing.assert_close(y, y_naive[:, 0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stepped, last_naive, rtol=1e-12, atol=1e-12)


def test_scan_equals_mamba_ssm_ssd_minimal(request):
    """The authors' Listing 1 (ssd_minimal_discrete: X * dt, A * dt, one group) in float64."""
    ssd_minimal_discrete = reference_functions(
        request, "mamba_ssm", "modules/ssd_minimal.py", ["segsum", "ssd_minimal_discrete"]
    )["ssd_minimal_discrete"]
    x, dt, A, B, C, state = ssd_inputs(length=96, ngroups=1)
    y, last = ssd_scan(x, dt, A, B, C, state)
    y_ref, last_ref = ssd_minimal_discrete(x * dt[..., None], A * dt, B.expand(-1, -1, 4, -1), C.expand(-1, -1, 4, -1),
                                           32, initial_states=state[:, None])
    torch.testing.assert_close(y, y_ref, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(last, last_ref, rtol=1e-11, atol=1e-11)


def test_step_and_norm_equal_mamba_ssm_references(request):
    """selective_state_update_ref (heads, groups, D, dt bias) and the gated RMSNorm's rms_norm_ref with
    norm_before_gate=False, per group."""
    update_ref = reference_functions(
        request, "mamba_ssm", "ops/triton/selective_state_update.py", ["selective_state_update_ref"]
    )["selective_state_update_ref"]
    rms_norm_ref = reference_functions(request, "mamba_ssm", "ops/triton/layernorm_gated.py", ["rms_norm_ref"])[
        "rms_norm_ref"
    ]
    torch.manual_seed(0)
    config = MusicHybridConfig.from_preset("hybrid-mamba2-tiny", num_hidden_layers=1, mixer_types=["mamba2"])
    mixer = Mamba2Mixer(config, 0).double()
    mixer.init_own_weights()
    batch = 3
    x = torch.randn(batch, mixer.nheads, mixer.headdim, dtype=torch.float64)
    dt = torch.randn(batch, mixer.nheads, dtype=torch.float64)
    B, C = (torch.randn(batch, mixer.ngroups, mixer.d_state, dtype=torch.float64) for _ in range(2))
    state = torch.randn(batch, mixer.nheads, mixer.headdim, mixer.d_state, dtype=torch.float64)
    reference_state = state.clone()
    expected = update_ref(
        reference_state, x, dt[..., None].expand(-1, -1, mixer.headdim),
        mixer.decay_rates()[:, None, None].expand(-1, mixer.headdim, mixer.d_state), B, C,
        mixer.D[:, None].expand(-1, mixer.headdim), dt_bias=mixer.dt_bias[:, None].expand(-1, mixer.headdim),
        dt_softplus=True,
    )
    y = ssd_step(state, x, mixer.time_steps(dt), mixer.decay_rates(), B, C) + x * mixer.D[:, None]
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, reference_state, rtol=1e-12, atol=1e-12)

    norm = GroupedGatedRMSNorm(12, group_size=4).double()
    norm.weight.data.copy_(torch.randn(12).float())  # exact in float32: the reference casts the weight to it
    y, z = torch.randn(2, 7, 12, dtype=torch.float64), torch.randn(2, 7, 12, dtype=torch.float64)
    expected = rms_norm_ref(y, norm.weight, None, z=z, eps=norm.eps, group_size=4, norm_before_gate=False,
                            upcast=False)
    torch.testing.assert_close(norm(y, z), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(
    Version(transformers.__version__) < Version("5.25"),
    reason="transformers' Mamba2Mixer torch path of this release differs from mamba_ssm's references, which our mixer "
    "matches (the tests above); 5.25 agrees with both, 5.10.1 does not",
)
def test_mixer_equals_transformers_mamba2_mixer_with_the_same_weights():
    """transformers' Mamba2Mixer (its PyTorch path) loads our state dict unchanged and computes the same outputs."""
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as TransformersMamba2Mixer

    ours = tiny_mixer(torch.float32)
    config = Mamba2Config(
        hidden_size=64, state_size=ours.d_state, expand=ours.expand, head_dim=ours.headdim, num_heads=ours.nheads,
        n_groups=ours.ngroups, conv_kernel=ours.d_conv, use_bias=False, use_conv_bias=True, num_hidden_layers=1,
        layer_norm_epsilon=ours.norm.eps,
    )
    theirs = TransformersMamba2Mixer(config, layer_idx=0).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    hidden = torch.randn(2, 100, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(hidden), theirs(hidden), rtol=1e-5, atol=1e-5)


def tiny_mixer(dtype=torch.float64, **overrides):
    torch.manual_seed(0)
    config = MusicHybridConfig.from_preset(
        "hybrid-mamba2-tiny", num_hidden_layers=1, mixer_types=["mamba2"], mamba2_implementation="torch", **overrides
    )
    mixer = Mamba2Mixer(config, 0).to(dtype)
    mixer.init_own_weights()
    return mixer


@pytest.mark.parametrize("overrides", [{}, {"mamba2_d_ssm": 96}])
def test_prefill_and_steps_equal_the_full_forward_in_float64(overrides):
    """A prefill shorter than the conv, a continuation and single steps give the full forward's outputs, in float64
    throughout (also with d_ssm < d_inner: upstream's gated MLP part)."""
    mixer = tiny_mixer(**overrides)
    hidden = torch.randn(2, 80, 64, dtype=torch.float64)
    with torch.no_grad():
        full = mixer(hidden)
        state = mixer.init_state(2, 80, "cpu", torch.float64)
        assert {t.dtype for t in state.values()} == {torch.float64}
        cache = type("Cache", (), {"length": 0})()
        pieces = []
        for start, end in [(0, 2), (2, 70)] + [(t, t + 1) for t in range(70, 80)]:
            pieces.append(mixer(hidden[:, start:end], state, cache=cache))
            cache.length = end
    assert full.dtype == torch.float64
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-11, atol=1e-11)


def test_half_precision_runs_the_recurrence_in_float32():
    """bfloat16 layers keep a float32 state and scan in float32: the result is the float32 mixer's with the same
    (rounded) weights and inputs, up to bfloat16's rounding of the projections."""
    half = tiny_mixer(torch.bfloat16)
    hidden = torch.randn(1, 40, 64).bfloat16()
    state = half.init_state(1, 40, "cpu", torch.bfloat16)
    assert state["ssm"].dtype == torch.float32 and state["conv"].dtype == torch.bfloat16
    with torch.no_grad():
        output = half(hidden, state, cache=type("Cache", (), {"length": 0})())
        expected = copy.deepcopy(half).float()(hidden.float())
    assert output.dtype == torch.bfloat16
    assert (output.float() - expected).abs().max() < 0.03 * expected.abs().max()


def test_mixer_has_mamba_ssm_mamba2_names_shapes_attributes_and_initialisation():
    config = MusicHybridConfig.from_preset("hybrid-mamba2-116m")
    mixer = Mamba2Mixer(config, 0)
    mixer.init_own_weights()
    d_inner, n, g, h = 1536, config.mamba2_d_state, config.mamba2_ngroups, 1536 // config.mamba2_headdim
    shapes = {name: tuple(p.shape) for name, p in mixer.named_parameters()}
    assert shapes == {
        "in_proj.weight": (2 * d_inner + 2 * g * n + h, 768),
        "conv1d.weight": (d_inner + 2 * g * n, 1, 4),
        "conv1d.bias": (d_inner + 2 * g * n,),
        "dt_bias": (h,),
        "A_log": (h,),
        "D": (h,),
        "norm.weight": (d_inner,),
        "out_proj.weight": (768, d_inner),
    }
    for name in ("d_model", "d_state", "d_conv", "expand", "d_inner", "headdim", "d_ssm", "ngroups", "nheads"):
        assert isinstance(getattr(mixer, name), int), name
    assert (mixer.nheads, mixer.headdim, mixer.d_ssm, mixer.norm.group_size) == (h, config.mamba2_headdim, d_inner, d_inner // g)
    A = torch.exp(mixer.A_log)
    assert A.min() >= 1 and A.max() <= 16 and torch.equal(mixer.D, torch.ones(h))
    dt = F.softplus(mixer.dt_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001


def test_config_refuses_inconsistent_mamba2_settings():
    with pytest.raises(ValueError, match="mamba2_headdim: 48 does not divide"):
        MusicHybridConfig.from_preset("hybrid-mamba2-tiny", mamba2_headdim=48)
    with pytest.raises(ValueError, match="mamba2_ngroups: 3 does not divide"):
        MusicHybridConfig.from_preset("hybrid-mamba2-tiny", mamba2_ngroups=3)
    with pytest.raises(ValueError, match="mamba2_implementation"):
        MusicHybridConfig.from_preset("hybrid-mamba2-tiny", mamba2_implementation="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA and the mamba-ssm / causal-conv1d kernels")
def test_real_cuda_kernels_match_the_torch_path():
    pytest.importorskip("mamba_ssm")
    pytest.importorskip("causal_conv1d")
    mamba2_music_hybrid.mamba2_kernels.cache_clear()
    models = []
    for implementation in ("torch", "kernels"):
        torch.manual_seed(0)
        config = MusicHybridConfig.from_preset("hybrid-mamba2-tiny", mamba2_implementation=implementation)
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


# Stand-ins for mamba_ssm's Mamba-2 kernels with their documented signatures and layouts, written from the
# recurrence (not from the mixer): forcing the kernel path onto them must reproduce the PyTorch path, so a layout
# mistake in the kernel calls fails here and not first on a user's GPU.


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                              seq_idx=None, cu_seqlens=None, dt_softplus=False, return_final_states=False, **kwargs):
    """x (batch, seqlen, nheads, headdim), dt (batch, seqlen, nheads), B, C (batch, seqlen, ngroups, dstate)."""
    dt = dt.float() + (0 if dt_bias is None else dt_bias)
    dt = F.softplus(dt) if dt_softplus else dt
    state = x.new_zeros(x.shape[0], x.shape[2], x.shape[3], B.shape[-1], dtype=torch.float32)
    y, last = naive_ssd(x.float(), dt, A, B.float(), C.float(), state)
    if D is not None:
        y = y + x * D[:, None]
    return (y, last) if return_final_states else y


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """state (batch, nheads, headdim, dstate) updated in place; x, dt (batch, nheads, headdim); A (nheads, headdim,
    dstate); B, C (batch, ngroups, dstate); D, dt_bias (nheads, headdim) -> (batch, nheads, headdim)."""
    dt = dt + (0 if dt_bias is None else dt_bias)
    dt = F.softplus(dt) if dt_softplus else dt
    heads_per_group = x.shape[1] // B.shape[1]
    B, C = (t.repeat_interleave(heads_per_group, dim=1)[:, :, None, :] for t in (B, C))
    state.copy_(torch.exp(dt[..., None] * A) * state + (dt * x)[..., None] * B)
    out = (state * C).sum(-1) + (0 if D is None else x * D)
    return out * F.silu(z) if z is not None else out


def mamba_split_conv1d_scan_combined(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size,
                                     activation="silu", rmsnorm_weight=None, rmsnorm_eps=1e-6, outproj_weight=None,
                                     outproj_bias=None, headdim=None, ngroups=1, norm_before_gate=True, **kwargs):
    """zxbcdt (batch, seqlen, 2 * dim + 2 * ngroups * dstate + nheads), conv1d_weight (conv_dim, width)."""
    nheads = dt_bias.shape[0]
    dim = nheads * headdim
    d_state = (zxbcdt.shape[-1] - 2 * dim - nheads) // (2 * ngroups)
    z, xBC, dt = torch.split(zxbcdt, [dim, dim + 2 * ngroups * d_state, nheads], dim=-1)
    xBC = causal_conv1d_fn(xBC.transpose(1, 2), conv1d_weight, conv1d_bias, activation=activation).transpose(1, 2)
    x, B, C = torch.split(xBC, [dim, ngroups * d_state, ngroups * d_state], dim=-1)
    batch, seqlen = x.shape[:2]
    y = mamba_chunk_scan_combined(
        x.view(batch, seqlen, nheads, headdim), dt, A, B.view(batch, seqlen, ngroups, d_state),
        C.view(batch, seqlen, ngroups, d_state), chunk_size, D=D, dt_bias=dt_bias, dt_softplus=True,
    ).reshape(batch, seqlen, dim)
    assert not norm_before_gate
    gated = (y * F.silu(z)).unflatten(-1, (ngroups, -1))
    y = (gated * torch.rsqrt(gated.square().mean(-1, keepdim=True) + rmsnorm_eps)).flatten(-2) * rmsnorm_weight
    return F.linear(y, outproj_weight, outproj_bias)


@pytest.fixture
def stand_in_kernels(monkeypatch):
    """Installs the stand-ins as the kernel packages; yields the names of the kernels called."""
    called = []

    def recorded(function):
        def call(*args, **kwargs):
            called.append(function.__name__)
            return function(*args, **kwargs)

        return call

    modules = {
        "causal_conv1d": dict(causal_conv1d_fn=causal_conv1d_fn, causal_conv1d_update=causal_conv1d_update),
        "mamba_ssm": {},
        "mamba_ssm.ops": {},
        "mamba_ssm.ops.triton": {},
        "mamba_ssm.ops.triton.selective_state_update": dict(selective_state_update=selective_state_update),
        "mamba_ssm.ops.triton.ssd_combined": dict(
            mamba_chunk_scan_combined=mamba_chunk_scan_combined,
            mamba_split_conv1d_scan_combined=mamba_split_conv1d_scan_combined,
        ),
    }
    for name, functions in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update({key: recorded(function) for key, function in functions.items()})
        monkeypatch.setitem(sys.modules, name, module)
    mamba2_music_hybrid.mamba2_kernels.cache_clear()
    yield called
    mamba2_music_hybrid.mamba2_kernels.cache_clear()


def models_on_both_paths():
    models = []
    for implementation in ("torch", "kernels"):
        torch.manual_seed(0)
        config = MusicHybridConfig.from_preset("hybrid-mamba2-tiny", mamba2_implementation=implementation)
        models.append(MusicHybridForCausalLM(config).eval())
    return models


def test_fused_training_kernel_matches_the_torch_path_in_outputs_and_gradients(stand_in_kernels):
    codes = torch.randint(0, 1024, (2, 9, 14), generator=torch.Generator().manual_seed(1))
    results = []
    for model in models_on_both_paths():
        output = model(**codes_to_model_inputs(codes, model.config))
        output.loss.backward()
        results.append((output.logits, {n: p.grad for n, p in model.named_parameters()}))
    assert set(stand_in_kernels) == {"mamba_split_conv1d_scan_combined"}
    assert (results[0][0] - results[1][0]).abs().max() < 1e-5
    for name, grad in results[0][1].items():
        assert torch.allclose(grad, results[1][1][name], atol=1e-5, rtol=1e-4), name


def test_cached_kernels_match_the_torch_path_in_outputs_and_states(stand_in_kernels):
    codes = torch.randint(0, 1024, (2, 9, 10), generator=torch.Generator().manual_seed(2))
    caches, logits = [], []
    for model in models_on_both_paths():
        input_ids = codes_to_model_inputs(codes, model.config)["input_ids"]
        cache = model.model.new_cache(2, input_ids.shape[2])
        with torch.no_grad():
            pieces = [model(input_ids[:, :, :2], cache=cache).logits]  # a prefill shorter than the conv width
            pieces += [model(input_ids[:, :, t : t + 1], cache=cache).logits for t in range(2, input_ids.shape[2])]
        caches.append(cache)
        logits.append(torch.cat(pieces, dim=2))
    assert set(stand_in_kernels) == {
        "causal_conv1d_fn", "mamba_chunk_scan_combined", "causal_conv1d_update", "selective_state_update",
    }
    assert (logits[0] - logits[1]).abs().max() < 1e-5
    for first, second in zip(caches[0].states, caches[1].states, strict=True):
        if "ssm" in first:
            assert torch.allclose(first["conv"], second["conv"], atol=1e-6)
            assert torch.allclose(first["ssm"], second["ssm"], atol=1e-5)


def test_kernel_path_without_the_kernels_is_an_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)
    mamba2_music_hybrid.mamba2_kernels.cache_clear()
    try:
        with pytest.raises(ImportError, match="mamba-ssm"):
            models_on_both_paths()[1](torch.zeros(1, 9, 4, dtype=torch.long))
    finally:
        mamba2_music_hybrid.mamba2_kernels.cache_clear()
