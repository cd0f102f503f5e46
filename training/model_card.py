"""The README.md model card saved with every exported model: Hub metadata, what the model is, how to use it, metrics."""

from __future__ import annotations

import json
import os
import re

from huggingface_hub import ModelCardData

from training.evaluation import format_metrics_table

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def write_model_card(
    directory: str,
    *,
    config,
    num_parameters: int,
    training_arguments: dict,
    evaluation: dict | None,
    dataset_name: str | None,
    global_step: int | None = None,
) -> str:
    """Write `directory`/README.md and return its text."""
    text = model_card_text(config, num_parameters, training_arguments, evaluation, dataset_name, global_step)
    path = os.path.join(directory, "README.md")
    with open(path + ".tmp", "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(path + ".tmp", path)
    return text


def model_card_text(config, num_parameters, training_arguments, evaluation, dataset_name, global_step) -> str:
    architecture = describe_architecture(config)
    on_hub = dataset_name is not None and HUB_ID.fullmatch(dataset_name) and not os.path.exists(dataset_name)
    metadata = ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        tags=["music-generation", "audio", "dac", "music-hybrid", "mamba", "custom_code"],
        datasets=[dataset_name] if on_hub else None,
        metrics=["cross_entropy", "perplexity", "accuracy"],
    )
    codec = config.codec or {}
    sections = [
        f"---\n{metadata.to_yaml()}\n---",
        f"# music-hybrid: {architecture}",
        f"An autoregressive language model over DAC codec tokens ({config.num_codebooks} codebooks x "
        f"{config.codebook_size} codes, MusicGen delay pattern), {num_parameters / 1e6:.2f}M parameters, "
        f"trained{'' if global_step is None else f' for {global_step} steps'} on "
        f"{dataset_name or 'a tokenized dataset'}.",
        "## Codec\n\nGenerated codes must be decoded with the codec the training codes came from:\n\n"
        + "```json\n" + json.dumps(codec, indent=2) + "\n```"
        + ("\n\nThis is a **randomly initialised** codec: its codes carry no musical meaning and the model's "
           "audio is noise-like. Use it to test the pipeline, not to judge the model."
           if codec.get("backend") == "random" else ""),
        "## Usage\n\n```python\nfrom transformers import AutoModelForCausalLM\n\n"
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder", trust_remote_code=True)\n'
        "codes = model.generate(max_new_tokens=430, do_sample=True, temperature=1.0, top_k=250)  "
        "# (1, 9, frames), 86 frames/s\n"
        "# from processing_music_hybrid import load_codec; audio = load_codec(model.config.codec).decode(codes)\n```",
        "## Validation metrics\n\n" + (format_metrics_table(evaluation) if evaluation else "Not evaluated."),
        "## Configuration\n\n```json\n" + config.to_json_string(use_diff=False) + "```",
        "## Training arguments\n\n```json\n" + json.dumps(training_arguments, indent=2, default=str) + "\n```",
    ]
    return "\n\n".join(sections) + "\n"


def describe_architecture(config) -> str:
    attention = sum(layer == "full_attention" for layer in config.layer_types)
    mamba = len(config.layer_types) - attention
    if mamba == 0:
        kind = "Transformer"
    elif attention == 0:
        kind = "Mamba"
    else:
        kind = f"Mamba/attention hybrid ({mamba} Mamba + {attention} attention layers)"
    return f"{kind}, {len(config.layer_types)} layers, d_model {config.hidden_size}"
