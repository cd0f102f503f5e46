"""The PyTorch selective scan equals a plain float64 state-carrying loop, in outputs and every gradient."""

import pytest
import torch
import torch.nn.functional as F

from configuration_music_hybrid import MusicHybridConfig
import selective_scan_music_hybrid
from modeling_music_hybrid import MusicHybridForCausalLM, codes_to_model_inputs
from selective_scan_music_hybrid import SelectiveScan, selective_scan

BATCH, D_INNER, D_STATE, LENGTH = 2, 6, 4, 37
TOLERANCE = 1e-5


def reference_scan(u, delta, A, B, C, state):
    """The recurrence written out step by step (the definition the chunked scan must reproduce)."""
    ys = []
    for t in range(u.shape[-1]):
        state = torch.exp(delta[..., t, None] * A) * state + (delta[..., t] * u[..., t])[..., None] * B[:, None, :, t]
        ys.append((state * C[:, None, :, t]).sum(-1))
    return torch.stack(ys, dim=-1), state


def scan_inputs(seed, length=LENGTH, dtype=torch.float32):
    """Well-scaled inputs as the mixer makes them: softplus time steps, negative A, O(1) B, C and state."""
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    inputs = (
        draw(BATCH, D_INNER, length),
        F.softplus(draw(BATCH, D_INNER, length) - 1),
        -torch.exp(0.5 * draw(D_INNER, D_STATE)),
        draw(BATCH, D_STATE, length),
        draw(BATCH, D_STATE, length),
        draw(BATCH, D_INNER, D_STATE),
    )
    return [t.to(dtype).requires_grad_() for t in inputs]


def output_gradients(seed, length=LENGTH):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(BATCH, D_INNER, length, generator=generator, dtype=torch.float64),
        torch.randn(BATCH, D_INNER, D_STATE, generator=generator, dtype=torch.float64),
    )


def outputs_and_gradients(scan, inputs, grad_y, grad_state):
    y, last_state = scan(*inputs)
    loss = (y * grad_y.to(y.dtype)).sum() + (last_state * grad_state.to(last_state.dtype)).sum()
    loss.backward()
    return [y, last_state] + [t.grad for t in inputs]


@pytest.mark.parametrize(
    "chunk_size, compiled",
    # compiled: every whole chunk runs the torch.compile-fused kernels, a last shorter one the eager code
    [(1, False), (5, False), (16, False), (64, False), (5, True)],
)
def test_outputs_and_gradients_match_float64_loop(chunk_size, compiled):
    grad_y, grad_state = output_gradients(1)
    expected = outputs_and_gradients(reference_scan, scan_inputs(0, dtype=torch.float64), grad_y, grad_state)
    scan = lambda *inputs: selective_scan(*inputs, chunk_size=chunk_size, compiled=compiled)  # noqa: E731
    actual = outputs_and_gradients(scan, scan_inputs(0), grad_y, grad_state)
    names = ["y", "last_state", "grad_u", "grad_delta", "grad_A", "grad_B", "grad_C", "grad_initial_state"]
    for name, got, want in zip(names, actual, expected):
        assert got.dtype == torch.float32, name
        assert got.shape == want.shape, name
        assert (got.double() - want).abs().max().item() <= TOLERANCE, name


def test_without_initial_state_starts_from_zero_and_needs_no_state_gradient():
    u, delta, A, B, C, _ = scan_inputs(2)
    y, last_state = selective_scan(u, delta, A, B, C, chunk_size=8)
    zero = torch.zeros(BATCH, D_INNER, D_STATE, dtype=torch.float64)
    want_y, want_state = reference_scan(*(t.double() for t in (u, delta, A, B, C)), zero)
    assert (y.double() - want_y).abs().max() <= TOLERANCE
    assert (last_state.double() - want_state).abs().max() <= TOLERANCE
    y.sum().backward()  # grad_last_state is None here
    assert u.grad is not None and torch.isfinite(A.grad).all()


@pytest.mark.parametrize("compiled", [False, True])
def test_inference_path_equals_training_path_and_keeps_no_graph(compiled):
    inputs = scan_inputs(3)
    y_train, state_train = selective_scan(*inputs, chunk_size=7, compiled=compiled)
    with torch.no_grad():
        y_infer, state_infer = selective_scan(*inputs, chunk_size=7, compiled=compiled)
    assert y_infer.grad_fn is None
    assert torch.equal(y_infer, y_train.detach()) and torch.equal(state_infer, state_train.detach())


def test_training_memory_is_bounded_by_chunk_start_states():
    """Saved for backward: the inputs and one state per chunk, never every step's (d_inner, d_state) state."""
    length, chunk_size = 200, 16
    y, _ = selective_scan(*scan_inputs(4, length=length), chunk_size=chunk_size)
    assert type(y.grad_fn).__name__ == SelectiveScan.__name__ + "Backward"
    *inputs, start_states = y.grad_fn.saved_tensors
    assert start_states.shape == (-(-length // chunk_size), BATCH, D_INNER, D_STATE)
    assert max(t.numel() for t in inputs) == length * BATCH * D_INNER  # u and delta; B, C, A are smaller


def test_half_precision_inputs_scan_in_float32():
    u, delta, A, B, C, state = scan_inputs(5)
    y_fp32, _ = selective_scan(u, delta, A, B, C, state)
    y_bf16, state_bf16 = selective_scan(u.bfloat16(), delta.bfloat16(), A, B.bfloat16(), C.bfloat16(), state)
    assert y_bf16.dtype == torch.float32 and state_bf16.dtype == torch.float32
    assert torch.allclose(y_bf16, y_fp32, atol=0.1, rtol=0.05)


def test_compiled_mamba_implementation_gives_the_torch_path_outputs_and_gradients(monkeypatch):
    codes = torch.randint(0, 1024, (2, 9, 14), generator=torch.Generator().manual_seed(6))
    fused_chunks = []
    compile_chunk = selective_scan_music_hybrid.compiled_chunk_function.__wrapped__

    def recording_compiled_chunk_function(function):
        fused_chunks.append(function.__name__)
        return compile_chunk(function)

    monkeypatch.setattr(selective_scan_music_hybrid, "compiled_chunk_function", recording_compiled_chunk_function)
    results = []
    for implementation in ("torch", "compiled"):
        torch.manual_seed(0)
        config = MusicHybridConfig.from_preset("hybrid-tiny", mamba_implementation=implementation)
        model = MusicHybridForCausalLM(config)
        output = model(**codes_to_model_inputs(codes, model.config))
        output.loss.backward()
        results.append((output.logits, {name: p.grad for name, p in model.named_parameters()}))
    # 23 positions: one whole chunk of 16 fused per Mamba layer, the last 7 steps eager
    assert set(fused_chunks) == {"fused_chunk_forward", "fused_chunk_backward"}
    assert (results[0][0] - results[1][0]).abs().max() < 1e-5
    for name, grad in results[0][1].items():
        assert torch.allclose(grad, results[1][1][name], atol=1e-5, rtol=1e-4), name
