"""Parts that the recurrent mixers share: the choice between their CUDA kernels and PyTorch, the short causal
convolution with its decoding state, and, for the matrix-state mixers (Mamba-2, Gated DeltaNet), the precision
they compute in and the log-uniform initialisation of their time steps.

Used by mamba_music_hybrid.py, mamba2_music_hybrid.py and gated_deltanet_music_hybrid.py; shipped with every
checkpoint.
"""

import math

import torch
from transformers import initialization as init


def runs_on_kernels(setting, choice, kernels, hidden_states, memory, packages):
    """Whether a mixer runs on its CUDA kernels (`kernels()`: their dict, or None where they do not import; called
    only when the choice needs it, since a compiled step cannot trace the import). choice, the config's `setting`:
    "auto" (on CUDA tensors where they import), "kernels" (always; an ImportError naming `packages` without them),
    "torch" or "compiled" (never). Memory caching runs on PyTorch: the kernels return no segment-end states."""
    if choice in ("torch", "compiled") or memory is not None:
        return False
    if choice == "kernels":
        if kernels() is None:
            raise ImportError(f"{setting}='kernels' needs {packages} installed")
        return True
    return hidden_states.is_cuda and kernels() is not None


def compute_dtype(dtype):
    """The precision of the recurrences for inputs of `dtype`: half precision is upcast to float32 (a decaying sum
    over thousands of steps in bfloat16 drifts), float32 and float64 stay what they are."""
    return torch.promote_types(dtype, torch.float32)


def causal_conv(x, conv1d, conv_state=None):
    """The depthwise causal convolution of time-major x (B, T, channels) with `conv1d`'s weights (an nn.Conv1d of
    groups = channels, as mamba_ssm's and fla's), as kernel-width shifted multiply-adds. With `conv_state` (B,
    channels, width), the last inputs before x (zeros at the start, the same as zero padding), it continues from
    them and stores the last `width` inputs in place."""
    width, seq_length = conv1d.weight.shape[-1], x.shape[1]
    if conv_state is None:
        history = x.new_zeros(x.shape[0], width - 1, x.shape[2])
    else:
        history = conv_state[..., 1:].transpose(1, 2).to(x.dtype)
    x_padded = torch.cat([history, x], dim=1)
    if conv_state is not None:
        conv_state.copy_(x_padded[:, -width:].transpose(1, 2))
    weight = conv1d.weight[:, 0].to(x.dtype)
    out = x_padded[:, :seq_length] * weight[:, 0]
    for shift in range(1, width):
        out = torch.addcmul(out, x_padded[:, shift : shift + seq_length], weight[:, shift])
    return out if conv1d.bias is None else out + conv1d.bias.to(x.dtype)


def causal_conv_step(x, conv1d, conv_state):
    """One position x (B, channels) of `causal_conv`: shifts it into `conv_state` (B, channels, width) in place."""
    conv_state.copy_(torch.cat([conv_state[..., 1:], x[..., None].to(conv_state.dtype)], dim=-1))
    out = torch.sum(conv_state.to(x.dtype) * conv1d.weight[:, 0].to(x.dtype), dim=-1)
    return out if conv1d.bias is None else out + conv1d.bias.to(x.dtype)


def init_dt_bias(dt_bias, dt_min, dt_max, dt_init_floor):
    """mamba_ssm's (and fla's) time-step bias: softplus^-1 of a log-uniform draw in [dt_min, dt_max], floored."""
    log_min, log_max = math.log(dt_min), math.log(dt_max)
    dt = torch.exp(torch.rand(dt_bias.shape) * (log_max - log_min) + log_min).clamp(min=dt_init_floor)
    init.copy_(dt_bias, dt + torch.log(-torch.expm1(-dt)))


def init_depthwise_conv(conv1d):
    """PyTorch's own Conv1d initialisation, which mamba_ssm and fla keep (transformers' would draw it normal)."""
    init.kaiming_uniform_(conv1d.weight, a=math.sqrt(5))
    if conv1d.bias is not None:
        fan_in = conv1d.weight.shape[1] * conv1d.weight.shape[2]
        bound = 1 / math.sqrt(fan_in)
        init.uniform_(conv1d.bias, -bound, bound)

