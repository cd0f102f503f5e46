"""The Mamba-1 selective scan in PyTorch: a chunked forward pass, its hand-written backward pass, and the one-step
recurrence of decoding.

h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t;  y_t = <h_t, C_t>. `selective_scan` is the entry point (with
segment-end states for memory caching); `selective_state_step` advances a decoding state by one input. Used by
mamba_music_hybrid.py and memory_caching_music_hybrid.py; shipped with every checkpoint.
"""

import functools

import torch

# torch.export sets it; torch releases before it existed never export this model (see the export test)
is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)

# exp(x) = exp2(x log2(e)): on CPU exp2 is cheaper than exp, and the decays exp(delta A) are most of the
# scan's arithmetic (one per time step, channel and state).
LOG2_E = 1.4426950408889634


def decay_exponents(A_log):
    """A log2(e) = -exp(A_log) log2(e): the decays are exp2(delta A log2(e)) (see `LOG2_E`)."""
    return -torch.exp(A_log.float()) * LOG2_E


def selective_scan(
    u, delta, A, B, C, initial_state=None, chunk_size=16, compiled=False, offset=0, segment_length=None
):
    """h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t;  y_t = <h_t, C_t>, in float32.

    u, delta: (batch, d_inner, T); A: (d_inner, d_state); B, C: (batch, d_state, T); initial_state: (batch,
    d_inner, d_state) or None. Returns y (batch, d_inner, T) and the last state.

    The scan runs time-major, `chunk_size` steps at a time, in two reused (chunk, batch, d_inner, d_state)
    buffers (decays and states), so memory is bounded by the chunk and the working set stays in cache; the
    (T, batch, d_inner, d_state) states never exist at once. For training it keeps only each chunk's start
    state; the backward pass recomputes a chunk from it and runs the adjoint recurrence in reverse.

    compiled: run every whole chunk, forward and backward, as one kernel that torch.compile fuses (see
    `fused_chunk_forward`); the same results to float32 rounding, faster on CPU (bench/bench_scan.py), compiled on first
    use (seconds; needs a C++ compiler on CPU). While torch.export traces the scan, every chunk runs as the plain
    differentiable ops of `fused_chunk_forward` (no custom autograd Function, no buffers written in place), so
    that the exported program runs with gradients as well as without.

    segment_length (a multiple of chunk_size; memory caching): the inputs start at position `offset` of a
    sequence cut into segments of that length; the chunks follow the same grid (a shorter first chunk when
    `offset` is not on it), so every segment ends at a chunk's end. Then a third output holds the states right
    after each segment end inside the inputs, (segments, batch, d_inner, d_state), and gradients flow from them
    back through the scan.
    """
    if initial_state is None:
        initial_state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32)
    inputs = (u, delta, A, B, C, initial_state)
    grid = ScanGrid(u.shape[-1], chunk_size, offset, segment_length)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs) and not is_exporting():
        y, last_state, segment_states = SelectiveScan.apply(*inputs, grid, compiled)
    else:
        with torch.autocast(u.device.type, enabled=False):
            y, last_state, segment_states, _ = scan_forward(*inputs, grid, compiled, keep_start_states=False)
    return (y, last_state) if segment_length is None else (y, last_state, segment_states)


class ScanGrid:
    """Where the scan's chunks start, and which chunk ends are segment ends (see `selective_scan`)."""

    def __init__(self, length, chunk_size, offset=0, segment_length=None):
        if segment_length is not None and segment_length % chunk_size:
            raise ValueError(f"segment_length {segment_length} is not a multiple of the chunk size {chunk_size}")
        self.chunk_size = chunk_size
        first = (-offset) % chunk_size or chunk_size
        self.starts = [0] + list(range(first, length, chunk_size)) if length else []
        self.ends = self.starts[1:] + [length]
        # Indices of the chunks that end a segment, in order.
        self.segment_chunks = [] if segment_length is None else [
            i for i, end in enumerate(self.ends) if (offset + end) % segment_length == 0
        ]

    def spans(self):
        return [slice(start, end) for start, end in zip(self.starts, self.ends, strict=True)]


