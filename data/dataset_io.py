"""The codes dataset on disk and on the Hub: its fixed schema, the codec identity stored
beside it (codec.json), its dataset card, and save / load / push.

The `text` column (a description of the track) is newer than the others: a dataset saved before it existed loads
with the column added, empty, so every reader sees one schema."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import DatasetDict, Features, List, Value, load_dataset

from codec_fitted_music_hybrid import PARAMETERS_FILE
from processing_music_hybrid import NUM_CODEBOOKS, check_identity, load_codec, save_codec_files

CODES_FEATURES = Features(
    {
        "codes": List(List(Value("int16")), length=NUM_CODEBOOKS),  # (9, T), natural (undelayed) layout
        "track_id": Value("string"),
        "start_frame": Value("int64"),
        "num_frames": Value("int64"),
        "duration": Value("float32"),
        "genre": Value("string"),
        "source": Value("string"),
        "text": Value("string"),  # a description in words, where the source has one (see data/sources.py)
    }
)
CODEC_FILE = "codec.json"
CARD_FILE = "README.md"


def codes_table(rows):
    """An Arrow table with CODES_FEATURES' schema from row dicts whose codes are (9, T) arrays,
    built from flat numpy buffers (no per-token Python objects)."""
    codes = [np.asarray(row["codes"], dtype=np.int16) for row in rows]
    if any(code.ndim != 2 or code.shape[0] != NUM_CODEBOOKS for code in codes):
        raise ValueError(f"codes must have shape ({NUM_CODEBOOKS}, frames)")
    lengths = np.repeat([code.shape[1] for code in codes], NUM_CODEBOOKS)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = np.concatenate([code.reshape(-1) for code in codes]) if codes else np.zeros(0, np.int16)
    per_codebook = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.int16()))
    schema = CODES_FEATURES.arrow_schema
    columns = {"codes": pa.FixedSizeListArray.from_arrays(per_codebook, NUM_CODEBOOKS)}
    for name in CODES_FEATURES:
        if name != "codes":
            columns[name] = pa.array([row[name] for row in rows], type=schema.field(name).type)
    return pa.table(columns, schema=schema)


def save_codes_dataset(dataset_dict, path, identity, card=None, codec_location=None):
    """save_to_disk plus codec.json, the codec's own files (a fitted codec's parameters, found through
    `codec_location` when this process has not seen them) and a dataset card. The new copy is written aside and
    moved in; dataset_dict.json goes last, so a folder that has it holds a complete dataset."""
    check_identity(identity)
    for split, dataset in dataset_dict.items():
        if dataset.features != CODES_FEATURES:
            raise ValueError(f"split {split!r} does not have the codes schema: {dataset.features}")
    for dataset in dataset_dict.values():  # also in each split's info, for readers of the Arrow files alone
        dataset.info.description = f"DAC codes (music-hybrid). Codec identity: {json.dumps(identity)}"
    path = Path(path)
    staging = path / ".saving"
    shutil.rmtree(staging, ignore_errors=True)
    dataset_dict.save_to_disk(str(staging))
    (staging / CODEC_FILE).write_text(json.dumps(identity, indent=2) + "\n")
    save_codec_files(identity, staging, codec_location)
    (staging / CARD_FILE).write_text(card or dataset_card(dataset_dict, identity))
    index = path / "dataset_dict.json"
    old_splits = json.loads(index.read_text())["splits"] if index.exists() else []
    index.unlink(missing_ok=True)
    for name in set(old_splits) - set(dataset_dict):
        shutil.rmtree(path / name, ignore_errors=True)
    for entry in sorted(staging.iterdir(), key=lambda entry: entry.name == "dataset_dict.json"):
        target = path / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()


def load_codes_dataset(path_or_hub_id, revision=None):
    """(DatasetDict, codec identity) from a local folder written by save_codes_dataset or a Hub id."""
    path = Path(path_or_hub_id)
    if path.exists():
        if not (path / "dataset_dict.json").exists():
            raise ValueError(f"{path} holds no finished codes dataset (no dataset_dict.json)")
        if not (path / CODEC_FILE).exists():
            raise ValueError(f"{path} has no {CODEC_FILE}: not a codes dataset written by data.build_dataset")
        dataset_dict = DatasetDict.load_from_disk(str(path))
        identity = json.loads((path / CODEC_FILE).read_text())
    else:
        from huggingface_hub import hf_hub_download

        try:
            dataset_dict = load_dataset(str(path_or_hub_id), revision=revision)
            codec_path = hf_hub_download(str(path_or_hub_id), CODEC_FILE, repo_type="dataset", revision=revision)
        except Exception as error:  # not found, no network, no codec.json: one message
            raise ValueError(f"cannot load codes dataset {path_or_hub_id!r} from the Hub: {error}") from error
        identity = json.loads(Path(codec_path).read_text())
    check_identity(identity)
    if identity["backend"] == "fitted":  # its parameters must be there, and be the ones codec.json names
        load_codec(identity, device="cpu", location=path_or_hub_id)
    return DatasetDict({name: with_text_column(split) for name, split in dataset_dict.items()}), identity


def with_text_column(dataset):
    """`dataset` with CODES_FEATURES' text column, empty where it was saved without one."""
    if "text" in dataset.column_names:
        return dataset
    return dataset.add_column("text", [None] * len(dataset), feature=CODES_FEATURES["text"])


