"""The decoding cache: a container of every layer's own decoding state, and what all layers share.

Each sequence mixer allocates and updates its own state (`init_state`, as mamba_ssm's modules own theirs): the
cache knows no layer kinds. It holds the states, the number of positions seen, and the layout of one generation:
a sliding attention window, and whether steps keep fixed shapes (what a compiled step or a CUDA graph needs).
modeling_music_hybrid.py and generation_music_hybrid.py import this file; shipped with every checkpoint.
"""

import torch

# Steps on a fixed-shape cache see this many more attention slots at a time (see MusicHybridCache).
VISIBLE_BLOCK = 256


class MusicHybridCache:
    """Decoding state of every layer, allocated once for a whole generation of up to `max_length` positions.

    `states[i]` is what layer i's mixer returned from `init_state(batch_size, max_length, device, dtype,
    attention_window=..., fixed_shape=...)`: a dict of batch-first tensors, or None for a mixer without state.

    Shared by every layer: `length`, the positions seen so far (`advance` counts them); `attention_window`, in
    sliding-window mode the positions attention keeps (a ring of `capacity` slots); `fixed_shape`: a single new
    position is then written at its slot by index and attends over the "visible" slots under a mask
    (`single_position_mask`): the filled ones rounded up to a multiple of VISIBLE_BLOCK. Steps keep the same
    shapes for VISIBLE_BLOCK positions at a time, which a compiled step or a CUDA graph needs, and never read much
    more of a long cache than the filled part. `visible_slots` (a tensor, its length the visible slot count: a
    compiled step reads the count from its shape) tells the mixers how many.

    `condition_keys_values[i]`: layer i's cross-attention keys and values of a condition (the description of a
    text-conditioned model) and their padding mask, computed at the first input and read by every later step: a
    cache holds the description it began with.
    """

    def __init__(self, mixers, batch_size, max_length, device, dtype, attention_window=None, fixed_shape=False):
        self.length = 0
        self.max_length = max_length
        self.attention_window = attention_window
        self.fixed_shape = fixed_shape
        self.capacity = max_length if attention_window is None else min(attention_window, max_length)
        self.visible_slots = None
        self.states = [
            mixer.init_state(
                batch_size, max_length, device, dtype, attention_window=attention_window, fixed_shape=fixed_shape
            )
            for mixer in mixers
        ]
        self.condition_keys_values = [None] * len(self.states)
        self.advance(0)

    def advance(self, num_positions):
        """Count new positions. A fixed-shape cache then shows attention the slots up to the next multiple of
        VISIBLE_BLOCK past the filled ones (all of them in a ring)."""
        self.length += num_positions
        if self.fixed_shape:
            visible = min(self.capacity, -(-(self.length + 1) // VISIBLE_BLOCK) * VISIBLE_BLOCK)
            if self.visible_slots is None or len(self.visible_slots) != visible:
                device = next((t.device for state in self.states if state for t in state.values()), "cpu")
                self.visible_slots = torch.arange(visible, device=device)

    @property
    def holds_condition_keys_values(self):
        return any(kept is not None for kept in self.condition_keys_values)

    @property
    def visible_length(self):
        return None if self.visible_slots is None else len(self.visible_slots)

    def single_position_mask(self, positions, dtype):
        """Additive mask (1, 1, 1, visible slots) of one query at `positions` (one element) in a fixed-shape cache:
        slot j holds a position up to the query's once j <= the query's position, in a plain buffer and a ring
        alike; later slots are empty."""
        empty = self.visible_slots > positions
        return torch.zeros(empty.shape, dtype=dtype, device=positions.device).masked_fill(
            empty, torch.finfo(dtype).min
        )[None, None, None]

    def tensors(self):
        """Every state tensor: what a decoding step may update in place (see CUDAGraphStep)."""
        return [tensor for state in self.states if state for tensor in state.values()]


def state_bytes_per_position(mixers, batch_size, max_length, dtype):
    """Bytes the decoding states grow by per position of a generation of `max_length` positions: attention keys
    and values, and cached memories unless their count is bounded (recurrent states are constant). Measured by
    allocating the states on the meta device for `max_length` positions and for twice as many."""
    def total(length):
        cache = MusicHybridCache(mixers, batch_size, length, "meta", dtype)
        return sum(tensor.nbytes for tensor in cache.tensors())

    return (total(2 * max_length) - total(max_length)) / max_length
