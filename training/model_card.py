"""The README.md model card saved with every exported model, in the Hub's layout: YAML metadata (library, pipeline
tag, tags, datasets, base model, model-index metrics), then what the model is, how to use it, where the project's
documentation is, and the metrics."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from training.evaluation import format_metrics_table

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
# The Hub has no pipeline tag for unconditional (or genre-conditioned) audio generation. text-to-audio is the task
# under which it lists music generators (MusicGen, whose transformers pipeline is "text-to-audio"), so a search for
# audio generation finds the model there; the other audio tags take audio in (audio-to-audio, audio-classification)
# or are speech (text-to-speech). The tag drives no widget here: the model runs as remote code, as the usage shows.
PIPELINE_TAG = "text-to-audio"
# The project's pages a user of a checkpoint needs, in docs/ of the source repository.
DOCUMENTATION_PAGES = {
    "generation.md": "generating audio: prompts, sampling, streaming, long form, int8 on CPU",
    "model.md": "the model from Python, its presets and what each transformers API does with it",
    "training.md": "training, resuming and the published reproduction recipes",
    "evaluation.md": "comparing models on the same segments, the Frechet Audio Distance",
}
CONDITIONING_PAGE = {"conditioning.md": "genre and text conditioning and classifier-free guidance"}
# The usage snippet's checkpoint: this folder, or the Hub repository it was pushed to.
CHECKPOINT_PLACEHOLDER = "path/to/this/folder"


def write_model_card(
    directory: str,
    *,
    config,
    num_parameters: int,
    training_arguments: dict,
    evaluation: dict | None,
    dataset_name: str | None,
    global_step: int | None = None,
    base_model: str | None = None,
) -> str:
    """Write `directory`/README.md (huggingface_hub's ModelCard) and return its text. base_model: the checkpoint
    training continued from (a Hub id goes into the metadata, a local folder only into the text)."""
    text = model_card_text(
        config, num_parameters, training_arguments, evaluation, dataset_name, global_step, base_model
    )
    path = os.path.join(directory, "README.md")
    ModelCard(text).save(path + ".tmp")
    os.replace(path + ".tmp", path)
    return text


def on_the_hub(name: str | None) -> bool:
    return name is not None and HUB_ID.fullmatch(name) is not None and not os.path.exists(name)


def model_card_text(
    config, num_parameters, training_arguments, evaluation, dataset_name, global_step, base_model=None
) -> str:
    architecture = describe_architecture(config)
    metadata = ModelCardData(
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        license="apache-2.0",
        tags=card_tags(config),
        datasets=[dataset_name] if on_the_hub(dataset_name) else None,
        base_model=base_model if on_the_hub(base_model) else None,
        metrics=["cross_entropy", "perplexity", "accuracy"],
        model_name=f"music-hybrid {architecture}" if evaluation else None,
        eval_results=validation_results(evaluation, dataset_name) if evaluation else None,
    )
    codec = config.codec or {}
    continued = "" if base_model is None else f", continuing from {base_model}"
    sections = [
        f"---\n{metadata.to_yaml()}\n---",
        f"# music-hybrid: {architecture}",
        f"An autoregressive language model over DAC codec tokens ({config.num_codebooks} codebooks x "
        f"{config.codebook_size} codes, MusicGen delay pattern), {num_parameters / 1e6:.2f}M parameters, "
        f"trained{'' if global_step is None else f' for {global_step} steps'} on "
        f"{dataset_name or 'a tokenized dataset'}{continued}.",
        "## Codec\n\nGenerated codes must be decoded with the codec the training codes came from:\n\n"
        + "```json\n" + json.dumps(codec, indent=2) + "\n```"
        + ("\n\nThis is a **randomly initialised** codec: its codes carry no musical meaning and the model's "
           "audio is noise-like. Use it to test the pipeline, not to judge the model."
           if codec.get("backend") == "random" else "")
        + ("\n\nThe codec was **fitted** to the training audio (an offline, small-data codec with DAC's token layout, "
           "not DAC): its parameters, `codec_fitted.safetensors`, are in this repository beside the weights."
           if codec.get("backend") == "fitted" else ""),
        "## Usage\n\n" + usage_snippet(),
        *([genres_section(config)] if config.genres is not None else []),
        *([text_section(config, evaluation)] if reads_text(config) else []),
        documentation_section(config),
        "## Validation metrics\n\n" + (format_metrics_table(evaluation) if evaluation else "Not evaluated."),
        "## Configuration\n\n```json\n" + config.to_json_string(use_diff=False) + "```",
        "## Training arguments\n\n```json\n" + json.dumps(training_arguments, indent=2, default=str) + "\n```",
    ]
    return "\n\n".join(sections) + "\n"


def usage_snippet() -> str:
    """Hub (or folder) to WAV with nothing of this repository: the checkpoint ships its code and its codec."""
    return (
        "```python\nimport soundfile\nfrom transformers import AutoModelForCausalLM\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{CHECKPOINT_PLACEHOLDER}", trust_remote_code=True)\n'
        "codes = model.generate(max_new_tokens=430)  # (1, 9, 430): 5 s at 86 frames/s, sampled with top-k 250\n"
        "audio = model.decode_audio(codes)  # (1, samples), float32, by the codec below (downloaded on first use)\n"
        'soundfile.write("sample.wav", audio[0].numpy(), model.config.codec["sample_rate"])\n'
        "# A continuation: prompt = model.encode_audio(waveform, sampling_rate); model.generate(prompt, ...)\n```"
    )


def card_tags(config) -> list[str]:
    """Hub tags: task, modality and codec, then what the layers are (each recurrent mixer kind, e.g. "mamba", and
    "hybrid" beside attention), so that a search for "mamba" or "hybrid" finds the hybrids and not the Transformers."""
    recurrent = [kind.replace("_", "-") for kind in layer_kinds(config) if kind != "attention"]
    architecture = ["transformer"] if not recurrent else recurrent + (["hybrid"] if config.num_attention_layers else [])
    return [
        "music-generation", "audio", "dac", "music-hybrid", *architecture,
        *(["memory-caching"] if config.mamba_memory else []),
        *(["genre-conditioning"] if config.genres is not None else []),
        *(["text-conditioning"] if reads_text(config) else []),
        "custom_code",
    ]


def documentation_section(config) -> str:
    """Links to the project's docs pages under the "Documentation" URL that pyproject.toml's [project.urls] gives the
    installed package; without one, the pages are named in the source repository's docs/ folder."""
    conditional = config.genres is not None or reads_text(config)
    pages = {**DOCUMENTATION_PAGES, **(CONDITIONING_PAGE if conditional else {})}
    url = documentation_url()
    where = "" if url else " (the `docs/` folder of its source repository)"
    lines = [f"- [{page}]({url}/{page}): {topic}" if url else f"- `docs/{page}`: {topic}"
             for page, topic in pages.items()]
    return f"## Documentation\n\nMade with music-hybrid; its documentation{where}:\n\n" + "\n".join(lines)


def documentation_url() -> str | None:
    try:
        project_urls = importlib.metadata.metadata("music-hybrid").get_all("Project-URL") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in project_urls:
        label, _, url = entry.partition(",")
        if label.strip().lower() == "documentation":
            return url.strip().rstrip("/")
    return None


def validation_results(evaluation: dict, dataset_name: str | None) -> list[EvalResult]:
    """The model-index entries: loss and top-1 accuracy of every codebook, their means, top-5, the perplexity and,
    for a conditional model, each condition's information (null minus true loss: genre, text)."""
    dataset = dict(
        task_type=PIPELINE_TAG, dataset_type=dataset_name if on_the_hub(dataset_name) else "local",
        dataset_name=dataset_name or "tokenized dataset", dataset_split="validation",
    )
    results = []
    for codebook, (loss, top1) in enumerate(zip(evaluation["codebook_loss"], evaluation["codebook_top1"], strict=True)):
        results.append(EvalResult(metric_type="cross_entropy", metric_name=f"codebook {codebook} loss",
                                  metric_value=round(loss, 4), **dataset))
        results.append(EvalResult(metric_type="accuracy", metric_name=f"codebook {codebook} top-1",
                                  metric_value=round(top1, 4), **dataset))
    results.append(EvalResult(metric_type="cross_entropy", metric_name="mean loss",
                              metric_value=round(evaluation["mean_loss"], 4), **dataset))
    results.append(EvalResult(metric_type="accuracy", metric_name="mean top-1",
                              metric_value=round(evaluation["mean_top1"], 4), **dataset))
    results.append(EvalResult(metric_type="accuracy", metric_name="mean top-5",
                              metric_value=round(evaluation["mean_top5"], 4), **dataset))
    results.append(EvalResult(metric_type="perplexity", metric_name="perplexity",
                              metric_value=round(evaluation["perplexity"], 4), **dataset))
    for key, information in evaluation.items():
        if key.endswith("_information") and information.get("num_segments"):
            name = key.removesuffix("_information")
            results.append(EvalResult(metric_type=key, metric_name=f"{name} information (nats)",
                                      metric_value=round(information["mean_information"], 4), **dataset))
    return results


def genres_section(config) -> str:
    return (
        f"## Genres\n\nConditioned on {len(config.genres)} genres (trained with condition dropout "
        f"{config.condition_dropout}): {', '.join(config.genres)}. Sample one with classifier-free guidance:\n\n"
        f"```python\ncodes = model.generate(max_new_tokens=430, genre={config.genres[0]!r}, guidance_scale=3.0)\n```"
    )


def reads_text(config) -> bool:
    return config.text_encoder is not None


def text_section(config, evaluation: dict | None) -> str:
    """How to describe the music to a text-conditioned model, and how much its descriptions told it."""
    information = (evaluation or {}).get("text_information", {})
    measured = ""
    if information.get("num_segments"):
        low, high = information["mean_information_ci"]
        measured = (
            f" On the validation segments, the true description lowers the loss by "
            f"{information['mean_information']:.4f} nats per token ({information['confidence']:.0%} interval "
            f"[{low:.4f}, {high:.4f}]) against the empty one (the text information, below)."
        )
    return (
        f"## Text\n\nConditioned on descriptions read by the text encoder `{config.text_encoder}` through "
        f"cross-attention (its weights and tokenizer ship in this folder; trained with condition dropout "
        f"{config.condition_dropout}).{measured} Sample with classifier-free guidance:\n\n"
        "```python\ncodes = model.generate(max_new_tokens=430, text=\"a calm piano ballad in D minor\", "
        "guidance_scale=3.0)\n```"
    )


def layer_kinds(config) -> dict:
    """{mixer kind: its number of layers}, in the order of the first layer of each kind."""
    return {kind: config.mixer_types.count(kind) for kind in dict.fromkeys(config.mixer_types)}


def describe_architecture(config) -> str:
    kinds = layer_kinds(config)
    names = {"attention": "attention", "mamba": "Mamba"}
    if set(kinds) == {"attention"}:
        kind = "Transformer"
    elif len(kinds) == 1:
        kind = names.get(*kinds, *kinds)
    else:
        recurrent = "/".join(names.get(name, name) for name in kinds if name != "attention")
        counts = " + ".join(f"{count} {names.get(name, name)}" for name, count in kinds.items())
        kind = f"{recurrent}/attention hybrid ({counts} layers)"
    return f"{kind}, {len(config.layer_types)} layers, d_model {config.hidden_size}"
