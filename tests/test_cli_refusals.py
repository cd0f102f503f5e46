"""The rule of every command: a user mistake is refused before any work, as one `error: ...` line and exit code 2,
with every file of the folders involved byte-identical afterwards. One table of mistakes per command."""

import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile
from training_helpers import REPO_ROOT, make_codes_dataset, random_codec, subprocess_env, training_argv

import generate_audio
import run_clm_audio
from data import build_dataset as build_dataset_command

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see conftest.py

HEAVY_MODULES = ("torch", "transformers", "datasets", "accelerate")


def folder_state(root) -> dict:
    """Every file and folder under root, files with the hash of their bytes (equal: nothing written, moved, deleted)."""
    state = {}
    for folder, folders, files in os.walk(root):
        for name in folders:
            state[os.path.relpath(os.path.join(folder, name), root)] = "folder"
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as file:
                state[os.path.relpath(path, root)] = hashlib.sha256(file.read()).hexdigest()
    return state


def refusal(main, argv, capsys) -> str:
    """Run a command's main in-process; it must exit with 2 and print exactly one `error: ...` line."""
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own refusals
        code = exit.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


def unreachable_hub(monkeypatch, empty_cache):
    """No network and nothing cached (on a machine that once downloaded DAC, its cache would answer)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(empty_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ------------------------------------------------------------------------------------------------------------------
# run_clm_audio.py
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def training_world(tmp_path_factory):
    """Datasets from two codecs, a finished run with its checkpoint, and the same run with its checkpoints removed."""
    root = tmp_path_factory.mktemp("training-world")
    dataset = make_codes_dataset(root / "codes")
    other_codec = make_codes_dataset(root / "other-codec", codec=random_codec(seed=1))
    runs = root / "runs"
    finished = runs / "finished"
    assert run_clm_audio.main(training_argv(dataset, finished, max_steps=2, save_steps=2, do_eval=True,
                                            max_eval_samples=2)) == 0
    without_checkpoints = runs / "without-checkpoints"
    shutil.copytree(finished, without_checkpoints)
    shutil.rmtree(without_checkpoints / "checkpoint-2")
    return {"root": root, "dataset": dataset, "other_codec": other_codec, "runs": runs, "finished": finished,
            "without_checkpoints": without_checkpoints}


TRAINING_MISTAKES = {
    "missing dataset folder": (lambda w: training_argv(str(w["root"] / "nope"), w["runs"] / "new"), "no such folder"),
    "missing dataset as dir/name": (lambda w: training_argv("runs/nope", w["runs"] / "new"), "no such folder"),
    "missing model folder": (
        lambda w: training_argv(w["dataset"], w["runs"] / "new", model_name_or_path=str(w["root"] / "no-model")),
        "--model_name_or_path",
    ),
    "model and data codebooks differ": (
        lambda w: training_argv(w["dataset"], w["runs"] / "new", config_overrides="num_codebooks=8"),
        "9 codebooks per frame but the model has 8",
    ),
    "unknown config field": (
        lambda w: training_argv(w["dataset"], w["runs"] / "new", config_overrides="hiden_size=32"),
        "unknown config fields ['hiden_size']",
    ),
    "nothing to do": (lambda w: ["--output_dir", str(w["runs"] / "new"), "--dataset_name", w["dataset"]],
                      "nothing to do"),
    "evaluation without a model": (
        lambda w: ["--output_dir", str(w["runs"] / "new"), "--dataset_name", w["dataset"], "--do_eval"],
        "--model_name_or_path",
    ),
    "zero steps": (lambda w: training_argv(w["dataset"], w["runs"] / "new", max_steps=0), "--max_steps"),
    "unknown choice": (lambda w: training_argv(w["dataset"], w["runs"] / "new", mixed_precision="fp8"), "fp8"),
    "not a number": (lambda w: training_argv(w["dataset"], w["runs"] / "new", learning_rate="fast"), "fast"),
    "an abbreviated option": (lambda w: training_argv(w["dataset"], w["runs"] / "new", max_step=3),
                              "unrecognized arguments: --max_step 3"),
    "missing config file": (lambda w: [str(w["root"] / "recipe.yaml")], "not found"),
    "not a checkpoint folder": (
        lambda w: training_argv(w["dataset"], w["runs"] / "new", resume_from_checkpoint=str(w["finished"])),
        "not a checkpoint-N folder",
    ),
    "a finished run's folder": (lambda w: training_argv(w["dataset"], w["finished"]), "already holds another run"),
    "latest on a finished run without checkpoints": (
        lambda w: training_argv(w["dataset"], w["without_checkpoints"], resume_from_checkpoint="latest"),
        "no checkpoint-N to resume from",
    ),
    "resume with another preset": (
        lambda w: training_argv(w["dataset"], w["finished"], resume_from_checkpoint="latest",
                                model_preset="transformer-tiny"),
        "other model settings",
    ),
    "resume on another codec's codes": (
        lambda w: training_argv(w["other_codec"], w["finished"], resume_from_checkpoint="latest"), "another codec"
    ),
    "evaluate on another codec's codes": (
        lambda w: ["--model_name_or_path", str(w["finished"]), "--dataset_name", w["other_codec"],
                   "--output_dir", str(w["runs"] / "new"), "--do_eval"],
        "another codec",
    ),
    "evaluation over a finished run": (
        lambda w: ["--model_name_or_path", str(w["finished"]), "--dataset_name", w["dataset"],
                   "--output_dir", str(w["finished"]), "--do_eval"],
        "already holds another run",
    ),
}


@pytest.mark.parametrize("case", TRAINING_MISTAKES)
def test_run_clm_audio_refuses_user_mistakes_before_any_work(case, training_world, capsys, monkeypatch):
    monkeypatch.chdir(training_world["root"])
    make_argv, expected = TRAINING_MISTAKES[case]
    before = folder_state(training_world["runs"])
    assert expected in refusal(run_clm_audio.main, make_argv(training_world), capsys)
    assert folder_state(training_world["runs"]) == before


def test_resume_latest_in_a_fresh_folder_says_it_starts_from_scratch(training_world, capsys):
    output_dir = training_world["root"] / "fresh"
    argv = training_argv(training_world["dataset"], output_dir, max_steps=1, resume_from_checkpoint="latest")
    assert run_clm_audio.main(argv) == 0
    assert "training starts from scratch" in capsys.readouterr().out


def test_overwrite_output_dir_leaves_nothing_of_the_previous_run(training_world):
    output_dir = training_world["root"] / "overwritten"
    shutil.copytree(training_world["finished"], output_dir)
    assert run_clm_audio.main(training_argv(training_world["dataset"], output_dir, max_steps=1,
                                            overwrite_output_dir=True)) == 0
    assert not (output_dir / "eval_results.json").exists() and not (output_dir / "best").exists()
    assert [path.name for path in output_dir.glob("checkpoint-*")] == ["checkpoint-1"]


def test_disable_tqdm_silences_every_progress_bar(training_world, tmp_path):
    argv = training_argv(training_world["dataset"], tmp_path / "run", max_steps=2, do_eval=True, max_eval_samples=2)
    result = subprocess.run([sys.executable, "run_clm_audio.py", *argv], cwd=REPO_ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "%|" not in result.stderr, result.stderr  # training, evaluation, datasets, save_pretrained's shards


def test_a_warmup_as_long_as_the_run_and_crops_mostly_padding_warn_in_one_line_each(training_world, tmp_path, capsys):
    dataset = training_world["dataset"]  # tracks of 25 to 120 frames
    assert run_clm_audio.main(training_argv(dataset, tmp_path / "sound", max_steps=2, warmup_steps=1)) == 0
    assert "warning" not in capsys.readouterr().err
    argv = training_argv(dataset, tmp_path / "hardly", max_steps=2, warmup_steps=5, segment_length=512)
    assert run_clm_audio.main(argv) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: --warmup_steps 5 is not below --max_steps 2: the learning rate only climbs to 40% of "
        "--learning_rate 0.003 (a fraction such as 0.05 warms up over that share of the steps)",
        "warning: the training tracks are shorter than a crop: 15% of a 503-frame crop is audio on average, the rest "
        "padding (computed, not learned from); --segment_length 84 fits the median track",
    ]


def test_transformers_bars_stay_out_of_the_training_output(training_world, tmp_path, capsys):
    """Without --disable_tqdm the command's own bars show, but not transformers' "Writing model shards"."""
    from transformers.utils import logging

    logging.enable_progress_bar()  # as in a fresh process (other tests may have turned it off)
    argv = training_argv(training_world["dataset"], tmp_path / "run", max_steps=1, disable_tqdm=False)
    assert run_clm_audio.main(argv) == 0
    errors = capsys.readouterr().err
    assert "training" in errors and "Writing model shards" not in errors, errors


# ------------------------------------------------------------------------------------------------------------------
# generate_audio.py
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generation_world(tmp_path_factory):
    """Tiny checkpoints (9 and 4 codebooks), prompt files, and an output folder holding a finished sample."""
    import torch

    from configuration_music_hybrid import MusicHybridConfig
    from modeling_music_hybrid import MusicHybridForCausalLM

    root = tmp_path_factory.mktemp("generation-world")
    from processing_music_hybrid import pretrained_codec_identity

    checkpoints = {"model": {"max_position_embeddings": 128}, "four-codebooks": {"num_codebooks": 4},
                   "pretrained-codec": {"codec": pretrained_codec_identity()}}
    for name, overrides in checkpoints.items():
        torch.manual_seed(0)
        config = MusicHybridConfig.from_preset("hybrid-tiny", **{"codec": random_codec(), **overrides})
        MusicHybridForCausalLM(config).save_pretrained(root / name)
    (root / "not_audio.wav").write_text("<html>this is not audio</html>")
    soundfile.write(root / "long_prompt.wav", np.zeros(70_000, dtype=np.float32), 44100)
    outputs = root / "outputs"
    (outputs / "finished").mkdir(parents=True)
    soundfile.write(outputs / "finished" / "sample_000.wav", np.zeros(100, dtype=np.float32), 44100)
    (outputs / "a-file").write_text("not a folder")
    (root / "runs").mkdir()
    return root


GENERATION_MISTAKES = {
    "zero duration": (["--duration", "0"], "--duration must be a positive"),
    "negative duration": (["--duration", "-2"], "--duration must be a positive"),
    "zero temperature": (["--temperature", "0"], "--temperature must be positive"),
    "negative temperature": (["--temperature", "-1"], "--temperature must be positive"),
    "one bad temperature of nine": (["--temperature", *["1"] * 8, "0"], "--temperature must be positive"),
    "negative top-k": (["--top-k", "-3"], "--top-k must be a whole number"),
    "top-p above 1": (["--top-p", "1.5"], "--top-p must be above 0 and at most 1"),
    "zero top-p": (["--top-p", "0"], "--top-p must be above 0"),
    "top-k count": (["--top-k", "1", "2"], "one value or 9"),
    "no samples": (["--num-samples", "0"], "--num-samples must be a positive integer"),
    "not a number": (["--temperature", "warm"], "invalid float value: 'warm'"),
    "an abbreviated option": (["--num-sample", "2"], "unrecognized arguments: --num-sample 2"),
    "unknown dtype": (["--dtype", "int4"], "invalid choice: 'int4'"),
    "int8 weights from bfloat16": (["--quantize", "int8", "--dtype", "bfloat16"], "is for CPU decoding of float32"),
    "int8 weights on a GPU": (["--quantize", "int8", "--device", "cuda"], "is for CPU decoding of float32"),
    "prompt that is not audio": (["--prompt", "ROOT/not_audio.wav"], "cannot read the prompt file"),
    "missing prompt": (["--prompt", "ROOT/missing.ogg"], "cannot read the prompt file"),
    "prompt longer than the context": (["--prompt", "ROOT/long_prompt.wav"], "longer than the model's context"),
    "other codec": (["--codec", '{"backend": "random", "seed": 1}'], "different codec"),
    "sliding with learned positions": (["--long-form", "sliding"], "without learned positions"),
    "context window too large": (["--long-form", "window", "--context-window", "500"], "--context-window"),
    "missing model folder": (["--model", "ROOT/no-such-model"], "no such folder"),
    "missing model as runs/NAME": (["--model", "runs/NAME"], "no such folder"),
    "missing model as NAME/NAME offline": (["--model", "nowhere/NAME", "OFFLINE"], "no cached Hub model"),
    "codebooks differ from the codec": (["--model", "ROOT/four-codebooks"], "the model predicts 4 codebooks"),
    "unreachable codec": (["--model", "ROOT/pretrained-codec", "OFFLINE"], "the checkpoint's codec 'descript/dac_44khz'"),
    "finished file without --overwrite": (["--output-dir", "ROOT/outputs/finished"], "pass --overwrite"),
    "output dir that is a file": (["--output-dir", "ROOT/outputs/a-file"], "is a file, not a folder"),
}


@pytest.mark.parametrize("case", GENERATION_MISTAKES)
def test_generate_audio_refuses_user_mistakes_before_any_work(case, generation_world, capsys, monkeypatch):
    monkeypatch.chdir(generation_world)
    options, expected = GENERATION_MISTAKES[case]
    options = [option.replace("ROOT", str(generation_world)) for option in options]
    if "OFFLINE" in options:
        options.remove("OFFLINE")
        unreachable_hub(monkeypatch, generation_world.parent / "empty-hf-cache")
    model = str(generation_world / "model")
    if "--model" in options:
        position = options.index("--model")
        model = options.pop(position + 1)
        options.pop(position)
    argv = [model, "--output-dir", str(generation_world / "outputs" / "new"), "--duration", "0.1", *options]
    before = folder_state(generation_world)
    assert expected in refusal(generate_audio.main, argv, capsys)
    assert folder_state(generation_world) == before


def test_a_text_file_as_prompt_is_named_as_such_and_the_mp3_decoder_stays_off_the_terminal(generation_world,
                                                                                           tmp_path):
    prompt = tmp_path / "song.mp3"
    prompt.write_text("these are words, not music\n")
    argv = [str(generation_world / "model"), "--output-dir", str(tmp_path / "samples"), "--duration", "0.1",
            "--prompt", str(prompt)]
    result = subprocess.run([sys.executable, "generate_audio.py", *argv], cwd=REPO_ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: cannot read the prompt file {prompt}: a text file, not audio (27 bytes)"
    ]


# ------------------------------------------------------------------------------------------------------------------
# python -m data.build_dataset
# ------------------------------------------------------------------------------------------------------------------

RANDOM_CODEC = ["--codec", "random", "--codec_small", "--codec_seed", "3"]
TINY_SOURCE = ["--procedural_tracks", "2", "--procedural_seconds", "1.2", "--part_tracks", "1"]


@pytest.fixture(scope="module")
def data_world(tmp_path_factory):
    """A finished build, a folder of someone else's files, and an audio folder."""
    root = tmp_path_factory.mktemp("data-world")
    outputs = root / "outputs"
    build_dataset_command.main(["--output_dir", str(outputs / "built"), *TINY_SOURCE, *RANDOM_CODEC])
    (outputs / "foreign").mkdir()
    (outputs / "foreign" / "notes.txt").write_text("mine")
    (root / "audio").mkdir()
    return root


