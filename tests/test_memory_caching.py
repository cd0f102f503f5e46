"""Memory caching in the Mamba layers equals its definition (a float64 loop over positions), in outputs and every
gradient; the first segment is plain Mamba-1; decoding step by step equals one forward pass."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

import run_clm_audio

from compile_helpers import CountingBackend
from training_helpers import make_codes_dataset, random_codec
from configuration_music_hybrid import MusicHybridConfig
from cache_music_hybrid import MusicHybridCache
from mamba_music_hybrid import MambaMixer
from memory_caching_music_hybrid import MemorySettings, memory_cached_scan
from modeling_music_hybrid import MusicHybridForCausalLM, codes_to_model_inputs

BATCH, D_INNER, D_STATE = 2, 6, 4
TOLERANCE = 1e-5
AGGREGATIONS = ["gated", "residual", "sparse"]


def reference_memory_scan(u, delta, A, B, C, query, gate, state, start, settings, cached=()):
    """The mechanism as written in issue 15, one position at a time, with the gate of issue 29: y = y_live +
    gate (y_aggregated - y_live). cached: (segment, state, key) triples and the key sum, from an earlier call.
    Returns y (batch, T, d_inner), the last state and the memories."""
    memories, key_sum = (list(cached[0]), cached[1]) if cached else ([], None)
    length, scale = u.shape[-1], D_STATE**-0.5
    ys = []
    for t in range(length):
        position = start + t
        segment, in_segment = divmod(position, settings.segment_length)
        state = torch.exp(delta[..., t, None] * A) * state + (delta[..., t] * u[..., t])[..., None] * B[:, None, :, t]
        key_sum = B[..., t] if in_segment == 0 else key_sum + B[..., t]
        live_key = key_sum / (in_segment + 1)
        readable = [
            (h, k) for i, h, k in memories
            if i < segment and (settings.max_segments is None or i >= segment - settings.max_segments)
        ]
        readouts = torch.stack([(h * C[:, None, :, t]).sum(-1) for h, _ in [(state, live_key)] + readable], dim=1)
        scores = torch.stack([(query[:, t] * k).sum(-1) * scale for k in [live_key] + [k for _, k in readable]], dim=1)
        if settings.aggregation == "residual":
            weights = torch.ones_like(scores)
        else:
            if settings.aggregation == "sparse":
                dropped = scores[:, 1:].argsort(dim=1, descending=True)[:, settings.top_k :]
                scores = scores.clone()
                scores[:, 1:] = scores[:, 1:].scatter(1, dropped, -float("inf"))
            weights = torch.softmax(scores, dim=1)
        aggregated = (weights[..., None] * readouts).sum(1)
        ys.append(readouts[:, 0] + gate * (aggregated - readouts[:, 0]))
        if in_segment == settings.segment_length - 1:
            memories.append((segment, state, live_key))
    return torch.stack(ys, dim=1), state, (memories, key_sum)


def draw_inputs(seed, length, dtype, with_state):
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=generator, dtype=torch.float64)

    inputs = [
        draw(BATCH, D_INNER, length),
        F.softplus(draw(BATCH, D_INNER, length) - 1),
        -torch.exp(0.5 * draw(D_INNER, D_STATE)),
        draw(BATCH, D_STATE, length),
        draw(BATCH, D_STATE, length),
        draw(BATCH, length, D_STATE, scale=3.0),  # large enough that the weights differ between memories
        torch.tensor(0.7, dtype=torch.float64),  # the gate: neither the base layer (0) nor the aggregation alone (1)
        draw(BATCH, D_INNER, D_STATE) if with_state else torch.zeros(BATCH, D_INNER, D_STATE, dtype=torch.float64),
    ]
    return [t.to(dtype).requires_grad_() for t in inputs]


def output_gradients(seed, length):
    """Gradients of y and of the last state, scaled so that the input gradients stay O(1) when every position
    reads every memory ("residual"): float32 rounding then stays below the tolerance."""
    generator = torch.Generator().manual_seed(seed)
    grad_y = torch.randn(BATCH, length, D_INNER, generator=generator, dtype=torch.float64)
    return 0.5 * grad_y, torch.randn(BATCH, D_INNER, D_STATE, generator=generator, dtype=torch.float64)


def memory_outputs_and_gradients(scan, inputs, grad_y, grad_state):
    y, last_state, segment_states = scan(inputs)
    loss = (y * grad_y.to(y.dtype)).sum() + (last_state * grad_state.to(y.dtype)).sum()
    # the cached states get gradients too (the next segments read them, within a longer sequence)
    loss = loss + sum((h * (0.05 * (i + 1))).sum() for i, h in enumerate(segment_states))
    loss.backward()
    return [y, last_state, *segment_states] + [t.grad for t in inputs]


def assert_close(actual, expected, names):
    for name, got, want in zip(names, actual, expected, strict=True):
        if want is None:  # "residual" reads no query
            assert got is None, name
            continue
        assert got.dtype == torch.float32, name
        assert got.shape == want.shape, name
        assert (got.double() - want).abs().max().item() <= TOLERANCE, name


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("length", [64, 53])  # segments of 16: dividing the length or not
@pytest.mark.parametrize("max_segments", [None, 2])
def test_outputs_and_gradients_equal_the_float64_definition(aggregation, with_state, length, max_segments):
    settings = MemorySettings(16, aggregation, top_k=1, max_segments=max_segments)
    grad_y, grad_state = output_gradients(1, length)

    def reference(inputs):
        *scan_inputs, state = inputs
        y, last_state, (memories, _) = reference_memory_scan(*scan_inputs, state, 0, settings)
        return y, last_state, [h for _, h, _ in memories]

    def chunked(inputs):
        *scan_inputs, state = inputs
        y, last_state, memory = memory_cached_scan(
            *scan_inputs, state if with_state else None, start=0, settings=settings
        )
        return y, last_state, list(memory[0].unbind(1))

    gradients = (grad_y, grad_state)
    expected = memory_outputs_and_gradients(reference, draw_inputs(0, length, torch.float64, with_state), *gradients)
    actual = memory_outputs_and_gradients(chunked, draw_inputs(0, length, torch.float32, with_state), *gradients)
    segments = length // 16
    names = ["y", "last_state"] + [f"segment_state_{i}" for i in range(segments)]
    names += ["grad_u", "grad_delta", "grad_A", "grad_B", "grad_C", "grad_query", "grad_gate"]
    if not with_state:  # no initial state: the scan starts from zeros and its gradient is not asked for
        actual, expected, names = actual[:-1], expected[:-1], names
    else:
        names = names + ["grad_initial_state"]
    assert_close(actual, expected, names)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_continuing_from_cached_memories_equals_one_pass(aggregation):
    """Positions count on from the cache: a second call from position 21 (inside a segment, off the chunk grid)
    with the first call's memories and key sum gives the one-pass outputs, memories and keys."""
    settings = MemorySettings(16, aggregation, top_k=2, max_segments=3)
    u, delta, A, B, C, query, gate, state = (t.detach() for t in draw_inputs(2, 90, torch.float32, True))
    whole, whole_state, whole_memory = memory_cached_scan(u, delta, A, B, C, query, gate, state, 0, settings)
    first, first_state, memory = memory_cached_scan(
        u[..., :21], delta[..., :21], A, B[..., :21], C[..., :21], query[:, :21], gate, state, 0, settings
    )
    second, second_state, second_memory = memory_cached_scan(
        u[..., 21:], delta[..., 21:], A, B[..., 21:], C[..., 21:], query[:, 21:], gate, first_state, 21, settings,
        cached=memory,
    )
    assert (torch.cat([first, second], dim=1) - whole).abs().max() <= TOLERANCE
    assert (second_state - whole_state).abs().max() <= TOLERANCE
    joined = [torch.cat([memory[0], second_memory[0]], dim=1), torch.cat([memory[1], second_memory[1]], dim=1),
              torch.cat([memory[2], second_memory[2]])]
    for got, want in zip(joined, whole_memory[:3], strict=True):
        assert got.shape == want.shape and (got.double() - want.double()).abs().max() <= TOLERANCE
    assert (second_memory[3] - whole_memory[3]).abs().max() <= TOLERANCE


