"""Genre conditioning: config, forward(genre_ids), cached decoding and generate(genre=, guidance_scale=) with
classifier-free guidance through every decoding path (packed weights, compiled steps, streaming, long form)."""

import pytest
import torch

from compile_helpers import CountingBackend
from model_checks import assert_decoding_equals_the_forward_pass, assert_greedy_codes_follow, guided_scores
from configuration_music_hybrid import MusicHybridConfig
from modeling_music_hybrid import MusicHybridForCausalLM, codes_to_model_inputs

GENRES = ["Rock", "Jazz", "Folk"]
PRESETS_UNDER_TEST = ["transformer-tiny", "hybrid-tiny", "mamba-tiny", "hybrid-mc-tiny", "mamba-mc-tiny"]


def conditional_model(name="hybrid-tiny", **overrides):
    torch.manual_seed(0)
    model = MusicHybridForCausalLM(MusicHybridConfig.from_preset(name, genres=GENRES, **overrides)).eval()
    with torch.no_grad():  # genre rows far apart, so that guidance visibly changes the codes
        model.model.embed_genres.weight.normal_(0, 1.0)
    return model


def random_codes(batch=2, frames=10, seed=1):
    return torch.randint(0, 1024, (batch, 9, frames), generator=torch.Generator().manual_seed(seed))


def test_config_validates_genres_and_condition_dropout():
    config = MusicHybridConfig.from_preset("hybrid-tiny", genres=GENRES, condition_dropout=0.1)
    assert config.null_genre_id == 3 and config.genre_id("Jazz") == 1 and config.genre_id(None) == 3
    with pytest.raises(ValueError, match=r"unknown genre 'Metal'; this model knows \['Rock', 'Jazz', 'Folk'\]"):
        config.genre_id("Metal")
    for bad, message in [
        (dict(genres=["Rock", "Rock"]), "unique"),
        (dict(genres=[]), "non-empty"),
        (dict(genres=["Rock", ""]), "non-empty"),
        (dict(genres=GENRES, condition_dropout=1.0), r"\[0, 1\)"),
        (dict(condition_dropout=0.1), "needs genres"),
    ]:
        with pytest.raises(ValueError, match=message):
            MusicHybridConfig.from_preset("hybrid-tiny", **bad)
    with pytest.raises(ValueError, match="unconditional"):
        MusicHybridConfig.from_preset("hybrid-tiny").genre_id("Rock")


def test_unconditional_model_keeps_its_weights_and_refuses_genres():
    torch.manual_seed(0)
    unconditional = MusicHybridForCausalLM(MusicHybridConfig.from_preset("hybrid-tiny")).eval()
    conditional = conditional_model()
    extra = set(conditional.state_dict()) - set(unconditional.state_dict())
    assert extra == {"model.embed_genres.weight"}
    assert conditional.model.embed_genres.weight.shape == (len(GENRES) + 1, 64)
    # Same seed, same draws for every other weight: the genre table is made after them.
    for name, weight in unconditional.state_dict().items():
        assert torch.equal(weight, conditional.state_dict()[name]), name
    input_ids = codes_to_model_inputs(random_codes(), unconditional.config)["input_ids"]
    with pytest.raises(ValueError, match="genre_ids needs a genre-conditioned model"):
        unconditional(input_ids, genre_ids=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="genre= needs a genre-conditioned model"):
        unconditional.generate(max_new_tokens=2, genre="Rock")
    with pytest.raises(ValueError, match="guidance_scale needs a conditioned model"):
        unconditional.generate(max_new_tokens=2, guidance_scale=3.0)


def test_genre_ids_change_the_logits_and_none_is_the_null_genre():
    model = conditional_model()
    input_ids = codes_to_model_inputs(random_codes(), model.config)["input_ids"]
    rock = model(input_ids, genre_ids=torch.tensor([0, 0])).logits
    jazz = model(input_ids, genre_ids=torch.tensor([1, 1])).logits
    null = model(input_ids, genre_ids=torch.tensor([3, 3])).logits
    assert (rock - jazz).abs().max() > 1e-2
    assert torch.equal(model(input_ids).logits, null)
    for bad in (torch.tensor([0]), torch.tensor([0.0, 1.0]), torch.tensor([0, 4]), torch.tensor([-1, 0]), [0, 1]):
        with pytest.raises(ValueError, match="genre_ids"):
            model(input_ids, genre_ids=bad)


@pytest.mark.parametrize("name", PRESETS_UNDER_TEST)
@pytest.mark.parametrize("fixed_shape", [False, True])
def test_conditional_prefill_then_decoding_equals_one_full_forward(name, fixed_shape):
    model = conditional_model(name)
    input_ids = codes_to_model_inputs(random_codes(frames=12), model.config)["input_ids"]
    assert_decoding_equals_the_forward_pass(model, input_ids, 6, fixed_shape, genre_ids=torch.tensor([2, 3]))


@pytest.mark.parametrize("name", PRESETS_UNDER_TEST)
def test_greedy_guided_generation_follows_the_argmax_of_guided_full_forwards(name):
    model = conditional_model(name)
    prompt = random_codes(batch=2, frames=3)
    codes = model.generate(prompt, max_new_tokens=4, do_sample=False, genre=["Jazz", "Folk"], guidance_scale=3.0)
    assert_greedy_codes_follow(*guided_scores(model, codes, 3.0, genre_ids=torch.tensor([1, 2])), 3, 4)
    plain = model.generate(prompt, max_new_tokens=4, do_sample=False, genre=["Jazz", "Folk"])
    assert not torch.equal(plain, codes)  # guidance changed the codes
    assert torch.equal(model.generate(prompt, max_new_tokens=4, do_sample=False, genre=["Jazz", "Folk"],
                                      guidance_scale=1.0), plain)


def test_guidance_runs_conditional_and_null_rows_as_one_doubled_batch():
    model = conditional_model()
    batches = []
    model.model.embed_tokens.register_forward_hook(lambda module, inputs, output: batches.append(output.shape[0]))
    genre_rows = []
    model.model.embed_genres.register_forward_hook(lambda module, inputs, output: genre_rows.append(inputs[0].tolist()))
    model.generate(random_codes(batch=1, frames=2), max_new_tokens=3, num_return_sequences=2, genre="Rock",
                   guidance_scale=3.0)
    assert set(batches) == {4} and len(batches) == 3 + 9 - 1  # prefill, then one step per later position
    assert genre_rows[0] == [0, 0, 3, 3]
    batches.clear()
    model.generate(max_new_tokens=3, genre="Rock")
    assert set(batches) == {1}


def test_genres_per_prompt_and_per_sample_and_their_checks():
    model = conditional_model()
    genre_rows = []
    model.model.embed_genres.register_forward_hook(lambda module, inputs, output: genre_rows.append(inputs[0].tolist()))
    model.generate(random_codes(batch=2, frames=2), max_new_tokens=1, num_return_sequences=2, genre=["Jazz", "Folk"])
    assert genre_rows[-1] == [1, 1, 2, 2]
    model.generate(max_new_tokens=1, num_return_sequences=3, genre=["Jazz", None, "Rock"])
    assert genre_rows[-1] == [1, 3, 0]
    with pytest.raises(ValueError, match=r"unknown genre 'Metal'; this model knows \['Rock', 'Jazz', 'Folk'\]"):
        model.generate(max_new_tokens=1, genre="Metal")
    with pytest.raises(ValueError, match="one per prompt"):
        model.generate(max_new_tokens=1, num_return_sequences=3, genre=["Rock", "Jazz"])
    with pytest.raises(ValueError, match="needs a condition to guide towards: pass genre="):
        model.generate(max_new_tokens=1, guidance_scale=3.0)
    for bad in (0.5, float("nan"), "3", True):
        with pytest.raises(ValueError, match="guidance_scale must be a number >= 1"):
            model.generate(max_new_tokens=1, genre="Rock", guidance_scale=bad)


def test_guidance_with_streaming_long_form_and_sampling_seeds():
    model = conditional_model("hybrid-tiny", position_embedding_type="rope", max_position_embeddings=24)
    frames = []

    class Streamer:
        def put(self, frame):
            frames.append(frame)

        def end(self):
            frames.append("end")

    torch.manual_seed(5)
    codes = model.generate(max_new_tokens=6, num_return_sequences=2, genre="Jazz", guidance_scale=3.0,
                           streamer=Streamer())
    assert frames[-1] == "end" and torch.equal(torch.cat(frames[:-1], dim=2), codes)
    torch.manual_seed(5)
    assert torch.equal(model.generate(max_new_tokens=6, num_return_sequences=2, genre="Jazz", guidance_scale=3.0),
                       codes)
    # Beyond the 24 positions: windowed restarts keep the genre and guidance, and so does a sliding window.
    windowed = model.generate(max_new_tokens=40, genre="Rock", guidance_scale=3.0, long_form="window",
                              context_window=6, do_sample=False)
    assert windowed.shape == (1, 9, 40)
    sliding = model.generate(max_new_tokens=10, genre="Rock", guidance_scale=3.0, long_form="sliding",
                             context_window=64, do_sample=False)
    assert torch.equal(sliding, model.generate(max_new_tokens=10, genre="Rock", guidance_scale=3.0, do_sample=False))


