"""Small tokenized datasets in the data pipeline's schema, and tiny training command lines, for the training tests."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from datasets import Dataset, DatasetDict

from data.dataset_io import CODES_FEATURES, save_codes_dataset

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_codec(seed: int = 0) -> dict:
    from processing_music_hybrid import random_codec_identity

    return random_codec_identity(seed=seed, small=True)


def synthetic_split(lengths, prefix: str) -> Dataset:
    """Tracks of learnable codes: codebook k of track i counts up with stride k + 1 from i, modulo 32."""
    codes = [
        np.stack([(np.arange(length) * (k + 1) + i) % 32 for k in range(9)]).astype(np.int16)
        for i, length in enumerate(lengths)
    ]
    return Dataset.from_dict(
        {
            "codes": codes,
            "track_id": [f"{prefix}{i:03d}" for i in range(len(lengths))],
            "start_frame": [0] * len(lengths),
            "num_frames": [int(length) for length in lengths],
            "duration": [length * 512 / 44100 for length in lengths],
            "genre": ["Electronic"] * len(lengths),
            "source": ["synthetic"] * len(lengths),
            "text": [None] * len(lengths),
        },
        features=CODES_FEATURES,
    )


def make_codes_dataset(path, train_lengths=(40, 90, 70, 120, 25, 60, 100, 80), validation_lengths=(70, 130, 45),
                       codec=None) -> str:
    """Save a train/validation codes dataset with its codec identity the way the data pipeline does."""
    splits = DatasetDict(
        train=synthetic_split(train_lengths, "train-"), validation=synthetic_split(validation_lengths, "valid-")
    )
    save_codes_dataset(splits, str(path), codec if codec is not None else random_codec())
    return str(path)


def training_argv(dataset: str, output_dir, **options) -> list[str]:
    """A tiny, fast training command line; keyword options override or add `--name value` pairs."""
    defaults = {
        "model_preset": "hybrid-tiny",
        "dataset_name": dataset,
        "output_dir": str(output_dir),
        "do_train": True,
        "segment_length": 64,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "max_steps": 6,
        "learning_rate": 3e-3,
        "warmup_steps": 2,
        "logging_steps": 1,
        "save_steps": 100,
        "disable_tqdm": True,
    }
    argv = []
    for name, value in {**defaults, **options}.items():
        if value is None or value is False:
            continue
        argv += [f"--{name}"] if value is True else [f"--{name}", str(value)]
    return argv


def read_log(output_dir) -> list[dict]:
    with open(os.path.join(output_dir, "log_history.jsonl"), encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def subprocess_env() -> dict:
    """Environment for child processes: the repository importable, no network, one thread (see conftest's
    single_torch_thread: tiny models gain nothing from threads, and on a busy 2-core machine they thrash)."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable
