"""int8 weights for CPU decoding: close to float32, seeded generation (eager and compiled, on any thread count),
quality on a trained model, use from a checkpoint folder alone, refusals."""

import copy
import gc
import math
import os
import subprocess
import sys
import types
from unittest import mock

import pytest
import torch

import fast_decoding_music_hybrid
from bench.int8_quality import int8_quality, quality_is_kept, relative_changes
from configuration_music_hybrid import MusicHybridConfig
from fast_decoding_music_hybrid import Int8Linear
from modeling_music_hybrid import MusicHybridForCausalLM, codes_to_model_inputs

pytestmark = pytest.mark.skipif(
    not fast_decoding_music_hybrid.can_run_int8_products(), reason="this torch build has no int8 CPU products"
)


def tiny_model(name="hybrid-tiny"):
    torch.manual_seed(0)
    return MusicHybridForCausalLM(MusicHybridConfig.from_preset(name)).eval()



@pytest.mark.parametrize("preset", ["hybrid-tiny", "transformer-tiny"])
def test_int8_logits_are_close_to_float32(preset):
    model = tiny_model(preset)
    quantized = copy.deepcopy(model).quantize_weights("int8")
    linears = {name: type(module) for name, module in quantized.named_modules() if "proj" in name or "fc" in name}
    assert all(kind is Int8Linear for kind in linears.values())
    assert isinstance(quantized.lm_head, Int8Linear) and quantized.model.embed_tokens.weight.dtype == torch.float32
    codes = torch.randint(0, 1024, (2, 9, 24), generator=torch.Generator().manual_seed(0))
    inputs = codes_to_model_inputs(codes, model.config)
    with torch.no_grad():
        expected, got = model(**inputs).logits, quantized(**inputs).logits
    assert (got - expected).norm() / expected.norm() < 0.05
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.9


@pytest.mark.parametrize("kernel, limit", [("fbgemm_int8_product", 64), ("dynamic_int8_product", 127)])
def test_the_other_int8_kernels_and_weight_limits_are_close_to_float32_too(kernel, limit):
    """The kernel this machine does not pick (torch's dynamic quantized linear: ARM's) and the 7-bit weights of x86
    CPUs without VNNI: every linear layer within 2% of float32, N-d rows and bias included."""
    product = getattr(fast_decoding_music_hybrid, kernel)
    with mock.patch.object(fast_decoding_music_hybrid, "int8_kernel", return_value=product), \
            mock.patch.object(fast_decoding_music_hybrid, "int8_weight_limit", return_value=limit):
        torch.manual_seed(0)
        for linear in (torch.nn.Linear(96, 200), torch.nn.Linear(64, 48, bias=False)):
            quantized, rows = Int8Linear(linear), torch.randn(2, 3, linear.in_features)
            assert int(quantized.weight.abs().max()) == limit
            with torch.no_grad():
                expected, got = linear(rows), quantized(rows)
            assert got.shape == expected.shape and (got - expected).norm() / expected.norm() < 0.02


def test_int8_weights_are_7_bit_where_the_kernel_sums_pairs_of_products_in_int16():
    """The probe: a kernel whose int16 pair sums saturate (x86 without VNNI) gets weights of at most 64."""

    def saturating_product(x, weight):
        rows = torch.round(x / x.abs().amax() * 255)  # all-ones rows: 255, as fbgemm quantizes them
        pairs = (rows[:, None, :] * weight.float()[None]).view(len(x), len(weight), -1, 2).sum(-1)
        return pairs.clamp(-32768, 32767).sum(-1) / 255

    fast_decoding_music_hybrid.int8_weight_limit.cache_clear()
    try:
        with mock.patch.object(fast_decoding_music_hybrid, "int8_kernel", return_value=saturating_product):
            assert fast_decoding_music_hybrid.int8_weight_limit() == 64
        with mock.patch.object(fast_decoding_music_hybrid, "int8_kernel", return_value=lambda x, w: x @ w.float().T):
            fast_decoding_music_hybrid.int8_weight_limit.cache_clear()
            assert fast_decoding_music_hybrid.int8_weight_limit() == 127
    finally:
        fast_decoding_music_hybrid.int8_weight_limit.cache_clear()


def test_int8_generation_is_seeded_and_the_same_on_any_thread_count(two_threads):
    """Whatever thread count the start of a generation picks (here: torch's two, then one), a seed gives the same
    codes; and the thread count is back to what it was afterwards."""
    model = tiny_model().quantize_weights("int8")
    prompt = torch.randint(0, 1024, (2, 9, 3), generator=torch.Generator().manual_seed(1))
    samples = []
    for chosen in (2, 1):
        with mock.patch.object(fast_decoding_music_hybrid, "fastest_thread_count", return_value=chosen):
            torch.manual_seed(3)
            samples.append(model.generate(prompt, max_new_tokens=10, num_return_sequences=2))
        assert torch.get_num_threads() == 2
    assert samples[0].shape == (4, 9, 13) and torch.equal(samples[0], samples[1])


def test_generation_runs_on_the_thread_count_chosen_at_its_start(two_threads):
    """The calibration runs once per generation, and every step runs on its choice."""
    model = tiny_model().quantize_weights("int8")
    seen = []
    streamer = mock.Mock(put=lambda frames: seen.append(torch.get_num_threads()))
    with mock.patch.object(fast_decoding_music_hybrid, "fastest_thread_count", return_value=1) as calibration:
        model.generate(max_new_tokens=6, streamer=streamer)
    assert calibration.call_count == 1 and seen == [1] * 6
    assert fast_decoding_music_hybrid.fastest_thread_count(model.lm_head, 1, 2) in (1, 2)