def test_compiled_decoding_and_packed_weights_give_the_same_guided_codes():
    """Guided batches of 1 and 2 samples are model batches of 2 and 4 (packed weights on CPU from 4 rows)."""
    counting_backend = CountingBackend()
    model = conditional_model()
    requests = [dict(genre="Folk"), dict(input_ids=random_codes(batch=2, frames=2), genre=["Folk", "Rock"])]
    eager = [model.generate(max_new_tokens=5, do_sample=False, guidance_scale=3.0, **r) for r in requests]
    model.compile_decoding(backend=counting_backend)
    for request, expected in zip(requests, eager, strict=True):
        assert torch.equal(model.generate(max_new_tokens=5, do_sample=False, guidance_scale=3.0, **request), expected)
    assert len(counting_backend.graphs) == 2  # one graph per kind of batch (2-3 rows; 4 or more)
    model.compile_decoding(False)


def test_conditional_checkpoint_round_trip_keeps_genres_and_outputs(tmp_path):
    from transformers import AutoModelForCausalLM

    model = conditional_model(condition_dropout=0.1)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert loaded.config.genres == GENRES and loaded.config.condition_dropout == 0.1
    input_ids = codes_to_model_inputs(random_codes(), model.config)["input_ids"]
    genre_ids = torch.tensor([0, 2])
    assert torch.equal(loaded(input_ids, genre_ids=genre_ids).logits, model(input_ids, genre_ids=genre_ids).logits)
    torch.manual_seed(1)
    expected = model.generate(max_new_tokens=4, genre="Jazz", guidance_scale=3.0)
    torch.manual_seed(1)
    assert torch.equal(loaded.generate(max_new_tokens=4, genre="Jazz", guidance_scale=3.0), expected)


def test_lora_wrapped_conditional_model_trains_with_genre_ids():
    peft = pytest.importorskip("peft")
    model = conditional_model()
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "in_proj"]))
    inputs = codes_to_model_inputs(random_codes(), model.config)
    wrapped.train()
    loss = wrapped(**inputs, genre_ids=torch.tensor([0, 1])).loss
    loss.backward()
    assert torch.isfinite(loss)
    codes = wrapped.generate(max_new_tokens=3, genre="Rock", guidance_scale=3.0)
    assert codes.shape == (1, 9, 3)


def test_hf_trainer_trains_a_conditional_model_from_rows_with_genre_ids(tmp_path):
    """Rows carrying `genre_ids` reach forward through HF Trainer's default collator; the genre table learns."""
    from transformers import Trainer, TrainingArguments

    model = conditional_model()
    before = model.model.embed_genres.weight.detach().clone()
    inputs = codes_to_model_inputs(random_codes(batch=4, frames=6), model.config)
    rows = [{"input_ids": inputs["input_ids"][i], "labels": inputs["labels"][i], "genre_ids": torch.tensor(i % 4)}
            for i in range(4)]
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2, report_to=[],
        save_strategy="no", use_cpu=True, remove_unused_columns=False, dataloader_num_workers=0, logging_steps=1,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    trainer.train()
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in trainer.state.log_history if "loss" in entry)
    assert (model.model.embed_genres.weight.detach() - before).abs().amax(dim=1).gt(0).all()  # every row, null too


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_decoding_with_guidance_equals_eager_decoding():
    model = conditional_model().cuda()
    prompt = random_codes(batch=2, frames=3).cuda()
    request = dict(max_new_tokens=12, do_sample=False, genre=["Rock", "Folk"], guidance_scale=3.0)
    eager = model.generate(prompt, **request)
    model.compile_decoding(backend="eager", cuda_graph=True)
    assert torch.equal(model.generate(prompt, **request), eager)
    model.compile_decoding(False)
