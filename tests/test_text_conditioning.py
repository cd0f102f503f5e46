"""Text conditioning, the model side: config, forward(text_input_ids / text_hidden_states), cross-attention read
by every layer kind, cached decoding, generate(text=, guidance_scale=) through every decoding path, the frozen
encoder in training, and checkpoints that carry the encoder and its tokenizer (loaded offline in a fresh process).
The encoder is a tiny random T5 with ByT5's tokenizer (training/text_encoders.py): nothing is downloaded."""

import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from compile_helpers import CountingBackend
from model_checks import assert_decoding_equals_the_forward_pass, assert_greedy_codes_follow, guided_scores
from conditions_music_hybrid import NULL_DESCRIPTION
from configuration_music_hybrid import MusicHybridConfig
from modeling_music_hybrid import MIXERS, MusicHybridForCausalLM, codes_to_model_inputs
from training.text_encoders import save_random_text_encoder

# One tiny preset per registered layer kind (and a pure Mamba model without attention layers).
PRESETS_UNDER_TEST = ["transformer-tiny", "hybrid-tiny", "hybrid-mamba2-tiny", "hybrid-gdn-tiny", "mamba-tiny"]
DESCRIPTIONS = ["a calm piano ballad in D minor", "loud drums"]


@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory):
    return save_random_text_encoder(tmp_path_factory.mktemp("text_encoder"), seed=0)


def text_model(text_encoder, name="hybrid-tiny", **overrides):
    torch.manual_seed(0)
    return MusicHybridForCausalLM(MusicHybridConfig.from_preset(name, text_encoder=text_encoder, **overrides)).eval()


def random_codes(batch=2, frames=10, seed=1):
    return torch.randint(0, 1024, (batch, 9, frames), generator=torch.Generator().manual_seed(seed))


def model_inputs(model, frames=10):
    return codes_to_model_inputs(random_codes(frames=frames), model.config)["input_ids"]


def test_every_registered_layer_kind_is_under_test():
    kinds = {kind for name in PRESETS_UNDER_TEST for kind in MusicHybridConfig.from_preset(name).mixer_types}
    assert kinds == set(MIXERS)


def test_config_reads_the_encoder_and_refuses_what_it_cannot_load(text_encoder, tmp_path):
    config = MusicHybridConfig.from_preset("hybrid-tiny", text_encoder=text_encoder)
    assert config.text_encoder_config["model_type"] == "t5" and config.text_encoder_config["d_model"] == 32
    assert not config.train_text_encoder and config.max_text_length == 256
    with pytest.raises(ValueError, match="text_encoder: cannot load .*save_random_text_encoder"):
        MusicHybridConfig.from_preset("hybrid-tiny", text_encoder=str(tmp_path / "missing"))
    gone = save_random_text_encoder(tmp_path / "gone")
    config = MusicHybridConfig.from_preset("hybrid-tiny", text_encoder=gone)
    shutil.rmtree(gone)
    with pytest.raises(ValueError, match="takes its encoder's weights from config.text_encoder=.*load a checkpoint"):
        MusicHybridForCausalLM(config)
    with pytest.raises(ValueError, match="max_text_length"):
        MusicHybridConfig.from_preset("hybrid-tiny", text_encoder=text_encoder, max_text_length=0)
    MusicHybridConfig.from_preset("hybrid-tiny", text_encoder=text_encoder, condition_dropout=0.2)  # text alone may drop


def test_text_adds_only_its_own_weights_and_the_encoder_is_the_pretrained_one(text_encoder):
    from transformers import T5EncoderModel

    torch.manual_seed(0)
    plain = MusicHybridForCausalLM(MusicHybridConfig.from_preset("hybrid-tiny"))
    model = text_model(text_encoder)
    added = set(model.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) <= set(model.state_dict())
    assert all(key.startswith("model.text_condition.") or ".cross_attention" in key for key in added)
    assert sum(key.endswith("cross_attention.q_proj.weight") for key in added) == plain.config.num_hidden_layers
    pretrained = T5EncoderModel.from_pretrained(text_encoder).state_dict()
    for key, weight in model.model.text_condition.encoder.state_dict().items():
        assert torch.equal(weight, pretrained[key]), key


def test_text_added_to_a_checkpoint_without_text_keeps_its_weights_and_reads_the_pretrained_encoder(text_encoder, tmp_path):
    from transformers import T5EncoderModel

    torch.manual_seed(0)
    plain = MusicHybridForCausalLM(MusicHybridConfig.from_preset("hybrid-tiny"))
    plain.save_pretrained(tmp_path)
    model = MusicHybridForCausalLM.from_pretrained(tmp_path, text_encoder=text_encoder).eval()
    for key, weight in plain.state_dict().items():
        assert torch.equal(model.state_dict()[key], weight), key
    pretrained = T5EncoderModel.from_pretrained(text_encoder).state_dict()
    for key, weight in model.model.text_condition.encoder.state_dict().items():
        assert torch.equal(weight, pretrained[key]), key
    assert model.text_tokenizer("calm")["input_ids"] == [102, 100, 111, 112, 1]  # ByT5: bytes + 3, then the end


def test_descriptions_change_the_logits_and_none_is_the_empty_description(text_encoder):
    model = text_model(text_encoder)
    input_ids = model_inputs(model)
    described = model(input_ids, **model.tokenize_text(DESCRIPTIONS)).logits
    null = model(input_ids).logits
    assert (described[0] - described[1]).abs().max() > 1e-3  # different descriptions, different predictions
    assert (described - null).abs().max() > 1e-3
    # None and "" are the null description, padded or not (the mask hides the padding of the encoder and the layers)
    padded = model(input_ids, **model.tokenize_text([DESCRIPTIONS[0], None])).logits
    assert torch.allclose(padded[0], described[0], atol=1e-5) and torch.allclose(padded[1], null[1], atol=1e-5)
    assert torch.equal(model(input_ids, **model.tokenize_text([NULL_DESCRIPTION] * 2)).logits, null)
    # the encoder's output in place of the token ids
    tokens = model.tokenize_text(DESCRIPTIONS)
    hidden = model.model.text_condition.encoder(
        input_ids=tokens["text_input_ids"], attention_mask=tokens["text_attention_mask"]
    ).last_hidden_state
    from_hidden = model(input_ids, text_hidden_states=hidden, text_attention_mask=tokens["text_attention_mask"]).logits
    assert torch.allclose(from_hidden, described, atol=1e-6)


