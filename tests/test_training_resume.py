"""SIGKILL during training, then --resume_from_checkpoint latest: the same run, bit for bit, as an uninterrupted one."""

import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from training_helpers import PYTHON, REPO_ROOT, make_codes_dataset, read_log, subprocess_env, training_argv

KILL_AFTER = "checkpoint-4"


def start(argv, log_path):
    log = open(log_path, "w")
    return subprocess.Popen([PYTHON, "run_clm_audio.py", *argv], cwd=REPO_ROOT, env=subprocess_env(),
                            stdout=log, stderr=subprocess.STDOUT)


# With dropout on, every draw from torch's global generator between the restored RNG state and the first resumed
# step (creating the DataLoader iterator draws one) changes the dropout masks; with dropout off it cannot be seen.
# Condition dropout (genre conditioning) draws which samples see the null genre: those draws must line up too.
@pytest.mark.parametrize(
    "dropout, genre_options",
    [(0.0, {}), (0.1, {}), (0.1, dict(genre_conditioning=True, condition_dropout=0.5))],
    ids=["no-dropout", "dropout", "dropout-and-condition-dropout"],
)
def test_sigkill_then_resume_gives_the_uninterrupted_run_bit_for_bit(tmp_path, dropout, genre_options):
    dataset = make_codes_dataset(tmp_path / "codes")
    # Accumulation included: resuming must skip whole optimizer steps' worth of micro-batches.
    options = dict(max_steps=24, save_steps=4, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                   config_overrides=f"hidden_dropout={dropout},attention_dropout={dropout}", **genre_options)
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    reference = start(training_argv(dataset, uninterrupted, **options), tmp_path / "reference.log")
    victim = start(training_argv(dataset, interrupted, **options), tmp_path / "victim.log")

    deadline = time.time() + 120
    while not (interrupted / KILL_AFTER).is_dir():  # the rename makes it appear complete, never half-written
        assert victim.poll() is None and time.time() < deadline, (tmp_path / "victim.log").read_text()
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert not (interrupted / "train_results.json").exists()  # it really died mid-run
    assert reference.wait() == 0, (tmp_path / "reference.log").read_text()

    resumed = start(training_argv(dataset, interrupted, resume_from_checkpoint="latest", **options),
                    tmp_path / "resumed.log")
    assert resumed.wait() == 0, (tmp_path / "resumed.log").read_text()
    assert "Resumed from" in (tmp_path / "resumed.log").read_text()

    expected = read_log(uninterrupted)
    assert [entry["step"] for entry in expected] == list(range(1, 25))
    assert read_log(interrupted) == expected  # losses, per-codebook losses, learning rates, gradient norms
    final_reference = load_file(uninterrupted / "model.safetensors")
    final_resumed = load_file(interrupted / "model.safetensors")
    assert final_reference.keys() == final_resumed.keys()
    assert all(torch.equal(final_reference[name], final_resumed[name]) for name in final_reference)


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_says_which_checkpoint_is_complete_and_leaves_no_partial_one(tmp_path, signal_number):
    dataset = make_codes_dataset(tmp_path / "codes")
    output_dir = tmp_path / "run"
    victim = start(training_argv(dataset, output_dir, max_steps=400, save_steps=2), tmp_path / "victim.log")
    deadline = time.time() + 120
    while not (output_dir / "checkpoint-2").is_dir():
        assert victim.poll() is None and time.time() < deadline, (tmp_path / "victim.log").read_text()
        time.sleep(0.005)
    victim.send_signal(signal_number)
    assert victim.wait(timeout=60) == 130
    log = (tmp_path / "victim.log").read_text()
    assert "interrupted: the last complete checkpoint is" in log and "Traceback" not in log, log
    leftovers = [path.name for path in output_dir.iterdir() if path.name.endswith((".tmp", ".old", ".saving"))]
    assert leftovers == [] and not (output_dir / "train_results.json").exists()


def test_ctrl_c_before_the_first_checkpoint_leaves_a_folder_the_same_command_and_latest_both_continue(
    tmp_path, capsys
):
    """The most common interrupt: stopped at step 1 because it is slow. Nothing is kept, and neither the same command
    nor --resume_from_checkpoint latest is refused afterwards."""
    import shutil

    import run_clm_audio

    dataset = make_codes_dataset(tmp_path / "codes")
    output_dir = tmp_path / "run"
    victim = start(training_argv(dataset, output_dir, max_steps=1000, save_steps=1000), tmp_path / "victim.log")
    deadline = time.time() + 120
    while not read_log_lines(output_dir):  # step 1 is logged (logging_steps 1), no checkpoint before step 1000
        assert victim.poll() is None and time.time() < deadline, (tmp_path / "victim.log").read_text()
        time.sleep(0.005)
    victim.send_signal(signal.SIGINT)
    assert victim.wait(timeout=60) == 130
    log = (tmp_path / "victim.log").read_text()
    assert "interrupted before the first checkpoint: nothing kept" in log and "Traceback" not in log, log
    assert not list(output_dir.glob("checkpoint-*")) and not (output_dir / "log_history.jsonl").exists()
    shutil.copytree(output_dir, tmp_path / "run-latest")

    # the same command (shortened: the folder's state, not the step count, decided the refusal)
    assert run_clm_audio.main(training_argv(dataset, output_dir, max_steps=2, save_steps=1000)) == 0
    assert [entry["step"] for entry in read_log(output_dir)] == [1, 2]
    assert run_clm_audio.main(training_argv(dataset, tmp_path / "run-latest", max_steps=2, save_steps=1000,
                                            resume_from_checkpoint="latest")) == 0
    captured = capsys.readouterr()
    assert captured.out.count("training starts from scratch") == 1 and "error" not in captured.err, captured


def read_log_lines(output_dir) -> list[str]:
    try:
        return (output_dir / "log_history.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
