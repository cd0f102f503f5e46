"""The doors a transformers user opens: HF Trainer's loss, PEFT adapters, AutoModel, forward's arguments, attention
implementations, precisions and quantized weights. Each either works as transformers does or refuses clearly."""

import os
import re
import subprocess
import textwrap
from unittest import mock

import pytest
import torch
from transformers import (
    AutoModel, AutoModelForCausalLM, GenerationConfig, Trainer, TrainerCallback, TrainingArguments,
)
from transformers.modeling_outputs import ModelOutput

import fast_decoding_music_hybrid
import modeling_music_hybrid

from configuration_music_hybrid import MusicHybridConfig
from modeling_music_hybrid import MusicHybridForCausalLM, MusicHybridModel, codes_to_model_inputs
from training.loop import enable_activation_checkpointing

LINEAR_LAYERS = ["in_proj", "x_proj", "dt_proj", "out_proj", "q_proj", "k_proj", "v_proj", "o_proj", "fc_in", "fc_out",
                 "lm_head"]


def tiny_model(name="hybrid-tiny", **overrides):
    torch.manual_seed(0)
    return MusicHybridForCausalLM(MusicHybridConfig.from_preset(name, **overrides))


def training_rows(config, lengths, frames=16):
    """One row per length: `length` real frames, then pad frames (labels -100): unequal valid counts per row."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for length in lengths:
        codes = torch.full((1, config.num_codebooks, frames), config.pad_token_id)
        real = torch.randint(0, config.codebook_size, (1, config.num_codebooks, length), generator=generator)
        codes[:, :, :length] = real
        inputs = codes_to_model_inputs(codes, config)
        rows.append({key: value[0] for key, value in inputs.items()})
    return rows


class GradientRecorder(TrainerCallback):
    """Keeps the summed gradient of the step, taken just before the optimizer applies it."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.gradient = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).clone()


def trainer_step(tmp_path, rows, batch_size, accumulation, **arguments):
    model = tiny_model()
    args = TrainingArguments(
        output_dir=str(tmp_path / f"run-{batch_size}-{accumulation}"), per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation, max_steps=1, logging_steps=1, learning_rate=1e-3, report_to=[],
        save_strategy="no", use_cpu=True, remove_unused_columns=False, dataloader_num_workers=0, seed=0,
        **arguments,
    )
    recorder = GradientRecorder()
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[recorder])
    trainer.train()
    logged = next(entry for entry in trainer.state.log_history if "loss" in entry)
    return logged, recorder.gradient


def test_trainer_with_gradient_accumulation_logs_the_loss_and_gradients_of_one_large_batch(tmp_path):
    config = MusicHybridConfig.from_preset("hybrid-tiny")
    rows = training_rows(config, [16, 3, 9, 14])
    large_logged, large_gradient = trainer_step(tmp_path, rows, batch_size=4, accumulation=1)
    small_logged, small_gradient = trainer_step(tmp_path, rows, batch_size=2, accumulation=2)
    # The large batch's loss is the token-weighted mean over all its valid positions.
    batch = {key: torch.stack([row[key] for row in rows]) for key in rows[0]}
    expected = tiny_model()(**batch).loss.item()
    assert large_logged["loss"] == pytest.approx(expected, rel=1e-4)
    assert small_logged["loss"] == pytest.approx(expected, rel=1e-4)
    assert small_logged["grad_norm"] == pytest.approx(large_logged["grad_norm"], rel=1e-4)
    torch.testing.assert_close(small_gradient, large_gradient, rtol=1e-4, atol=1e-7)