def test_bad_text_inputs_are_refused_before_any_work(text_encoder):
    model = text_model(text_encoder)
    input_ids = model_inputs(model)
    tokens = model.tokenize_text(DESCRIPTIONS)
    for bad, message in [
        (dict(text_input_ids=tokens["text_input_ids"][:1]), r"text_input_ids must be integers of shape \(2, length\)"),
        (dict(text_input_ids=tokens["text_input_ids"].float()), "text_input_ids must be integers"),
        (dict(text_hidden_states=torch.zeros(2, 3, 5)), r"text_hidden_states must be floats of shape \(2, length, 32\)"),
        (dict(tokens, text_hidden_states=torch.zeros(2, 3, 32)), "not both"),
        (dict(text_attention_mask=tokens["text_attention_mask"]), "needs text_input_ids"),
        (dict(text_input_ids=tokens["text_input_ids"], text_attention_mask=torch.zeros_like(tokens["text_input_ids"])),
         "without tokens"),
    ]:
        with pytest.raises(ValueError, match=message):
            model(input_ids, **bad)
    for bad, message in [
        (dict(text=DESCRIPTIONS * 2, num_return_sequences=3), r"text needs one description, one per prompt \(1\)"),
        (dict(text=[3]), "text takes descriptions"),
        (dict(guidance_scale=3.0), "needs a condition to guide towards: pass text="),
        (dict(text="calm", guidance_scale=0.5), "guidance_scale must be a number >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            model.generate(max_new_tokens=2, **bad)
    torch.manual_seed(0)
    plain = MusicHybridForCausalLM(MusicHybridConfig.from_preset("hybrid-tiny")).eval()
    fix = r"text condition \(a model made with MusicHybridConfig\(text_encoder=...\) has one\)"
    with pytest.raises(ValueError, match="text= needs a text-conditioned model; this model has no " + fix):
        plain.generate(max_new_tokens=2, text="calm")
    with pytest.raises(ValueError, match="text_input_ids needs a text-conditioned model"):
        plain(input_ids, **tokens)
    with pytest.raises(ValueError, match=r"no text condition \(config.text_encoder is None\)"):
        plain.tokenize_text(["calm"])


@pytest.mark.parametrize("name", PRESETS_UNDER_TEST)
def test_prefill_then_decoding_with_text_equals_one_full_forward(text_encoder, name):
    model = text_model(text_encoder, name)
    tokens = model.tokenize_text(DESCRIPTIONS)
    for fixed_shape in (False, True):
        assert_decoding_equals_the_forward_pass(model, model_inputs(model, frames=8), 5, fixed_shape, **tokens)


@pytest.mark.parametrize("name", PRESETS_UNDER_TEST)
def test_greedy_guided_generation_follows_the_argmax_of_guided_full_forwards(text_encoder, name):
    model = text_model(text_encoder, name)
    prompt = random_codes(batch=2, frames=3)
    codes = model.generate(prompt, max_new_tokens=3, do_sample=False, text=DESCRIPTIONS, guidance_scale=3.0)
    assert_greedy_codes_follow(*guided_scores(model, codes, 3.0, **model.tokenize_text(DESCRIPTIONS)), 3, 3)
    plain = model.generate(prompt, max_new_tokens=3, do_sample=False, text=DESCRIPTIONS)
    assert not torch.equal(plain, codes)  # guidance changed the codes


class FrameCollector:
    def __init__(self):
        self.frames = []

    def put(self, frames):
        self.frames.append(frames)

    def end(self):
        pass


def test_text_through_samples_per_prompt_streaming_long_form_and_compiled_steps(text_encoder):
    model = text_model(text_encoder, "transformer-tiny", max_position_embeddings=24)
    request = dict(max_new_tokens=6, top_k=1, guidance_scale=3.0)  # top-k 1: deterministic samples
    # one description per returned row: rows of one prompt differ by their description alone
    per_row = model.generate(num_return_sequences=2, text=DESCRIPTIONS, **request)
    assert not torch.equal(per_row[0], per_row[1])
    one_each = [model.generate(text=description, **request) for description in DESCRIPTIONS]
    assert torch.equal(per_row, torch.cat(one_each))
    streamer = FrameCollector()
    assert torch.equal(model.generate(num_return_sequences=2, text=DESCRIPTIONS, streamer=streamer, **request), per_row)
    assert torch.equal(torch.cat(streamer.frames, dim=2), per_row)
    # long form: every window's prefill computes the description's keys and values again from its encoding
    windowed = model.generate(
        num_return_sequences=2, text=DESCRIPTIONS, long_form="window", context_window=8, **dict(request, max_new_tokens=20)
    )
    first_window = model.generate(num_return_sequences=2, text=DESCRIPTIONS, **dict(request, max_new_tokens=15))
    assert windowed.shape == (2, 9, 20) and torch.equal(windowed[:, :, :15], first_window)
    counting_backend = CountingBackend()
    model.compile_decoding(backend=counting_backend)
    try:
        assert torch.equal(model.generate(num_return_sequences=2, text=DESCRIPTIONS, **request), per_row)
        assert counting_backend.graphs
    finally:
        model.compile_decoding(False)


def test_sliding_long_form_and_int8_weights_keep_the_encoder_in_float(text_encoder):
    model = text_model(text_encoder, "hybrid-tiny", position_embedding_type="rope")
    request = dict(max_new_tokens=6, top_k=1, text=DESCRIPTIONS, num_return_sequences=2, guidance_scale=3.0)
    sliding = model.generate(long_form="sliding", context_window=4, **request)
    assert sliding.shape == (2, 9, 6)
    model.quantize_weights()
    encoder_linears = [type(m).__name__ for m in model.model.text_condition.modules() if "Linear" in type(m).__name__]
    assert set(encoder_linears) == {"Linear"}  # the encoder and its projection run once per generation, in float
    assert type(model.model.layers[0].cross_attention.q_proj).__name__ == "Int8Linear"
    quantized = model.generate(**request)
    assert quantized.shape == (2, 9, 6) and not torch.equal(quantized[0], quantized[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_decoding_with_text_equals_eager_decoding(text_encoder):
    model = text_model(text_encoder).cuda()
    request = dict(max_new_tokens=12, top_k=1, num_return_sequences=2, text=DESCRIPTIONS, guidance_scale=3.0)
    eager = model.generate(**request)
    model.compile_decoding(backend="eager", cuda_graph=True)
    try:
        assert torch.equal(model.generate(**request), eager)
    finally:
        model.compile_decoding(False)


def test_genre_and_text_combine_in_one_model(text_encoder):
    model = text_model(text_encoder, genres=["Rock", "Folk"], condition_dropout=0.1)
    with torch.no_grad():
        model.model.embed_genres.weight.normal_(0, 1.0)
    input_ids = model_inputs(model)
    tokens, genre_ids = model.tokenize_text(DESCRIPTIONS), torch.tensor([0, 1])
    full = model(input_ids, genre_ids=genre_ids, **tokens).logits
    assert (full - model(input_ids, **tokens).logits).abs().max() > 1e-3
    assert (full - model(input_ids, genre_ids=genre_ids).logits).abs().max() > 1e-3
    cache = model.model.new_cache(2, input_ids.shape[2])
    pieces = [model(input_ids[:, :, :4], genre_ids=genre_ids, cache=cache, **tokens).logits]
    assert cache.holds_condition_keys_values
    # the cache keeps the keys and values of the description it began with: later steps need no text
    pieces += [model(input_ids[:, :, t : t + 1], genre_ids=genre_ids, cache=cache).logits for t in range(4, input_ids.shape[2])]
    assert torch.cat(pieces, dim=2).sub(full).abs().max() <= 1e-4
    codes = model.generate(max_new_tokens=3, num_return_sequences=2, genre="Rock", text=DESCRIPTIONS, guidance_scale=3.0)
    assert codes.shape == (2, 9, 3)


def test_the_frozen_encoder_stays_frozen_and_in_eval_mode_while_the_model_trains(text_encoder):
    model = text_model(text_encoder, hidden_dropout=0.1)
    # HF Trainer (remove_unused_columns) keeps only the dataset columns that forward names
    assert set(model.tokenize_text(["x"])) <= set(inspect.signature(model.forward).parameters)
    encoder = model.model.text_condition.encoder
    assert not any(p.requires_grad for p in encoder.parameters())
    model.train()
    assert not encoder.training and model.model.layers[0].training
    # transformers 5.23 renamed it; the older name serves the releases before
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    inputs = codes_to_model_inputs(random_codes(), model.config)
    loss = model(**inputs, **model.tokenize_text(DESCRIPTIONS)).loss
    loss.backward()
    assert all(p.grad is None for p in encoder.parameters())
    assert model.model.text_condition.projection.weight.grad.abs().sum() > 0
    assert model.model.layers[0].cross_attention.k_proj.weight.grad.abs().sum() > 0
    trained = text_model(text_encoder, train_text_encoder=True).train()
    assert trained.model.text_condition.encoder.training
    trained(**inputs, **trained.tokenize_text(DESCRIPTIONS)).loss.backward()
    assert trained.model.text_condition.encoder.shared.weight.grad.abs().sum() > 0


def test_lora_wrapped_text_model_trains_and_generates(text_encoder):
    peft = pytest.importorskip("peft")
    model = text_model(text_encoder)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "in_proj"]))
    wrapped.train()
    inputs = codes_to_model_inputs(random_codes(), model.config)
    loss = wrapped(**inputs, **model.tokenize_text(DESCRIPTIONS)).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert wrapped.generate(max_new_tokens=3, text="calm", guidance_scale=3.0).shape == (1, 9, 3)


def test_cross_attention_runs_through_sdpa_and_eager_and_the_encoder_loads_in_the_model_dtype(text_encoder, tmp_path):
    model = text_model(text_encoder)
    input_ids, tokens = model_inputs(model), model.tokenize_text([DESCRIPTIONS[0], None])  # padded: a masked key
    sdpa = model(input_ids, **tokens).logits
    model.set_attn_implementation("eager")
    assert torch.allclose(model(input_ids, **tokens).logits, sdpa, atol=1e-5)
    model.save_pretrained(tmp_path)
    half = MusicHybridForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    # the encoder in the model's dtype, not the float32 its saved config names
    assert {p.dtype for p in half.model.text_condition.parameters()} == {torch.bfloat16}
    assert (half(input_ids, **tokens).logits.float() - sdpa).abs().max() < 0.1
    float16 = MusicHybridForCausalLM.from_pretrained(tmp_path, dtype=torch.float16)
    encoder_dtypes = {name: p.dtype for name, p in float16.model.text_condition.encoder.named_parameters()}
    assert {dtype for name, dtype in encoder_dtypes.items() if ".wo." in name} == {torch.float32}  # as T5 alone
    assert {dtype for name, dtype in encoder_dtypes.items() if ".wo." not in name} == {torch.float16}


LOAD_AND_GENERATE = textwrap.dedent("""
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM

    def load_and_generate(remote):
        model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=remote).eval()
        assert type(model).__module__.startswith("transformers_modules") == remote
        assert not any(p.requires_grad for p in model.model.text_condition.encoder.parameters())
        torch.manual_seed(3)
        return model.generate(max_new_tokens=4, num_return_sequences=2, text=%r, guidance_scale=3.0).tolist()

    from_remote_code = load_and_generate(remote=True)
    import modeling_music_hybrid  # registers the model with the Auto classes: loading needs no remote code
    print(json.dumps([from_remote_code, load_and_generate(remote=False)]))
""" % DESCRIPTIONS)


def test_a_checkpoint_carries_its_encoder_and_tokenizer_and_loads_offline_in_a_fresh_process(tmp_path):
    encoder_folder = save_random_text_encoder(tmp_path / "encoder", seed=1)
    model = text_model(encoder_folder)
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    assert (checkpoint / "text_tokenizer" / "tokenizer_config.json").exists()
    shutil.rmtree(encoder_folder)  # the checkpoint alone must be enough
    torch.manual_seed(3)
    expected = model.generate(max_new_tokens=4, num_return_sequences=2, text=DESCRIPTIONS, guidance_scale=3.0)
    environment = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    done = subprocess.run(
        [sys.executable, "-c", LOAD_AND_GENERATE, str(checkpoint)], env=environment, cwd=tmp_path,
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    from_remote_code, from_registered_classes = json.loads(done.stdout.strip().splitlines()[-1])
    assert torch.equal(torch.tensor(from_remote_code), expected)
    assert torch.equal(torch.tensor(from_registered_classes), expected)