DATA_MISTAKES = {
    "two sources": (["--audio_dir", "ROOT/audio", "--fma_dir", "ROOT/audio"], "give one source"),
    "missing audio folder": (["--audio_dir", "ROOT/nowhere"], "not a directory"),
    "mistyped fma folder": (["--fma_dir", "ROOT/fma_smal"], "not a directory"),
    "segment shorter than the minimum": (["--segment", "first", "--segment_seconds", "0.5"], "segment_seconds"),
    "zero batch": (["--batch_size", "0"], "--batch_size must be positive"),
    "fma split without fma": (["--split_mode", "fma"], "--split_mode fma needs"),
    "streaming without a dataset": (["--streaming"], "--streaming applies to --hf_dataset only"),
    "unknown codec": (["--codec", "mp3"], "invalid choice: 'mp3'"),
    "not a number": (["--min_seconds", "long"], "invalid float value: 'long'"),
    "an abbreviated option": (["--max_track", "1"], "unrecognized arguments: --max_track 1"),
    "pretrained codec offline": (["--codec", "transformers", "OFFLINE"], "--codec random --codec_seed N"),
    "other settings than the finished build": (["--output_dir", "ROOT/outputs/built", "--min_seconds", "0.5"],
                                               "holds work made with other settings"),
    "a folder holding other files": (["--output_dir", "ROOT/outputs/foreign"], "is not empty"),
    "overwrite of other files": (["--output_dir", "ROOT/outputs/foreign", "--overwrite"], "refusing to delete"),
    "merge with nothing built": (["--merge_only"], "nothing to merge"),
}