def tiny(name, **overrides):
    torch.manual_seed(0)
    return MusicHybridForCausalLM(MusicHybridConfig.from_preset(name, **overrides)).eval()


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_first_segment_equals_plain_mamba(aggregation):
    """Within segment 0 only the live memory exists: every aggregation gives plain Mamba-1's outputs, also with
    the cached memories at full weight from the start."""
    plain, memory = tiny("hybrid-tiny"), tiny("hybrid-mc-tiny", mamba_memory_segment_length=32,
                                              mamba_memory_aggregation=aggregation, mamba_memory_init="full")
    missing, unexpected = memory.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing
    assert all(name.endswith(("memory_query.weight", "memory_gate")) for name in missing)
    codes = torch.randint(0, 1024, (2, 9, 20), generator=torch.Generator().manual_seed(1))  # 29 positions
    inputs = codes_to_model_inputs(codes, plain.config)
    hidden_states = torch.randn(2, 49, plain.config.hidden_size, generator=torch.Generator().manual_seed(2))
    plain_mixer, memory_mixer = plain.model.layers[0].mixer, memory.model.layers[0].mixer
    with torch.no_grad():
        assert (plain(**inputs).logits - memory(**inputs).logits).abs().max() <= TOLERANCE
        x_proj = torch.randn(plain_mixer.x_proj.weight.shape, generator=torch.Generator().manual_seed(3))
        for mixer in (plain_mixer, memory_mixer):  # B and C of O(1) (initialised small, std 0.02)
            mixer.x_proj.weight.copy_(x_proj)
        difference = (plain_mixer(hidden_states) - memory_mixer(hidden_states)).abs()
    assert difference[:, :32].max() <= TOLERANCE
    assert difference[:, 32:].amax(dim=-1).min() > 1e-5  # every later position reads the first segment's memory


