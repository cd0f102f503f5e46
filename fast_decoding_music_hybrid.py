"""What makes decoding fast, kept apart from the model: few-row CPU products, packed weights, step constants,
int8 weights, the thread count, compiled steps, CUDA graphs.

A decoding step multiplies every weight by one row per sample, so it reads every weight once: bytes per step set
the speed. Nothing here is threaded through the model: the reference modules compute with their own weights, and
these paths are substituted for a generation. `decoding_substitutes` swaps in `FewRowLinear` (the fastest CPU
product for a few rows; it steps aside for anything it does not know: GPUs, gradients, wrapped, hooked or
quantized layers are never swapped) and `WithDecodingConstants`, and swaps them back after; `quantize_linear_layers`
swaps the linear layers for `Int8Linear` (a quarter of the bytes) for good; `decoding_threads` picks the thread
count of a generation; `compiled_step` compiles a decoding step and `CUDAGraphStep` replays it as one CUDA graph.
generation_music_hybrid.py imports this file, and save_pretrained ships it with the weights.
"""

import contextlib
import functools
import math
import os
import time
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import nn


@contextlib.contextmanager
def decoding_substitutes(model, rows):
    """Swap the decoding-time fast paths into `model` for one generation of `rows` model rows, and back after.

    The reference modules compute with their own weights and know nothing of this: on CPU each plain linear layer
    is replaced by a `FewRowLinear` around it (its weight packed once for the generation from PACKED_MIN_ROWS rows
    on), and each module that names constants of its decoding steps (`decoding_constants()`, e.g. a Mamba layer's
    decay exponents, derived from its weights alone) is wrapped by `WithDecodingConstants`, which computes them
    once and passes them back to it. The substitutes are made once per module and reused, so that a compiled step
    meets the same modules in every generation.
    """
    swaps = []
    on_cpu = next(model.parameters()).device.type == "cpu"
    for parent in [module for module in decoding_modules(model) if not isinstance(module, nn.ModuleDict)]:
        for name, child in parent.named_children():
            substitute = None
            if on_cpu and type(child) is nn.Linear and is_plain_layer(child):
                substitute = substitute_of(child, FewRowLinear)
                substitute.pack(rows)
            elif callable(getattr(child, "decoding_constants", None)):
                substitute = substitute_of(child, WithDecodingConstants)
                substitute.compute()
            if substitute is not None:
                swaps.append((parent, name, child, substitute))
    # Set only after the walk: a substitute holds its module, which the walk must see once, as itself.
    for parent, name, _, substitute in swaps:
        setattr(parent, name, substitute)
    try:
        yield
    finally:
        for parent, name, child, substitute in swaps:
            setattr(parent, name, child)
            substitute.release()


def decoding_modules(model):
    """The modules of `model` that decoding steps run: all but those that run once before (`outside_decoding_steps`,
    such as a text encoder and its projection), which the fast paths leave as they are."""
    modules, unvisited = [], [model]
    while unvisited:
        module = unvisited.pop()
        if not getattr(module, "outside_decoding_steps", False):
            modules.append(module)
            unvisited.extend(reversed(list(module.children())))
    return modules


def substitute_of(module, substitute_class):
    """The module's substitute of that class, made at its first generation and kept beside it (outside its
    submodules, so that state_dict and modules() never see it)."""
    substitute = module.__dict__.get("_decoding_substitute")
    if type(substitute) is not substitute_class:
        substitute = substitute_class(module)
        object.__setattr__(module, "_decoding_substitute", substitute)
    return substitute


class FewRowLinear(nn.Module):
    """A plain linear layer for the few rows of a decoding step (one per sample), on the fastest CPU product for
    them (see `few_row_linear`); anything it does not know goes through the layer itself."""

    def __init__(self, linear):
        super().__init__()
        self.linear = linear
        self.register_buffer("packed", None, persistent=False)

    def pack(self, rows):
        self.packed = packed_weight(self.linear, rows)

    def release(self):
        self.packed = None  # the packed copy costs as much memory as the weight

    def forward(self, x):
        return few_row_linear(self.linear, x, self.packed)