@pytest.mark.parametrize("case", DATA_MISTAKES)
def test_build_dataset_refuses_user_mistakes_before_any_work(case, data_world, capsys, monkeypatch):
    options, expected = DATA_MISTAKES[case]
    options = [option.replace("ROOT", str(data_world)) for option in options]
    if "OFFLINE" in options:
        options.remove("OFFLINE")
        unreachable_hub(monkeypatch, data_world.parent / "empty-hf-cache")
    argv = ["--output_dir", str(data_world / "outputs" / "new"), *TINY_SOURCE, *RANDOM_CODEC, *options]
    before = folder_state(data_world)
    assert expected in refusal(build_dataset_command.main, argv, capsys)
    assert folder_state(data_world) == before


def test_a_failed_first_build_does_not_lock_its_folder(tmp_path, capsys, monkeypatch):
    """Offline, the pretrained codec fails; the fix the message names works on the same --output_dir. The same for a
    first run that died (here: refused) after the folder was claimed but before any part was committed."""
    output_dir = tmp_path / "codes"
    unreachable_hub(monkeypatch, tmp_path / "empty-hf-cache")
    refusal(build_dataset_command.main, ["--output_dir", str(output_dir), *TINY_SOURCE], capsys)
    assert not output_dir.exists()
    build_dataset_command.main(["--output_dir", str(output_dir), *TINY_SOURCE, *RANDOM_CODEC])
    assert (output_dir / "dataset_dict.json").exists()

    claimed = tmp_path / "claimed"
    (claimed / "_build" / "parts").mkdir(parents=True)
    (claimed / "_build" / "config.json").write_text('{"source": "fma", "fma_dir": "/mistyped"}')
    build_dataset_command.main(["--output_dir", str(claimed), *TINY_SOURCE, *RANDOM_CODEC])
    assert (claimed / "dataset_dict.json").exists()