def test_the_query_and_the_gate_are_the_only_new_weights_and_both_learn():
    """The gate starts at 0 and gets a gradient at once; the query's gradient is proportional to the gate, so it
    is zero at the first step and flows from the second (as LoRA's zero-initialised factor)."""
    plain, memory = trained_looking(tiny("mamba-tiny")), tiny("mamba-mc-tiny")
    new = set(memory.state_dict()) - set(plain.state_dict())
    names = ("memory_query.weight", "memory_gate")
    assert new == {f"model.layers.{i}.mixer.{name}" for i in range(2) for name in names}
    assert set(plain.state_dict()) <= set(memory.state_dict())
    memory.load_state_dict(plain.state_dict(), strict=False)
    mixer = memory.model.layers[0].mixer
    assert mixer.memory_query.weight.shape == (128, 8)[::-1] and mixer.memory_gate.item() == 0
    memory.train()
    optimizer = torch.optim.Adam(memory.parameters(), lr=1e-3)
    codes = torch.randint(0, 1024, (2, 9, 40), generator=torch.Generator().manual_seed(2))
    for step in range(2):
        optimizer.zero_grad()
        memory(**codes_to_model_inputs(codes, memory.config)).loss.backward()
        for name, parameter in memory.named_parameters():
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert mixer.memory_gate.grad.abs() > 0
        assert (mixer.memory_query.weight.grad.abs().max() > 0) == (step > 0)
        optimizer.step()
    assert mixer.memory_gate.item() != 0


def trained_looking(model):
    """Give a model's Mamba layers B, C, outputs and memory queries of O(1), as training makes them: at
    initialisation they are 0.02-scale and the memories change the logits by ~1e-8, too little to test with."""
    mixers = [layer.mixer for layer in model.model.layers if hasattr(layer.mixer, "x_proj")]
    shared = [weight for mixer in mixers for weight in (mixer.x_proj.weight, mixer.out_proj.weight)]
    queries = [mixer.memory_query.weight for mixer in mixers if hasattr(mixer, "memory_query")]
    generator = torch.Generator().manual_seed(4)  # the same draws for the weights a plain model shares
    with torch.no_grad():
        for weight in shared + queries:
            weight.copy_(0.5 * torch.randn(weight.shape, generator=generator))
    return model


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("base_name, memory_name", [("hybrid-tiny", "hybrid-mc-tiny"), ("mamba-tiny", "mamba-mc-tiny")])
def test_memory_caching_added_to_a_model_starts_as_that_model(aggregation, base_name, memory_name):
    """With the other weights copied from a base model, a memory-caching model gives the base model's logits at
    every position, in one forward pass and decoding step by step, until it trains; the same model with the
    memories at full weight ("full", the behaviour before the gate) does not."""
    base = trained_looking(tiny(base_name))
    codes = torch.randint(0, 1024, (2, 9, 70), generator=torch.Generator().manual_seed(5))
    input_ids = codes_to_model_inputs(codes, base.config)["input_ids"]  # 79 positions: 4 whole segments of 16
    with torch.no_grad():
        expected = base(input_ids).logits
    for init, equal in (("base", True), ("full", False)):
        memory = tiny(memory_name, mamba_memory_aggregation=aggregation, mamba_memory_init=init, mamba_memory_top_k=1)
        memory.load_state_dict(base.state_dict(), strict=False)
        trained_looking(memory)  # the same draws for the shared weights, and O(1) queries
        with torch.no_grad():
            difference = (memory(input_ids).logits - expected).abs().max()
            if equal:
                cache = memory.model.new_cache(2, input_ids.shape[2])
                steps = [memory(input_ids[:, :, :21], cache=cache).logits]
                steps += [memory(input_ids[:, :, t : t + 1], cache=cache).logits for t in range(21, input_ids.shape[2])]
                assert (torch.cat(steps, dim=2) - expected).abs().max() <= TOLERANCE
        assert (difference <= TOLERANCE) == equal, (init, difference)


