"""Resumable training checkpoints that are either complete or absent, and the output-folder rules around them.

A checkpoint is written into `checkpoint-N.tmp` by every process (Accelerate's save_state: weights, optimizer,
scheduler, RNG states of each process, registered objects) and only then renamed to `checkpoint-N`, so a run killed
at any moment leaves at worst a stale `.tmp` folder, never a half-written `checkpoint-N`.
"""

from __future__ import annotations

import os
import re
import shutil

CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")
TEMPORARY_SUFFIX = ".tmp"
PREVIOUS_SUFFIX = ".old"
# Files a finished or running training leaves at the top of output_dir (besides its checkpoints).
RUN_MARKERS = ("log_history.jsonl", "train_results.json")


def checkpoint_step(path: str) -> int | None:
    match = CHECKPOINT_PATTERN.fullmatch(os.path.basename(os.path.normpath(path)))
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoint folders of `output_dir`, oldest step first."""
    if not os.path.isdir(output_dir):
        return []
    found = [
        os.path.join(output_dir, name)
        for name in os.listdir(output_dir)
        if checkpoint_step(name) is not None and os.path.isdir(os.path.join(output_dir, name))
    ]
    return sorted(found, key=checkpoint_step)


def replace_directory(temporary: str, final: str) -> None:
    """Move a fully written folder into place; an existing `final` is kept until the new one has taken its name."""
    previous = final + PREVIOUS_SUFFIX
    if os.path.exists(final):
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(final, previous)
    os.replace(temporary, final)
    shutil.rmtree(previous, ignore_errors=True)


def save_checkpoint(accelerator, output_dir: str, step: int, config, save_total_limit: int | None) -> str:
    """Save the full training state as `checkpoint-{step}` (collective: every process must call it)."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    temporary = final + TEMPORARY_SUFFIX
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)  # left over by a run killed while saving
    accelerator.wait_for_everyone()
    accelerator.save_state(temporary)
    if accelerator.is_main_process:
        config.save_pretrained(temporary)  # lets a resumed run check the codec before loading anything
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_directory(temporary, final)
        rotate_checkpoints(output_dir, save_total_limit)
    accelerator.wait_for_everyone()
    return final


def rotate_checkpoints(output_dir: str, save_total_limit: int | None) -> None:
    if not save_total_limit:
        return
    for stale in list_checkpoints(output_dir)[:-save_total_limit]:
        shutil.rmtree(stale)


def resolve_resume_checkpoint(resume_from_checkpoint: str | None, output_dir: str) -> str | None:
    """The checkpoint folder to resume from: an explicit path, or the newest one in output_dir for "latest"."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    if not os.path.isdir(resume_from_checkpoint) or checkpoint_step(resume_from_checkpoint) is None:
        raise ValueError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a checkpoint-N folder "
            "(give one, or 'latest' for the newest in output_dir)"
        )
    return resume_from_checkpoint


def prepare_output_dir(output_dir: str, overwrite_output_dir: bool, resuming: bool, is_main_process: bool) -> None:
    """Refuse to mix two runs in one folder; with overwrite_output_dir, clear the previous run's training state."""
    previous_run = list_checkpoints(output_dir) + [
        os.path.join(output_dir, name) for name in RUN_MARKERS if os.path.exists(os.path.join(output_dir, name))
    ]
    if previous_run and not (overwrite_output_dir or resuming):
        raise ValueError(
            f"output_dir {output_dir!r} already holds another run ({os.path.basename(previous_run[0])}, ...): "
            "pass --resume_from_checkpoint latest to continue it, or --overwrite_output_dir to start over"
        )
    if overwrite_output_dir and not resuming and is_main_process:
        for path in previous_run:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    os.makedirs(output_dir, exist_ok=True)