@pytest.mark.parametrize("module, argv", [
    ("compare_models", ["runs/a", "runs/b", "--output-dir", "outputs/comparison", "--max-seg", "3"]),
    ("demo", ["--max_step", "3"]),
], ids=["compare_models", "demo"])
def test_the_other_commands_take_no_abbreviated_option(module, argv, capsys):
    parse_args = __import__(module).parse_args
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: unrecognized arguments: {' '.join(argv[-2:])} "
                                                             "(see --help)"]


# ------------------------------------------------------------------------------------------------------------------
# --help and argument errors import nothing heavy (they answer at once)
# ------------------------------------------------------------------------------------------------------------------


COMMANDS = {
    "run_clm_audio": "runpy.run_path('run_clm_audio.py', run_name='__main__')",
    "generate_audio": "runpy.run_path('generate_audio.py', run_name='__main__')",
    "data.build_dataset": "runpy.run_module('data.build_dataset', run_name='__main__')",
}


def run_counting_heavy_imports(command, argv, env=None):
    """(exit code, the heavy modules imported, the other stderr lines) of a command run in a fresh process."""
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['{command}', *{argv!r}]\n"
        f"try:\n    {COMMANDS[command]}\nexcept SystemExit as exit:\n    code = exit.code\n"
        f"print(code, [name for name in {HEAVY_MODULES!r} if name in sys.modules], file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env or subprocess_env(),
                            capture_output=True, text=True, timeout=120)
    *messages, summary = result.stderr.strip().splitlines()
    return summary, messages


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("argv", [["--help"], ["--no-such-option"]], ids=["help", "bad-option"])
def test_help_and_argument_errors_import_no_heavy_module(command, argv):
    summary, messages = run_counting_heavy_imports(command, argv)
    assert summary == ("0 []" if argv == ["--help"] else "2 []"), messages
    if argv != ["--help"]:
        assert len(messages) == 1 and messages[0].startswith("error: "), messages


