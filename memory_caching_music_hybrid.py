"""Memory caching (Behrouz et al. 2026, "Memory Caching: RNNs with Growing Memory") for Mamba-1 layers.

A layer caches its SSM state at every segment end and reads the cached states with its C_t beside the live state,
mixed by weights over <W_u x_t, mean of B over the segment> and scaled by a learned gate (see `MemorySettings`).
The readout is linear in the state, so reading N cached states is one matrix product and decoding stays
constant-cost per step. Here: the settings, the whole-sequence scan with memories (`memory_cached_scan`), one
decoding step (`memory_step`) and the decoding state of the cached memories. Used by mamba_music_hybrid.py;
shipped with every checkpoint.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:  # inside a checkpoint folder loaded with trust_remote_code the shipped files form a package
    from .selective_scan_music_hybrid import selective_scan
except ImportError:  # from the repository root they are plain modules
    from selective_scan_music_hybrid import selective_scan


# Where a layer's gate starts, by `config.mamba_memory_init`: "base" at 0, so that the layer computes its plain
# Mamba-1 layer's outputs until it trains (adding memory to a trained model loses nothing); "full" at 1, the
# aggregation alone (the only behaviour before the gate existed).
INITIAL_GATE = {"base": 0.0, "full": 1.0}


@dataclass(frozen=True)
class MemorySettings:
    """Memory caching of a Mamba layer. The sequence is cut into segments of `segment_length` positions; the SSM
    state h^(i) right after segment i is cached with the key k^(i) = mean of B over segment i. Position t of
    segment s reads the live memory (r = C_t . h_t, key: mean of B over segment s up to t) and the cached ones
    (r^(i) = C_t . h^(i), i < s; the `max_segments` most recent when set): y_t = sum_j g_t^(j) r_t^(j) + D x_t,
    with g from the scores <W_u x_t, k^(j)> / sqrt(d_state) by `aggregation`, then scaled by the layer's gate
    (see `memory_weights`). The readout is linear in the state, so reading n cached states is one matrix product
    (see `read_memories`)."""

    segment_length: int
    aggregation: str
    top_k: int
    max_segments: int | None

    @classmethod
    def from_config(cls, config):
        if not config.mamba_memory:
            return None
        return cls(
            config.mamba_memory_segment_length, config.mamba_memory_aggregation, config.mamba_memory_top_k,
            config.mamba_memory_max_segments,
        )

    def valid(self, memory_segments, position_segments):
        """Which cached segments (n,) the positions' segments (..., 1) read: (..., n). Empty slots hold -1."""
        valid = (memory_segments >= 0) & (memory_segments < position_segments)
        if self.max_segments is not None:
            valid &= memory_segments >= position_segments - self.max_segments
        return valid


def memory_cached_scan(u, delta, A, B, C, query, gate, initial_state, start, settings, cached=None, compiled=False):
    """The Mamba-1 scan with memory caching over inputs at positions start, start + 1, ... (see `MemorySettings`).

    u, delta (batch, d_inner, T), A, B, C and initial_state as in `selective_scan`; query = W_u x (batch, T,
    d_state); gate: the layer's gate (a scalar tensor, see `memory_weights`). cached: the memories of earlier
    positions, (states (batch, n, d_inner, d_state), keys (batch, n, d_state), segment indices (n,), the sum of B
    over the current segment before `start`), or None. Returns y
    (batch, T, d_inner) in float32 (before the D x term), the last state and the new memories (the same four
    fields, for the segments that end inside the inputs, and the key sum after them).
    """
    segment_length, length = settings.segment_length, u.shape[-1]
    y_live, last_state, segment_states = selective_scan(
        u, delta, A, B, C, initial_state, compiled=compiled, offset=start, segment_length=segment_length
    )
    device = u.device
    steps = torch.arange(length, device=device)
    segments = (start + steps) // segment_length
    in_segment = (start + steps) % segment_length
    # The live key: the running mean of B over the current segment (a cumulative sum restarted at segment starts,
    # continued from the cached sum when the first segment began before the inputs).
    B = B.float().transpose(1, 2)
    cumulative = F.pad(B.cumsum(1), (0, 0, 1, 0))
    running_sums = cumulative[:, 1:] - cumulative[:, (steps - in_segment).clamp(min=0)]
    if cached is not None:
        running_sums = running_sums + cached[3][:, None] * (steps < in_segment)[None, :, None]
    live_keys = running_sums / (in_segment + 1)[None, :, None]
    ends = torch.nonzero(in_segment == segment_length - 1)[:, 0]
    new_memory = (segment_states.transpose(0, 1), live_keys[:, ends], segments[ends], running_sums[:, -1])
    states, keys, memory_segments = new_memory[:3]
    if cached is not None:
        states, keys = torch.cat([cached[0], states], dim=1), torch.cat([cached[1], keys], dim=1)
        memory_segments = torch.cat([cached[2], memory_segments])
    scale = query.shape[-1] ** -0.5  # 1 / sqrt(d_state)
    query = query.float()
    live_scores = (query * live_keys).sum(-1) * scale
    scores = torch.matmul(query, keys.transpose(1, 2)) * scale
    valid = settings.valid(memory_segments, segments[:, None])
    live_weights, weights = memory_weights(live_scores, scores, valid, settings, gate)
    y = live_weights[..., None] * y_live.transpose(1, 2) + read_memories(weights, C.float().transpose(1, 2), states)
    return y, last_state, new_memory