@pytest.mark.parametrize("busy_core", [True, False])
def test_calibration_picks_the_faster_thread_count_and_stops_early_under_load(two_threads, busy_core):
    """A product that costs 50 us on the faster count and 2 ms on the slower one (a split product waiting for a
    busy core, or one thread beside an idle second core): the calibration picks the faster count, decides after
    one round, and cuts the slower burst short once it has lost (a busy core costs one waiting call, not a
    burst of them)."""
    fast, slow = 5e-5, 2e-3
    calls = []
    clock = types.SimpleNamespace(seconds=0.0)  # simulated: the machine's load must not decide the test

    def timed_product(linear, x):
        threads = torch.get_num_threads()
        calls.append(threads)
        clock.seconds += slow if (threads > 1) == busy_core else fast

    simulated_time = types.SimpleNamespace(perf_counter=lambda: clock.seconds)
    with mock.patch.object(fast_decoding_music_hybrid, "few_row_linear", timed_product), \
            mock.patch.object(fast_decoding_music_hybrid, "time", simulated_time):
        chosen = fast_decoding_music_hybrid.fastest_thread_count(torch.nn.Linear(8, 8), 1, 2, burst_seconds=1e-3)
    assert chosen == (1 if busy_core else 2)
    assert calls.count(1) <= 2 + math.ceil(1e-3 / fast)  # warm-up, sizing and a single round
    if busy_core:
        assert calls.count(2) == 1


def test_int8_compiled_step_gives_the_eager_codes():
    """compile_decoding() (inductor) calls the int8 product as it is: the same greedy codes as eager int8
    decoding for one sample and for four (where float32 weights would be packed)."""
    model = tiny_model().quantize_weights("int8")
    prompt = torch.randint(0, 1024, (4, 9, 3), generator=torch.Generator().manual_seed(1))
    eager = [model.generate(request, max_new_tokens=8, do_sample=False) for request in (None, prompt)]
    model.compile_decoding()
    for request, expected in zip((None, prompt), eager, strict=True):
        assert torch.equal(model.generate(request, max_new_tokens=8, do_sample=False), expected)


def test_int8_keeps_the_validation_loss_of_a_trained_model():
    """The issue's guard on a model trained here on procedural codes: mean CE within 0.5%, each codebook 1%."""
    losses = int8_quality("hybrid-tiny", steps=100)
    mean_change, codebook_changes = relative_changes(losses)
    assert losses["float32"].mean() < 2.5  # it learned (chance: ln 16 = 2.77)
    assert quality_is_kept(losses), (mean_change, codebook_changes)


def test_copied_quantized_model_and_lora_wrapped_layers():
    """A deep copy of a quantized model packs its own weights; a LoRA-wrapped projection keeps its adapter
    and quantizes the layer inside it."""
    peft = pytest.importorskip("peft")
    model = tiny_model()
    wrapped = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    codes = torch.randint(0, 1024, (1, 9, 16), generator=torch.Generator().manual_seed(0))
    inputs = codes_to_model_inputs(codes, model.config)
    with torch.no_grad():
        expected = wrapped(**inputs).logits
        wrapped.base_model.model.quantize_weights("int8")
        got = wrapped(**inputs).logits
    assert isinstance(wrapped.base_model.model.model.layers[1].mixer.q_proj.base_layer, Int8Linear)
    assert (got - expected).norm() / expected.norm() < 0.05
    quantized = model.quantize_weights("int8")
    torch.manual_seed(0)
    expected_codes = quantized.generate(max_new_tokens=4)
    torch.manual_seed(0)
    assert torch.equal(copy.deepcopy(quantized).generate(max_new_tokens=4), expected_codes)


def test_packed_int8_weights_go_with_their_layer():
    def packed_copies():
        return len(fast_decoding_music_hybrid.FBGEMM_PACKED) + len(fast_decoding_music_hybrid.DYNAMIC_PACKED)

    gc.collect()  # the layers of earlier tests
    before = packed_copies()
    layer = Int8Linear(torch.nn.Linear(64, 32))
    layer(torch.ones(1, 64))
    assert packed_copies() == before + 1
    del layer
    gc.collect()
    assert packed_copies() == before


def test_quantized_generation_from_the_checkpoint_folder_alone(tmp_path):
    """A stranger's use: a fresh process outside the repository loads the folder with trust_remote_code,
    quantizes and generates."""
    tiny_model().save_pretrained(tmp_path / "checkpoint")
    script = (
        "import torch, transformers\n"
        "model = transformers.AutoModelForCausalLM.from_pretrained('checkpoint', trust_remote_code=True)\n"
        "model = model.quantize_weights('int8')\n"
        "print(type(model.lm_head).__name__, tuple(model.generate(max_new_tokens=5).shape))\n"
    )
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "Int8Linear (1, 9, 5)"
    assert "deprecated" not in result.stderr  # the int8 kernels' warnings are kept from users


def test_quantize_weights_refusals(tmp_path):
    model = tiny_model()
    with pytest.raises(ValueError, match="must be one of"):
        model.quantize_weights("int4")
    with pytest.raises(ValueError, match="float32"):
        copy.deepcopy(model).to(torch.bfloat16).quantize_weights("int8")
    with pytest.raises(ValueError, match="CPU decoding"):
        copy.deepcopy(model).to("meta").quantize_weights("int8")
    quantized = model.quantize_weights("int8")
    with pytest.raises(ValueError, match="save the float32 model"):
        quantized.save_pretrained(tmp_path / "checkpoint")
    assert not (tmp_path / "checkpoint").exists()
    quantized.to("meta")
    with pytest.raises(RuntimeError, match="CPU only"):
        fast_decoding_music_hybrid.int8_weight_product(torch.ones(1, 64, device="meta"), quantized.lm_head.weight)
