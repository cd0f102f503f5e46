"""The Gated DeltaNet sequence mixer ("gated_deltanet"), with flash-linear-attention's `GatedDeltaNet` layer names,
shapes and semantics (use_gate=True, short convolutions on).

q, k and v come from their projections through short causal convolutions with SiLU; q and k are l2-normalised per
head (x / sqrt(sum x^2 + 1e-6), as fla's kernels) and q is scaled by head_k_dim^-0.5. Each value head keeps a
matrix memory S (head_k_dim x head_v_dim), decayed and then corrected by the delta rule:

    S_t = exp(g_t) S_(t-1),   S_t += k_t (beta_t (v_t - S_t^T k_t))^T,   o_t = S_t^T q_t

with beta = sigmoid(b_proj x) and g = -exp(A_log) softplus(a_proj x + dt_bias). The output is o_norm (an RMSNorm
per value head) times silu(g_proj x), then o_proj. With more value heads than query/key heads (num_v_heads), each
query/key head serves num_v_heads / num_heads consecutive value heads, as fla's kernels map them.

Ways to run: fla's `chunk_gated_delta_rule` / `fused_recurrent_gated_delta_rule` on CUDA tensors when installed,
and a PyTorch path on any device: the chunked WY (UT transform) form (`chunked_gated_delta_rule`: one triangular
solve per chunk, a recurrence only across chunk ends) and a constant-size decoding step (`gated_delta_step`).
modeling_music_hybrid.py registers it; shipped with every checkpoint.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import logging

try:  # inside a checkpoint folder loaded with trust_remote_code the shipped files form a package
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
    from matrix_memory_caching_music_hybrid import (
        alignment_padding, cached_scan_readout, empty_matrix_memory, matrix_memory_step, segment_end_chunks,
    )
    from memory_caching_music_hybrid import INITIAL_GATE, MemorySettings, cached_memory, filled_slots, store_memory
    from recurrent_parts_music_hybrid import (
        causal_conv, causal_conv_step, compute_dtype, init_depthwise_conv, init_dt_bias, runs_on_kernels,
    )

logger = logging.get_logger(__name__)

# The PyTorch path's chunk (fla's too): its intra-chunk products and solve are (chunk x chunk) per head.
GDN_CHUNK_SIZE = 64
L2_NORM_EPS = 1e-6  # inside the square root, as fla's l2norm kernels


@functools.cache
def gated_delta_rule_kernels():
    """flash-linear-attention's gated delta rule kernels as a dict, or None when they do not import."""
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
    except ImportError:
        return None
    return {"chunk": chunk_gated_delta_rule, "fused_recurrent": fused_recurrent_gated_delta_rule}


def log_gdn_path_once(config):
    if gated_delta_rule_kernels() is not None and torch.cuda.is_available() and config.gdn_implementation != "torch":
        logger.info_once("Gated DeltaNet layers run the flash-linear-attention kernels on CUDA tensors")
    else:
        logger.info_once(
            "Gated DeltaNet layers run the PyTorch chunked delta rule (the flash-linear-attention kernels need a "
            "GPU: pip install 'music-hybrid[cuda]')"
        )


