"""Two CPU processes under `accelerate launch --multi_gpu` (gloo) train one model like a single process would."""

import json
import socket
import subprocess

import pytest

import run_clm_audio
from training_helpers import PYTHON, REPO_ROOT, make_codes_dataset, read_log, subprocess_env, training_argv

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see conftest.py


def free_port() -> int:
    with socket.socket() as probe:  # another test or helper may be using accelerate's default port
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_process_ddp_equals_one_process_with_the_same_effective_batch(tmp_path):
    dataset = make_codes_dataset(tmp_path / "codes")
    options = dict(max_steps=4, save_steps=2, do_eval=True)
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    launch = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
              "run_clm_audio.py"]
    finished = subprocess.run(
        launch + training_argv(dataset, ddp_dir, per_device_train_batch_size=2, **options),
        cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "on 2 process(es)" in finished.stdout
    train_results = json.loads((ddp_dir / "train_results.json").read_text())
    assert train_results["num_processes"] == 2 and train_results["effective_batch_size"] == 4
    # each process saved its own RNG state into the checkpoint
    assert {path.name for path in (ddp_dir / "checkpoint-4").glob("random_states_*.pkl")} == {
        "random_states_0.pkl", "random_states_1.pkl"
    }

    # Process r trains on samples 2r, 2r + 1 of every batch of 4: the same batches as one process with batch 4,
    # so the losses (reduced over both processes) and the evaluation (segments split across them) agree.
    assert run_clm_audio.main(training_argv(dataset, single_dir, per_device_train_batch_size=4, **options)) == 0
    ddp_log, single_log = read_log(ddp_dir), read_log(single_dir)
    assert [entry["step"] for entry in ddp_log] == [entry["step"] for entry in single_log]
    for ddp_entry, single_entry in zip(ddp_log, single_log):
        for key in ("loss", "eval_loss"):
            if key in single_entry:
                assert ddp_entry[key] == pytest.approx(single_entry[key], rel=1e-5)
    ddp_eval = json.loads((ddp_dir / "eval_results.json").read_text())
    single_eval = json.loads((single_dir / "eval_results.json").read_text())
    assert ddp_eval["segment_ids"] == single_eval["segment_ids"]
    assert ddp_eval["segment_num_frames"] == single_eval["segment_num_frames"]
    assert ddp_eval["codebook_loss"] == pytest.approx(single_eval["codebook_loss"], rel=1e-5)
