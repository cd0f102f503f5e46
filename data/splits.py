"""Which split a track goes to. Always decided per track id (never per segment), so the
segments of one track never straddle train and validation, and the same (track id, seed)
lands in the same split whatever else is in the collection (except the one-track minimum
of a tiny collection's validation split)."""

import csv
import hashlib
import json
from pathlib import Path

SPLIT_MODES = ("random", "fma", "file")


def _hash_fraction(track_id, seed):
    digest = hashlib.sha256(f"{seed}:{track_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def random_split(track_ids, seed=0, validation_fraction=0.1):
    """{track_id: "train" | "validation"}: validation when the hash of (seed, id) falls below
    `validation_fraction`. If that leaves validation empty (a handful of tracks), the track
    whose hash is lowest goes there, so a small collection can still be evaluated."""
    fractions = {track_id: _hash_fraction(track_id, seed) for track_id in track_ids}
    splits = {track_id: "train" for track_id in fractions}
    splits |= {track_id: "validation" for track_id, fraction in fractions.items() if fraction < validation_fraction}
    if len(splits) >= 2 and "validation" not in splits.values():
        splits[min(fractions, key=fractions.get)] = "validation"
    return splits


def read_split_file(path):
    """{track_id: split} from a JSON file {split: [track ids]} or a CSV/TSV of track_id,split rows
    (a header row naming track_id is skipped)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ValueError(f"cannot read split file {path}: {error.strerror}") from error
    if path.suffix == ".json":
        try:
            ids_by_split = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"split file {path} is not valid JSON: {error}") from error
        if not isinstance(ids_by_split, dict) or not all(isinstance(ids, list) for ids in ids_by_split.values()):
            raise ValueError(f"split file {path} must hold {{split name: [track ids]}}")
        pairs = [(str(track_id), split) for split, ids in ids_by_split.items() for track_id in ids]
    else:
        dialect = "excel-tab" if path.suffix == ".tsv" else "excel"
        rows = [row for row in csv.reader(text.splitlines(), dialect) if row and row[0] != "track_id"]
        if any(len(row) < 2 or not row[1] for row in rows):
            raise ValueError(f"split file {path}: every row must be track_id,split")
        pairs = [(row[0], row[1]) for row in rows]
    splits = {}
    for track_id, split in pairs:
        if splits.setdefault(track_id, split) != split:
            raise ValueError(f"split file {path} puts track {track_id!r} in both {splits[track_id]!r} and {split!r}")
    return splits


def make_split_assigner(mode="random", seed=0, validation_fraction=0.1, fma_metadata=None, split_file=None):
    """(assign, split names, rule): assign(track_ids) gives {track_id: split name, or None for
    a track the chosen split leaves out}."""
    if mode == "random":
        if not 0 < validation_fraction < 1:
            raise ValueError(f"--validation_fraction must be between 0 and 1, got {validation_fraction}")
        rule = (
            f"by track id: sha256('{seed}:' + track_id) puts {validation_fraction:.0%} of tracks in validation "
            "(at least one)"
        )
        return (lambda track_ids: random_split(track_ids, seed, validation_fraction)), ["train", "validation"], rule
    if mode == "fma":
        from .sources import read_fma_metadata

        if not fma_metadata:
            raise ValueError("--split_mode fma needs FMA's tracks.csv (--fma_metadata)")
        metadata = read_fma_metadata(fma_metadata)
        rule = "FMA's own split (tracks.csv column ('set', 'split')); tracks without one are left out"
        fma_splits = {track_id: info["split"] for track_id, info in metadata.items()}
        return _lookup(fma_splits), ["training", "validation", "test"], rule
    if mode == "file":
        if not split_file:
            raise ValueError("--split_mode file needs --split_file")
        splits = read_split_file(split_file)
        rule = f"from the split file {Path(split_file).name}; tracks it does not list are left out"
        return _lookup(splits), list(dict.fromkeys(splits.values())), rule
    raise ValueError(f"unknown split mode {mode!r}; choose from {SPLIT_MODES}")


def _lookup(splits):
    return lambda track_ids: {track_id: splits.get(track_id) for track_id in track_ids}