class GatedDeltaNetMixer(nn.Module):
    """The Gated DeltaNet layer with fla's `GatedDeltaNet` names: q_proj, k_proj, v_proj, a_proj, b_proj, A_log,
    dt_bias, q_conv1d, k_conv1d, v_conv1d, g_proj, o_norm, o_proj; attributes hidden_size, num_heads, num_v_heads,
    head_dim, head_k_dim, head_v_dim, key_dim, value_dim, conv_size as upstream. `config.gdn_implementation`:
    "auto" (fla's kernels on CUDA tensors when they import), "kernels" (insist) or "torch" (never).
    """

    layer_type = "linear_attention"

    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.num_heads = config.gdn_num_heads
        self.num_v_heads = config.gdn_num_v_heads
        self.head_dim = config.gdn_head_dim
        self.expand_v = config.gdn_expand_v
        self.head_k_dim = self.head_dim
        self.head_v_dim = int(self.head_dim * self.expand_v)
        self.key_dim = self.num_heads * self.head_k_dim
        self.value_dim = self.num_v_heads * self.head_v_dim
        self.conv_size = config.gdn_conv_size
        self.q_proj = nn.Linear(self.hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(self.hidden_size, self.key_dim, bias=False)
        self.v_proj = nn.Linear(self.hidden_size, self.value_dim, bias=False)
        self.a_proj = nn.Linear(self.hidden_size, self.num_v_heads, bias=False)
        self.b_proj = nn.Linear(self.hidden_size, self.num_v_heads, bias=False)
        self.A_log = nn.Parameter(torch.empty(self.num_v_heads, dtype=torch.float32))
        self.A_log._no_weight_decay = True
        self.dt_bias = nn.Parameter(torch.empty(self.num_v_heads))
        self.dt_bias._no_weight_decay = True
        self.q_conv1d, self.k_conv1d, self.v_conv1d = (
            nn.Conv1d(
                channels, channels, kernel_size=self.conv_size, groups=channels, padding=self.conv_size - 1,
                bias=config.gdn_conv_bias,
            )
            for channels in (self.key_dim, self.key_dim, self.value_dim)
        )
        self.g_proj = nn.Linear(self.hidden_size, self.value_dim, bias=False)
        self.o_norm = GatedRMSNorm(self.head_v_dim, eps=config.gdn_norm_eps)
        self.o_proj = nn.Linear(self.value_dim, self.hidden_size, bias=False)
        self.memory = MemorySettings.from_config(config)
        if self.memory is not None:  # the query W_u x_t of each query/key head, scoring the cached memories
            self.memory_query = nn.Linear(self.hidden_size, self.key_dim, bias=False)
            self.memory_gate = nn.Parameter(torch.empty((), dtype=torch.float32))  # see INITIAL_GATE
        log_gdn_path_once(config)

    def init_own_weights(self):
        """fla's initialisation: A uniform in [0, 16] per value head, dt bias = softplus^-1 of a log-uniform draw
        in [1e-3, 0.1], PyTorch's own conv initialisation."""
        init.copy_(self.A_log, torch.log(torch.empty(self.num_v_heads, dtype=torch.float32).uniform_(0, 16)))
        init_dt_bias(self.dt_bias, 0.001, 0.1, 1e-4)
        for conv in (self.q_conv1d, self.k_conv1d, self.v_conv1d):
            init_depthwise_conv(conv)
        if self.memory is not None:
            init.constant_(self.memory_gate, INITIAL_GATE[self.config.mamba_memory_init])

    def init_state(self, batch_size, max_positions, device, dtype, **settings):
        """The decoding state, constant in size: the last conv_size inputs of each short convolution and the
        matrix memory ("recurrent", (B, num_v_heads, head_k_dim, head_v_dim), at least float32: fla's layout); with
        memory caching also the cached memories (see `empty_matrix_memory`; read by q, so stored transposed)."""
        def conv_state(channels):
            return torch.zeros(batch_size, channels, self.conv_size, dtype=dtype, device=device)

        state = {
            "q_conv": conv_state(self.key_dim), "k_conv": conv_state(self.key_dim),
            "v_conv": conv_state(self.value_dim),
            "recurrent": torch.zeros(
                batch_size, self.num_v_heads, self.head_k_dim, self.head_v_dim, dtype=compute_dtype(dtype),
                device=device,
            ),
        }
        if self.memory is not None:
            state.update(empty_matrix_memory(
                self.memory, batch_size, max_positions, self.num_v_heads, self.head_v_dim, self.head_k_dim,
                self.num_heads, compute_dtype(dtype), device,
            ))
        return state

    def decoding_constants(self):
        """What every decoding step derives from the weights alone (see fast_decoding_music_hybrid)."""
        return {"decay_rates": self.decay_rates()}

    def decay_rates(self):
        """-exp(A_log) (num_v_heads,), in float32 at least."""
        return -torch.exp(self.A_log.to(compute_dtype(self.A_log.dtype)))

    def use_kernels(self, hidden_states):
        return runs_on_kernels(
            "gdn_implementation", self.config.gdn_implementation, gated_delta_rule_kernels, hidden_states, self.memory,
            "flash-linear-attention",
        )

    def forward(self, hidden_states, state=None, cache=None, positions=None, decay_rates=None, **kwargs):
        """hidden_states (B, T, hidden) -> (B, T, hidden); with a state (see `init_state`), continue from and
        update it (a prefill, a continuation and a one-position step alike). cache: the generation's shared cache
        (its `length`, `fixed_shape`) and positions (a tensor), read with memory caching; decay_rates:
        -exp(A_log), computed when not given (see `decoding_constants`)."""
        q, k, v, g, beta = self.recurrence_inputs(hidden_states, state, decay_rates)
        recurrent = None if state is None else state["recurrent"]
        single_step = recurrent is not None and hidden_states.shape[1] == 1
        if self.use_kernels(hidden_states):
            o, last_state = self.kernel_recurrence(q, k, v, g, beta, recurrent)
        elif single_step:
            o, last_state = gated_delta_step(recurrent, q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0])[:, None], None
            if self.memory is not None:
                o = self.memory_step(hidden_states, state, cache, positions, o[:, 0], q[:, 0], k[:, 0])[:, None]
        elif self.memory is None:
            o, last_state = chunked_gated_delta_rule(q, k, v, g, beta, recurrent)
        else:
            o, last_state = self.memory_forward(hidden_states, state, 0 if cache is None else cache.length, q, k, v, g, beta)
        if last_state is not None and recurrent is not None:
            recurrent.copy_(last_state)
        gate = self.g_proj(hidden_states).unflatten(-1, (self.num_v_heads, self.head_v_dim))
        o = self.o_norm(o, gate).to(hidden_states.dtype)
        return self.o_proj(o.flatten(-2))

    def recurrence_inputs(self, hidden_states, state, decay_rates=None):
        """q and k (B, T, num_v_heads, head_k_dim): convolved, l2-normalised, q scaled, each query/key head
        repeated for its value heads; v (B, T, num_v_heads, head_v_dim); g (log decay) and beta (B, T,
        num_v_heads). All in the recurrence's precision."""
        single_step = state is not None and hidden_states.shape[1] == 1
        projected = []
        for name in ("q", "k", "v"):
            x = getattr(self, f"{name}_proj")(hidden_states)
            conv = getattr(self, f"{name}_conv1d")
            if single_step:
                x = causal_conv_step(x[:, 0], conv, state[f"{name}_conv"])[:, None]
            else:
                x = causal_conv(x, conv, None if state is None else state[f"{name}_conv"])
            projected.append(F.silu(x))
        dtype = compute_dtype(hidden_states.dtype)
        q, k = (x.to(dtype).unflatten(-1, (self.num_heads, self.head_k_dim)) for x in projected[:2])
        v = projected[2].to(dtype).unflatten(-1, (self.num_v_heads, self.head_v_dim))
        q = l2_normalized(q) * self.head_k_dim**-0.5
        k = l2_normalized(k)
        if self.num_v_heads > self.num_heads:
            q, k = (x.repeat_interleave(self.num_v_heads // self.num_heads, dim=2) for x in (q, k))
        beta = torch.sigmoid(self.b_proj(hidden_states).to(dtype))
        rates = self.decay_rates() if decay_rates is None else decay_rates
        g = rates.to(dtype) * F.softplus(self.a_proj(hidden_states).to(dtype) + self.dt_bias.to(dtype))
        return q, k, v, g, beta

    def memory_query_and_keys(self, hidden_states, k):
        """W_u x per query/key head and the keys it wrote with (k before its repetition for the value heads)."""
        query = self.memory_query(hidden_states).to(k.dtype).unflatten(-1, (self.num_heads, self.head_k_dim))
        return query, k.unflatten(-2, (self.num_heads, -1))[..., 0, :]

    def memory_forward(self, hidden_states, state, start, q, k, v, g, beta):
        """The chunked delta rule with memory caching from position `start`: o and the last state."""
        segment_length = self.memory.segment_length
        o, last_state, segment_states = chunked_gated_delta_rule(
            q, k, v, g, beta, None if state is None else state["recurrent"],
            chunk_size=math.gcd(GDN_CHUNK_SIZE, segment_length), start=start, segment_length=segment_length,
        )
        query, written = self.memory_query_and_keys(hidden_states, k)
        cached = None if state is None else cached_memory(state, self.memory, start)
        o, new_memory = cached_scan_readout(
            o, q, written, query, self.memory_gate, segment_states.transpose(-1, -2), start, self.memory, cached
        )
        if state is not None:
            store_memory(state, self.memory, *new_memory)
        return o, last_state

    def memory_step(self, hidden_states, state, cache, positions, o, q, k):
        """The cached memories read and updated by a decoding step (see `matrix_memory_step`): every slot in a
        fixed-shape cache (a compiled step reads no length), the filled ones otherwise."""
        slots = state["memory_segments"].shape[1]
        visible = slots if cache.fixed_shape else filled_slots(state, self.memory, cache.length)
        query, written = self.memory_query_and_keys(hidden_states[:, 0], k)
        memory = state["recurrent"].transpose(-1, -2)
        return matrix_memory_step(
            state, self.memory, o, memory, q, written, query, self.memory_gate, positions, visible
        )

    def kernel_recurrence(self, q, k, v, g, beta, recurrent):
        """fla's kernels on the prepared inputs (normalised and scaled here, so the kernels do neither):
        fused_recurrent for a decoding step, chunk otherwise. Returns o and the last state (None without one)."""
        kernels = gated_delta_rule_kernels()
        kernel = kernels["fused_recurrent"] if recurrent is not None and q.shape[1] == 1 else kernels["chunk"]
        o, last_state = kernel(
            q=q, k=k, v=v, g=g, beta=beta, scale=1.0, initial_state=recurrent,
            output_final_state=recurrent is not None,
        )
        return o, last_state


class GatedRMSNorm(nn.Module):
    """fla's FusedRMSNormGated (swish gate): RMSNorm(x) * weight * silu(gate) over the last dimension, computed in
    at least float32."""

    def __init__(self, hidden_size, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def init_own_weights(self):
        init.ones_(self.weight)

    def forward(self, x, gate):
        dtype = compute_dtype(x.dtype)
        x, gate = x.to(dtype), gate.to(dtype)
        normalized = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps)
        return normalized * self.weight.to(dtype) * F.silu(gate)


def l2_normalized(x):
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + L2_NORM_EPS)


# --------------------------------------------------------------------------------------------------------------------
# The gated delta rule in PyTorch
# --------------------------------------------------------------------------------------------------------------------


def chunked_gated_delta_rule(q, k, v, g, beta, initial_state=None, chunk_size=GDN_CHUNK_SIZE, start=0,
                             segment_length=None):
    """The gated delta rule over a sequence, in chunks (the WY / UT-transform form of Yang et al.).

    q, k (batch, T, heads, dk) (q already scaled), v (batch, T, heads, dv), g (log decay) and beta (batch, T,
    heads), initial_state (batch, heads, dk, dv) or None. Returns o (batch, T, heads, dv) and the last state.

    Within a chunk starting from S_0, with gamma_t the cumulative log decay since the chunk start, the corrections
    u_t = beta_t (v_t - S_t'^T k_t) (S_t' the decayed state before step t's update) satisfy the unit lower
    triangular system u_t + sum_(s<t) beta_t exp(gamma_t - gamma_s) (k_t . k_s) u_s = beta_t v_t - beta_t
    exp(gamma_t) S_0^T k_t, solved once per chunk for both right-hand sides (u = U - W S_0); then o_t =
    exp(gamma_t) S_0^T q_t + sum_(s<=t) exp(gamma_t - gamma_s) (q_t . k_s) u_s, and the chunk's end state follows.
    Only the chunk-end states run sequentially.

    With `segment_length` (memory caching; chunk_size must divide it) the inputs are at positions start, start + 1,
    ... and the states at the segment ends among them come third: (batch, segments, heads, dk, dv).
    """
    batch, length, heads, dk = k.shape
    dv = v.shape[-1]
    # Padded steps have g = 0 and beta = 0: no decay, no update. In front, they make chunks end on multiples of
    # chunk_size.
    front = 0 if segment_length is None else alignment_padding(start, chunk_size)
    padding = -(front + length) % chunk_size
    if padding or front:
        q, k, v = (F.pad(t, (0, 0, 0, 0, front, padding)) for t in (q, k, v))
        g, beta = (F.pad(t, (0, 0, front, padding)) for t in (g, beta))
    chunks = q.shape[1] // chunk_size
    q, k, v = (t.transpose(1, 2).reshape(batch, heads, chunks, chunk_size, -1) for t in (q, k, v))
    g, beta = (t.transpose(1, 2).reshape(batch, heads, chunks, chunk_size) for t in (g, beta))
    gamma = g.cumsum(-1)
    lower = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril()
    decays = (gamma[..., :, None] - gamma[..., None, :]).masked_fill(~lower, -torch.inf).exp()  # (t, s), s <= t
    strictly_lower = beta[..., :, None] * (k @ k.transpose(-1, -2)) * decays.tril(-1)
    right_hand_sides = torch.cat([beta[..., None] * v, (beta * gamma.exp())[..., None] * k], dim=-1)
    eye = torch.eye(chunk_size, dtype=q.dtype, device=q.device)
    solved = torch.linalg.solve_triangular(eye + strictly_lower, right_hand_sides, upper=False, unitriangular=True)
    corrections, state_weights = solved.split([dv, dk], dim=-1)
    attention = (q @ k.transpose(-1, -2)) * decays
    q_from_start = q * gamma.exp()[..., None]
    k_to_end = k * (gamma[..., -1:] - gamma).exp()[..., None]
    chunk_decays = gamma[..., -1].exp()
    state = q.new_zeros(batch, heads, dk, dv) if initial_state is None else initial_state.to(q.dtype)
    outputs, chunk_end_states = [], []
    for chunk in range(chunks):
        u = corrections[:, :, chunk] - state_weights[:, :, chunk] @ state
        outputs.append(q_from_start[:, :, chunk] @ state + attention[:, :, chunk] @ u)
        state = state * chunk_decays[:, :, chunk, None, None] + k_to_end[:, :, chunk].transpose(-1, -2) @ u
        chunk_end_states.append(state)
    o = torch.stack(outputs, dim=2).reshape(batch, heads, chunks * chunk_size, dv)[:, :, front : front + length]
    if segment_length is None:
        return o.transpose(1, 2), state
    ends = segment_end_chunks(start, front, chunk_size, chunks, length, segment_length)
    segment_states = torch.stack([chunk_end_states[chunk] for chunk in ends], dim=1) if ends else state.new_zeros(
        batch, 0, heads, dk, dv
    )
    return o.transpose(1, 2), state, segment_states


def gated_delta_step(state, q, k, v, g, beta):
    """One step of the gated delta rule, updating `state` (batch, heads, dk, dv) in place: q, k (batch, heads, dk),
    v (batch, heads, dv), g and beta (batch, heads). Returns o (batch, heads, dv)."""
    decayed = state * g.exp()[..., None, None]
    correction = beta[..., None] * (v - (k[:, :, None, :] @ decayed)[:, :, 0])
    state.copy_(torch.addcmul(decayed, k[..., None], correction[:, :, None, :]))
    return (q[:, :, None, :] @ state)[:, :, 0]
