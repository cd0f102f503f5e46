"""The conditions of a training run, each the same way: which ones the model has, every row's value, the null value a
dropped or missing condition takes, and how a batch hands them to forward().

A conditional model's training examples carry their conditions (genre, description); condition dropout replaces
all of an example's conditions by their null values at once (training/crops.py draws which examples, from its own
generator). Evaluation scores each condition's information by running the segments once more with that condition
null (training/evaluation.py). Genres and descriptions differ only in the TrainingCondition entries below.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

from conditions_music_hybrid import NULL_DESCRIPTION, tokenize_descriptions
from training.genres import configure_genres
from training.text_conditioning import configure_text


@dataclass(frozen=True)
class TrainingCondition:
    name: str  # names the evaluation entry (f"{name}_information") and its columns
    described_as: str  # what one value is, in the tables: "genre", "description"
    row_values: list  # one value per row of a split (the null value where the row has none the model knows)
    null_value: object
    collate: Callable[[list], dict]  # values of a batch's rows -> forward() keyword arguments

    def known_rows(self) -> list[bool]:
        """Rows with a value of their own: the only ones whose information evaluation can measure."""
        return [value != self.null_value for value in self.row_values]


def training_conditions(codes_dataset, model) -> list[TrainingCondition]:
    """The conditions of `model` (unwrapped) over the rows of `codes_dataset` ([] for an unconditional model)."""
    config = model.config
    conditions = []
    if config.genres is not None:
        genre_ids = [
            config.null_genre_id if genre not in config.genres else config.genres.index(genre)
            for genre in codes_dataset["genre"]
        ]
        conditions.append(TrainingCondition("genre", "genre", genre_ids, config.null_genre_id, collate_genre_ids))
    if config.text_encoder is not None:
        texts = [text or NULL_DESCRIPTION for text in codes_dataset["text"]]
        # the model's own tokenizer, the one generate() uses; a partial, so that worker processes can unpickle it
        collate = functools.partial(collate_descriptions, model.text_tokenizer, config.max_text_length)
        conditions.append(TrainingCondition("text", "description", texts, NULL_DESCRIPTION, collate))
    return conditions


def collate_genre_ids(values) -> dict:
    return {"genre_ids": torch.tensor(values, dtype=torch.long)}


def collate_descriptions(tokenizer, max_length: int, values) -> dict:
    return dict(tokenize_descriptions(tokenizer, list(values), max_length))


def configure_conditions(config, model_args, splits: dict, train_split_name: str, checkpoint_config=None) -> list:
    """Set the conditions of this run's model config (genres, text encoder, condition dropout) from the flags and
    from the model or checkpoint it continues; return the lines to print. Raises ValueError for a request that
    cannot be met."""
    lines = configure_genres(config, model_args, splits, train_split_name, checkpoint_config)
    lines += configure_text(config, model_args, splits, train_split_name, checkpoint_config)
    if config.genres is None and config.text_encoder is None:
        if model_args.condition_dropout is not None:
            raise ValueError("--condition_dropout needs a conditioned model: pass --genre_conditioning or "
                             "--text_conditioning")
        return []
    config.validate_fields()
    return lines
