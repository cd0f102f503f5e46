"""The fast decoding paths give what the plain paths give: the Mamba step, the sampler and compiled decoding."""

import math
from unittest import mock

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import TopKLogitsWarper

from compile_helpers import CountingBackend
from configuration_music_hybrid import MusicHybridConfig
import fast_decoding_music_hybrid
import generation_music_hybrid
from cache_music_hybrid import MusicHybridCache
from fast_decoding_music_hybrid import (
    PACKED_MIN_ROWS, SPLIT_MIN_ELEMENTS, FewRowLinear, WithDecodingConstants, can_pack_weights, decoding_substitutes,
)
from generation_music_hybrid import CodebookSampler, UnsortedTopKWarper
from mamba_music_hybrid import MambaMixer
from modeling_music_hybrid import MusicHybridForCausalLM
from selective_scan_music_hybrid import LOG2_E


def tiny_model(name="hybrid-tiny", **overrides):
    torch.manual_seed(0)
    return MusicHybridForCausalLM(MusicHybridConfig.from_preset(name, **overrides)).eval()


@pytest.mark.parametrize("conv_bias", [True, False])
def test_mamba_decoding_step_equals_the_sequence_forward(conv_bias):
    config = MusicHybridConfig.from_preset("mamba-tiny", mamba_conv_bias=conv_bias)
    torch.manual_seed(0)
    mixer = MambaMixer(config, layer_idx=0)
    mixer.init_own_weights()
    hidden_states = torch.randn(2, 12, config.hidden_size)
    with torch.no_grad():
        full = mixer(hidden_states)
        cache = MusicHybridCache([mixer], 2, 12, "cpu", torch.float32)
        pieces = [mixer(hidden_states[:, :5], cache.states[0], cache=cache)]
        cache.advance(5)
        for t in range(5, 12):
            pieces.append(mixer.torch_step(hidden_states[:, t : t + 1], cache.states[0], cache))
            cache.advance(1)
    assert (torch.cat(pieces, dim=1) - full).abs().max() <= 1e-5