class SelectiveScan(torch.autograd.Function):
    """The chunked scan with a hand-written backward pass (autograd through the chunk loop is slower than a
    plain loop and keeps every state)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, initial_state, grid, compiled):
        with torch.autocast(u.device.type, enabled=False):
            y, last_state, segment_states, saved = scan_forward(
                u, delta, A, B, C, initial_state, grid, compiled, keep_start_states=True
            )
        ctx.save_for_backward(*saved)
        ctx.grid, ctx.compiled = grid, compiled
        return y, last_state, segment_states

    @staticmethod
    def backward(ctx, grad_y, grad_last_state, grad_segment_states):
        with torch.autocast(grad_y.device.type, enabled=False):
            gradients = scan_backward(
                *ctx.saved_tensors, grad_y, grad_last_state, grad_segment_states, ctx.grid, ctx.compiled
            )
        return gradients + (None, None)


def scan_forward(u, delta, A, B, C, initial_state, grid, compiled, keep_start_states):
    """y (batch, d_inner, T), the last state, the segment-end states and, for the backward pass, the time-major
    inputs and chunk starts."""
    u, delta, B, C = (time_major(t) for t in (u, delta, B, C))
    A = A.float()
    exponents = A * LOG2_E
    chunk_size = grid.chunk_size
    y = torch.empty_like(u)
    decay, states = scan_buffers(initial_state, chunk_size)
    spans = grid.spans()
    start_states = u.new_empty((len(spans) if keep_start_states else 0,) + tuple(initial_state.shape))
    segment_states = u.new_empty((len(grid.segment_chunks),) + tuple(initial_state.shape))
    segment_of_chunk = {chunk: segment for segment, chunk in enumerate(grid.segment_chunks)}
    state = initial_state.float()
    for i, span in enumerate(spans):
        if keep_start_states:
            start_states[i] = state
        if is_exporting():
            y[span], state = fused_chunk_forward(state, u[span], delta[span], exponents, B[span], C[span])
        elif compiled and u[span].shape[0] == chunk_size:  # a shorter chunk would compile again
            y[span], state = compiled_chunk_function(fused_chunk_forward)(
                state, u[span], delta[span], exponents, B[span], C[span]
            )
        else:
            _, h = chunk_states(state, u[span], delta[span], exponents, B[span], decay, states)
            y[span] = sum_over_state(h[1:], C[span])
            state = h[-1]
        if i in segment_of_chunk:
            segment_states[segment_of_chunk[i]] = state
    return y.permute(1, 2, 0), state.clone(), segment_states, (u, delta, A, B, C, start_states)


def scan_backward(u, delta, A, B, C, start_states, grad_y, grad_last_state, grad_segment_states, grid, compiled):
    """Gradients of (u, delta, A, B, C, initial_state), chunk by chunk from the end (see `chunk_gradients`); a
    segment-end state's gradient joins the gradient flowing into the end of its chunk."""
    grad_y = time_major(grad_y)
    grad_u, grad_delta, grad_B, grad_C = (torch.empty_like(t) for t in (u, delta, B, C))
    grad_A = torch.zeros_like(A)
    exponents = A * LOG2_E
    decay, states = scan_buffers(start_states[0], grid.chunk_size)
    grad_states = torch.empty_like(decay)
    segment_of_chunk = {} if grad_segment_states is None else {i: j for j, i in enumerate(grid.segment_chunks)}
    # decay_{t+1} g_{t+1} for the first step after the current chunk.
    future = torch.zeros_like(start_states[0]) if grad_last_state is None else grad_last_state.float()
    spans = grid.spans()
    for i in reversed(range(len(spans))):
        span = spans[i]
        if i in segment_of_chunk:
            future = future + grad_segment_states[segment_of_chunk[i]].float()
        chunk = (start_states[i], u[span], delta[span], A, exponents, B[span], C[span], grad_y[span], future)
        if compiled and u[span].shape[0] == grid.chunk_size:
            gradients = compiled_chunk_function(fused_chunk_backward)(*chunk)
        else:
            gradients = chunk_gradients(*chunk, decay, states, grad_states)
        grad_u[span], grad_delta[span], grad_chunk_A, grad_B[span], grad_C[span], future = gradients
        grad_A += grad_chunk_A
    grad_u, grad_delta, grad_B, grad_C = (t.permute(1, 2, 0) for t in (grad_u, grad_delta, grad_B, grad_C))
    return grad_u, grad_delta, grad_A, grad_B, grad_C, future