def test_trainer_under_two_process_ddp_logs_the_loss_and_gradients_of_one_large_batch(tmp_path):
    """Two CPU processes (gloo) with batch 2 each against one process with batch 4, through HF Trainer."""
    from test_training_ddp import free_port
    from training_helpers import PYTHON, REPO_ROOT, subprocess_env

    rows_lengths = [16, 3, 9, 14]
    script = tmp_path / "ddp_trainer.py"
    script.write_text(textwrap.dedent(f"""
        import json, pathlib, torch
        from configuration_music_hybrid import MusicHybridConfig
        from test_transformers_native import trainer_step, training_rows
        rows = training_rows(MusicHybridConfig.from_preset("hybrid-tiny"), {rows_lengths!r})
        logged, gradient = trainer_step(pathlib.Path({str(tmp_path)!r}), rows, batch_size=2, accumulation=1)
        if torch.distributed.get_rank() == 0:
            torch.save((logged, gradient), {str(tmp_path / "ddp.pt")!r})
    """))
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(REPO_ROOT, "tests"), env["PYTHONPATH"]])
    launch = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(script)]
    finished = subprocess.run(launch, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-3000:]
    ddp_logged, ddp_gradient = torch.load(tmp_path / "ddp.pt")
    rows = training_rows(MusicHybridConfig.from_preset("hybrid-tiny"), rows_lengths)
    large_logged, large_gradient = trainer_step(tmp_path, rows, batch_size=4, accumulation=1)
    assert ddp_logged["loss"] == pytest.approx(large_logged["loss"], rel=1e-4)
    torch.testing.assert_close(ddp_gradient, large_gradient, rtol=1e-4, atol=1e-7)


def test_num_items_in_batch_turns_the_loss_into_the_batch_share_of_the_token_weighted_loss():
    model = tiny_model().eval()
    config = model.config
    rows = training_rows(config, [16, 3, 9, 14])
    batches = [{key: torch.stack([row[key] for row in rows[i : i + 2]]) for key in rows[0]} for i in (0, 2)]
    num_items = sum(int((batch["labels"][..., 1:] != -100).sum()) for batch in batches)
    shares = [model(**batch, num_items_in_batch=num_items).loss for batch in batches]
    whole = model(**{key: torch.cat([batch[key] for batch in batches]) for key in rows[0]}).loss
    torch.testing.assert_close(sum(shares), whole)


def test_trainer_label_smoothing_is_refused_with_a_pointer_to_the_config(tmp_path):
    rows = training_rows(MusicHybridConfig.from_preset("hybrid-tiny"), [16, 16])
    with pytest.raises(ValueError, match=r"label_smoothing_factor.*config\.label_smoothing"):
        trainer_step(tmp_path, rows, batch_size=2, accumulation=1, label_smoothing_factor=0.1)


@pytest.mark.parametrize("name", ["hybrid-tiny", "transformer-tiny"])
def test_lora_on_every_linear_layer_gets_gradients_on_the_torch_path(name):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_model(name), peft.LoraConfig(r=2, target_modules=LINEAR_LAYERS))
    inputs = codes_to_model_inputs(torch.randint(0, 1024, (2, 9, 6)), model.config)
    model(**inputs).loss.backward()
    adapters = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    wrapped = {n.split(".lora_B")[0].rsplit(".", 1)[-1] for n in adapters}
    mamba_layers = {"in_proj", "x_proj", "dt_proj", "out_proj"}
    expected = set(LINEAR_LAYERS) - (mamba_layers if name == "transformer-tiny" else set())
    assert wrapped == expected
    without_gradient = [n for n, p in adapters.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not without_gradient


def test_lora_adapters_take_part_in_decoding_exactly_as_merged_weights():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_model().eval(), peft.LoraConfig(r=2, target_modules=LINEAR_LAYERS))
    torch.manual_seed(1)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(std=0.5)  # trained adapters: they change the result
    # Four greedy rows: the batched decoding products (packed weights on CPUs that have them).
    settings = dict(input_ids=torch.randint(0, 1024, (4, 9, 2)), max_new_tokens=6, do_sample=False)
    adapted = model.generate(**settings)
    merged = model.merge_and_unload().generate(**settings)
    assert torch.equal(adapted, merged)
    plain = tiny_model().eval().generate(**settings)
    assert not torch.equal(adapted, plain)