def memory_weights(live_scores, scores, valid, settings, gate):
    """The weights g of the live memory (...) and the cached ones (..., n), zero where not `valid`.

    "gated": softmax over the live and valid cached scores; "residual": every weight 1; "sparse": softmax over the
    live score and the `top_k` highest valid cached scores. The gate scales what the cached memories change:
    y = y_live + gate (y_aggregated - y_live), so the cached weights are gate g^(i) and the live one
    1 - gate (1 - g^(live)). At gate 0 the layer is exactly its plain Mamba-1 layer (the "base" initialisation,
    see `INITIAL_GATE`); at gate 1 it is the aggregation alone.
    """
    live_weights, weights = aggregation_weights(live_scores, scores, valid, settings)
    return 1 - gate * (1 - live_weights), gate * weights


def aggregation_weights(live_scores, scores, valid, settings):
    """The weights of the aggregation alone (see `memory_weights`)."""
    if settings.aggregation == "residual":
        return torch.ones_like(live_scores), valid.to(scores.dtype).expand_as(scores)
    if settings.aggregation == "sparse" and scores.shape[-1] > settings.top_k:
        masked = scores.masked_fill(~valid, -math.inf)
        top = masked.topk(settings.top_k, dim=-1).indices
        valid = torch.zeros_like(masked, dtype=torch.bool).scatter_(-1, top, True) & valid
    weights = torch.softmax(torch.cat([live_scores[..., None], scores.masked_fill(~valid, -math.inf)], dim=-1), dim=-1)
    return weights[..., 0], weights[..., 1:]


def read_memories(weights, C, states):
    """sum_i weights_ti (C_t . h^(i)) = sum_(i,n) (weights_ti C_tn) h^(i)_n: one product of (batch, T, n d_state)
    by (batch, n d_state, d_inner), never the (batch, T, n, d_inner) readouts themselves.
    weights (batch, T, n), C (batch, T, d_state), states (batch, n, d_inner, d_state) -> (batch, T, d_inner)."""
    batch, length, num_memories = weights.shape
    if num_memories == 0:
        return C.new_zeros(batch, length, states.shape[2])
    mixed_queries = (weights[..., None] * C[:, :, None, :]).reshape(batch, length, -1)
    return torch.matmul(mixed_queries, states.transpose(2, 3).reshape(batch, -1, states.shape[2]))


def memory_step(memory, settings, y_live, state, query, gate, B, C, positions, visible):
    """One decoding step of memory caching: y_live = C . h_t (batch, d_inner) of the new state `state`; B, C,
    query (batch, d_state); positions: the step's position (one element, a tensor: a compiled step reads no
    Python value that changes); `memory` the layer's decoding state (see `empty_memory`), of which the step reads
    the first `visible` slots. Reads the cached memories, then updates the key sum and, at a segment's last
    position, caches the state and key in their slot. Returns y (batch, d_inner) before the D x term."""
    B, C, query = B.float(), C.float(), query.float()
    segment, in_segment, live_key = step_segment_key(memory, settings, B, positions)
    states, keys = memory["memory_states"][:, :visible], memory["memory_keys"][:, :visible]
    memory_segments = memory["memory_segments"][0, :visible]
    scale = query.shape[-1] ** -0.5  # 1 / sqrt(d_state)
    live_scores = (query * live_key).sum(-1) * scale
    scores = torch.matmul(keys, query[:, :, None])[..., 0] * scale
    valid = settings.valid(memory_segments, segment)
    live_weights, weights = memory_weights(live_scores, scores, valid, settings, gate)
    y = live_weights[:, None] * y_live + read_memories(weights[:, None], C[:, None], states)[:, 0]
    cache_at_segment_end(memory, settings, state, live_key, segment, in_segment)
    return y


