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
# Files a training or evaluation run leaves at the top of output_dir (besides its checkpoints): any of them means
# finished work is there. Not the log: a run stopped before its first checkpoint leaves one, and nothing to keep.
RUN_MARKERS = ("train_results.json", "eval_results.json", "model.safetensors")
LOG_HISTORY_FILE = "log_history.jsonl"
# What --overwrite_output_dir removes, so that nothing of the previous run stays beside the new one.
RUN_OUTPUTS = RUN_MARKERS + (
    LOG_HISTORY_FILE, "config.json", "generation_config.json", "README.md", "training_curves.png",
    "codebook_metrics.png", "best",
)


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
    try:
        accelerator.save_state(temporary)
        if accelerator.is_main_process:
            config.save_pretrained(temporary)  # lets a resumed run check codec and architecture before loading
    except BaseException:  # an interrupt while saving leaves the complete checkpoints only
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
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


def resolve_resume_checkpoint(resume_from_checkpoint: str | None, output_dir: str, overwrite_output_dir: bool):
    """The checkpoint folder to resume from: an explicit path, or the newest one in output_dir for "latest".

    "latest" with no checkpoint starts from scratch only where that loses nothing: in a fresh folder, or with
    --overwrite_output_dir; a folder holding a finished run whose checkpoints are gone is refused.
    """
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        if checkpoints:
            return checkpoints[-1]
        finished = finished_run_files(output_dir)
        if finished and not overwrite_output_dir:
            raise ValueError(
                f"--resume_from_checkpoint latest: output_dir {output_dir!r} holds a finished run ({finished[0]}, ...) "
                "but no checkpoint-N to resume from; pass --overwrite_output_dir to start over there, or choose "
                "another --output_dir"
            )
        return None
    if not os.path.isdir(resume_from_checkpoint) or checkpoint_step(resume_from_checkpoint) is None:
        raise ValueError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a checkpoint-N folder "
            "(give one, or 'latest' for the newest in output_dir)"
        )
    return resume_from_checkpoint


def finished_run_files(output_dir: str) -> list[str]:
    return [name for name in RUN_MARKERS if os.path.exists(os.path.join(output_dir, name))]


def forget_unsaved_steps(output_dir: str) -> bool:
    """After an interrupt: without a checkpoint the steps trained are lost, so their log goes too and the folder
    holds nothing of the run. Returns whether a checkpoint is kept."""
    if list_checkpoints(output_dir):
        return True
    log = os.path.join(output_dir, LOG_HISTORY_FILE)
    if os.path.exists(log):
        os.remove(log)
    return False


def check_output_dir(output_dir: str, overwrite_output_dir: bool, resuming: bool) -> None:
    """Refuse to mix two runs in one folder (no side effect: called among the other checks, before any work)."""
    previous_run = [os.path.basename(path) for path in list_checkpoints(output_dir)] + finished_run_files(output_dir)
    if previous_run and not (overwrite_output_dir or resuming):
        raise ValueError(
            f"output_dir {output_dir!r} already holds another run ({previous_run[0]}, ...): "
            "pass --resume_from_checkpoint latest to continue its training, --overwrite_output_dir to replace it, "
            "or another --output_dir"
        )


def prepare_output_dir(output_dir: str, overwrite_output_dir: bool, resuming: bool) -> None:
    """Create output_dir; with overwrite_output_dir (and not resuming), remove every output of the previous run."""
    if overwrite_output_dir and not resuming:
        for path in list_checkpoints(output_dir) + [os.path.join(output_dir, name) for name in RUN_OUTPUTS]:
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    os.makedirs(output_dir, exist_ok=True)
