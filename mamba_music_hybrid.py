"""The Mamba-1 sequence mixer ("mamba"), with mamba_ssm's `Mamba` parameter names, shapes and initialisation.

One class, as mamba_simple.py: its parameters, its decoding state (`init_state`), and three ways to run: the fused
CUDA kernels (training), the kernels with a state (prefill and per-step decoding), and the PyTorch path on any
device (selective_scan_music_hybrid.py), with memory caching when the config asks for it
(memory_caching_music_hybrid.py). modeling_music_hybrid.py registers it; shipped with every checkpoint.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import logging

try:  # inside a checkpoint folder loaded with trust_remote_code the shipped files form a package
    from .configuration_music_hybrid import MAMBA
    from .fast_decoding_music_hybrid import is_plain_layer
    from .memory_caching_music_hybrid import (
        INITIAL_GATE, MemorySettings, cached_memory, empty_memory, filled_slots, memory_cached_scan, memory_step,
        store_memory,
    )
    from .recurrent_parts_music_hybrid import causal_conv, causal_conv_step, runs_on_kernels
    from .selective_scan_music_hybrid import decay_exponents, selective_scan, selective_state_step
except ImportError:  # from the repository root they are plain modules
    from configuration_music_hybrid import MAMBA
    from fast_decoding_music_hybrid import is_plain_layer
    from memory_caching_music_hybrid import (
        INITIAL_GATE, MemorySettings, cached_memory, empty_memory, filled_slots, memory_cached_scan, memory_step,
        store_memory,
    )
    from recurrent_parts_music_hybrid import causal_conv, causal_conv_step, runs_on_kernels
    from selective_scan_music_hybrid import decay_exponents, selective_scan, selective_state_step

logger = logging.get_logger(__name__)


@functools.cache
def mamba_kernels():
    """The mamba-ssm / causal-conv1d CUDA kernels as a dict, or None when they do not import."""
    try:
        from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    except ImportError:
        return None
    return {
        "causal_conv1d_fn": causal_conv1d_fn,
        "causal_conv1d_update": causal_conv1d_update,
        "mamba_inner_fn": mamba_inner_fn,
        "selective_scan_fn": selective_scan_fn,
        "selective_state_update": selective_state_update,
    }


def log_mamba_path_once(config):
    if config.mamba_memory:
        logger.info_once(
            "Mamba layers with memory caching run the PyTorch chunked selective scan on every device (the mamba-ssm "
            "kernels return no segment-end states)"
        )
    elif mamba_kernels() is not None and torch.cuda.is_available():
        logger.info_once("Mamba layers run the mamba-ssm / causal-conv1d CUDA kernels on CUDA tensors")
    else:
        logger.info_once(
            "Mamba layers run the PyTorch chunked selective scan (mamba-ssm and causal-conv1d kernels need CUDA: "
            "pip install 'music-hybrid[cuda]')"
        )


class MambaMixer(nn.Module):
    """The Mamba-1 selective SSM mixer, with mamba_ssm's `Mamba` parameter names, shapes and initialisation.

    Three ways to run: the fused CUDA kernels (training), the kernels with a state (prefill and per-step
    decoding), and the PyTorch path (any device). `mamba_implementation` in the config picks: "auto" uses the
    kernels on CUDA tensors when they import, "kernels" insists, "torch" never uses them, and "compiled" runs the
    PyTorch scan in chunks fused by torch.compile. With `mamba_memory_segment_length` set the layer caches its
    memories (see memory_caching_music_hybrid.py) and runs the PyTorch scan on every device.
    """

    layer_type = MAMBA

    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.d_inner = config.mamba_d_inner
        self.d_state = config.mamba_d_state
        self.d_conv = config.mamba_d_conv
        self.dt_rank = config.mamba_dt_rank_value
        self.in_proj = nn.Linear(config.hidden_size, 2 * self.d_inner, bias=config.mamba_proj_bias)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=self.d_conv, groups=self.d_inner,
            padding=self.d_conv - 1, bias=config.mamba_conv_bias,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        # The decay rates and skip weights are float32 whatever the default dtype: exp(A) of a bfloat16 A_log is too
        # coarse for the long-range decays (from_pretrained keeps them float32 too, see _keep_in_fp32_modules_strict).
        self.A_log = nn.Parameter(torch.empty(self.d_inner, self.d_state, dtype=torch.float32))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.empty(self.d_inner, dtype=torch.float32))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, config.hidden_size, bias=config.mamba_proj_bias)
        self.memory = MemorySettings.from_config(config)
        if self.memory is not None:  # the query W_u x_t that scores the memories and the gate that scales them
            self.memory_query = nn.Linear(self.d_inner, self.d_state, bias=False)
            self.memory_gate = nn.Parameter(torch.empty((), dtype=torch.float32))
        log_mamba_path_once(config)

    def init_own_weights(self):
        """mamba_ssm's initialisation: S4D-real A, D = 1, dt bias = softplus^-1 of a log-uniform draw; the memory
        gate by `mamba_memory_init` (see `INITIAL_GATE`)."""
        config = self.config
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).expand(self.d_inner, -1)
        init.copy_(self.A_log, torch.log(A))
        init.ones_(self.D)
        dt_init_std = self.dt_rank**-0.5
        init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        log_min, log_max = math.log(config.mamba_dt_min), math.log(config.mamba_dt_max)
        dt = torch.exp(torch.rand(self.d_inner) * (log_max - log_min) + log_min).clamp(min=config.mamba_dt_init_floor)
        init.copy_(self.dt_proj.bias, dt + torch.log(-torch.expm1(-dt)))
        init.kaiming_uniform_(self.conv1d.weight, a=math.sqrt(5))
        if self.conv1d.bias is not None:
            init.zeros_(self.conv1d.bias)
        if self.memory is not None:
            init.constant_(self.memory_gate, INITIAL_GATE[config.mamba_memory_init])

    def init_state(self, batch_size, max_positions, device, dtype, **settings):
        """The decoding state: the last d_conv inputs of the conv ("conv") and the SSM state ("ssm", float32), whose
        size does not grow with the sequence; with memory caching also the cached memories (see `empty_memory`)."""
        state = {
            "conv": torch.zeros(batch_size, self.d_inner, self.d_conv, dtype=dtype, device=device),
            "ssm": torch.zeros(batch_size, self.d_inner, self.d_state, dtype=torch.float32, device=device),
        }
        if self.memory is not None:
            state.update(empty_memory(self.memory, batch_size, max_positions, self.d_inner, self.d_state, device))
        return state

    def decoding_constants(self):
        """What every decoding step derives from the weights alone, which a generation may compute once and pass
        back as keyword arguments (see fast_decoding_music_hybrid.decoding_substitutes)."""
        return {"decay_exponents": decay_exponents(self.A_log)}

    def use_kernels(self, hidden_states):
        return runs_on_kernels(
            "mamba_implementation", self.config.mamba_implementation, mamba_kernels, hidden_states, self.memory,
            "mamba-ssm and causal-conv1d",
        )

    def forward(self, hidden_states, state=None, cache=None, positions=None, decay_exponents=None, **kwargs):
        """hidden_states (B, T, hidden) -> (B, T, hidden); with a state (see `init_state`), continue from and update
        it. cache: the generation's shared cache (its `length` of positions seen, `fixed_shape`); positions (a
        tensor): the inputs' positions, read by a decoding step with memory caching; decay_exponents: A log2(e),
        computed from A_log when not given (see `decoding_constants`)."""
        # One position with a state is a decoding step, also on an empty cache (zero state = zero padding). The
        # checks never read cache.length for one position: a compiled step must not depend on it.
        single_step = state is not None and hidden_states.shape[1] == 1
        if self.use_kernels(hidden_states):
            if state is None and self.fused_kernel_sees_every_layer():
                return self.kernel_fused_forward(hidden_states)
            if state is None or single_step or cache.length == 0:
                return self.kernel_forward(hidden_states, state)
        if single_step:
            return self.torch_step(hidden_states, state, cache, positions, decay_exponents)
        return self.torch_forward(hidden_states, state, 0 if cache is None else cache.length)

    def ssm_inputs(self, x):
        """x (B, d_inner, T) after the conv -> dt (B, d_inner, T) before the softplus, B and C (B, d_state, T).

        dt_proj is called as a module, bias included, so that an adapter or hook on it takes part."""
        x_dbl = self.x_proj(x.transpose(1, 2))
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        return self.dt_proj(dt).transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2)

    def torch_forward(self, hidden_states, state, start):
        """A whole sequence, or the continuation of `state` from position `start`."""
        # Time-major (B, T, d_inner) throughout: the layout in_proj produces and the scan works in, so no
        # transposing copies are made (they cost as much as the conv itself).
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)
        x = F.silu(causal_conv(x, self.conv1d, None if state is None else state["conv"]))
        initial_state = state["ssm"] if state is not None and start else None
        dt, B, C = self.ssm_inputs(x.transpose(1, 2))
        delta = F.softplus(dt)
        A = -torch.exp(self.A_log.float())
        compiled = self.config.mamba_implementation == "compiled"
        if self.memory is None:
            y, last_state = selective_scan(x.transpose(1, 2), delta, A, B, C, initial_state, compiled=compiled)
            y = y.transpose(1, 2)
        else:
            cached = None if state is None else cached_memory(state, self.memory, start)
            y, last_state, new_memory = memory_cached_scan(
                x.transpose(1, 2), delta, A, B, C, self.memory_query(x), self.memory_gate, initial_state,
                start=start, settings=self.memory, cached=cached, compiled=compiled,
            )
            if state is not None:
                store_memory(state, self.memory, *new_memory)
        if state is not None:
            state["ssm"].copy_(last_state)
        y = y.to(x.dtype) + x * self.D.to(x.dtype)
        return self.out_proj(y * F.silu(z))

    def torch_step(self, hidden_states, state, cache, positions=None, exponents=None):
        """One decoding step (B, 1, hidden) in PyTorch: the conv and the SSM state advance by one input in place,
        with no per-step work beyond the step itself (no conv call over a padded window, no scan setup). With
        memory caching, the step at `positions` (one element) also reads and updates the cached memories: every
        slot in a fixed-shape cache (a compiled step reads no length), the filled ones otherwise."""
        conv_state, ssm_state = state["conv"], state["ssm"]
        x, z = self.in_proj(hidden_states[:, 0]).chunk(2, dim=-1)
        x = F.silu(causal_conv_step(x, self.conv1d, conv_state))
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))
        if exponents is None:
            exponents = decay_exponents(self.A_log)
        y = selective_state_step(ssm_state, x, delta, exponents, B, C)
        if self.memory is not None:
            slots = state["memory_segments"].shape[1]
            visible = slots if cache.fixed_shape else filled_slots(state, self.memory, cache.length)
            y = memory_step(
                state, self.memory, y, ssm_state, self.memory_query(x), self.memory_gate, B, C, positions, visible
            )
        y = (y.to(x.dtype) + x * self.D.to(x.dtype)) * F.silu(z)
        return self.out_proj(y)[:, None]

    def fused_kernel_sees_every_layer(self):
        """mamba_inner_fn takes the raw weights of conv1d, x_proj, dt_proj and out_proj: only when each is a plain
        layer does that equal calling it (a PEFT adapter, hook or quantized weight would be bypassed)."""
        return is_plain_layer(self.conv1d, nn.Conv1d) and all(
            is_plain_layer(layer) for layer in (self.x_proj, self.dt_proj, self.out_proj)
        )

    def kernel_fused_forward(self, hidden_states):
        """Training path: one fused kernel for conv, projections, scan and gate (as mamba_ssm's Mamba)."""
        kernels = mamba_kernels()
        xz = self.in_proj(hidden_states).transpose(1, 2)
        return kernels["mamba_inner_fn"](
            xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
            self.out_proj.weight, self.out_proj.bias, -torch.exp(self.A_log.float()), None, None,
            self.D.float(), delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
        )

    def kernel_forward(self, hidden_states, state=None):
        """The unfused kernels, the projections called as modules: a whole sequence without a state (training
        with wrapped projections), the prefill of an empty state (causal_conv1d_fn + selective_scan_fn) or one
        decoding step (causal_conv1d_update + selective_state_update), updating the state in place."""
        kernels = mamba_kernels()
        conv_weight = self.conv1d.weight.view(self.d_inner, self.d_conv)
        A = -torch.exp(self.A_log.float())
        x, z = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)
        if state is not None and hidden_states.shape[1] == 1:
            x = kernels["causal_conv1d_update"](x[..., 0], state["conv"], conv_weight, self.conv1d.bias, "silu")
            dt, B, C = self.ssm_inputs(x[..., None])
            y = kernels["selective_state_update"](
                state["ssm"], x, dt[..., 0], A, B[..., 0], C[..., 0], self.D.float(), z=z[..., 0], dt_softplus=True
            )
            return self.out_proj(y[:, None])
        if state is not None:
            state["conv"].copy_(F.pad(x, (self.d_conv - x.shape[-1], 0)))
        x = kernels["causal_conv1d_fn"](x.contiguous(), conv_weight, self.conv1d.bias, activation="silu")
        dt, B, C = self.ssm_inputs(x)
        y, last_state = kernels["selective_scan_fn"](
            x, dt.contiguous(), A, B.contiguous(), C.contiguous(), self.D.float(), z=z.contiguous(),
            delta_softplus=True, return_last_state=True,
        )
        if state is not None:
            state["ssm"].copy_(last_state)
        return self.out_proj(y.transpose(1, 2))