def step_segment_key(memory, settings, written, positions):
    """A decoding step's segment, its place in it, and the live memory's key: the mean of the written vectors
    (batch, ..., n) over the segment so far, whose running sum the step updates in `memory`."""
    segment, in_segment = positions // settings.segment_length, positions % settings.segment_length
    key_sum = torch.where(in_segment == 0, written, memory["memory_key_sum"] + written)
    memory["memory_key_sum"].copy_(key_sum)
    return segment, in_segment, key_sum / (in_segment + 1)


def cache_at_segment_end(memory, settings, state, live_key, segment, in_segment):
    """At a segment's last position, cache the state and its key in the segment's slot of `memory`."""
    # Written by index whatever the position (a fixed-shape step): the slot's old content unless a segment ends.
    segment_ends = in_segment == settings.segment_length - 1
    slot = segment % memory["memory_segments"].shape[1]
    batch_segment = segment.expand(state.shape[0], 1)
    for name, new in (("memory_states", state[:, None]), ("memory_keys", live_key[:, None]),
                      ("memory_segments", batch_segment)):
        buffer = memory[name]
        buffer.index_copy_(1, slot, torch.where(segment_ends, new.to(buffer.dtype), buffer.index_select(1, slot)))


def empty_memory(settings, batch_size, max_positions, d_inner, d_state, device):
    """A layer's cached memories, float32, batch first: slots of states (batch, slots, d_inner, d_state), keys
    (batch, slots, d_state) and segment indices (batch, slots; the same in every row, -1 when empty), segment i in
    slot i % slots, and the sum of B over the current segment (batch, d_state). There are `max_segments` slots, or
    enough for every segment of `max_positions` positions."""
    slots = settings.max_segments or max(1, max_positions // settings.segment_length)
    return {
        "memory_states": torch.zeros(batch_size, slots, d_inner, d_state, dtype=torch.float32, device=device),
        "memory_keys": torch.zeros(batch_size, slots, d_state, dtype=torch.float32, device=device),
        "memory_segments": torch.full((batch_size, slots), -1, dtype=torch.long, device=device),
        "memory_key_sum": torch.zeros(batch_size, d_state, dtype=torch.float32, device=device),
    }


def filled_slots(memory, settings, length):
    """How many memory slots hold a segment once `length` positions have been seen."""
    return min(memory["memory_segments"].shape[1], length // settings.segment_length)


def cached_memory(memory, settings, length):
    """The filled memory slots (states, keys, segment indices) and the key sum, as `memory_cached_scan` reads
    them after `length` positions."""
    filled = filled_slots(memory, settings, length)
    return (
        memory["memory_states"][:, :filled], memory["memory_keys"][:, :filled],
        memory["memory_segments"][0, :filled], memory["memory_key_sum"],
    )


def store_memory(memory, settings, states, keys, segments, key_sum):
    """Cache the memories of the segments that ended in a multi-position input (see `memory_cached_scan`)."""
    slots = memory["memory_segments"].shape[1]
    if settings.max_segments is None and len(segments) and segments[-1] >= slots:
        raise ValueError(f"The cache holds the memories of {slots} segments; segment {int(segments[-1])} ended")
    kept = slice(max(0, len(segments) - slots), None)  # a ring keeps the most recent
    slot = segments[kept] % slots
    memory["memory_states"].index_copy_(1, slot, states[:, kept].detach())
    memory["memory_keys"].index_copy_(1, slot, keys[:, kept].detach())
    memory["memory_segments"].index_copy_(1, slot, segments[kept].expand(key_sum.shape[0], -1))
    memory["memory_key_sum"].copy_(key_sum.detach())