# Offline (the tests' environment sets HF_HUB_OFFLINE), a name that is no folder here and no cached Hub repository
# is refused before torch is imported: in a second or two, with no Hub request and no retry.
MISSING_OFFLINE = {
    "generate_audio": (["runs/nothing", "--output-dir", "samples"], "the model 'runs/nothing': no such folder"),
    "run_clm_audio": (["--dataset_name", "codes/mine", "--output_dir", "runs/x", "--do_train"],
                      "--dataset_name 'codes/mine': no such folder"),
}


@pytest.mark.parametrize("command", MISSING_OFFLINE)
def test_a_missing_folder_or_uncached_hub_name_offline_is_refused_before_torch_is_imported(command, tmp_path):
    argv, expected = MISSING_OFFLINE[command]
    env = {**subprocess_env(), "HF_HUB_CACHE": str(tmp_path / "empty-hf-cache")}
    summary, messages = run_counting_heavy_imports(command, argv, env)
    assert summary == "2 []" and len(messages) == 1, messages
    assert expected in messages[0] and "HF_HUB_OFFLINE is set" in messages[0], messages


def unreachable_online_hub(monkeypatch, empty_cache) -> list:
    """Online mode with no network; returns the list of names looked up."""
    import huggingface_hub
    import huggingface_hub.constants

    class ConnectError(Exception):  # what the Hub client's HTTP library raises without a network, by name
        pass

    calls = []

    def unreachable(self, repo_id, **options):
        calls.append(repo_id)
        raise ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(empty_cache))
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", unreachable)
    return calls