@pytest.mark.parametrize("rows", [1, 3, 4, 16, 17])
def test_few_row_linear_equals_the_layer(rows, two_threads):
    """Whichever product runs (split weight blocks, packed weights, the layer itself), the same outputs; a
    generation of `rows` samples packs the weights from PACKED_MIN_ROWS rows on, where this torch build can. The
    substitutes are swapped in for the generation only, and a hooked layer is never swapped."""
    torch.manual_seed(0)
    # the second layer is large enough to be split over the threads (SPLIT_MIN_ELEMENTS), the first is not
    model = torch.nn.Sequential(torch.nn.Linear(12, 512), torch.nn.Linear(512, SPLIT_MIN_ELEMENTS // 512, bias=False))
    plain = list(model)
    x = torch.randn(rows, 1, 12)
    with torch.no_grad():
        expected = [plain[0](x), plain[1](plain[0](x))]
        with decoding_substitutes(model, rows):
            assert all(isinstance(layer, FewRowLinear) for layer in model)
            packed = [layer.packed is not None for layer in model]
            assert packed == [rows >= PACKED_MIN_ROWS and can_pack_weights()] * 2
            assert torch.allclose(model[0](x), expected[0], atol=1e-5)
            assert torch.allclose(model(x), expected[1], atol=1e-5)
        assert list(model) == plain and all(layer.__dict__["_decoding_substitute"].packed is None for layer in plain)
        plain[0].register_forward_hook(lambda module, inputs, output: output * 2)  # hooks are honoured
        with decoding_substitutes(model, rows):
            assert model[0] is plain[0] and torch.allclose(model[0](x), 2 * expected[0], atol=1e-6)


@pytest.mark.skipif(not can_pack_weights(), reason="this torch build cannot pack weights with oneDNN")
def test_batched_cpu_generation_multiplies_by_packed_weights():
    """From PACKED_MIN_ROWS samples on, every linear layer of a decoding step runs on its packed weight."""
    model = tiny_model()
    packed_calls = []
    product = fast_decoding_music_hybrid.packed_weight_product
    with mock.patch.object(
        fast_decoding_music_hybrid, "packed_weight_product", lambda *args: packed_calls.append(1) or product(*args)
    ):
        model.generate(max_new_tokens=3, num_return_sequences=PACKED_MIN_ROWS)
        packed = len(packed_calls)
        model.generate(max_new_tokens=3, num_return_sequences=PACKED_MIN_ROWS - 1)
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    # 3 frames are 12 positions: after the start column, 11 logits and 10 decoding steps in between.
    assert packed >= 11 + 10 * (linears - 1)
    assert len(packed_calls) == packed


def test_decay_exponents_are_computed_once_per_generation():
    """A generation computes each Mamba layer's decay exponents once and passes them to every step; the layers are
    themselves again after it."""
    model = tiny_model("mamba-tiny")
    mixers = [layer.mixer for layer in model.model.layers]
    computed = []
    original = MambaMixer.decoding_constants
    with mock.patch.object(MambaMixer, "decoding_constants", lambda self: computed.append(self) or original(self)):
        with decoding_substitutes(model, 1):
            wrapped = [layer.mixer for layer in model.model.layers]
            assert all(isinstance(mixer, WithDecodingConstants) for mixer in wrapped)
            assert torch.allclose(wrapped[0].decay_exponents, -torch.exp(mixers[0].A_log) * LOG2_E)
        model.generate(max_new_tokens=5)
    assert computed == mixers * 2
    assert [layer.mixer for layer in model.model.layers] == mixers


def test_unsorted_top_k_filters_exactly_like_transformers_warper():
    scores = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    scores[0, :8] = 3.0  # ties at the k-th value are all kept, as by TopKLogitsWarper
    for top_k in (1, 5, 50, 80):
        expected = TopKLogitsWarper(top_k)(None, scores.clone())
        assert torch.equal(UnsortedTopKWarper(top_k)(None, scores.clone()), expected)


def test_sampler_draws_from_the_softmax_of_the_kept_scores():
    sampler = CodebookSampler(GenerationConfig(do_sample=True, top_k=3, temperature=2.0), num_codebooks=2)
    scores = torch.tensor([2.0, 1.0, -1.0, 0.0, 0.5])
    draws = 40000
    torch.manual_seed(0)
    codes = sampler(scores.expand(draws, 2, 5).contiguous())
    kept = torch.tensor([2.0, 1.0, -math.inf, -math.inf, 0.5]) / 2.0
    expected = torch.softmax(kept, dim=-1)
    for k in range(2):
        frequencies = torch.bincount(codes[:, k], minlength=5).float() / draws
        # 5 standard errors of a frequency estimate from 40000 draws is below 0.013.
        assert (frequencies - expected).abs().max() < 0.013


def test_compiled_decoding_equals_eager_decoding_and_compiles_once_per_batch_kind():
    """torch.compile's graph capture of the step (here run op by op) keeps the cache updates and gives the same
    codes, greedy and sampled with the same seed, with and without packed weights. The fixed-shape step with
    dynamic shapes is captured once per kind of batch (1; 2 or 3; 4 or more, with packed weights on CPU),
    whatever the lengths. The thread count stays torch's (the test on two threads would otherwise let each
    generation's calibration pick one under load: captured again per count, the next test's subject)."""
    with mock.patch.object(fast_decoding_music_hybrid, "fastest_thread_count", side_effect=keep_torch_threads):
        compiled_decoding_equals_eager_decoding_and_compiles_once_per_batch_kind()


def keep_torch_threads(linear, rows, threads, dtype=None):
    return threads


def compiled_decoding_equals_eager_decoding_and_compiles_once_per_batch_kind():
    counting_backend = CountingBackend()
    model = tiny_model()
    prompt = torch.randint(0, 1024, (2, 9, 3), generator=torch.Generator().manual_seed(1))
    eager_greedy = model.generate(prompt, max_new_tokens=6, do_sample=False)
    eager_packed = model.generate(prompt.repeat(2, 1, 1), max_new_tokens=6, do_sample=False)
    torch.manual_seed(3)
    eager_sampled = model.generate(prompt, max_new_tokens=6)
    model.compile_decoding(backend=counting_backend)
    assert torch.equal(model.generate(prompt, max_new_tokens=6, do_sample=False), eager_greedy)
    torch.manual_seed(3)
    assert torch.equal(model.generate(prompt, max_new_tokens=6), eager_sampled)
    assert torch.equal(model.generate(prompt.repeat(2, 1, 1), max_new_tokens=6, do_sample=False), eager_packed)
    model.generate(prompt.repeat(3, 1, 1), max_new_tokens=300, do_sample=False)  # longer cache, batch 6
    model.generate(max_new_tokens=5, do_sample=False)  # batch 1
    model.generate(max_new_tokens=260, do_sample=False)
    assert len(counting_backend.graphs) == 3
    model.compile_decoding(False)
    assert torch.equal(model.generate(prompt, max_new_tokens=6, do_sample=False), eager_greedy)


def test_a_compiled_step_is_captured_again_once_per_thread_count_and_says_so(two_threads):
    """A compiled step is specialised to torch's thread count: generations whose calibration picks one thread,
    then two again, capture the step once per count, and the first on a new count says so in one warning."""
    counting_backend = CountingBackend()
    model = tiny_model()
    model.compile_decoding(backend=counting_backend)
    with mock.patch.object(generation_music_hybrid.logger, "warning") as warning:
        for chosen in (2, 1, 2, 1):
            with mock.patch.object(fast_decoding_music_hybrid, "fastest_thread_count", return_value=chosen):
                model.generate(max_new_tokens=4, do_sample=False)
    assert len(counting_backend.graphs) == 2
    assert warning.call_count == 1 and "for 1 thread(s)" in warning.call_args.args[0]


def test_inductor_compiled_decoding_matches_eager_decoding():
    """The real compiled step (inductor's C++ kernels, about 10 s of compilation per kind of batch here): the
    same greedy codes as eager decoding for batch 1 and batches of 2 and 4 prompts (packed weights on CPU)."""
    model = tiny_model()
    prompt = torch.randint(0, 1024, (4, 9, 3), generator=torch.Generator().manual_seed(1))
    requests = [None, prompt[:2], prompt]
    eager = [model.generate(request, max_new_tokens=8, do_sample=False) for request in requests]
    model.compile_decoding()
    for request, expected in zip(requests, eager, strict=True):
        assert torch.equal(model.generate(request, max_new_tokens=8, do_sample=False), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_cuda_graph_decoding_equals_eager_decoding(backend):
    """The recorded step replays the whole step: same greedy codes as eager decoding, with the Mamba state that
    the warm-up run advanced restored (a wrong state would change every later code)."""
    model = tiny_model().cuda()
    prompt = torch.randint(0, 1024, (2, 9, 3), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    eager = model.generate(prompt, max_new_tokens=12, do_sample=False)
    model.compile_decoding(backend=backend, cuda_graph=True)
    assert torch.equal(model.generate(prompt, max_new_tokens=12, do_sample=False), eager)
    assert torch.equal(model.generate(prompt, max_new_tokens=12, do_sample=False), eager)  # a new recording
