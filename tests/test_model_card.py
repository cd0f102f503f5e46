"""The model card: Hub metadata a stranger's tools read (library, pipeline tag, tags, base model, datasets,
model-index), a usage snippet that turns the checkpoint folder alone into a WAV file, and the project's docs."""

import email.message
import importlib.metadata
import os
import pathlib
import re
import subprocess
import sys
from unittest import mock

import soundfile
import torch
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from configuration_music_hybrid import MusicHybridConfig
from modeling_music_hybrid import MusicHybridForCausalLM
from processing_music_hybrid import random_codec_identity
from training.model_card import CHECKPOINT_PLACEHOLDER, CONDITIONING_PAGE, DOCUMENTATION_PAGES, write_model_card

ROOT = pathlib.Path(__file__).resolve().parent.parent

EVALUATION = {
    "codebook_loss": [4.0 + 0.2 * k for k in range(9)], "codebook_top1": [0.17 - 0.015 * k for k in range(9)],
    "codebook_top5": [0.3] * 9, "mean_loss": 4.8, "mean_top1": 0.11, "mean_top5": 0.3, "perplexity": 121.5,
    "num_segments": 12, "segment_length": 64,
}


def saved_checkpoint(folder, base_model=None, preset="hybrid-tiny", evaluation=EVALUATION, **overrides):
    torch.manual_seed(0)
    config = MusicHybridConfig.from_preset(preset, codec=random_codec_identity(3, small=True), **overrides)
    model = MusicHybridForCausalLM(config)
    model.save_pretrained(folder)
    text = write_model_card(
        str(folder), config=model.config, num_parameters=model.num_parameters(), training_arguments={"max_steps": 1},
        evaluation=evaluation, dataset_name="someone/fma-dac-codes", global_step=1, base_model=base_model,
    )
    return text


def test_card_metadata_has_the_pipeline_tag_base_model_datasets_and_per_codebook_results(tmp_path):
    saved_checkpoint(tmp_path, base_model="someone/music-hybrid-116m")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "transformers" and card.data.license == "apache-2.0"
    assert card.data.pipeline_tag == "text-to-audio"
    assert card.data.base_model == "someone/music-hybrid-116m"
    assert card.data.datasets == ["someone/fma-dac-codes"]
    assert {"music-generation", "audio", "mamba", "hybrid"} <= set(card.data.tags)
    results = {result.metric_name: result for result in card.data.eval_results}
    assert len(results) == 9 * 2 + 4
    assert results["codebook 0 loss"].metric_value == 4.0 and results["codebook 8 top-1"].metric_value == 0.05
    assert results["mean loss"].metric_value == 4.8 and results["mean top-5"].metric_value == 0.3
    assert results["perplexity"].dataset_split == "validation"
    assert "continuing from someone/music-hybrid-116m" in card.text


def test_huggingface_hubs_metadata_parser_reads_the_model_index(tmp_path):
    """The plain YAML reader and the model-index parser of huggingface_hub (what the Hub's own tools use) read the
    card as written: one model, its validation results on the dataset, with the task."""
    saved_checkpoint(tmp_path)
    metadata = metadata_load(tmp_path / "README.md")
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "text-to-audio"
    name, results = model_index_to_eval_results(metadata["model-index"])
    assert name.startswith("music-hybrid Mamba/attention hybrid")
    assert {result.task_type for result in results} == {"text-to-audio"}
    assert {result.dataset_name for result in results} == {"someone/fma-dac-codes"}
    assert {result.metric_type for result in results} == {"cross_entropy", "accuracy", "perplexity"}


def test_tags_say_what_the_layers_are_and_the_genre_information_is_a_metric(tmp_path):
    saved_checkpoint(tmp_path / "transformer", preset="transformer-tiny")
    tags = ModelCard.load(tmp_path / "transformer" / "README.md").data.tags
    assert "transformer" in tags and "mamba" not in tags and "hybrid" not in tags
    saved_checkpoint(tmp_path / "mamba", preset="mamba-mc-tiny")
    tags = ModelCard.load(tmp_path / "mamba" / "README.md").data.tags
    assert {"mamba", "memory-caching"} <= set(tags) and "hybrid" not in tags
    information = {
        "num_segments": 4, "codebook_loss_true_genre": [4.0] * 9, "codebook_loss_null_genre": [4.01] * 9,
        "codebook_information": [0.01] * 9, "codebook_information_ci": [[0.0, 0.02]] * 9,
        "codebook_p_value_holm": [0.04] * 9, "mean_information": 0.01234, "mean_information_ci": [0.002, 0.02],
        "confidence": 0.95,
    }
    saved_checkpoint(tmp_path / "genres", genres=["Folk", "Rock"], evaluation={
        **EVALUATION, "genre_information": information,
    })
    card = ModelCard.load(tmp_path / "genres" / "README.md")
    assert "genre-conditioning" in card.data.tags
    results = {result.metric_name: result for result in card.data.eval_results}
    assert results["genre information (nats)"].metric_value == 0.0123


def test_the_card_names_the_docs_pages_of_the_project(tmp_path):
    """Without a Documentation URL in the package metadata the card names the pages of docs/, which exist; with
    one, it links each page under it."""
    text = saved_checkpoint(tmp_path / "plain", genres=["Folk"])
    documentation = text.split("## Documentation", 1)[1].split("\n## ", 1)[0]
    for page in {**DOCUMENTATION_PAGES, **CONDITIONING_PAGE}:
        assert f"`docs/{page}`" in documentation and (ROOT / "docs" / page).is_file()
    metadata = email.message.Message()
    metadata["Project-URL"] = "Source, https://example.org/music-hybrid"
    metadata["Project-URL"] = "Documentation, https://example.org/music-hybrid/docs/"
    with mock.patch.object(importlib.metadata, "metadata", return_value=metadata):
        text = saved_checkpoint(tmp_path / "linked")
    assert "[generation.md](https://example.org/music-hybrid/docs/generation.md)" in text
    assert "conditioning.md" not in text


def test_a_local_base_model_stays_out_of_the_metadata(tmp_path):
    saved_checkpoint(tmp_path, base_model=str(tmp_path))
    assert ModelCard.load(tmp_path / "README.md").data.base_model is None


def test_the_cards_usage_snippet_writes_a_wav_from_the_checkpoint_alone(tmp_path):
    folder = tmp_path / "checkpoint"
    text = saved_checkpoint(folder)
    snippet = re.search(r"## Usage\n\n```python\n(.*?)```", text, re.DOTALL).group(1)
    assert CHECKPOINT_PLACEHOLDER in snippet
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    script = "import warnings; warnings.simplefilter('ignore')\n" + snippet.replace(CHECKPOINT_PLACEHOLDER, str(folder))
    script += "import sys; assert 'modeling_music_hybrid' not in sys.modules and 'data' not in sys.modules\n"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    audio, rate = soundfile.read(tmp_path / "sample.wav")
    assert rate == 44100 and audio.shape == (430 * 512,)