def chunk_gradients(start_state, u, delta, A, exponents, B, C, grad_y, future, decay, states, grad_states):
    """The backward pass of one time-major chunk: gradients of its u, delta, A, B, C, and decay_0 g_0 for the
    chunk before it. `future` is decay_{q} g_{q}, from the chunk after it (or the last state's gradient). The
    last three arguments are the reused buffers (see `scan_buffers`).

    g_t = dL/dh_t = C_t grad_y_t + decay_{t+1} g_{t+1}; then, with h_t = decay_t h_{t-1} + delta_t u_t B_t,
    the input term gives u, delta and B their gradients and the decay term d(delta_t A) = g_t h_{t-1} decay_t.
    """
    a, h = chunk_states(start_state, u, delta, exponents, B, decay, states)
    g = torch.mul(grad_y[..., None], C[:, :, None, :], out=grad_states[: a.shape[0]])
    grad_C = sum_over_channels(h[1:], grad_y)
    g[-1] += future
    for t in range(g.shape[0] - 2, -1, -1):
        g[t].addcmul_(a[t + 1], g[t + 1])
    future = a[0] * g[0]
    grad_input = sum_over_state(g, B)
    grad_B = sum_over_channels(g, delta * u)
    grad_exponent = a.mul_(h[:-1]).mul_(g)  # the decay buffer is free once `future` is taken
    grad_delta = grad_input * u + torch.mul(grad_exponent, A, out=g).sum(-1)
    grad_A = grad_exponent.mul_(delta[..., None]).sum((0, 1))
    return grad_input * delta, grad_delta, grad_A, grad_B, grad_C, future


# The fused chunk functions: the same recurrence written one step at a time, for torch.compile, which fuses a
# whole chunk into one kernel that keeps the states in cache (run eagerly, their per-step ops would cost far more
# than `chunk_states` and `chunk_gradients`, which batch each op over the chunk). torch.export traces the forward one
# as it is (see `selective_scan`).


def fused_chunk_forward(state, u, delta, exponents, B, C):
    """One time-major chunk from `state`: y (q, batch, d_inner) and the state after it."""
    ys = []
    for t in range(u.shape[0]):
        state = torch.exp2(delta[t, ..., None] * exponents) * state + (delta[t] * u[t])[..., None] * B[t, :, None, :]
        ys.append((state * C[t, :, None, :]).sum(-1))
    return torch.stack(ys), state