class WithDecodingConstants(nn.Module):
    """A module called with the constants of its decoding steps, computed once per generation from its weights
    (`module.decoding_constants()`: keyword arguments its forward takes)."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.names = []

    def compute(self):
        constants = self.module.decoding_constants()
        self.names = list(constants)
        for name, value in constants.items():
            self.register_buffer(name, value.detach(), persistent=False)

    def release(self):
        for name in self.names:
            setattr(self, name, None)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs, **{name: getattr(self, name) for name in self.names})


def few_row_linear(linear, x, packed=None):
    """linear(x) for the few rows of a decoding step (one per sample), on the fastest CPU product for them.

    CPU BLAS kernels for so few rows are often far from the memory bandwidth that bounds decoding: on some CPUs
    they run one row on a single core, and from a few rows on they are slower per weight read than one row. So
    below PACKED_MIN_ROWS rows the weight is split into one block of rows per thread and the blocks run as one
    batched product on all threads (faster on two cores of some CPUs, a little slower on others, whose BLAS
    spreads one row over the cores itself); from PACKED_MIN_ROWS rows on, oneDNN multiplies by a copy of the
    weight packed once for the generation into its own layout (`packed`, see `packed_weight`). Each output is
    the same dot product, up to rounding. Anything else goes through the layer as usual: GPUs, training, many
    rows, and inputs of another dtype than the weight (autocast, or a layer kept in another dtype).
    """
    if x.device.type != "cpu" or torch.is_grad_enabled() or x.dtype != linear.weight.dtype:
        return linear(x)
    rows = x.numel() // linear.in_features
    flat = x.reshape(rows, linear.in_features)
    if packed is not None:
        out = packed_weight_product(flat, packed, linear.bias)
    elif rows <= 16:
        out = split_weight_product(flat, linear.weight, linear.bias)
    else:
        return linear(x)
    return out.view(*x.shape[:-1], linear.out_features)


# From this many rows on (samples decoded together), decoding multiplies by packed weights (see few_row_linear).
PACKED_MIN_ROWS = 4


def is_plain_layer(layer, layer_class=nn.Linear):
    """Whether `layer` is exactly a `layer_class` with ordinary parameters, so that a product on its raw weight is
    what calling it does: no wrapper (PEFT), hook, or tensor-subclass weight (torchao) that the product would
    bypass or not understand."""
    hooked = layer._forward_hooks or layer._forward_pre_hooks or "forward" in layer.__dict__
    plain_parameters = all(type(p) is nn.Parameter for p in (layer.weight, layer.bias) if p is not None)
    return type(layer) is layer_class and not hooked and plain_parameters and layer.weight.is_contiguous()


def packed_weight(linear, rows):
    """The layer's weight packed by oneDNN for products with `rows` rows, or None where packing does not pay
    (fewer rows) or this torch build cannot pack its dtype."""
    if rows < PACKED_MIN_ROWS or not can_pack_weights(linear.weight.dtype):
        return None
    return torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows)


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
    """Register a product (x, weight, ...tensors) as a custom op that a compiled step calls as it is: torch.compile's
    inductor would otherwise rewrite a one-row product into a slower reduction of its own, and it cannot trace
    packed weights. Eager calls skip the op's dispatch (a few microseconds a call)."""
    name = product.__name__
    code = product.__code__
    x, weight, *others = code.co_varnames[: code.co_argcount]  # (x, weight) or (x, weight, bias)
    if not hasattr(torch.ops.music_hybrid, name):  # defined already when this file is imported again as remote code
        arguments = ", ".join([f"Tensor {x}", f"Tensor {weight}"] + [f"Tensor? {other}" for other in others])
        DECODING_PRODUCTS.define(f"{name}({arguments}) -> Tensor")
        DECODING_PRODUCTS.impl(name, product, "CompositeExplicitAutograd")
        torch.library.register_fake(
            f"music_hybrid::{name}", lambda x, weight, *others: x.new_empty(*x.shape[:-1], weight.shape[0]),
            lib=DECODING_PRODUCTS,
        )
    op = getattr(torch.ops.music_hybrid, name)

    @functools.wraps(product)
    def call(*args):
        return op(*args) if torch.compiler.is_compiling() else product(*args)

    return call


@compiler_opaque
def split_weight_product(x, weight, bias):
    """x (rows, in) @ weight.T + bias, one block of weight rows per CPU thread (a plain product on one thread, where
    the threads do not divide the rows, or for a weight under SPLIT_MIN_ELEMENTS, which one thread reads before
    the others would start: a float32 Mamba dt_proj). A compiled step asks for the thread count here, inside the op: in
    traced code the question would break the graph."""
    threads = torch.get_num_threads()
    if threads == 1 or weight.shape[0] % threads or weight.numel() < SPLIT_MIN_ELEMENTS:
        return F.linear(x, weight, bias)
    blocks = weight.view(threads, -1, weight.shape[1]).transpose(1, 2)
    out = torch.bmm(x.expand(threads, *x.shape), blocks).transpose(0, 1).reshape(x.shape[0], weight.shape[0])
    return out if bias is None else out + bias


