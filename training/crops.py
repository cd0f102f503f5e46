"""Batches for training and evaluation, cut from tokenized tracks.

A row of a codes dataset holds one track (or one piece of a track) as `codes` (K, T) in natural layout. Training
draws random crops; evaluation cuts fixed windows (see evaluation.py). Both read frames the same way here: a window
of `frames` frames starting at `start`, right-padded with the pad id where the row ends, then turned into model
inputs by `codes_to_model_inputs`, which gives pad frames the label -100 so they never count in the loss.

Training order is a pure function of (seed, sample index): sample i belongs to epoch i // num_rows, takes the row at
position i % num_rows of that epoch's permutation and a crop offset drawn from a generator seeded with
(seed, epoch, position). No global or worker RNG is involved, so a resumed run starting at micro-batch m sees
exactly the batches an uninterrupted run would, without drawing (or loading) the skipped ones. A conditional
model's condition dropout is part of the same function: whether sample i sees the null genre and description is
drawn from a generator seeded with (seed, i), and i fixes the step and the example within it.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from modeling_music_hybrid import codes_to_model_inputs

# Domain tags keep the permutation and crop generators apart even where their seed tuples could coincide.
_PERMUTATION_STREAM = 0
_CROP_STREAM = 1
_CONDITION_STREAM = 2


def frames_per_segment(segment_length: int, num_codebooks: int) -> int:
    """A segment of `segment_length` positions holds that many minus K frames (one start column, K - 1 delay slots)."""
    frames = segment_length - num_codebooks
    if frames < 1:
        raise ValueError(
            f"segment_length {segment_length} leaves no room for audio frames with {num_codebooks} codebooks: "
            f"use at least {num_codebooks + 1} positions"
        )
    return frames


class CodesWindows(Dataset):
    """Map-style dataset whose keys are (row, start_frame) pairs; an item is that row's (K, frames) window, padded."""

    def __init__(self, codes_dataset, frames: int, pad_token_id: int):
        self.codes = codes_dataset.with_format("numpy", columns=["codes"])
        self.frames = frames
        self.pad_token_id = pad_token_id

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        row, start = key
        codes = self.codes[int(row)]["codes"]
        if codes.dtype == object:  # ragged storage comes back as an array of per-codebook arrays
            codes = np.stack(codes)
        window = codes[:, start : start + self.frames].astype(np.int64)
        missing = self.frames - window.shape[1]
        if missing > 0:
            window = np.pad(window, ((0, 0), (0, missing)), constant_values=self.pad_token_id)
        return torch.from_numpy(window)


class ConditionWindows(Dataset):
    """CodesWindows with each row's conditions, for a conditional model: items (window, {condition name: value}).

    Keys are (row, start) or, from a training sampler with condition dropout, (row, start, drop_condition); a dropped
    example gets every condition's null value (see training/conditions.py).
    """

    def __init__(self, windows: CodesWindows, conditions: list):
        self.windows = windows
        self.conditions = conditions  # TrainingCondition entries

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, key: tuple) -> tuple[torch.Tensor, dict]:
        row, start, *drop_condition = key
        dropped = any(drop_condition)
        values = {c.name: c.null_value if dropped else c.row_values[int(row)] for c in self.conditions}
        return self.windows[(row, start)], values


class CodesCollator:
    """Stacks equal-length windows and lays them out for the model (start column, delay pattern, labels), with
    each condition's forward() arguments under "conditions" when the items carry them (see ConditionWindows)."""

    def __init__(self, config, conditions: list = ()):
        self.config = config
        self.conditions = conditions

    def __call__(self, items: list) -> dict:
        if not isinstance(items[0], tuple):
            return codes_to_model_inputs(torch.stack(items), self.config)
        windows, values = zip(*items, strict=True)
        inputs = codes_to_model_inputs(torch.stack(windows), self.config)
        inputs["conditions"] = {c.name: c.collate([row[c.name] for row in values]) for c in self.conditions}
        return inputs


def condition_arguments(batch: dict, device, leave_out: str | None = None) -> dict:
    """forward()'s condition arguments of a collated batch, on `device`; `leave_out`: a condition name whose
    arguments are left out, which gives every row its null value."""
    return {
        argument: value.to(device)
        for name, arguments in batch.get("conditions", {}).items() if name != leave_out
        for argument, value in arguments.items()
    }


class RandomCropBatchSampler:
    """This process's micro-batches of random crops, an endless stream starting at micro-batch `start_batch`.

    Micro-batch m of process r holds the global samples (m * num_processes + r) * batch_size + j, j < batch_size,
    so one micro-batch of size 4 on one process holds the same samples as two of size 2 (gradient accumulation)
    or one of size 2 on each of two processes (DDP). Each epoch visits every row once, in a seeded order; rows
    shorter than a crop are taken whole (and padded by CodesWindows).

    With `condition_dropout` (a probability; None for unconditional models) the keys are (row, start,
    drop_condition): each sample drops its conditions with that probability, independently of every other sample.
    """

    def __init__(
        self,
        row_num_frames: list[int],
        frames: int,
        batch_size: int,
        seed: int,
        num_processes: int = 1,
        process_index: int = 0,
        start_batch: int = 0,
        condition_dropout: float | None = None,
    ):
        if not row_num_frames:
            raise ValueError("the training split has no rows")
        self.row_num_frames = np.asarray(row_num_frames, dtype=np.int64)
        self.frames = frames
        self.batch_size = batch_size
        self.seed = seed
        self.num_processes = num_processes
        self.process_index = process_index
        self.start_batch = start_batch
        self.condition_dropout = condition_dropout
        self._order_epoch, self._order = None, None  # consecutive samples share an epoch: keep its permutation

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        micro_batch = self.start_batch
        while True:
            first = (micro_batch * self.num_processes + self.process_index) * self.batch_size
            yield [self.crop(sample) for sample in range(first, first + self.batch_size)]
            micro_batch += 1

    def crop(self, sample_index: int) -> tuple:
        epoch, position = divmod(sample_index, len(self.row_num_frames))
        row = int(self._epoch_order(epoch)[position])
        latest_start = max(0, int(self.row_num_frames[row]) - self.frames)
        offset_rng = np.random.default_rng([self.seed, _CROP_STREAM, epoch, position])
        key = (row, int(offset_rng.integers(0, latest_start + 1)))
        if self.condition_dropout is None:
            return key
        dropout_rng = np.random.default_rng([self.seed, _CONDITION_STREAM, sample_index])
        return key + (bool(dropout_rng.random() < self.condition_dropout),)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            rng = np.random.default_rng([self.seed, _PERMUTATION_STREAM, epoch])
            self._order_epoch, self._order = epoch, rng.permutation(len(self.row_num_frames))
        return self._order