def fused_chunk_backward(start_state, u, delta, A, exponents, B, C, grad_y, future):
    """`chunk_gradients`, one step at a time: recompute the chunk's states, then walk back through them."""
    states, decays = [start_state], []
    for t in range(u.shape[0]):
        decays.append(torch.exp2(delta[t, ..., None] * exponents))
        states.append(decays[t] * states[t] + (delta[t] * u[t])[..., None] * B[t, :, None, :])
    grad_u, grad_delta, grad_B, grad_C = [], [], [], []
    grad_A = torch.zeros_like(A)
    for t in range(u.shape[0] - 1, -1, -1):
        g = grad_y[t, ..., None] * C[t, :, None, :] + future
        grad_input = (g * B[t, :, None, :]).sum(-1)
        grad_exponent = decays[t] * states[t] * g
        grad_u.append(grad_input * delta[t])
        grad_delta.append(grad_input * u[t] + (grad_exponent * A).sum(-1))
        grad_B.append((g * (delta[t] * u[t])[..., None]).sum(1))
        grad_C.append((states[t + 1] * grad_y[t, ..., None]).sum(1))
        grad_A = grad_A + (grad_exponent * delta[t, ..., None]).sum(0)
        future = decays[t] * g
    grad_u, grad_delta, grad_B, grad_C = [torch.stack(steps[::-1]) for steps in (grad_u, grad_delta, grad_B, grad_C)]
    return grad_u, grad_delta, grad_A, grad_B, grad_C, future


@functools.cache
def compiled_chunk_function(function):
    """`function` through torch.compile, made once per process (inductor caches the kernels on disk)."""
    return torch.compile(function, fullgraph=True)


def selective_state_step(state, u, delta, exponents, B, C):
    """One step of the recurrence, the state (batch, d_inner, d_state) updated in place; u, delta (batch,
    d_inner), B, C (batch, d_state); `exponents` = A log2(e) (see `decay_exponents`).
    Returns y (batch, d_inner) in float32."""
    delta = delta.float()
    decay = torch.exp2(delta[..., None] * exponents)
    state.mul_(decay).addcmul_((delta * u.float())[..., None], B.float()[:, None, :])
    return sum_over_state(state[None], C.float()[None])[0]


def time_major(t):
    """(batch, channels, T) -> contiguous float32 (T, batch, channels): each time step one contiguous block."""
    return t.float().permute(2, 0, 1).contiguous()


def scan_buffers(state, chunk_size):
    """Reused per-chunk buffers: decays (q, *state) and states h_0..h_q (q + 1, *state)."""
    decay = state.new_empty((chunk_size,) + tuple(state.shape), dtype=torch.float32)
    states = state.new_empty((chunk_size + 1,) + tuple(state.shape), dtype=torch.float32)
    return decay, states


def chunk_states(state, u, delta, exponents, B, decay, states):
    """Fill the buffers for one chunk of q steps (time-major u, delta (q, batch, d_inner), B (q, batch, d_state)):
    decay[t] = exp(delta_t A) = exp2(delta_t exponents) and states[0] = the state before the chunk, states[t + 1]
    = h after step t. Returns the views of the buffers that the chunk fills."""
    q = u.shape[0]
    decay, states = decay[:q], states[: q + 1]
    torch.mul(delta[..., None], exponents, out=decay).exp2_()
    states[0].copy_(state)
    torch.mul((delta * u)[..., None], B[:, :, None, :], out=states[1:])
    for t in range(q):
        states[t + 1].addcmul_(decay[t], states[t])
    return decay, states


# The two contractions of (q, batch, d_inner, d_state) chunks, each as a batch of (1, k) @ (k, m) products:
# the layout CPU BLAS runs fastest here (faster than einsum's choice).


def sum_over_state(states, vectors):
    """sum_n states[..., n] vectors[..., n]: (q, b, d_inner, d_state), (q, b, d_state) -> (q, b, d_inner)."""
    q, batch, d_inner, d_state = states.shape
    flat_states = states.reshape(q * batch, d_inner, d_state).transpose(1, 2)
    return torch.matmul(vectors.reshape(q * batch, 1, d_state), flat_states).view(q, batch, d_inner)


def sum_over_channels(states, vectors):
    """sum_d states[:, :, d] vectors[:, :, d]: (q, b, d_inner, d_state), (q, b, d_inner) -> (q, b, d_state)."""
    q, batch, d_inner, d_state = states.shape
    flat_states = states.reshape(q * batch, d_inner, d_state)
    return torch.matmul(vectors.reshape(q * batch, 1, d_inner), flat_states).view(q, batch, d_state)