def push_codes_dataset(path, repo_id, private=False):
    """Push a saved codes dataset to the Hub with its codec.json and card (the card's text
    replaces the generated one; the metadata push_to_hub writes is kept)."""
    from huggingface_hub import DatasetCard, HfApi

    dataset_dict, _ = load_codes_dataset(path)
    dataset_dict.push_to_hub(repo_id, private=private)
    for name in [CODEC_FILE] + [PARAMETERS_FILE] * (Path(path) / PARAMETERS_FILE).is_file():
        HfApi().upload_file(
            path_or_fileobj=str(Path(path) / name), path_in_repo=name, repo_id=repo_id, repo_type="dataset"
        )
    card = DatasetCard.load(repo_id, repo_type="dataset")
    card.text = DatasetCard((Path(path) / CARD_FILE).read_text()).text
    card.push_to_hub(repo_id, repo_type="dataset")


def description_lines(dataset_dict):
    """The card's paragraph on the `text` column: how many rows have a description, and the first one."""
    texts = [text for split in dataset_dict.values() for text in split["text"]]
    described = [text for text in texts if text]
    if not described:
        return ["", "**Descriptions:** none (the `text` column is empty)."]
    return ["", f"**Descriptions** (`text`): {len(described)} of {len(texts)} rows, e.g. \"{described[0]}\"."]


def dataset_card(dataset_dict, identity, source="unknown", split_rule="unknown", reject_counts=None, notes=()):
    """Markdown card: source, counts and hours per split, codec, split rule, rejects."""
    described = any(text for split in dataset_dict.values() for text in split["text"])
    lines = [
        "---",
        f"tags: [audio, music, dac, audio-tokens{', music-descriptions' if described else ''}]",
        "---",
        f"# DAC codes of {source}",
        "",
        "Discrete audio codes for autoregressive music models (music-hybrid). Each row is a track",
        "or a segment of one: `codes` int16 (9, T) in natural (undelayed) layout, 86.13 frames/s, with its",
        "track's `genre` and description in words (`text`) where the source has them.",
        "",
        "| split | tracks | rows | frames | hours |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for split, dataset in dataset_dict.items():
        hours = float(np.sum(dataset["duration"], dtype=np.float64)) / 3600 if len(dataset) else 0.0
        frames = int(np.sum(dataset["num_frames"])) if len(dataset) else 0
        lines.append(f"| {split} | {len(set(dataset['track_id']))} | {len(dataset)} | {frames} | {hours:.3f} |")
    lines += ["", f"**Split rule:** {split_rule}", "", "**Codec** (also in `codec.json`):", "", "```json"]
    lines += [json.dumps(identity, indent=2), "```"]
    if identity["backend"] == "random":
        lines += ["", "The codec has RANDOM weights: these codes carry no musical meaning (tests and demos only)."]
    if identity["backend"] == "fitted":
        lines += ["", "The codec was fitted to this dataset's training audio (codec_fitted_music_hybrid.py, parameters "
                  "in codec_fitted.safetensors): an offline, small-data codec, not a replacement for DAC."]
    lines += description_lines(dataset_dict)
    if reject_counts is not None:
        counts = ", ".join(f"{reason} {count}" for reason, count in reject_counts.items())
        lines += ["", f"**Rejected inputs** (see rejects.jsonl): {counts}"]
    lines += [f"\n{note}" for note in notes]
    lines += [
        "",
        "## Load",
        "",
        "```python",
        "from data.dataset_io import load_codes_dataset",
        "dataset, codec_identity = load_codes_dataset(PATH_OR_HUB_ID)",
        'codes = dataset["train"].with_format("numpy")[0]["codes"]  # (9, T)',
        "```",
        "",
    ]
    return "\n".join(lines)
