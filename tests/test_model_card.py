"""The model card: Hub metadata a stranger's tools read (pipeline tag, base model, datasets, model-index), and a
usage snippet that turns the checkpoint folder alone into a WAV file."""

import os
import re
import subprocess
import sys

import soundfile
import torch
from huggingface_hub import ModelCard

from configuration_music_hybrid import MusicHybridConfig
from modeling_music_hybrid import MusicHybridForCausalLM
from processing_music_hybrid import random_codec_identity
from training.model_card import CHECKPOINT_PLACEHOLDER, write_model_card

EVALUATION = {
    "codebook_loss": [4.0 + 0.2 * k for k in range(9)], "codebook_top1": [0.17 - 0.015 * k for k in range(9)],
    "codebook_top5": [0.3] * 9, "mean_loss": 4.8, "mean_top1": 0.11, "mean_top5": 0.3, "perplexity": 121.5,
    "num_segments": 12, "segment_length": 64,
}


def saved_checkpoint(folder, base_model=None):
    torch.manual_seed(0)
    config = MusicHybridConfig.from_preset("hybrid-tiny", codec=random_codec_identity(3, small=True))
    model = MusicHybridForCausalLM(config)
    model.save_pretrained(folder)
    text = write_model_card(
        str(folder), config=model.config, num_parameters=model.num_parameters(), training_arguments={"max_steps": 1},
        evaluation=EVALUATION, dataset_name="someone/fma-dac-codes", global_step=1, base_model=base_model,
    )
    return text


def test_card_metadata_has_the_pipeline_tag_base_model_datasets_and_per_codebook_results(tmp_path):
    saved_checkpoint(tmp_path, base_model="someone/music-hybrid-116m")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.pipeline_tag == "text-to-audio"
    assert card.data.base_model == "someone/music-hybrid-116m"
    assert card.data.datasets == ["someone/fma-dac-codes"]
    results = {result.metric_name: result for result in card.data.eval_results}
    assert len(results) == 9 * 2 + 3
    assert results["codebook 0 loss"].metric_value == 4.0 and results["codebook 8 top-1"].metric_value == 0.05
    assert results["perplexity"].dataset_split == "validation"
    assert "continuing from someone/music-hybrid-116m" in card.text


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