def test_an_unreachable_hub_is_asked_once_and_refuses_a_missing_name_at_once(generation_world, capsys, monkeypatch,
                                                                                 tmp_path):
    """Online mode with no network: one look-up, no retries, one line."""
    calls = unreachable_online_hub(monkeypatch, tmp_path / "empty-hf-cache")
    monkeypatch.chdir(tmp_path)
    argv = ["someone/nothing-here", "--output-dir", str(tmp_path / "samples")]
    message = refusal(generate_audio.main, argv, capsys)
    assert "the Hugging Face Hub cannot be reached to look for it ([Errno -2]" in message
    assert calls == ["someone/nothing-here"] and not (tmp_path / "samples").exists()


def test_an_unreachable_hub_refuses_the_pretrained_codec_after_one_look_up(tmp_path, capsys, monkeypatch):
    calls = unreachable_online_hub(monkeypatch, tmp_path / "empty-hf-cache")
    output_dir = tmp_path / "codes"
    message = refusal(build_dataset_command.main, ["--output_dir", str(output_dir), *TINY_SOURCE], capsys)
    assert "--codec_model 'descript/dac_44khz': no such folder here, and the Hugging Face Hub cannot be" in message
    assert "--codec random --codec_seed N" in message
    assert calls == ["descript/dac_44khz"] and not output_dir.exists()
