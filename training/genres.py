"""Genre conditioning of a training run: the genre list of the model config and how the dataset's genres map to it.

A new conditional model (--genre_conditioning) takes its genres from the training split's `genre` column, sorted;
a model or checkpoint that is already conditional keeps its own list, so that its genre ids keep their meaning.
Rows without a genre, or with one that is not in the list (a validation genre unseen in training, a new dataset
for an old model), get the null genre, and the run says how many.
"""

from __future__ import annotations

from collections import Counter

DEFAULT_CONDITION_DROPOUT = 0.1


def configure_genres(config, model_args, splits: dict, train_split_name: str, checkpoint_config=None) -> list[str]:
    """Set config.genres / config.condition_dropout for this run; return the lines to print about the mapping.

    A conditional model continued from a checkpoint (`checkpoint_config`) or from --model_name_or_path (already in
    `config`) keeps its genres and condition dropout. Raises ValueError for a request that cannot be met.
    """
    kept = next((c for c in (checkpoint_config, config) if c is not None and c.genres is not None), None)
    if kept is not None:
        config.genres, config.condition_dropout = list(kept.genres), kept.condition_dropout
    elif model_args.genre_conditioning:
        if train_split_name not in splits:
            raise ValueError("--genre_conditioning builds the genre list from the training split: pass --do_train")
        config.genres = dataset_genres(splits[train_split_name])
        if not config.genres:
            raise ValueError(
                f"--genre_conditioning needs genre labels, but no row of the {train_split_name!r} split has a genre"
            )
        config.condition_dropout = DEFAULT_CONDITION_DROPOUT
    if config.genres is None:
        return []
    if model_args.condition_dropout is not None:
        config.condition_dropout = model_args.condition_dropout
    origin = "kept from the model" if kept is not None else f"from the {train_split_name!r} split"
    lines = [
        f"Genre conditioning: {len(config.genres)} genres {origin} ({', '.join(config.genres)}), condition dropout "
        f"{config.condition_dropout}"
    ]
    lines += [line for name, split in splits.items() if (line := null_genre_report(split, config.genres, name))]
    return lines


def dataset_genres(split) -> list[str]:
    return sorted({genre for genre in split["genre"] if genre})


def null_genre_report(split, genres: list[str], split_name: str) -> str | None:
    """A line saying how many of the split's genres and rows map to the null genre, or None when none do."""
    genre_rows = Counter(split["genre"])
    unknown = sorted(genre for genre in genre_rows if genre and genre not in genres)
    unlabelled = genre_rows.get(None, 0) + genre_rows.get("", 0)
    if not unknown and not unlabelled:
        return None
    parts = []
    if unknown:
        rows = sum(genre_rows[genre] for genre in unknown)
        parts.append(f"{len(unknown)} genre(s) the model does not know ({', '.join(unknown)}; {rows} rows)")
    if unlabelled:
        parts.append(f"{unlabelled} rows without a genre")
    return f"  {split_name!r} split: {' and '.join(parts)} use the null genre"