def test_configs_saved_before_the_gate_keep_their_behaviour(tmp_path):
    """A memory-caching config saved without `mamba_memory_init` loads as "full" (how it was trained); a config
    saved without memory caching, given memory caching afterwards, starts as its base model."""
    legacy = MusicHybridConfig.from_preset("mamba-mc-tiny").to_dict()
    del legacy["mamba_memory_init"]
    assert MusicHybridConfig.from_dict(legacy).mamba_memory_init == "full"
    plain = MusicHybridConfig.from_preset("mamba-tiny")
    plain.save_pretrained(tmp_path)
    saved = MusicHybridConfig.from_pretrained(tmp_path)
    with_memory = MusicHybridConfig.from_dict({**saved.to_dict(), "mamba_memory_segment_length": 16})
    assert with_memory.mamba_memory_init == "base"
    assert json.loads((tmp_path / "config.json").read_text())["mamba_memory_init"] == "base"  # recorded from now on


def test_run_clm_audio_adds_memory_caching_to_a_trained_model_keeping_its_outputs(tmp_path, single_torch_thread):
    """--config_overrides mamba_memory_segment_length=16 on a saved model: its first evaluation loss is the saved
    model's (the memories would change it at full weight, "full": by ten times the tolerance and more)."""
    dataset = make_codes_dataset(tmp_path / "codes")
    base = trained_looking(tiny("hybrid-tiny", codec=random_codec()))
    with torch.no_grad():  # logits of O(1), so that the loss shows what the hidden states change
        base.lm_head.weight.normal_(std=0.5, generator=torch.Generator().manual_seed(6))
    base.save_pretrained(tmp_path / "base")

    def evaluation_loss(name, overrides=None):
        argv = ["--model_name_or_path", str(tmp_path / "base"), "--dataset_name", dataset, "--do_eval",
                "--output_dir", str(tmp_path / name), "--segment_length", "128", "--disable_tqdm"]
        assert run_clm_audio.main(argv + (["--config_overrides", overrides] if overrides else [])) == 0
        return json.loads((tmp_path / name / "eval_results.json").read_text())["mean_loss"]

    expected = evaluation_loss("plain")
    memory = evaluation_loss("memory", "mamba_memory_segment_length=16")
    full = evaluation_loss("full", "mamba_memory_segment_length=16,mamba_memory_init=full")
    assert memory == pytest.approx(expected, abs=1e-5)
    assert abs(full - expected) > 1e-4


@pytest.mark.parametrize("field, value", [
    ("mamba_memory_segment_length", 24), ("mamba_memory_segment_length", 0), ("mamba_memory_aggregation", "mean"),
    ("mamba_memory_top_k", 0), ("mamba_memory_max_segments", 0), ("mamba_memory_init", "uniform"),
])
def test_bad_memory_settings_fail_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        MusicHybridConfig.from_preset("mamba-mc-tiny", **{field: value})


def test_mixer_decoding_step_equals_the_sequence_forward():
    config = MusicHybridConfig.from_preset("mamba-mc-tiny", mamba_memory_aggregation="sparse", mamba_memory_top_k=1)
    torch.manual_seed(0)
    mixer = MambaMixer(config, layer_idx=0)
    mixer.init_own_weights()
    torch.nn.init.normal_(mixer.memory_query.weight, std=1.0)
    torch.nn.init.constant_(mixer.memory_gate, 0.8)
    hidden_states = torch.randn(2, 70, config.hidden_size)
    with torch.no_grad():
        full = mixer(hidden_states)
        cache = MusicHybridCache([mixer], 2, 70, "cpu", torch.float32)
        pieces = [mixer(hidden_states[:, :21], cache.states[0], cache=cache)]
        cache.advance(21)
        for t in range(21, 70):
            pieces.append(mixer(hidden_states[:, t : t + 1], cache.states[0], cache=cache, positions=torch.tensor([t])))
            cache.advance(1)
    assert (torch.cat(pieces, dim=1) - full).abs().max() <= 1e-5