# 1 MiB of float32 (a Mamba dt_proj is smaller): one thread reads so small a weight before the others would start.
SPLIT_MIN_ELEMENTS = 2**18


@compiler_opaque
def packed_weight_product(x, packed, bias):
    """x (rows, in) @ weight.T + bias with the weight packed by `pack_linear_weights`."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


# --------------------------------------------------------------------------------------------------------------------
# int8 weights
# --------------------------------------------------------------------------------------------------------------------

QUANTIZATION_MODES = ("int8",)


def quantize_linear_layers(model, mode):
    """Replace every plain nn.Linear of `model` by an `Int8Linear` (in place) and return the model.

    Only for float32 models on CPU, where the int8 product exists; embedding tables stay float32 (a step reads
    only one row of them per codebook). Wrapped layers (PEFT) keep their wrapper and adapters: the plain linear
    inside is quantized, the adapters (in ModuleDicts keyed by adapter name) stay float32.
    """
    if mode not in QUANTIZATION_MODES:
        raise ValueError(f"quantization mode must be one of {list(QUANTIZATION_MODES)}, got {mode!r}")
    parameter = next(model.parameters())
    if parameter.device.type != "cpu":
        raise ValueError(
            f"int8 weights are for CPU decoding; this model is on {parameter.device.type}: on GPUs decode in "
            "bfloat16 (dtype=torch.bfloat16) instead"
        )
    if parameter.dtype != torch.float32:
        raise ValueError(f"quantize a float32 model (this one is {parameter.dtype}): int8 products take float32 rows")
    if not can_run_int8_products():
        engines = torch.backends.quantized.supported_engines
        raise ValueError(f"this torch build has no int8 CPU products (quantized engines: {engines})")
    return replace_linear_layers(model, Int8Linear)


def replace_linear_layers(model, layer_class):
    """Replace every plain nn.Linear of `model` that decoding steps run (`decoding_modules`) by
    `layer_class(linear)` in place, except the adapters of wrapped layers (PEFT keeps them in ModuleDicts); returns
    the model."""
    for parent in [module for module in decoding_modules(model) if not isinstance(module, nn.ModuleDict)]:
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and is_plain_layer(child):
                setattr(parent, name, layer_class(child))
    return model


def refuse_saving_quantized(model):
    """save_pretrained refuses a model with int8 layers before anything is written: from_pretrained would load their
    int8 weights as wrong float weights."""
    if any(isinstance(module, Int8Linear) for module in model.modules()):
        raise ValueError(
            "this model's linear layers hold int8 weights (quantize_weights), which from_pretrained would load "
            "as wrong float weights: save the float32 model, and quantize it after loading"
        )


class Int8Linear(nn.Module):
    """A linear layer with int8 weights, one scale per output channel, for CPU inference.

    Its product (`int8_weight_product`) quantizes each call's input rows to 8 bits (one scale per call) and
    multiplies them by the int8 weight, packed once for the kernel; the per-channel scales and the bias follow as
    one elementwise step, which a compiled step fuses into its neighbours. On x86 the kernel is fbgemm's product for
    float rows (`torch.fbgemm_linear_int8_weight_fp32_activation`), the fastest at a few rows of the candidates that
    bench/int8_products.py times side by side, the maintained `torch._weight_int8pack_mm` and torchao's int8 layers
    among them; elsewhere (ARM) it is torch's dynamic quantized linear. Both are deprecated torch APIs, checked once
    (`int8_kernel`); the warnings they give are kept from users.
    """

    def __init__(self, linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        limit = int8_weight_limit()
        scales = weight.abs().amax(dim=1).clamp(min=1e-12) / limit
        self.register_buffer("weight", torch.round(weight / scales[:, None]).clamp(-limit, limit).to(torch.int8))
        self.register_buffer("weight_scales", scales)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x):
        return self.scaled(int8_weight_product(x, self.weight))

    def scaled(self, product):
        """The int8 product before its scales -> the layer's output: per-channel scales, then the bias."""
        if self.bias is None:
            return product * self.weight_scales
        return torch.addcmul(self.bias, product, self.weight_scales)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


