"""The Mamba mixer's kernel wiring, checked on CPU with stand-in kernels, and on CUDA with the real ones.

The stand-ins are plain sequential PyTorch versions of mamba_ssm's and causal_conv1d's functions with their
documented signatures, argument layouts and return values. Forcing the kernel path onto them must reproduce
the PyTorch path, so a layout mistake in the kernel calls fails here and not first on a user's GPU.
"""

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from configuration_music_hybrid import MusicHybridConfig
import mamba_music_hybrid
from mamba_music_hybrid import MambaMixer
from modeling_music_hybrid import MusicHybridForCausalLM, codes_to_model_inputs


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None):
    """x (batch, dim, seqlen), weight (dim, width) -> (batch, dim, seqlen)."""
    width = weight.shape[1]
    out = F.conv1d(F.pad(x, (width - 1, 0)), weight[:, None, :], bias, groups=x.shape[1])
    return F.silu(out) if activation in ("silu", "swish") else out


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None):
    """x (batch, dim), conv_state (batch, dim, width) updated in place -> (batch, dim)."""
    conv_state.copy_(torch.cat([conv_state[:, :, 1:], x[:, :, None]], dim=-1))
    out = (conv_state * weight).sum(-1) + (0 if bias is None else bias)
    return F.silu(out) if activation in ("silu", "swish") else out


def sequential_scan(u, delta, A, B, C, state):
    """u, delta (batch, dim, L), A (dim, n), B, C (batch, n, L) -> y (batch, dim, L) and the last state."""
    ys = []
    for t in range(u.shape[-1]):
        state = torch.exp(delta[..., t, None] * A) * state + (delta[..., t] * u[..., t])[..., None] * B[:, None, :, t]
        ys.append((state * C[:, None, :, t]).sum(-1))
    return torch.stack(ys, dim=-1), state


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    y, last_state = sequential_scan(u.float(), delta.float(), A, B.float(), C.float(), state)
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return (y, last_state) if return_last_state else y


def mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                   out_proj_bias, A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None, C_proj_bias=None,
                   delta_softplus=True):
    """xz (batch, 2 * dim, L), conv1d_weight (dim, 1, width) -> (batch, L, d_model)."""
    x, z = xz.chunk(2, dim=1)
    x = causal_conv1d_fn(x, conv1d_weight[:, 0], conv1d_bias, activation="silu")
    rank, d_state = delta_proj_weight.shape[1], A.shape[1]
    x_dbl = F.linear(x.transpose(1, 2), x_proj_weight)
    dt, B, C = torch.split(x_dbl, [rank, d_state, d_state], dim=-1)
    delta = F.linear(dt, delta_proj_weight).transpose(1, 2)
    y = selective_scan_fn(x, delta, A, B.transpose(1, 2), C.transpose(1, 2), D, z, delta_bias, delta_softplus)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """state (batch, dim, n) updated in place; x, dt, z (batch, dim); B, C (batch, n) -> (batch, dim)."""
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)
    state.copy_(torch.exp(dt[..., None] * A) * state + (dt * x)[..., None] * B[:, None, :])
    out = (state * C[:, None, :]).sum(-1)
    if D is not None:
        out = out + x * D
    return out * F.silu(z) if z is not None else out


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
        "mamba_ssm.ops.selective_scan_interface": dict(selective_scan_fn=selective_scan_fn, mamba_inner_fn=mamba_inner_fn),
        "mamba_ssm.ops.triton": {},
        "mamba_ssm.ops.triton.selective_state_update": dict(selective_state_update=selective_state_update),
    }
    for name, functions in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update({key: recorded(function) for key, function in functions.items()})
        monkeypatch.setitem(sys.modules, name, module)
    mamba_music_hybrid.mamba_kernels.cache_clear()
    yield called
    mamba_music_hybrid.mamba_kernels.cache_clear()


def models_on_both_paths(name="hybrid-tiny"):
    models = []
    for implementation in ("torch", "kernels"):
        torch.manual_seed(0)
        config = MusicHybridConfig.from_preset(name, mamba_implementation=implementation)
        models.append(MusicHybridForCausalLM(config).eval())
    return models


def test_kernel_path_without_the_kernels_is_an_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)
    mamba_music_hybrid.mamba_kernels.cache_clear()
    try:
        _, kernel_model = models_on_both_paths()
        with pytest.raises(ImportError, match="mamba-ssm"):
            kernel_model(torch.zeros(1, 9, 4, dtype=torch.long))
    finally:
        mamba_music_hybrid.mamba_kernels.cache_clear()


def test_fused_training_kernel_matches_the_torch_path_in_outputs_and_gradients(stand_in_kernels):
    torch_model, kernel_model = models_on_both_paths()
    codes = torch.randint(0, 1024, (2, 9, 14), generator=torch.Generator().manual_seed(1))
    inputs = codes_to_model_inputs(codes, torch_model.config)
    results = []
    for model in (torch_model, kernel_model):
        output = model(**inputs)
        output.loss.backward()
        results.append((output.logits, {n: p.grad for n, p in model.named_parameters()}))
    assert set(stand_in_kernels) == {"mamba_inner_fn"}
    assert (results[0][0] - results[1][0]).abs().max() < 1e-5
    for name, grad in results[0][1].items():
        assert torch.allclose(grad, results[1][1][name], atol=1e-5, rtol=1e-4), name