def test_auto_model_loads_the_base_model_from_a_saved_causal_lm(tmp_path):
    model = tiny_model().eval()
    model.save_pretrained(tmp_path)
    base = AutoModel.from_pretrained(tmp_path).eval()
    # The registered class, or the same class from the saved remote code (what transformers 5.1 picks)
    assert type(base).__name__ == MusicHybridModel.__name__
    inputs = codes_to_model_inputs(torch.randint(0, 1024, (1, 9, 5)), model.config)
    expected = model.model(inputs["input_ids"]).last_hidden_state
    torch.testing.assert_close(base(inputs["input_ids"]).last_hidden_state, expected)
    torch.testing.assert_close(base(inputs["input_ids"], return_dict=False)[0], expected)


def test_forward_returns_the_embeddings_and_every_layer_output_as_hidden_states():
    model = tiny_model().eval()
    inputs = codes_to_model_inputs(torch.randint(0, 1024, (2, 9, 5)), model.config)
    output = model(**inputs, output_hidden_states=True)
    assert len(output.hidden_states) == model.config.num_hidden_layers + 1
    assert all(h.shape == (2, 14, model.config.hidden_size) for h in output.hidden_states)
    torch.testing.assert_close(model.codebook_logits(output.hidden_states[-1]), output.logits)
    assert model(**inputs).hidden_states is None
    layers_output = model.model.layers[0](output.hidden_states[0], positions=torch.arange(14))
    torch.testing.assert_close(layers_output, output.hidden_states[1])


def test_forward_refuses_arguments_it_does_not_use_and_padding_masks():
    model = tiny_model().eval()
    inputs = codes_to_model_inputs(torch.randint(0, 1024, (2, 9, 5)), model.config)
    with pytest.raises(ValueError, match="does not take position_ids"):
        model(**inputs, position_ids=torch.arange(14))
    with pytest.raises(ValueError, match="does not take output_attentions"):
        model(**inputs, output_attentions=True)
    padding = torch.ones(2, 14, dtype=torch.long)
    padding[1, 10:] = 0
    with pytest.raises(ValueError, match="attention_mask.*no padding mask"):
        model(**inputs, attention_mask=padding)
    # What PEFT and Trainer pass along: an all-ones mask and arguments that ask for nothing.
    expected = model(**inputs).logits
    same = model(**inputs, attention_mask=torch.ones(2, 14), output_attentions=False, inputs_embeds=None).logits
    assert torch.equal(same, expected)
    assert torch.equal(model(**inputs, return_dict=False)[1], model(**inputs).codebook_losses)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["hybrid-tiny", "transformer-tiny"])
def test_half_precision_forward_and_generation_on_cpu_for_one_to_eight_samples(name, dtype):
    reference = tiny_model(name).eval()
    model = tiny_model(name).eval().to(dtype)
    inputs = codes_to_model_inputs(torch.randint(0, 1024, (2, 9, 5)), model.config)
    output = model(**inputs)
    assert output.logits.dtype == dtype
    torch.testing.assert_close(output.logits.float(), reference(**inputs).logits, atol=0.1, rtol=0.05)
    for samples in range(1, 9):  # from 4 samples on, decoding multiplies by packed weights where the CPU can
        codes = model.generate(max_new_tokens=3, num_return_sequences=samples)
        assert codes.shape == (samples, 9, 3) and 0 <= codes.min() and codes.max() < 1024


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_ssm_decay_rates_and_skip_weights_stay_float32_when_loaded_in_half_precision(tmp_path, dtype):
    tiny_model().save_pretrained(tmp_path)
    model = MusicHybridForCausalLM.from_pretrained(tmp_path, dtype=dtype)
    mixer = model.model.layers[0].mixer
    assert mixer.A_log.dtype == mixer.D.dtype == torch.float32
    assert mixer.in_proj.weight.dtype == model.lm_head.weight.dtype == dtype
    assert model.generate(max_new_tokens=2, num_return_sequences=4).shape == (4, 9, 2)


def build_under_default_dtype(config, dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return MusicHybridForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("build", ["from_config", "default_dtype"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_ssm_decay_rates_and_skip_weights_are_built_float32_in_half_precision_and_saved_exactly(tmp_path, dtype, build):
    config = MusicHybridConfig.from_preset("hybrid-tiny")
    torch.manual_seed(0)
    if build == "from_config":
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        model = build_under_default_dtype(config, dtype)
    mixer = model.model.layers[0].mixer
    assert mixer.in_proj.weight.dtype == model.lm_head.weight.dtype == dtype
    assert mixer.A_log.dtype == mixer.D.dtype == torch.float32
    # mamba_ssm's initialisation, to the last bit: A = 1..d_state in every channel, D = 1
    initial_A_log = torch.log(torch.arange(1, mixer.d_state + 1, dtype=torch.float32)).expand_as(mixer.A_log)
    assert torch.equal(mixer.A_log, initial_A_log) and torch.equal(mixer.D, torch.ones_like(mixer.D))
    model.save_pretrained(tmp_path)
    reloaded = MusicHybridForCausalLM.from_pretrained(tmp_path, dtype=dtype).model.layers[0].mixer
    assert reloaded.A_log.dtype == reloaded.D.dtype == torch.float32
    assert torch.equal(reloaded.A_log, mixer.A_log) and torch.equal(reloaded.D, mixer.D)


@pytest.mark.parametrize("model_class", [MusicHybridModel, MusicHybridForCausalLM])
def test_output_flags_set_on_the_config_apply_unless_the_argument_says_otherwise(tmp_path, model_class):
    causal_lm = tiny_model()
    (causal_lm.model if model_class is MusicHybridModel else causal_lm).save_pretrained(tmp_path)
    input_ids = codes_to_model_inputs(torch.randint(0, 1024, (1, 9, 3)), causal_lm.config)["input_ids"]

    hidden = model_class.from_pretrained(tmp_path, output_hidden_states=True).eval()
    assert len(hidden(input_ids).hidden_states) == causal_lm.config.num_hidden_layers + 1
    assert hidden(input_ids, output_hidden_states=False).hidden_states is None
    tuples = model_class.from_pretrained(tmp_path, return_dict=False).eval()
    assert type(tuples(input_ids)) is tuple
    assert isinstance(tuples(input_ids, return_dict=True), ModelOutput)
    attentions = model_class.from_pretrained(tmp_path, output_attentions=True).eval()
    with pytest.raises(ValueError, match="config.output_attentions: this model does not return attention weights"):
        attentions(input_ids)
    torch.testing.assert_close(attentions(input_ids, output_attentions=False)[0], hidden(input_ids)[0])
    if model_class is MusicHybridForCausalLM:  # generate reads the outputs it needs whatever the config's flags
        for model in (hidden, tuples):
            assert model.generate(max_new_tokens=2).shape == (1, 9, 2)


def mixer_calls_in_a_training_step(model, inputs):
    """How often each layer's mixer ran in one forward and backward pass: twice where the backward pass recomputed
    the layer. Returns (calls per layer, the gradients)."""
    calls = [0] * len(model.model.layers)

    def count(index):
        return lambda *_: calls.__setitem__(index, calls[index] + 1)

    hooks = [layer.mixer.register_forward_pre_hook(count(i)) for i, layer in enumerate(model.model.layers)]
    model(**inputs).loss.backward()
    for hook in hooks:
        hook.remove()
    return calls, torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.filterwarnings("error:`gradient_checkpointing_enable` is deprecated:FutureWarning")  # (transformers 5.23+)
def test_activation_checkpointing_recomputes_the_layers_it_selects_and_only_those():
    inputs = codes_to_model_inputs(torch.randint(0, 1024, (2, 9, 6)), MusicHybridConfig.from_preset("hybrid-tiny"))
    calls, expected = mixer_calls_in_a_training_step(tiny_model().train(), inputs)
    assert calls == [1, 1, 1, 1]

    every_layer = tiny_model().train()
    enable_activation_checkpointing(every_layer)  # what training/loop.py does
    calls, gradients = mixer_calls_in_a_training_step(every_layer, inputs)
    assert calls == [2, 2, 2, 2]
    torch.testing.assert_close(gradients, expected, rtol=1e-5, atol=1e-7)

    every_other_layer = tiny_model().train()
    if hasattr(every_other_layer, "activation_checkpointing_enable"):  # transformers 5.23+
        every_other_layer.activation_checkpointing_enable(every_n_layers=2)
    else:  # earlier releases select layers by their own flags only
        every_other_layer.gradient_checkpointing_enable()
        for layer in every_other_layer.model.layers[1::2]:
            layer.gradient_checkpointing = False
    calls, gradients = mixer_calls_in_a_training_step(every_other_layer, inputs)
    assert calls == [2, 1, 2, 1]
    torch.testing.assert_close(gradients, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["hybrid-tiny", "transformer-tiny"])
def test_half_precision_checkpoints_generate_on_one_and_two_threads_for_one_to_four_samples(
    tmp_path, request, name, dtype, threads
):
    if threads == 2:
        request.getfixturevalue("two_threads")
    tiny_model(name).save_pretrained(tmp_path)
    model = MusicHybridForCausalLM.from_pretrained(tmp_path, dtype=dtype).eval()
    prompt = torch.randint(0, 1024, (1, 9, 2))
    for batch in (1, 2, 4):  # split products below 4 rows, packed weights from 4 on where the CPU packs `dtype`
        # The thread count calibrated at the start (on two threads), then every step on `threads` for certain
        with mock.patch.object(fast_decoding_music_hybrid, "fastest_thread_count", return_value=threads):
            pinned = model.generate(prompt.repeat(batch, 1, 1), max_new_tokens=4)
        for codes in (model.generate(prompt.repeat(batch, 1, 1), max_new_tokens=4), pinned):
            assert codes.shape == (batch, 9, 6) and 0 <= codes.min() and codes.max() < 1024
            assert torch.equal(codes[:, :, :2], prompt.repeat(batch, 1, 1))


@pytest.mark.skipif(
    not hasattr(torch.compiler, "is_exporting"), reason="this torch has no torch.compiler.is_exporting (added in 2.6/2.7)"
)
@pytest.mark.parametrize("name", ["hybrid-tiny", "transformer-tiny"])
def test_forward_exports_with_torch_export_and_the_program_gives_the_eager_logits(name):
    model = tiny_model(name).eval()
    input_ids = codes_to_model_inputs(torch.randint(0, 1024, (2, 9, 5)), model.config)["input_ids"]
    program = torch.export.export(model, (), {"input_ids": input_ids}).module()
    other_ids = codes_to_model_inputs(torch.randint(0, 1024, (2, 9, 5)), model.config)["input_ids"]
    for ids in (input_ids, other_ids):
        expected = model(input_ids=ids).logits
        exported = program(input_ids=ids).logits  # with gradients, as a fine-tuning run would call it
        torch.testing.assert_close(exported, expected)
        exported.sum().backward()
        with torch.no_grad():
            torch.testing.assert_close(program(input_ids=ids).logits, expected)
    # The checks that read the inputs' values were skipped while exporting, and only then.
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 1027\)"):
        model(input_ids=input_ids + 1027)


def test_generation_with_torchao_int8_weights_steps_off_the_fast_products():
    """torchao is an optional extra (its import prints noise that other CLI tests would see): run with
    /work/venv-torchao or any environment that has it; skipped elsewhere."""
    quantization = pytest.importorskip("torchao.quantization")
    model = tiny_model().eval()
    quantization.quantize_(model, quantization.Int8WeightOnlyConfig())
    assert type(model.lm_head.weight) is not torch.nn.Parameter  # a tensor subclass now
    for samples in (1, 2, 4):
        codes = model.generate(max_new_tokens=3, num_return_sequences=samples)
        assert codes.shape == (samples, 9, 3)


def test_set_attn_implementation_switches_at_run_time_with_the_same_logits(monkeypatch):
    model = tiny_model().eval()
    inputs = codes_to_model_inputs(torch.randint(0, 1024, (2, 9, 5)), model.config)
    sdpa_logits = model(**inputs).logits
    calls = []
    eager = modeling_music_hybrid.eager_attention_forward
    counted = lambda *args, **kwargs: calls.append(1) or eager(*args, **kwargs)  # noqa: E731
    monkeypatch.setattr(modeling_music_hybrid, "eager_attention_forward", counted)
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    torch.testing.assert_close(model(**inputs).logits, sdpa_logits)
    assert len(calls) == model.config.num_attention_layers


def test_resize_token_embeddings_is_refused_because_the_vocabulary_is_the_codecs():
    model = tiny_model()
    with pytest.raises(ValueError, match="vocabulary is the codec's"):
        model.resize_token_embeddings(1030)
    assert model.model.embed_tokens.num_embeddings == 9 * 1027


def test_a_passed_generation_config_is_merged_into_the_models():
    model = tiny_model().eval()
    torch.manual_seed(0)
    merged = model.generate(generation_config=GenerationConfig(top_k=50, max_new_tokens=4))
    torch.manual_seed(0)
    assert torch.equal(merged, model.generate(top_k=50, max_new_tokens=4))  # do_sample etc. kept from the model's
    assert merged.shape == (1, 9, 4)
    # Unset fields keep the model's values: its max_new_tokens when the passed config has none.
    model.generation_config.max_new_tokens = 3
    assert model.generate(generation_config=GenerationConfig(top_k=50)).shape == (1, 9, 3)


def test_max_length_counts_frames_with_the_prompt():
    model = tiny_model().eval()
    prompt = torch.randint(0, 1024, (2, 9, 3))
    assert model.generate(prompt, max_length=7).shape == (2, 9, 7)
    assert model.generate(prompt, generation_config=GenerationConfig(max_length=5)).shape == (2, 9, 5)
    with pytest.raises(ValueError, match="max_length counts frames with the prompt's 3"):
        model.generate(prompt, max_length=3)
    with pytest.raises(ValueError, match="not both"):
        model.generate(prompt, max_length=7, max_new_tokens=2)


@pytest.mark.parametrize(
    "arguments, named",
    [
        (dict(num_beams=2), "num_beams=2"),
        (dict(repetition_penalty=1.3), "repetition_penalty=1.3"),
        (dict(eos_token_id=1026), "eos_token_id=1026"),
        (dict(min_new_tokens=2), "min_new_tokens=2"),
        (dict(use_cache=False), "use_cache=False"),
        (dict(return_dict_in_generate=True, output_scores=True), "output_scores=True"),
        (dict(no_repeat_ngram_size=3), "no_repeat_ngram_size=3"),
        (dict(generation_config=GenerationConfig(num_beams=3)), "num_beams=3"),
        (dict(guidance_scale=3.0), "guidance_scale"),  # unconditional model; genre models implement it
        (dict(attention_mask=torch.ones(1, 3)), "does not take attention_mask"),
        (dict(logits_processor=[]), "does not take logits_processor"),
    ],
)
def test_generate_refuses_every_setting_it_does_not_implement_by_name(arguments, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        tiny_model().generate(max_new_tokens=2, **arguments)


def test_return_dict_in_generate_returns_a_model_output_with_sequences():
    model = tiny_model().eval()
    torch.manual_seed(0)
    output = model.generate(max_new_tokens=3, num_return_sequences=2, return_dict_in_generate=True)
    assert isinstance(output, ModelOutput)
    torch.manual_seed(0)
    assert torch.equal(output.sequences, model.generate(max_new_tokens=3, num_return_sequences=2))


def test_prompts_of_different_lengths_are_refused_and_a_list_of_equal_lengths_is_one_batch():
    model = tiny_model().eval()
    prompts = [torch.randint(0, 1024, (9, 3)), torch.randint(0, 1024, (9, 5))]
    with pytest.raises(ValueError, match=r"prompts of different lengths \(3, 5 frames\)"):
        model.generate(prompts, max_new_tokens=2)
    prompts[1] = prompts[1][:, :3]
    torch.manual_seed(0)
    listed = model.generate(prompts, max_new_tokens=2)
    torch.manual_seed(0)
    assert torch.equal(listed, model.generate(torch.stack(prompts), max_new_tokens=2))
