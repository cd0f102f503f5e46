"""The Mamba-2 sequence mixer ("mamba2"), with mamba_ssm's `Mamba2` parameter names, shapes and semantics.

One class, as mamba_ssm's mamba2.py: in_proj gives z, x, B, C and dt; a depthwise causal conv with SiLU runs over
x, B and C; the state-space duality (SSD) recurrence h_t = exp(dt_t A) h_(t-1) + dt_t x_t B_t^T, y_t = h_t C_t +
D x_t runs per head (a scalar decay per head, B and C shared by the heads of a group); the gated RMSNorm `norm`
normalises y * silu(z) per group; out_proj maps back. Weights move between the two modules unchanged.

Ways to run: mamba_ssm's kernels on CUDA tensors when installed (`mamba_split_conv1d_scan_combined` for training,
`causal_conv1d_fn` + `mamba_chunk_scan_combined` for a prefill, `causal_conv1d_update` + `selective_state_update`
per decoding step), and a PyTorch path on any device: the chunked SSD form (`ssd_scan`: products within chunks,
a recurrence only across chunk ends) and a constant-size decoding step (`ssd_step`). modeling_music_hybrid.py
registers it; shipped with every checkpoint.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import logging

try:  # inside a checkpoint folder loaded with trust_remote_code the shipped files form a package
    from .fast_decoding_music_hybrid import is_plain_layer
    from .matrix_memory_caching_music_hybrid import (
        alignment_padding, cached_scan_readout, empty_matrix_memory, matrix_memory_step, segment_end_chunks,
    )
    from .memory_caching_music_hybrid import (
        INITIAL_GATE, MemorySettings, cached_memory, filled_slots, store_memory,
    )
    from .recurrent_parts_music_hybrid import (
        causal_conv, causal_conv_step, compute_dtype, init_depthwise_conv, init_dt_bias, runs_on_kernels,
    )
except ImportError:  # from the repository root they are plain modules
    from fast_decoding_music_hybrid import is_plain_layer
    from matrix_memory_caching_music_hybrid import (
        alignment_padding, cached_scan_readout, empty_matrix_memory, matrix_memory_step, segment_end_chunks,
    )
    from memory_caching_music_hybrid import INITIAL_GATE, MemorySettings, cached_memory, filled_slots, store_memory
    from recurrent_parts_music_hybrid import (
        causal_conv, causal_conv_step, compute_dtype, init_depthwise_conv, init_dt_bias, runs_on_kernels,
    )

logger = logging.get_logger(__name__)

# The PyTorch path's chunk: its intra-chunk products are (chunk x chunk) per head, so memory grows with it; the
# result does not depend on it.
SSD_CHUNK_SIZE = 64


@functools.cache
def mamba2_kernels():
    """mamba_ssm's Mamba-2 kernels and causal_conv1d's as a dict, or None when they do not import."""
    try:
        from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined, mamba_split_conv1d_scan_combined
    except ImportError:
        return None
    return {
        "causal_conv1d_fn": causal_conv1d_fn,
        "causal_conv1d_update": causal_conv1d_update,
        "mamba_chunk_scan_combined": mamba_chunk_scan_combined,
        "mamba_split_conv1d_scan_combined": mamba_split_conv1d_scan_combined,
        "selective_state_update": selective_state_update,
    }


def log_mamba2_path_once(config):
    if mamba2_kernels() is not None and torch.cuda.is_available() and config.mamba2_implementation != "torch":
        logger.info_once("Mamba-2 layers run the mamba-ssm / causal-conv1d CUDA kernels on CUDA tensors")
    else:
        logger.info_once(
            "Mamba-2 layers run the PyTorch chunked SSD scan (the mamba-ssm and causal-conv1d kernels need CUDA: "
            "pip install 'music-hybrid[cuda]')"
        )


class Mamba2Mixer(nn.Module):
    """The Mamba-2 mixer with mamba_ssm's `Mamba2` names (rmsnorm=True, norm_before_gate=False, D per head).

    Attributes as upstream: d_model, d_state, d_conv, expand, d_inner, headdim, d_ssm (the channels the SSM runs
    on; the remaining d_inner - d_ssm form a gated MLP, as upstream), ngroups, nheads, chunk_size (the kernels').
    `config.mamba2_implementation`: "auto" (the kernels on CUDA tensors when they import), "kernels" (insist) or
    "torch" (never).
    """

    layer_type = "linear_attention"

    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.d_model = config.hidden_size
        self.d_state = config.mamba2_d_state
        self.d_conv = config.mamba2_d_conv
        self.expand = config.mamba2_expand
        self.d_inner = self.expand * self.d_model
        self.headdim = config.mamba2_headdim
        self.d_ssm = self.d_inner if config.mamba2_d_ssm is None else config.mamba2_d_ssm
        self.ngroups = config.mamba2_ngroups
        self.nheads = self.d_ssm // self.headdim
        self.chunk_size = config.mamba2_chunk_size
        self.d_mlp = self.d_inner - self.d_ssm
        # Order: [z0, x0, z, x, B, C, dt], as upstream (z0 and x0 only when d_ssm < d_inner).
        d_in_proj = 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads
        self.in_proj = nn.Linear(self.d_model, d_in_proj, bias=config.mamba2_bias)
        self.conv_dim = self.d_ssm + 2 * self.ngroups * self.d_state
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, kernel_size=self.d_conv, groups=self.conv_dim, padding=self.d_conv - 1,
            bias=config.mamba2_conv_bias,
        )
        self.dt_bias = nn.Parameter(torch.empty(self.nheads))
        self.dt_bias._no_weight_decay = True
        # float32 whatever the default dtype, as Mamba-1's (see MambaMixer): exp(A) of a bfloat16 A_log is coarse.
        self.A_log = nn.Parameter(torch.empty(self.nheads, dtype=torch.float32))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.empty(self.nheads, dtype=torch.float32))
        self.D._no_weight_decay = True
        self.norm = GroupedGatedRMSNorm(self.d_ssm, group_size=self.d_ssm // self.ngroups, eps=1e-5)
        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=config.mamba2_bias)
        self.memory = MemorySettings.from_config(config)
        if self.memory is not None:  # the query W_u x_t of each group, scoring the cached memories (see MemorySettings)
            self.memory_query = nn.Linear(self.d_ssm, self.ngroups * self.d_state, bias=False)
            self.memory_gate = nn.Parameter(torch.empty((), dtype=torch.float32))  # see INITIAL_GATE
        log_mamba2_path_once(config)

    def init_own_weights(self):
        """mamba_ssm's initialisation: A uniform in `mamba2_A_init_range` per head, D = 1, dt bias = softplus^-1
        of a log-uniform draw, PyTorch's own conv initialisation."""
        config = self.config
        low, high = config.mamba2_A_init_range
        init.copy_(self.A_log, torch.log(torch.empty(self.nheads, dtype=torch.float32).uniform_(low, high)))
        init.ones_(self.D)
        init_dt_bias(self.dt_bias, config.mamba2_dt_min, config.mamba2_dt_max, config.mamba2_dt_init_floor)
        init_depthwise_conv(self.conv1d)
        if self.memory is not None:
            init.constant_(self.memory_gate, INITIAL_GATE[config.mamba_memory_init])

    def init_state(self, batch_size, max_positions, device, dtype, **settings):
        """The decoding state, constant in size: the last d_conv inputs of the conv ("conv", (B, conv_dim,
        d_conv)) and the SSM state ("ssm", (B, nheads, headdim, d_state), at least float32), as upstream's; with
        memory caching also the cached memories (see `empty_matrix_memory`)."""
        state = {
            "conv": torch.zeros(batch_size, self.conv_dim, self.d_conv, dtype=dtype, device=device),
            "ssm": torch.zeros(
                batch_size, self.nheads, self.headdim, self.d_state, dtype=compute_dtype(dtype), device=device
            ),
        }
        if self.memory is not None:
            state.update(empty_matrix_memory(
                self.memory, batch_size, max_positions, self.nheads, self.headdim, self.d_state, self.ngroups,
                compute_dtype(dtype), device,
            ))
        return state

    def decoding_constants(self):
        """What every decoding step derives from the weights alone (see fast_decoding_music_hybrid)."""
        return {"decay_rates": self.decay_rates()}

    def decay_rates(self):
        """A = -exp(A_log) (nheads,), in float32 at least: upstream's `A`."""
        return -torch.exp(self.A_log.to(compute_dtype(self.A_log.dtype)))

    def use_kernels(self, hidden_states):
        return runs_on_kernels(
            "mamba2_implementation", self.config.mamba2_implementation, mamba2_kernels, hidden_states, self.memory,
            "mamba-ssm and causal-conv1d",
        )

    def forward(self, hidden_states, state=None, cache=None, positions=None, decay_rates=None, **kwargs):
        """hidden_states (B, T, d_model) -> (B, T, d_model); with a state (see `init_state`), continue from and
        update it. cache: the generation's shared cache (its `length` of positions seen, `fixed_shape`);
        positions (a tensor): the inputs' positions, read by a decoding step with memory caching; decay_rates: A,
        computed from A_log when not given (see `decoding_constants`)."""
        single_step = state is not None and hidden_states.shape[1] == 1
        if self.use_kernels(hidden_states):
            if state is None and self.fused_kernel_sees_every_layer():
                return self.kernel_fused_forward(hidden_states)
            if state is None or single_step or cache.length == 0:
                return self.kernel_forward(hidden_states, state)
        if single_step:
            return self.torch_step(hidden_states, state, cache, positions, decay_rates)
        return self.torch_forward(hidden_states, state, 0 if cache is None else cache.length)

    def split_projection(self, zxbcdt):
        """in_proj's output -> z0, x0 (the gated MLP part), z, xBC, dt, along the last dimension."""
        sizes = [self.d_mlp, self.d_mlp, self.d_ssm, self.conv_dim, self.nheads]
        return torch.split(zxbcdt, sizes, dim=-1)

    def split_conv_output(self, xBC):
        """xBC (..., conv_dim) -> x (..., nheads, headdim), B and C (..., ngroups, d_state)."""
        x, B, C = torch.split(xBC, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        lead = xBC.shape[:-1]
        return (
            x.reshape(*lead, self.nheads, self.headdim), B.reshape(*lead, self.ngroups, self.d_state),
            C.reshape(*lead, self.ngroups, self.d_state),
        )

    def time_steps(self, dt):
        """softplus(dt + dt_bias), in the recurrence's precision."""
        dtype = compute_dtype(dt.dtype)
        return F.softplus(dt.to(dtype) + self.dt_bias.to(dtype))

    def output(self, y, z, z0, x0):
        """The gated norm, the gated MLP part (when d_ssm < d_inner) and out_proj, as upstream."""
        y = self.norm(y, z)
        if self.d_mlp:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        return self.out_proj(y)

    def torch_forward(self, hidden_states, state, start):
        """A whole sequence, or the continuation of `state` from position `start` (the PyTorch chunked SSD scan)."""
        batch, seq_length, _ = hidden_states.shape
        z0, x0, z, xBC, dt = self.split_projection(self.in_proj(hidden_states))
        xBC = F.silu(causal_conv(xBC, self.conv1d, None if state is None else state["conv"]))
        x, B, C = self.split_conv_output(xBC)
        dtype = compute_dtype(x.dtype)
        scan_inputs = (x.to(dtype), self.time_steps(dt), self.decay_rates().to(dtype), B.to(dtype), C.to(dtype))
        initial_state = None if state is None else state["ssm"]
        if self.memory is None:
            y, last_state = ssd_scan(*scan_inputs, initial_state)
        else:
            segment_length = self.memory.segment_length
            y, last_state, segment_states = ssd_scan(
                *scan_inputs, initial_state, chunk_size=math.gcd(SSD_CHUNK_SIZE, segment_length), start=start,
                segment_length=segment_length,
            )
            cached = None if state is None else cached_memory(state, self.memory, start)
            query = self.memory_query(x.flatten(-2)).to(dtype).unflatten(-1, (self.ngroups, self.d_state))
            readouts = scan_inputs[4].repeat_interleave(self.nheads // self.ngroups, dim=2)
            y, new_memory = cached_scan_readout(
                y, readouts, scan_inputs[3], query, self.memory_gate, segment_states, start, self.memory, cached
            )
            if state is not None:
                store_memory(state, self.memory, *new_memory)
        if state is not None:
            state["ssm"].copy_(last_state)
        y = y + x.to(dtype) * self.D.to(dtype)[:, None]
        return self.output(y.reshape(batch, seq_length, self.d_ssm).to(x.dtype), z, z0, x0)

    def torch_step(self, hidden_states, state, cache, positions=None, decay_rates=None):
        """One decoding step (B, 1, d_model): the conv and SSM states advance by one input in place. With memory
        caching, the step at `positions` (one element) also reads and updates the cached memories: every slot in
        a fixed-shape cache (a compiled step reads no length), the filled ones otherwise."""
        z0, x0, z, xBC, dt = self.split_projection(self.in_proj(hidden_states[:, 0]))
        x, B, C = self.split_conv_output(F.silu(causal_conv_step(xBC, self.conv1d, state["conv"])))
        dtype = state["ssm"].dtype
        A = self.decay_rates() if decay_rates is None else decay_rates
        B, C = B.to(dtype), C.to(dtype)
        y = ssd_step(state["ssm"], x.to(dtype), self.time_steps(dt).to(dtype), A.to(dtype), B, C)
        if self.memory is not None:
            slots = state["memory_segments"].shape[1]
            visible = slots if cache.fixed_shape else filled_slots(state, self.memory, cache.length)
            query = self.memory_query(x.flatten(-2)).to(dtype).unflatten(-1, (self.ngroups, self.d_state))
            readout = C.repeat_interleave(self.nheads // self.ngroups, dim=1)
            y = matrix_memory_step(
                state, self.memory, y, state["ssm"], readout, B, query, self.memory_gate, positions, visible
            )
        y = y + x.to(dtype) * self.D.to(dtype)[:, None]
        return self.output(y.reshape(-1, self.d_ssm).to(x.dtype), z, z0, x0)[:, None]

    def fused_kernel_sees_every_layer(self):
        """mamba_split_conv1d_scan_combined takes the raw weights of conv1d, norm and out_proj: only when each is a
        plain layer does that equal calling it (an adapter, hook or quantized weight would be bypassed)."""
        return (
            self.d_mlp == 0 and is_plain_layer(self.conv1d, nn.Conv1d) and is_plain_layer(self.out_proj)
            and type(self.norm) is GroupedGatedRMSNorm
        )

    def kernel_fused_forward(self, hidden_states):
        """Training path: one fused kernel for the conv, the scan, the gated norm and out_proj (as upstream)."""
        return mamba2_kernels()["mamba_split_conv1d_scan_combined"](
            self.in_proj(hidden_states), self.conv1d.weight[:, 0], self.conv1d.bias, self.dt_bias,
            self.decay_rates(), D=self.D, chunk_size=self.chunk_size, activation="silu",
            rmsnorm_weight=self.norm.weight, rmsnorm_eps=self.norm.eps, outproj_weight=self.out_proj.weight,
            outproj_bias=self.out_proj.bias, headdim=self.headdim, ngroups=self.ngroups, norm_before_gate=False,
        )

    def kernel_forward(self, hidden_states, state=None):
        """The unfused kernels, the layers called as modules: a whole sequence without a state, the prefill of an
        empty state (causal_conv1d_fn + mamba_chunk_scan_combined) or one decoding step (causal_conv1d_update +
        selective_state_update), updating the state in place."""
        kernels = mamba2_kernels()
        A = self.decay_rates()
        conv_weight = self.conv1d.weight[:, 0]
        if state is not None and hidden_states.shape[1] == 1:
            z0, x0, z, xBC, dt = self.split_projection(self.in_proj(hidden_states[:, 0]))
            xBC = kernels["causal_conv1d_update"](xBC, state["conv"], conv_weight, self.conv1d.bias, "silu")
            x, B, C = self.split_conv_output(xBC)
            # The kernel takes dt, A, D and the dt bias per channel of a head (upstream repeats them likewise).
            y = kernels["selective_state_update"](
                state["ssm"], x, dt[..., None].expand(-1, -1, self.headdim),
                A[:, None, None].expand(-1, self.headdim, self.d_state), B, C,
                self.D[:, None].expand(-1, self.headdim), z=None,
                dt_bias=self.dt_bias[:, None].expand(-1, self.headdim), dt_softplus=True,
            )
            return self.output(y.reshape(-1, self.d_ssm), z, z0, x0)[:, None]
        batch, seq_length, _ = hidden_states.shape
        z0, x0, z, xBC, dt = self.split_projection(self.in_proj(hidden_states))
        if state is not None:
            state["conv"].copy_(F.pad(xBC.transpose(1, 2), (self.d_conv - seq_length, 0)))
        xBC = kernels["causal_conv1d_fn"](
            xBC.transpose(1, 2), conv_weight, bias=self.conv1d.bias, activation="silu"
        ).transpose(1, 2)
        x, B, C = self.split_conv_output(xBC)
        result = kernels["mamba_chunk_scan_combined"](
            x, dt, A, B, C, chunk_size=self.chunk_size, D=self.D, z=None, dt_bias=self.dt_bias, dt_softplus=True,
            return_final_states=state is not None,
        )
        if state is not None:
            result, last_state = result
            state["ssm"].copy_(last_state)
        return self.output(result.reshape(batch, seq_length, self.d_ssm), z, z0, x0)


class GroupedGatedRMSNorm(nn.Module):
    """mamba_ssm's gated RMSNorm with norm_before_gate=False: RMSNorm(x * silu(z)) over each group of
    `group_size` channels, times `weight`, computed in at least float32."""

    def __init__(self, hidden_size, group_size, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.group_size = group_size
        self.eps = eps

    def init_own_weights(self):
        init.ones_(self.weight)

    def forward(self, x, z):
        dtype = compute_dtype(x.dtype)
        gated = x.to(dtype) * F.silu(z.to(dtype))
        grouped = gated.unflatten(-1, (-1, self.group_size))
        normalized = grouped * torch.rsqrt(grouped.square().mean(-1, keepdim=True) + self.eps)
        return (normalized.flatten(-2) * self.weight.to(dtype)).to(x.dtype)


# --------------------------------------------------------------------------------------------------------------------
# The SSD recurrence in PyTorch
# --------------------------------------------------------------------------------------------------------------------


def ssd_scan(x, dt, A, B, C, initial_state=None, chunk_size=SSD_CHUNK_SIZE, start=0, segment_length=None):
    """h_t = exp(dt_t A) h_(t-1) + dt_t x_t B_t^T, y_t = h_t C_t per head, in chunks (Mamba-2's SSD form).

    x (batch, T, nheads, headdim), dt (batch, T, nheads) after the softplus, A (nheads,), B and C (batch, T,
    ngroups, d_state) (head h reads group h // (nheads / ngroups)), initial_state (batch, nheads, headdim, d_state)
    or None. Returns y (batch, T, nheads, headdim) and the last state. Within a chunk the outputs are products
    (the decays between two positions are exp of differences of cumulative sums, at most 1); across chunks only
    the chunk-end states are carried, one multiply-add per chunk.

    With `segment_length` (memory caching; chunk_size must divide it) the inputs are at positions start, start + 1,
    ... and the states at the segment ends among them come third: (batch, segments, nheads, headdim, d_state).
    """
    batch, length, nheads, headdim = x.shape
    ngroups, d_state = B.shape[2:]
    heads_per_group = nheads // ngroups
    # Padded steps have dt = 0: no decay, no input. In front, they make chunks end on multiples of chunk_size.
    front = 0 if segment_length is None else alignment_padding(start, chunk_size)
    padding = -(front + length) % chunk_size
    if padding or front:
        x, B, C = (F.pad(t, (0, 0, 0, 0, front, padding)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, front, padding))
    chunks = x.shape[1] // chunk_size
    x = (x * dt[..., None]).view(batch, chunks, chunk_size, ngroups, heads_per_group, headdim)
    B, C = (t.view(batch, chunks, chunk_size, ngroups, d_state) for t in (B, C))
    log_decays = (dt * A).view(batch, chunks, chunk_size, nheads).cumsum(2)  # within each chunk
    # Within chunks: y_t = sum_(s <= t) exp(a_t - a_s) (C_t . B_s) dt_s x_s.
    differences = log_decays[:, :, :, None] - log_decays[:, :, None, :]  # (batch, chunk, t, s, nheads)
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=x.device).tril()
    decays = differences.masked_fill(~causal[:, :, None], -torch.inf).exp()
    scores = torch.einsum("bctgn,bcsgn->bctsg", C, B)[..., None]
    weights = scores * decays.view(batch, chunks, chunk_size, chunk_size, ngroups, heads_per_group)
    y = torch.einsum("bctsgk,bcsgkp->bctgkp", weights, x)
    # Each chunk's own contribution to the state at its end, then the states entering each chunk.
    to_end = (log_decays[:, :, -1:] - log_decays).exp().view(batch, chunks, chunk_size, ngroups, heads_per_group)
    chunk_states = torch.einsum("bcsgk,bcsgkp,bcsgn->bcgkpn", to_end, x, B)
    chunk_states = chunk_states.reshape(batch, chunks, nheads, headdim, d_state)
    chunk_decays = log_decays[:, :, -1].exp()
    state = x.new_zeros(batch, nheads, headdim, d_state) if initial_state is None else initial_state.to(x.dtype)
    entering = []
    for chunk in range(chunks):
        entering.append(state)
        state = state * chunk_decays[:, chunk, :, None, None] + chunk_states[:, chunk]
    entering.append(state)
    from_start = log_decays.exp().view(batch, chunks, chunk_size, ngroups, heads_per_group)
    y = y + torch.einsum(
        "bctgn,bcgkpn,bctgk->bctgkp", C,
        torch.stack(entering[:-1], dim=1).view(batch, chunks, ngroups, heads_per_group, headdim, d_state), from_start,
    )
    y = y.reshape(batch, chunks * chunk_size, nheads, headdim)[:, front : front + length]
    if segment_length is None:
        return y, state
    ends = segment_end_chunks(start, front, chunk_size, chunks, length, segment_length)
    segment_states = torch.stack([entering[chunk + 1] for chunk in ends], dim=1) if ends else state.new_zeros(
        batch, 0, nheads, headdim, d_state
    )
    return y, state, segment_states


def ssd_step(state, x, dt, A, B, C):
    """One step of `ssd_scan`, updating `state` (batch, nheads, headdim, d_state) in place: x (batch, nheads,
    headdim), dt (batch, nheads), A (nheads,), B and C (batch, ngroups, d_state). Returns y (batch, nheads,
    headdim)."""
    heads_per_group = x.shape[1] // B.shape[1]
    B, C = (t.repeat_interleave(heads_per_group, dim=1) for t in (B, C))
    decay = torch.exp(dt * A)[..., None, None]
    state.copy_(torch.addcmul(state * decay, (dt[..., None] * x)[..., None], B[:, :, None, :]))
    return torch.matmul(state, C[..., None])[..., 0]