@compiler_opaque
def int8_weight_product(x, weight):
    """x (..., in) @ weight.T in float32 for an int8 weight (out, in), before its scales, on this CPU's kernel."""
    return int8_kernel()(x, weight)


def fbgemm_int8_product(x, weight):
    matrix, column_sums, zeros = packed_once(FBGEMM_PACKED, weight, pack_for_fbgemm)
    # weight scale 1 and zero point 0: the per-channel scales follow in Int8Linear.forward
    return torch.fbgemm_linear_int8_weight_fp32_activation(x, weight, matrix, column_sums, 1.0, 0, zeros)


def dynamic_int8_product(x, weight):
    # reduce_range: 7-bit rows, so that int16 sums of pairs of products cannot overflow
    return torch.ops.quantized.linear_dynamic(x, packed_once(DYNAMIC_PACKED, weight, pack_for_dynamic), True)


def pack_for_fbgemm(weight):
    """(the weight packed for fbgemm, its sums over inputs (which offset the rows' zero point), a zero bias)."""
    return torch.fbgemm_pack_quantized_matrix(weight), weight.sum(dim=1, dtype=torch.int32), torch.zeros(len(weight))


def pack_for_dynamic(weight):
    return torch.ops.quantized.linear_prepack(torch._make_per_tensor_quantized_tensor(weight, 1.0, 0), None)


# id of an int8 weight tensor -> its copy packed for a kernel, made at its first product (and again for a copy of
# the layer) and dropped with the tensor: packed copies do not survive copying or moving, so no module holds them.
# Plain dicts: a step looks up one per layer, and a WeakIdKeyDictionary lookup costs several times more.
FBGEMM_PACKED = {}
DYNAMIC_PACKED = {}


def packed_once(packed_copies, weight, pack):
    packed = packed_copies.get(id(weight))
    if packed is None:
        if weight.device.type != "cpu":
            raise RuntimeError(f"int8 weights multiply on CPU only, this one is on {weight.device}: decode on CPU")
        with warnings.catch_warnings():  # both kernels' packing is deprecated
            warnings.simplefilter("ignore", UserWarning)
            packed = packed_copies[id(weight)] = pack(weight)
        weakref.finalize(weight, packed_copies.pop, id(weight), None)
    return packed


@functools.cache
def int8_kernel():
    """The int8 product this torch build and CPU run, chosen once: fbgemm's for float rows (x86: at a few rows faster
    than the dynamic one, whose fixed cost per call is larger; bench/int8_products.py times both), torch's dynamic quantized linear
    where fbgemm is missing (qnnpack on ARM), or None. The first fbgemm product warns once per process that it is
    deprecated: that happens here, kept from users."""
    rows, weight = torch.ones(1, 64), torch.eye(64, dtype=torch.int8).mul_(64)
    for product in (fbgemm_int8_product, dynamic_int8_product):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                if torch.allclose(product(rows, weight), torch.full((1, 64), 64.0), rtol=0.02):
                    return product
        except (AttributeError, RuntimeError, NotImplementedError):
            continue
    return None


def can_run_int8_products():
    return int8_kernel() is not None


@functools.cache
def int8_weight_limit():
    """127, or 64 where the kernel sums pairs of products of 8-bit rows in int16, which 2 x 255 x 127 overflows
    (fbgemm on x86 without VNNI) and 2 x 255 x 64 does not."""
    rows, weight = torch.ones(1, 64), torch.full((8, 64), 127, dtype=torch.int8)
    return 127 if torch.allclose(int8_kernel()(rows, weight), torch.full((1, 8), 127.0 * 64)) else 64


# --------------------------------------------------------------------------------------------------------------------
# Thread count
# --------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def decoding_threads(model, rows):
    """Run the block (a generation) on the thread count that decodes fastest now: torch's or one.

    Products split over threads wait for the slowest core, so where other processes keep a core busy, all
    threads decode far slower than one. A short calibration at the start (bursts of the head's product at both
    counts, interleaved) decides once for the whole generation, never per
    step. Int8 products split the output channels over threads, so the choice does not change their results;
    float32 ones may round differently.
    """
    threads = torch.get_num_threads()
    head = model.get_output_embeddings()
    on_cpu = head is not None and next(model.parameters()).device.type == "cpu"
    calibrate = on_cpu and threads > 1 and available_cores() > 1
    try:  # the calibration sets thread counts itself
        chosen = fastest_thread_count(head, rows, threads, model.dtype) if calibrate else threads
        torch.set_num_threads(chosen)
        yield chosen
    finally:
        torch.set_num_threads(threads)


