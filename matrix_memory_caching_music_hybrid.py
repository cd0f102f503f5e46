"""Memory caching (Behrouz et al. 2026) for the matrix-memory mixers, Mamba-2 and Gated DeltaNet, with Mamba-1's
settings (`mamba_memory_*`, see memory_caching_music_hybrid.MemorySettings).

Each head's memory is a matrix M_t (out x n) read by a vector: y_t = M_t r_t (Mamba-2: the state h_t read by C_t;
Gated DeltaNet: S_t^T read by q_t). At every segment end a layer caches M^(i) with the key k^(i), the mean over the
segment of the vectors it wrote with (Mamba-2: B; Gated DeltaNet: k). A later position reads the cached memories
with its own r_t next to the live one, mixed by weights over <W_u x_t, k> / sqrt(n), computed per key head (a
Mamba-2 group, a Gated DeltaNet query/key head) and shared by the value heads it serves. The readout is linear in
the memory, so reading N cached memories is one matrix product (`read_memories`) and decoding stays constant-cost
per step. Used by mamba2_music_hybrid.py and gated_deltanet_music_hybrid.py; shipped with every checkpoint.
"""

import torch
import torch.nn.functional as F

try:  # inside a checkpoint folder loaded with trust_remote_code the shipped files form a package
    from .memory_caching_music_hybrid import cache_at_segment_end, memory_weights, read_memories, step_segment_key
except ImportError:  # from the repository root they are plain modules
    from memory_caching_music_hybrid import cache_at_segment_end, memory_weights, read_memories, step_segment_key


def segment_end_chunks(start, padding, chunk_size, chunks, length, segment_length):
    """The chunks (indices) of a chunked scan whose last step ends a segment: the scan's inputs at positions start,
    start + 1, ... are left-padded by `padding` steps (so that chunks end on multiples of chunk_size, which divides
    segment_length) and right-padded to `chunks` chunks; a chunk ending in the right padding ends no segment."""
    ends = [start - padding + (chunk + 1) * chunk_size for chunk in range(chunks)]
    return [chunk for chunk, end in enumerate(ends) if end % segment_length == 0 and end <= start + length]


def alignment_padding(start, chunk_size):
    """Identity steps to put in front of inputs at position `start`, so that chunks end on multiples of chunk_size."""
    return start % chunk_size


def cached_scan_readout(y_live, readouts, written, query, gate, segment_states, start, settings, cached=None):
    """The outputs of a whole input with memory caching, and the memories it adds.

    y_live (batch, T, heads, out): the live readouts M_t r_t; readouts r_t (batch, T, heads, n); written (batch, T,
    key_heads, n): the vectors each key head wrote with; query W_u x_t (batch, T, key_heads, n); gate: the layer's
    memory gate (see `memory_weights`); segment_states
    (batch, s, heads, out, n): the memories at the segment ends inside the inputs; cached: the memories of earlier
    positions (states, keys (batch, m, key_heads, n), segment indices (m,), the sum of `written` over the current
    segment before `start`) or None. Returns y and the new memories (the same four fields)."""
    segment_length, length = settings.segment_length, y_live.shape[1]
    device = y_live.device
    steps = torch.arange(length, device=device)
    segments = (start + steps) // segment_length
    in_segment = (start + steps) % segment_length
    cumulative = F.pad(written.cumsum(1), (0, 0, 0, 0, 1, 0))
    running_sums = cumulative[:, 1:] - cumulative[:, (steps - in_segment).clamp(min=0)]
    if cached is not None:
        running_sums = running_sums + cached[3][:, None] * (steps < in_segment)[None, :, None, None]
    live_keys = running_sums / (in_segment + 1)[None, :, None, None].to(written.dtype)
    ends = torch.nonzero(in_segment == segment_length - 1)[:, 0]
    new_memory = (segment_states, live_keys[:, ends], segments[ends], running_sums[:, -1])
    states, keys, memory_segments = new_memory[:3]
    if cached is not None:
        states, keys = torch.cat([cached[0], states], dim=1), torch.cat([cached[1], keys], dim=1)
        memory_segments = torch.cat([cached[2], memory_segments])
    scale = query.shape[-1] ** -0.5
    live_scores = (query * live_keys).sum(-1) * scale  # (batch, T, key_heads)
    scores = torch.einsum("btkn,bmkn->btkm", query, keys) * scale
    valid = settings.valid(memory_segments, segments[:, None])[:, None, :]  # (T, 1, m)
    live_weights, weights = memory_weights(live_scores, scores, valid, settings, gate)
    y = mixed_readout(y_live, live_weights, weights, readouts, states)
    return y, new_memory