def memory_model(aggregation="gated", max_segments=None, name="hybrid-mc-tiny", **overrides):
    """A tiny memory-caching model whose memories move the logits well above the tolerance (see
    `trained_looking`), its gates at 0.8: neither the base layer (0) nor the aggregation alone (1)."""
    model = trained_looking(tiny(
        name, mamba_memory_aggregation=aggregation, mamba_memory_max_segments=max_segments, mamba_memory_top_k=1,
        **overrides,
    ))
    with torch.no_grad():
        for layer in model.model.layers:
            if hasattr(layer.mixer, "memory_gate"):
                layer.mixer.memory_gate.fill_(0.8)
    return model


def memories_matter(model, input_ids):
    """The logits move by more than 20 times the tolerance when the cached memories are left out (a check of the
    check): with one segment as long as the input there is no cached memory."""
    mixers = [layer.mixer for layer in model.model.layers if hasattr(layer.mixer, "memory_query")]
    settings = mixers[0].memory
    with torch.no_grad():
        full = model(input_ids).logits
        for mixer in mixers:
            mixer.memory = dataclasses.replace(settings, segment_length=16 * input_ids.shape[2])
        without = model(input_ids).logits
    for mixer in mixers:
        mixer.memory = settings
    return (full - without).abs().max() > 2e-3


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("max_segments", [None, 2])
@pytest.mark.parametrize("fixed_shape", [False, True])
def test_prefill_and_decoding_steps_equal_one_forward_pass(aggregation, max_segments, fixed_shape):
    model = memory_model(aggregation, max_segments)
    codes = torch.randint(0, 1024, (2, 9, 70), generator=torch.Generator().manual_seed(5))
    input_ids = codes_to_model_inputs(codes, model.config)["input_ids"]  # 79 positions: 4 whole segments
    assert memories_matter(model, input_ids)
    with torch.no_grad():
        full = model(input_ids).logits
        cache = model.model.new_cache(2, input_ids.shape[2], fixed_shape=fixed_shape)
        pieces = [model(input_ids[:, :, :21], cache=cache).logits]  # ends inside segment 1
        pieces += [model(input_ids[:, :, t : t + 1], cache=cache).logits for t in range(21, input_ids.shape[2])]
    assert (torch.cat(pieces, dim=2) - full).abs().max() <= 1e-4
    slots = cache.states[0]["memory_segments"][0]
    assert len(slots) == (max_segments or input_ids.shape[2] // 16)
    assert sorted(slots.tolist()) == list(range(4 - len(slots), 4))


def test_a_second_multi_position_input_continues_the_memories():
    model = memory_model("sparse", 3)
    codes = torch.randint(0, 1024, (1, 9, 70), generator=torch.Generator().manual_seed(6))
    input_ids = codes_to_model_inputs(codes, model.config)["input_ids"]
    with torch.no_grad():
        full = model(input_ids).logits
        cache = model.model.new_cache(1, input_ids.shape[2])
        pieces = [model(input_ids[:, :, q], cache=cache).logits for q in (slice(0, 25), slice(25, 58), slice(58, None))]
    assert (torch.cat(pieces, dim=2) - full).abs().max() <= 1e-4


def test_compiled_decoding_equals_eager_and_compiles_once():
    """The fixed-shape step reads every memory slot under a mask: one graph for the whole generation, across
    the segment ends where memories are cached."""
    counting_backend = CountingBackend()
    model = memory_model("gated", name="mamba-mc-tiny")
    prompt = torch.randint(0, 1024, (2, 9, 5), generator=torch.Generator().manual_seed(7))
    eager = model.generate(prompt, max_new_tokens=60, do_sample=False)
    model.compile_decoding(backend=counting_backend)
    assert torch.equal(model.generate(prompt, max_new_tokens=60, do_sample=False), eager)
    assert len(counting_backend.graphs) == 1


def test_sliding_long_form_runs_the_memory_on_and_max_segments_bounds_it():
    model = memory_model("gated", 2, position_embedding_type="rope", max_position_embeddings=32)
    prompt = torch.randint(0, 1024, (1, 9, 4), generator=torch.Generator().manual_seed(8))
    torch.manual_seed(9)
    plain = model.generate(prompt, max_new_tokens=40)
    torch.manual_seed(9)
    assert torch.equal(model.generate(prompt, max_new_tokens=40, long_form="sliding", context_window=100), plain)
    caches = []
    original = MusicHybridCache.__init__

    def recording_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        caches.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MusicHybridCache, "__init__", recording_init)
        long = model.generate(prompt, max_new_tokens=120, long_form="sliding", context_window=8)
    assert long.shape == (1, 9, 124)
    (cache,) = caches
    memory = cache.states[0]
    assert memory["memory_states"].shape[1] == 2 and sorted(memory["memory_segments"][0].tolist()) == [6, 7]