def available_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def fastest_thread_count(linear, rows, threads, dtype=torch.float32, rounds=3, burst_seconds=0.004, decisive=2.0):
    """threads or 1, whichever runs `rows` rows of `dtype` (the model's: what the head multiplies while decoding)
    through `linear` in less time per product over up to `rounds` rounds. A round runs a burst of products on one
    thread (about `burst_seconds`), then as many on `threads`, cut short once they take longer than the one-thread
    burst took (they lost the round). Bursts, not the best single call: split products are slow under load because
    some of the many products of a step wait for a busy core, and a single call can be lucky. A round won
    `decisive` times over ends the calibration: a busy core shows at once, since a split product then waits a
    whole time slice for it."""
    # not random: seeded generations draw from the global generator
    x = torch.ones(rows, linear.in_features, dtype=dtype)
    products, seconds = {1: 0, threads: 0}, {1: 0.0, threads: 0.0}
    with torch.no_grad():
        timed_products(linear, x, 1, calls=1)  # the first call may pack the weight
        calls = max(1, math.ceil(burst_seconds / max(timed_products(linear, x, 1, calls=1)[1], 1e-6)))
        for _ in range(rounds):
            done, one_thread = timed_products(linear, x, 1, calls)
            products[1] += done
            seconds[1] += one_thread
            done, split = timed_products(linear, x, threads, calls, time_limit=one_thread)
            products[threads] += done
            seconds[threads] += split
            per_product = {count: seconds[count] / products[count] for count in products}
            if max(per_product.values()) > decisive * min(per_product.values()):
                break
    return min(per_product, key=per_product.get)


def timed_products(linear, x, threads, calls, time_limit=math.inf):
    """(products run, seconds taken): `calls` products of x through `linear` on `threads` threads, stopping
    early once they have taken more than `time_limit` seconds."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    for done in range(1, calls + 1):
        few_row_linear(linear, x)
        elapsed = time.perf_counter() - start
        if elapsed > time_limit:
            break
    return done, elapsed


def compiled_step(decode, device, **compile_options):
    """`decode` through torch.compile with dynamic shapes. On CPU inductor's wrapper code is C++ by default
    (options {"cpp_wrapper": True}): its Python wrapper spends a noticeable share of a step calling the step's
    many products one by one; the C++ one takes longer to compile."""
    compile_options.setdefault("dynamic", True)
    if torch.device(device).type == "cpu" and "backend" not in compile_options and "mode" not in compile_options:
        compile_options["options"] = {"cpp_wrapper": True, **compile_options.get("options", {})}
    return torch.compile(decode, **compile_options)


class CUDAGraphStep:
    """A decoding step recorded as a CUDA graph and replayed at every later position of one generation.

    The graph reads its inputs from fixed buffers and updates the generation's fixed-shape cache in place, so a
    replay launches the whole step at once instead of hundreds of small kernels. It is recorded again whenever the
    cache shows attention more slots (every VISIBLE_BLOCK positions). Recording follows a warm-up run (lazy
    initialisation, kernel autotuning), which advances the states: they are restored before recording. The keys
    and values it writes sit at the next position, which the next replay writes again.
    """

    def __init__(self, decode):
        self.decode = decode
        self.graph = self.recorded_for = None

    def __call__(self, input_ids, positions, cache, **conditions):
        if self.recorded_for != cache.visible_length:
            self.record(input_ids, positions, cache, conditions)
        self.input_ids.copy_(input_ids)
        self.positions.copy_(positions)
        self.graph.replay()
        return self.output  # overwritten by the next replay

    def record(self, input_ids, positions, cache, conditions):
        """The conditions stay the same for a whole generation: the graph reads them where they are."""
        self.input_ids, self.positions = input_ids.clone(), positions.clone()
        states = cache.tensors()
        saved = [state.clone() for state in states]
        side_stream = torch.cuda.Stream()
        side_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side_stream):
            self.decode(self.input_ids, self.positions, cache, **conditions)
        torch.cuda.current_stream().wait_stream(side_stream)
        for state, kept in zip(states, saved, strict=True):
            state.copy_(kept)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = self.decode(self.input_ids, self.positions, cache, **conditions)
        self.recorded_for = cache.visible_length
