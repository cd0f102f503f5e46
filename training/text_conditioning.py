"""Text conditioning of a training run: which text encoder the model reads descriptions with, and how many rows of
each split have a description (the dataset's `text` column; see docs/data.md).

A new model (--text_conditioning) gets the encoder named by --text_encoder (T5 by default, as MusicGen); a model or
checkpoint that already reads text keeps its own encoder (its weights and tokenizer are in the checkpoint), so
--text_encoder naming another one is refused. Rows without a description train and evaluate with the null
description, and the run says how many.
"""

from __future__ import annotations

from configuration_music_hybrid import read_text_encoder_config
from training.genres import DEFAULT_CONDITION_DROPOUT

DEFAULT_TEXT_ENCODER = "google-t5/t5-base"  # MusicGen's text encoder
# What a text-conditioned config carries about its encoder, copied whole from a checkpoint that is continued.
TEXT_FIELDS = ("text_encoder", "text_encoder_config", "train_text_encoder", "max_text_length")


def configure_text(config, model_args, splits: dict, train_split_name: str, checkpoint_config=None) -> list[str]:
    """Set the text encoder of this run's model config and its condition dropout; return the lines to print.

    A text-conditioned model continued from a checkpoint (`checkpoint_config`) or from --model_name_or_path
    (already in `config`) keeps its encoder. Raises ValueError for a request that cannot be met."""
    kept = next((c for c in (checkpoint_config, config) if c is not None and c.text_encoder is not None), None)
    if kept is not None:
        if model_args.text_encoder and model_args.text_encoder != kept.text_encoder:
            raise ValueError(
                f"the model reads text with {kept.text_encoder!r}, and continuing keeps its encoder: drop "
                f"--text_encoder {model_args.text_encoder!r} (or train a new model)"
            )
        for name in TEXT_FIELDS:
            setattr(config, name, getattr(kept, name))
        config.condition_dropout = kept.condition_dropout
    elif model_args.text_conditioning:
        if train_split_name not in splits:
            raise ValueError("--text_conditioning trains a text-conditioned model: pass --do_train")
        if not any(splits[train_split_name]["text"]):
            raise ValueError(
                f"--text_conditioning needs descriptions, but no row of the {train_split_name!r} split has one (its "
                "`text` column is empty): build the dataset with --text_column, or from FMA or the procedural source"
            )
        config.text_encoder = model_args.text_encoder or DEFAULT_TEXT_ENCODER
        config.text_encoder_config = read_text_encoder_config(config.text_encoder)  # ValueError when unloadable
        config.condition_dropout = config.condition_dropout or DEFAULT_CONDITION_DROPOUT
    else:
        return []
    if model_args.condition_dropout is not None:
        config.condition_dropout = model_args.condition_dropout
    origin = "kept from the model" if kept is not None else "new"
    lines = [f"Text conditioning: encoder {config.text_encoder} ({origin}), condition dropout {config.condition_dropout}"]
    for name, split in splits.items():
        missing = sum(not text for text in split["text"])
        if missing:
            lines.append(f"  {name!r} split: {missing} of {len(split)} rows have no description and use the null one")
    return lines
