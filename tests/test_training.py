"""run_clm_audio.py in-process: a short run end to end, gradient accumulation, failure behaviour, the recipes."""

import json
import os

import pytest
import torch
import yaml
from accelerate import Accelerator
from training_helpers import (
    REPO_ROOT,
    make_codes_dataset,
    random_codec,
    read_log,
    synthetic_split,
    training_argv,
)
from transformers import AutoModelForCausalLM

import run_clm_audio
from configuration_music_hybrid import MusicHybridConfig
from modeling_music_hybrid import MusicHybridForCausalLM
from training import loop
from training.crops import (
    CodesCollator,
    CodesWindows,
    RandomCropBatchSampler,
    frames_per_segment,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see conftest.py


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_codes_dataset(tmp_path_factory.mktemp("codes") / "dataset")


def test_short_run_lowers_the_loss_and_exports_a_shareable_model(dataset, tmp_path):
    output_dir = tmp_path / "run"
    argv = training_argv(dataset, output_dir, do_eval=True, max_steps=24, eval_steps=12, logging_steps=4)
    assert run_clm_audio.main(argv) == 0

    log = read_log(output_dir)
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5
    evaluations = [entry for entry in log if "eval_loss" in entry]
    assert [entry["step"] for entry in evaluations] == [12, 24]

    results = json.loads((output_dir / "eval_results.json").read_text())
    assert results["step"] == 24 and results["segment_length"] == 64
    assert results["mean_loss"] == evaluations[-1]["eval_loss"] < evaluations[0]["eval_loss"]
    assert results["segment_ids"][0] == "valid-000:0"
    assert len(results["segment_codebook_loss"]) == results["num_segments"]
    train_results = json.loads((output_dir / "train_results.json").read_text())
    assert train_results["num_processes"] == 1 and train_results["effective_batch_size"] == 4
    assert train_results["best_step"] == 24
    best = json.loads((output_dir / "best" / "eval_results.json").read_text())
    assert best["mean_loss"] == results["mean_loss"]
    for plot in ("training_curves.png", "codebook_metrics.png"):
        assert (output_dir / plot).read_bytes().startswith(b"\x89PNG")

    card = (output_dir / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["library_name"] == "transformers"
    assert {"music-generation", "mamba"} <= set(metadata["tags"])
    assert "perplexity" in metadata["metrics"]
    assert "| 8 |" in card and "| mean |" in card  # the metrics table
    assert "1.34M parameters" in card and '"max_steps": 24' in card and '"num_hidden_layers": 4' in card

    model = AutoModelForCausalLM.from_pretrained(output_dir, trust_remote_code=True)
    assert model.config.codec == random_codec()
    assert model.generation_config is not None
    codes = model.generate(max_new_tokens=5, do_sample=True, num_return_sequences=2)
    assert codes.shape == (2, 9, 5) and codes.max() < 1024

    # Standalone evaluation of the exported model reproduces the numbers on the same segments.
    eval_dir = tmp_path / "eval"
    eval_argv = ["--model_name_or_path", str(output_dir), "--dataset_name", dataset, "--output_dir", str(eval_dir),
                 "--do_eval", "--segment_length", "64", "--disable_tqdm"]
    assert run_clm_audio.main(eval_argv) == 0
    standalone = json.loads((eval_dir / "eval_results.json").read_text())
    assert standalone["segment_ids"] == results["segment_ids"]
    assert standalone["codebook_loss"] == pytest.approx(results["codebook_loss"], rel=1e-6)


def test_accumulated_gradients_equal_one_large_batch_with_unequal_valid_counts():
    """Batch 4 x accumulation 1 and batch 2 x accumulation 2 give the same gradient before the optimizer step.

    The rows are shorter than a crop by different amounts, so the two micro-batches hold different numbers of
    valid tokens: averaging their mean losses (the naive way) gives a different gradient, token weighting does not.
    """
    config = MusicHybridConfig.from_preset("hybrid-tiny")
    frames = frames_per_segment(64, config.num_codebooks)
    lengths = [12, 55, 30, 50, 20, 40]
    windows = CodesWindows(synthetic_split(lengths, "t"), frames, config.pad_token_id)
    collate = CodesCollator(config)
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = MusicHybridForCausalLM(config)

    def micro_batches(batch_size, count):
        sampler = iter(RandomCropBatchSampler(lengths, frames, batch_size, seed=5))
        return [collate([windows[key] for key in next(sampler)]) for _ in range(count)]

    def gradients(batches, naive=False):
        model.zero_grad()
        if naive:
            for batch in batches:
                (model(**batch).loss / len(batches)).backward()
        else:
            loop.accumulate_gradients(accelerator, model, batches, config)
        return torch.cat([parameter.grad.flatten() for parameter in model.parameters()])

    large = micro_batches(4, 1)
    small = micro_batches(2, 2)
    counts = [loop.valid_token_counts(batch["labels"])[0].item() for batch in small]
    assert counts[0] != counts[1]
    reference = gradients(large)
    torch.testing.assert_close(gradients(small), reference, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(gradients(small, naive=True), reference, rtol=1e-3, atol=1e-6)


def test_nan_loss_stops_the_run_with_the_step_and_saves_the_last_good_state(dataset, tmp_path, monkeypatch, capsys):
    original_forward = MusicHybridForCausalLM.forward
    training_calls = []

    def forward_that_diverges_at_step_3(self, *args, **kwargs):
        output = original_forward(self, *args, **kwargs)
        if self.training:
            training_calls.append(1)
            if len(training_calls) == 3:
                output.codebook_losses = output.codebook_losses * float("nan")
        return output

    monkeypatch.setattr(MusicHybridForCausalLM, "forward", forward_that_diverges_at_step_3)
    output_dir = tmp_path / "run"
    assert run_clm_audio.main(training_argv(dataset, output_dir)) == 1
    message = capsys.readouterr().err
    assert "diverged at step 3" in message and "checkpoint-2" in message
    assert sorted(os.listdir(output_dir)) == ["checkpoint-2", "log_history.jsonl"]
    assert [entry["step"] for entry in read_log(output_dir)] == [1, 2]
    assert (output_dir / "checkpoint-2" / "model.safetensors").exists()


@pytest.mark.parametrize("recipe, tiny_preset", [
    ("hybrid-116m.yaml", "hybrid-tiny"), ("transformer-162m.yaml", "hybrid-tiny"),
    ("hybrid-mc-116m.yaml", "hybrid-mc-tiny"),  # memory caching, trained and evaluated through the recipe
    ("hybrid-mamba2-116m.yaml", "hybrid-mamba2-tiny"), ("hybrid-gdn-116m.yaml", "hybrid-gdn-tiny"),
])
def test_reproduction_recipe_runs_with_small_overrides(recipe, tiny_preset, dataset, tmp_path):
    recipe_path = os.path.join(REPO_ROOT, "recipes", recipe)
    options = yaml.safe_load(open(recipe_path))
    assert options["model_preset"] == recipe.removesuffix(".yaml")
    assert options["max_steps"] == 31000 and options["segment_length"] == 2048
    assert options["per_device_train_batch_size"] * options["gradient_accumulation_steps"] == 64
    assert options["mixed_precision"] == "bf16" and options["learning_rate"] == 3e-4

    output_dir = tmp_path / "run"
    overrides = ["--dataset_name", dataset, "--output_dir", str(output_dir), "--model_preset", tiny_preset,
                 "--max_steps", "2", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
                 "--segment_length", "64", "--mixed_precision", "no", "--max_eval_samples", "2", "--disable_tqdm",
                 "--dataloader_num_workers", "0"]
    assert run_clm_audio.main([recipe_path] + overrides) == 0
    config = json.loads((output_dir / "config.json").read_text())
    assert config["label_smoothing"] == options["label_smoothing_factor"]  # taken from the recipe
    assert json.loads((output_dir / "eval_results.json").read_text())["num_segments"] == 2


def test_the_cpu_recipes_parse_and_the_evening_one_costs_an_eighth_of_the_laptop_one():
    """docs/training.md states the evening recipe's cost from the laptop recipe's: a quarter of the positions per
    step (crops half as long, half the micro-batches) for half the steps."""
    def settings(recipe):
        _, data_args, training_args = run_clm_audio.parse_arguments([os.path.join(REPO_ROOT, "recipes", recipe)])
        assert training_args.num_warmup_steps < training_args.max_steps
        positions = (data_args.segment_length * training_args.per_device_train_batch_size
                     * training_args.gradient_accumulation_steps)
        return positions, training_args.max_steps

    (laptop_positions, laptop_steps), (evening_positions, evening_steps) = settings("laptop.yaml"), settings(
        "evening.yaml")
    assert (evening_positions * 4, evening_steps * 2) == (laptop_positions, laptop_steps)


def test_help_lists_the_transformers_style_options(capsys):
    with pytest.raises(SystemExit) as exit:
        run_clm_audio.main(["--help"])
    assert exit.value.code == 0
    usage = capsys.readouterr().out
    for option in ("--do_train", "--resume_from_checkpoint", "--config_overrides", "--gradient_accumulation_steps",
                   "--label_smoothing_factor", "--codebook_loss_weights", "--push_to_hub", "--report_to"):
        assert option in usage