def mixed_readout(y_live, live_weights, weights, readouts, states):
    """live_weights * y_live + sum_i weights_i (M^(i) r): weights per key head (batch, T, key_heads[, m]),
    repeated for the value heads each serves; states (batch, m, heads, out, n)."""
    batch, length, heads, out = y_live.shape
    repeats = heads // live_weights.shape[2]
    live_weights, weights = (w.repeat_interleave(repeats, dim=2) for w in (live_weights, weights))
    num_memories, n = states.shape[1], states.shape[-1]
    # Heads folded into the batch: read_memories' (batch, T, m) weights, (batch, T, n) readouts, (batch, m, out, n).
    cached = read_memories(
        weights.permute(0, 2, 1, 3).reshape(batch * heads, length, num_memories),
        readouts.transpose(1, 2).reshape(batch * heads, length, n),
        states.transpose(1, 2).reshape(batch * heads, num_memories, out, n),
    )
    return live_weights[..., None] * y_live + cached.view(batch, heads, length, out).transpose(1, 2)


def matrix_memory_step(memory, settings, y_live, state, readout, written, query, gate, positions, visible):
    """One decoding step: y_live (batch, heads, out) = M_t r_t of the new memory `state` (batch, heads, out, n);
    readout r_t (batch, heads, n); written and query (batch, key_heads, n); positions: the step's position (one
    element, a tensor); `memory`: the layer's decoding state (see `empty_matrix_memory`), of which the step reads
    the first `visible` slots. Reads the cached memories, then updates the key sum and, at a segment's last
    position, caches the memory and its key in their slot. Returns y (batch, heads, out)."""
    segment, in_segment, live_key = step_segment_key(memory, settings, written, positions)
    states, keys = memory["memory_states"][:, :visible], memory["memory_keys"][:, :visible]
    memory_segments = memory["memory_segments"][0, :visible]
    scale = query.shape[-1] ** -0.5
    live_scores = (query * live_key).sum(-1) * scale  # (batch, key_heads)
    scores = torch.einsum("bkn,bmkn->bkm", query, keys) * scale
    valid = settings.valid(memory_segments, segment)
    live_weights, weights = memory_weights(live_scores, scores, valid, settings, gate)
    y = mixed_readout(y_live[:, None], live_weights[:, None], weights[:, None], readout[:, None], states)[:, 0]
    cache_at_segment_end(memory, settings, state, live_key, segment, in_segment)
    return y


def empty_matrix_memory(settings, batch_size, max_positions, heads, out, n, key_heads, dtype, device):
    """A layer's cached memories, batch first: slots of memories (batch, slots, heads, out, n), keys (batch, slots,
    key_heads, n), segment indices (batch, slots; the same in every row, -1 when empty), segment i in slot i %
    slots, and the sum of the written vectors over the current segment (batch, key_heads, n). There are
    `max_segments` slots, or enough for every segment of `max_positions` positions."""
    slots = settings.max_segments or max(1, max_positions // settings.segment_length)
    return {
        "memory_states": torch.zeros(batch_size, slots, heads, out, n, dtype=dtype, device=device),
        "memory_keys": torch.zeros(batch_size, slots, key_heads, n, dtype=dtype, device=device),
        "memory_segments": torch.full((batch_size, slots), -1, dtype=torch.long, device=device),
        "memory_key_sum": torch.zeros(batch_size, key_heads, n, dtype=dtype, device=device),
    }
