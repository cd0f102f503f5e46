"""What makes decoding fast, kept apart from the model: few-row CPU products, packed weights, CUDA graphs.

A decoding step multiplies every weight by one row per sample. `decoding_linear` picks the fastest product for
those few rows on CPU and steps aside for anything it does not know (GPUs, gradients, wrapped, hooked or
quantized layers); `CUDAGraphStep` replays a compiled step as one CUDA graph. modeling_music_hybrid.py imports
this file, and save_pretrained ships it with the weights.
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn


def decoding_linear(linear, x, cache=None):
    """linear(x) for the few rows of a decoding step (one per sample), on the fastest CPU product for them.

    CPU BLAS kernels for so few rows are often far from the memory bandwidth that bounds decoding: on some CPUs
    they run one row on a single core, and from a few rows on they are slower per weight read than one row. So
    below PACKED_MIN_ROWS rows the weight is split into one block of rows per thread and the blocks run as one
    batched product on all threads (1.3-1.9x faster on two cores of some CPUs; up to 10% slower on others, whose
    BLAS spreads one row over the cores itself); from
    PACKED_MIN_ROWS rows on, oneDNN multiplies by a copy of the weight that the generation packed once into its
    own layout (`pack_linear_weights`, held by the cache), 1.5-2x faster than BLAS. Each output is the same dot
    product, up to rounding. Anything else goes through the module as usual: GPUs, training, many rows, wrapped
    or hooked layers.
    """
    if x.device.type != "cpu" or torch.is_grad_enabled() or not is_plain_layer(linear):
        return linear(x)
    if x.dtype != linear.weight.dtype:  # autocast, or a layer kept in another dtype
        return linear(x)
    rows = x.numel() // linear.in_features
    flat = x.reshape(rows, linear.in_features)
    packed = None if cache is None else cache.packed_weights.get(linear)
    if packed is not None:
        out = packed_weight_product(flat, packed, linear.bias)
    elif rows <= 16:
        out = split_weight_product(flat, linear.weight, linear.bias)
    else:
        return linear(x)
    return out.view(*x.shape[:-1], linear.out_features)


# From this many rows on (samples decoded together), decoding multiplies by packed weights (see decoding_linear).
PACKED_MIN_ROWS = 4


def is_plain_layer(layer, layer_class=nn.Linear):
    """Whether `layer` is exactly a `layer_class` with ordinary parameters, so that a product on its raw weight is
    what calling it does: no wrapper (PEFT), hook, or tensor-subclass weight (torchao) that the product would
    bypass or not understand."""
    hooked = layer._forward_hooks or layer._forward_pre_hooks or "forward" in layer.__dict__
    plain_parameters = all(type(p) is nn.Parameter for p in (layer.weight, layer.bias) if p is not None)
    return type(layer) is layer_class and not hooked and plain_parameters and layer.weight.is_contiguous()


def pack_linear_weights(model, rows):
    """{linear layer: its weight packed by oneDNN for products with `rows` rows}, for a generation of `rows`
    samples on CPU; empty where packing does not pay (fewer rows, GPUs) or this torch build cannot pack. The
    packed copies cost as much memory as the weights, for the generation's duration."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and is_plain_layer(m)]
    if rows < PACKED_MIN_ROWS or not linears or linears[0].weight.device.type != "cpu":
        return {}
    return {
        m: torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), rows)
        for m in linears if can_pack_weights(m.weight.dtype)
    }


@functools.cache
def can_pack_weights(dtype=torch.float32):
    """Whether this torch build and CPU pack and multiply weights of `dtype` with oneDNN (x86 builds do for
    float32 and bfloat16; float16 needs AVX-512 FP16 or AVX-NE-CONVERT; the ops are private)."""
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(torch.ones(2, 2, dtype=dtype), 1)
        product = torch.ops.mkldnn._linear_pointwise(torch.ones(1, 2, dtype=dtype), packed, None, "none", [], "")
        return bool(product.eq(2).all())
    except (AttributeError, RuntimeError):
        return False


# The decoding products as custom ops: a compiled step calls them as they are (see compiler_opaque).
DECODING_PRODUCTS = torch.library.Library("music_hybrid", "FRAGMENT")


def compiler_opaque(product):
    """Register a product (x, weight, bias) as a custom op that a compiled step calls as it is: torch.compile's
    inductor would otherwise rewrite a one-row product into a slower reduction of its own, and it cannot trace
    packed weights. Eager calls skip the op's dispatch (a few microseconds a call)."""
    name = product.__name__
    if not hasattr(torch.ops.music_hybrid, name):  # defined already when this file is imported again as remote code
        DECODING_PRODUCTS.define(f"{name}(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
        DECODING_PRODUCTS.impl(name, product, "CompositeExplicitAutograd")
        torch.library.register_fake(
            f"music_hybrid::{name}", lambda x, weight, bias: x.new_empty(x.shape[0], weight.shape[0]),
            lib=DECODING_PRODUCTS,
        )
    op = getattr(torch.ops.music_hybrid, name)

    @functools.wraps(product)
    def call(x, weight, bias):
        return op(x, weight, bias) if torch.compiler.is_compiling() else product(x, weight, bias)

    return call


@compiler_opaque
def split_weight_product(x, weight, bias):
    """x (rows, in) @ weight.T + bias, one block of weight rows per CPU thread (a plain product on one thread or
    where the threads do not divide the rows). A compiled step asks for the thread count here, inside the op: in
    traced code the question would break the graph."""
    threads = torch.get_num_threads()
    if threads == 1 or weight.shape[0] % threads:
        return F.linear(x, weight, bias)
    blocks = weight.view(threads, -1, weight.shape[1]).transpose(1, 2)
    out = torch.bmm(x.expand(threads, *x.shape), blocks).transpose(0, 1).reshape(x.shape[0], weight.shape[0])
    return out if bias is None else out + bias


@compiler_opaque
def packed_weight_product(x, packed, bias):
    """x (rows, in) @ weight.T + bias with the weight packed by `pack_linear_weights`."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class CUDAGraphStep:
    """A decoding step recorded as a CUDA graph and replayed at every later position of one generation.

    The graph reads its inputs from fixed buffers and updates the generation's fixed-shape cache in place, so a
    replay launches the whole step at once instead of hundreds of small kernels. It is recorded again whenever the
    cache shows attention more slots (every VISIBLE_BLOCK positions). Recording follows a warm-up run (lazy
    initialisation, kernel autotuning), which advances the Mamba states (and memories): they are restored before
    recording. The
    keys and values it writes sit at the next position, which the next replay writes again.
    """

    def __init__(self, decode):
        self.decode = decode
        self.graph = self.recorded_for = None

    def __call__(self, input_ids, positions, cache, genre_ids=None):
        if self.recorded_for != cache.visible_length:
            self.record(input_ids, positions, cache, genre_ids)
        self.input_ids.copy_(input_ids)
        self.positions.copy_(positions)
        self.graph.replay()
        return self.output  # overwritten by the next replay

    def record(self, input_ids, positions, cache, genre_ids):
        """genre_ids stay the same for a whole generation: the graph reads them where they are."""
        self.input_ids, self.positions = input_ids.clone(), positions.clone()
        states = cache.recurrent_states()
        saved = [state.clone() for state in states]
        side_stream = torch.cuda.Stream()
        side_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side_stream):
            self.decode(self.input_ids, self.positions, cache, genre_ids)
        torch.cuda.current_stream().wait_stream(side_stream)
        for state, kept in zip(states, saved):
            state.copy_(kept)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = self.decode(self.input_ids, self.positions, cache, genre_ids)
        self.recorded_for = cache.visible_length