def test_wrapped_projections_train_through_the_unfused_kernels_never_as_raw_weights(stand_in_kernels):
    """mamba_inner_fn takes raw weights: with LoRA on the Mamba projections the kernel path must call the layers
    (causal_conv1d_fn + selective_scan_fn), giving the torch path's outputs and every adapter its gradient."""
    peft = pytest.importorskip("peft")
    lora = dict(r=2, target_modules=["in_proj", "x_proj", "dt_proj", "out_proj"])
    codes = torch.randint(0, 1024, (2, 9, 14), generator=torch.Generator().manual_seed(1))
    results = []
    for model in models_on_both_paths():
        torch.manual_seed(3)
        model = peft.get_peft_model(model, peft.LoraConfig(**lora))
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.data.normal_(std=0.1)
        output = model(**codes_to_model_inputs(codes, model.config))
        output.loss.backward()
        results.append((output.logits, {n: p.grad for n, p in model.named_parameters() if "lora_" in n}))
    assert set(stand_in_kernels) == {"causal_conv1d_fn", "selective_scan_fn"}
    assert (results[0][0] - results[1][0]).abs().max() < 1e-5
    assert {name.split(".")[-4] for name in results[1][1]} == set(lora["target_modules"])
    for name, grad in results[1][1].items():
        assert grad is not None and grad.abs().sum() > 0, name
        assert torch.allclose(grad, results[0][1][name], atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("name", ["hybrid-tiny", "mamba-tiny"])
def test_cached_kernels_match_the_torch_path_in_outputs_and_cache_updates(stand_in_kernels, name):
    torch_model, kernel_model = models_on_both_paths(name)
    codes = torch.randint(0, 1024, (2, 9, 10), generator=torch.Generator().manual_seed(2))
    input_ids = codes_to_model_inputs(codes, torch_model.config)["input_ids"]
    caches, logits = [], []
    for model in (torch_model, kernel_model):
        cache = model.model.new_cache(2, input_ids.shape[2])
        pieces = [model(input_ids[:, :, :2], cache=cache).logits]  # prefill shorter than the conv width
        pieces += [model(input_ids[:, :, t : t + 1], cache=cache).logits for t in range(2, input_ids.shape[2])]
        caches.append(cache)
        logits.append(torch.cat(pieces, dim=2))
    assert set(stand_in_kernels) == {"causal_conv1d_fn", "selective_scan_fn", "causal_conv1d_update", "selective_state_update"}
    assert (logits[0] - logits[1]).abs().max() < 1e-5
    for first, second in zip(caches[0].states, caches[1].states):
        if "ssm" in first:
            assert torch.allclose(first["conv"], second["conv"], atol=1e-6)
            assert torch.allclose(first["ssm"], second["ssm"], atol=1e-5)


def test_mixer_has_mamba_ssm_parameter_names_shapes_and_initialisation():
    config = MusicHybridConfig.from_preset("hybrid-116m", num_hidden_layers=1, layer_types=["linear_attention"])
    torch.manual_seed(0)
    mixer = MusicHybridForCausalLM(config).model.layers[0].mixer
    assert isinstance(mixer, MambaMixer)
    shapes = {name: tuple(p.shape) for name, p in mixer.named_parameters()}
    assert shapes == {
        "in_proj.weight": (3072, 768),
        "conv1d.weight": (1536, 1, 4),
        "conv1d.bias": (1536,),
        "x_proj.weight": (48 + 2 * 64, 1536),
        "dt_proj.weight": (1536, 48),
        "dt_proj.bias": (1536,),
        "A_log": (1536, 64),
        "D": (1536,),
        "out_proj.weight": (768, 1536),
    }
    assert torch.equal(mixer.A_log, torch.log(torch.arange(1, 65, dtype=torch.float32)).expand(1536, -1))
    assert torch.equal(mixer.D, torch.ones(1536))
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert mixer.dt_proj.weight.abs().max() <= 48**-0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA and the mamba-ssm / causal-conv1d kernels")
def test_real_cuda_kernels_match_the_torch_path():
    pytest.importorskip("mamba_ssm")
    pytest.importorskip("causal_conv1d")
    mamba_music_hybrid.mamba_kernels.cache_clear()
    torch_model, kernel_model = (model.cuda() for model in models_on_both_paths())
    codes = torch.randint(0, 1024, (2, 9, 40), device="cuda")
    inputs = codes_to_model_inputs(codes, torch_model.config)
    outputs = [model(**inputs) for model in (torch_model, kernel_model)]
    assert (outputs[0].logits - outputs[1].logits).abs().max() < 1e-3
    for model in (torch_model, kernel_model):
        model.zero_grad()
    for output in outputs:
        output.loss.backward()
    for (name, p), q in zip(torch_model.named_parameters(), kernel_model.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-3, rtol=1e-2), name
    torch.manual_seed(0)
    prompt = codes[:, :, :8]
    generated = [model.generate(prompt, max_new_tokens=8, do_sample=False) for model in (torch_model, kernel_model)]
    assert torch.equal(generated[0], generated[1])


def test_memory_caching_layers_run_the_torch_path_beside_the_kernels(stand_in_kernels):
    """Layers with memory caching need the segment-end states, which the kernels do not return: with the
    kernels installed (and even insisted on) they run the PyTorch path, in training and in decoding."""
    torch_model, kernel_model = models_on_both_paths("hybrid-mc-tiny")
    codes = torch.randint(0, 1024, (2, 9, 40), generator=torch.Generator().manual_seed(3))
    inputs = codes_to_model_inputs(codes, torch_model.config)
    outputs = [model(**inputs) for model in (torch_model, kernel_model)]
    assert torch.equal(outputs[0].logits, outputs[1].logits)
    prompt = codes[:, :, :4]
    generated = [model.generate(prompt, max_new_tokens=30, do_sample=False) for model in (torch_model, kernel_model)]
    assert torch.equal(generated[0], generated[1])
    assert stand_in_kernels == []
