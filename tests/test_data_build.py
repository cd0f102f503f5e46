"""The build command end to end with the small random codec: schema, rejects, splits, sources,
resume after SIGKILL, two processes under accelerate, and the command line."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data.build_dataset import build_dataset, main
from data.dataset_io import CODES_FEATURES, load_codes_dataset
from data.parts import WorkDir
from data.rejects import read_decoder_warnings, read_rejects
from processing_music_hybrid import Codec

pytestmark = pytest.mark.usefixtures("single_torch_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]
CODEC = {"codec": "random", "codec_small": True}
PROCEDURAL = {"procedural_tracks": 8, "procedural_seconds": 1.2, "part_tracks": 1, "batch_size": 1, **CODEC}


def _cli_options(options):
    argv = []
    for name, value in options.items():
        argv += [f"--{name}"] if value is True else [f"--{name}", str(value)]
    return argv


def _as_rows(dataset_dict):
    return {name: split.to_dict() for name, split in dataset_dict.items()}


@pytest.fixture
def count_encoded(monkeypatch):
    """Counts the clips given to Codec.encode."""
    calls = []
    original = Codec.encode

    def counting(self, waveforms):
        calls.extend(range(len(waveforms)))
        return original(self, waveforms)

    monkeypatch.setattr(Codec, "encode", counting)
    return calls


@pytest.fixture(scope="module")
def fma_build(audio_tree, tmp_path_factory):
    output = tmp_path_factory.mktemp("fma_codes")
    return output, build_dataset(output_dir=str(output), fma_dir=str(audio_tree.fma_dir), num_workers=2, **CODEC)


@pytest.fixture(scope="module")
def procedural_reference(tmp_path_factory):
    output = tmp_path_factory.mktemp("procedural_reference")
    return build_dataset(output_dir=str(output), **PROCEDURAL)


def test_fma_build_schema_rows_and_rejects(fma_build, audio_tree):
    output, dataset_dict = fma_build
    assert set(dataset_dict) == {"train", "validation"}
    rows = [row for split in dataset_dict.values() for row in split]
    assert sorted(row["track_id"] for row in rows) == sorted(audio_tree.good)
    for split in dataset_dict.values():
        assert split.features == CODES_FEATURES
        assert str(split.data.schema.field("codes").type) == "fixed_size_list<item: list<item: int16>>[9]"
    for row in rows:
        codes = np.asarray(row["codes"])
        assert codes.shape == (9, row["num_frames"]) and codes.min() >= 0 and codes.max() < 1024
        assert row["num_frames"] == math.ceil(row["duration"] * 44100 / 512 - 1e-6)
        assert row["start_frame"] == 0 and row["source"] == "fma:fma_small"
        assert row["genre"] == audio_tree.good[row["track_id"]][0]
        genre = row["genre"] or ""
        assert (row["text"] or "").startswith(genre) and (row["text"] is None) == (row["track_id"] == "001000")
        assert abs(row["duration"] - (1.3 if row["track_id"] == "001000" else 1.4)) < 0.01
    rejects = read_rejects(output / "rejects.jsonl")
    assert {reject.track_id: reject.reason for reject in rejects} == audio_tree.rejects
    assert all(reject.detail and reject.path for reject in rejects)
    loaded, identity = load_codes_dataset(output)
    assert identity["backend"] == "random" and identity["config_overrides"] is not None
    assert _as_rows(loaded) == _as_rows(dataset_dict)
    card = (output / "README.md").read_text()
    assert "missing 1" in card and "1 not in it" in card and "RANDOM weights" in card
    assert "not captions of the audio" in card and "**Descriptions** (`text`): 5 of 6 rows" in card


def test_procedural_rows_carry_the_generators_description(procedural_reference):
    from data.procedural_music import track_plan

    for split in procedural_reference.values():
        for track_id, text in zip(split["track_id"], split["text"], strict=True):
            assert text == track_plan(0, int(track_id.rsplit("-", 1)[1])).description()


def test_parts_and_datasets_from_before_the_text_column_still_merge_and_load(procedural_reference, tmp_path):
    """A resumed build whose first parts were written without `text` merges them with empty descriptions, and a
    dataset saved without the column loads with it."""
    import pyarrow as pa
    from datasets import Dataset, DatasetDict

    output = tmp_path / "codes"
    build_dataset(output_dir=str(output), **PROCEDURAL)
    old_part = WorkDir(output / "_build").arrow_files()[0]
    with pa.ipc.open_stream(old_part) as reader:
        table = reader.read_all()
    with pa.OSFile(old_part, "wb") as file, pa.ipc.new_stream(file, table.drop(["text"]).schema) as writer:
        writer.write_table(table.drop(["text"]))
    old_track = table.column("track_id")[0].as_py()
    merged = build_dataset(output_dir=str(output), merge_only=True, **PROCEDURAL)
    texts = {track_id: text for split in merged.values() for track_id, text in zip(split["track_id"], split["text"])}
    assert texts.pop(old_track) is None and all(texts.values())
    assert all(split.features == CODES_FEATURES for split in merged.values())

    old = DatasetDict({name: split.remove_columns("text") for name, split in procedural_reference.items()})
    old.save_to_disk(str(tmp_path / "old"))
    (tmp_path / "old" / "codec.json").write_text((output / "codec.json").read_text())
    loaded, _ = load_codes_dataset(tmp_path / "old")
    assert all(split.features == CODES_FEATURES and not any(split["text"]) for split in loaded.values())
    assert isinstance(loaded["train"], Dataset)


def test_rerun_encodes_nothing_and_splits_change_without_reencoding(fma_build, audio_tree, count_encoded):
    output, dataset_dict = fma_build
    options = {"output_dir": str(output), "fma_dir": str(audio_tree.fma_dir), **CODEC}
    assert _as_rows(build_dataset(**options)) == _as_rows(dataset_dict)
    fma_split = build_dataset(**options, split_mode="fma", merge_only=True)
    assert count_encoded == []
    assert set(fma_split) == {"training", "validation", "test"}
    for name, split in fma_split.items():
        assert {audio_tree.good[track_id][1] for track_id in split["track_id"]} == {name}
    # 001000 has no FMA split: left out, and said so
    assert "001000" not in {track_id for split in fma_split.values() for track_id in split["track_id"]}
    assert "no split" in (output / "README.md").read_text()


def test_fma_split_mode_does_not_encode_tracks_without_a_split(audio_tree, tmp_path, count_encoded):
    built = build_dataset(output_dir=str(tmp_path), fma_dir=str(audio_tree.fma_dir), split_mode="fma", **CODEC)
    with_a_split = sorted(track_id for track_id, (_, split) in audio_tree.good.items() if split is not None)
    assert sorted(track_id for split in built.values() for track_id in split["track_id"]) == with_a_split
    assert len(count_encoded) == len(with_a_split)  # 001000 (not in tracks.csv) was never encoded
    assert "1 tracks have no split under this split rule and were not encoded" in (tmp_path / "README.md").read_text()


def test_random_split_is_by_track_disjoint_and_deterministic(tmp_path):
    from data.splits import random_split

    track_ids = [f"track-{index}" for index in range(2000)]
    splits = random_split(track_ids, seed=3)
    assert splits == random_split(list(reversed(track_ids)), seed=3)
    assert 0.08 < sum(split == "validation" for split in splits.values()) / 2000 < 0.12
    assert splits != random_split(track_ids, seed=4)
    assert list(random_split(["a", "b"], seed=0).values()).count("validation") == 1  # never empty


def test_split_file_json_and_csv(tmp_path):
    from data.splits import make_split_assigner

    (tmp_path / "splits.json").write_text(json.dumps({"train": ["a", "b"], "validation": ["c"]}))
    (tmp_path / "splits.csv").write_text("track_id,split\na,train\nb,train\nc,validation\n")
    for name in ("splits.json", "splits.csv"):
        assign, names, _ = make_split_assigner("file", split_file=str(tmp_path / name))
        assert assign(["a", "c", "z"]) == {"a": "train", "c": "validation", "z": None}
        assert names == ["train", "validation"]
    (tmp_path / "bad.json").write_text(json.dumps({"train": ["a"], "validation": ["a"]}))
    with pytest.raises(ValueError, match="both"):
        make_split_assigner("file", split_file=str(tmp_path / "bad.json"))


def test_changed_settings_are_refused(fma_build, audio_tree):
    output, _ = fma_build
    with pytest.raises(ValueError, match="min_seconds"):
        build_dataset(output_dir=str(output), fma_dir=str(audio_tree.fma_dir), min_seconds=0.5, **CODEC)


def test_hf_dataset_source_downloaded_and_streamed(audio_tree, tmp_path):
    from datasets import Audio, Dataset, Features, List, Value

    ids = ["000002", "000003", "000005", "000033"]
    paths = [next(audio_tree.fma_dir.rglob(f"{track_id}.*")) for track_id in ids]
    rows = {
        "audio": [{"bytes": path.read_bytes(), "path": path.name} for path in paths],
        "id": ids,
        "style": ["a", "b", "c", "d"],
        "caption": ["a calm  piano piece", "", None, "loud drums"],
        "tags": [["lofi", "chill"], [], None, ["rock"]],
    }
    # written as a plain struct then cast: encoding into an Audio feature would need torchcodec
    audio_struct = {"bytes": Value("binary"), "path": Value("string")}
    features = Features({"audio": audio_struct, "id": Value("string"), "style": Value("string"),
                         "caption": Value("string"), "tags": List(Value("string"))})
    dataset = Dataset.from_dict(rows, features=features).cast_column("audio", Audio())
    dataset.to_parquet(str(tmp_path / "audio.parquet"))
    options = {"hf_dataset": str(tmp_path / "audio.parquet"), "id_column": "id", "genre_column": "style", **CODEC}
    downloaded = build_dataset(output_dir=str(tmp_path / "downloaded"), text_column="caption", **options)
    streamed = build_dataset(output_dir=str(tmp_path / "streamed"), streaming=True, num_workers=0,
                             text_column="caption", **options)
    assert _as_rows(downloaded) == _as_rows(streamed)
    encoded = {track_id for split in downloaded.values() for track_id in split["track_id"]}
    assert encoded == {"000002", "000003", "000005"}
    texts = {track_id: text for split in downloaded.values() for track_id, text in zip(split["track_id"], split["text"])}
    assert texts == {"000002": "a calm piano piece", "000003": None, "000005": None}
    tagged = build_dataset(output_dir=str(tmp_path / "tagged"), text_column="tags", **options)
    texts = {track_id: text for split in tagged.values() for track_id, text in zip(split["track_id"], split["text"])}
    assert texts == {"000002": "lofi, chill", "000003": None, "000005": None}
    with pytest.raises(ValueError, match="no column 'captions'"):
        build_dataset(output_dir=str(tmp_path / "typo"), text_column="captions", **options)
    assert [reject.reason for reject in read_rejects(tmp_path / "streamed" / "rejects.jsonl")] == ["silent"]


def test_chunks_segments_cover_the_track(tmp_path):
    chunks = {"segment": "chunks", "segment_seconds": 1.0, "min_seconds": 0.5}
    generated = {"procedural_tracks": 2, "procedural_seconds": 2.8}
    dataset_dict = build_dataset(output_dir=str(tmp_path), **generated, **chunks, **CODEC)
    rows = sorted(((row["track_id"], row["start_frame"]), row) for split in dataset_dict.values() for row in split)
    first_track = "procedural-0-00000"
    assert [key for key, _ in rows][:3] == [(first_track, 0), (first_track, 86), (first_track, 172)]
    tail_samples = round(2.8 * 44100) - 2 * 86 * 512  # 1 s chunks are 86 frames; the 0.8 s tail is kept
    assert [row["num_frames"] for _, row in rows][:3] == [86, 86, math.ceil(tail_samples / 512)]
    assert rows[2][1]["duration"] == pytest.approx(tail_samples / 44100)


@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_resume_after_a_kill_encodes_only_unfinished_tracks(procedural_reference, tmp_path, count_encoded,
                                                             signal_number):
    output = tmp_path / "codes"
    command = [sys.executable, "-m", "data.build_dataset", "--output_dir", str(output), *_cli_options(PROCEDURAL)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stderr=subprocess.PIPE, text=True)
    parts = output / "_build" / "parts"
    deadline = time.monotonic() + 120
    while len(list(parts.glob("*.json"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal_number)
    stderr = process.communicate(timeout=60)[1]
    finished = {track for path in parts.glob("*.json") for track in json.loads(path.read_text())["tracks"]}
    assert 2 <= len(finished) < 8, "the build must be killed midway"
    if signal_number == signal.SIGTERM:  # a stop it can handle: it says what is kept and leaves no temporary file
        assert process.returncode == 130 and "Traceback" not in stderr, stderr
        assert stderr.strip().splitlines()[-1] == (
            f"interrupted: {len(finished)} of 8 tracks are done and kept in {output}/_build (nothing half-written); "
            f"rerun the same command to encode the other {8 - len(finished)}"
        )
        assert not list(output.rglob("*.tmp"))
    resumed = build_dataset(output_dir=str(output), **PROCEDURAL)
    assert len(count_encoded) == 8 - len(finished)
    assert _as_rows(resumed) == _as_rows(procedural_reference)


def test_two_processes_under_accelerate_match_one(procedural_reference, tmp_path):
    output = tmp_path / "codes"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "data.build_dataset"]
    command = launch + ["--output_dir", str(output), *_cli_options(PROCEDURAL)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    work = output / "_build"
    assert sorted(path.name for path in work.glob("done-*")) == ["done-rank000-of002.json", "done-rank001-of002.json"]
    shards = {0: set(), 1: set()}
    for path in (work / "parts").glob("*.json"):
        shards[int(path.name[4:7])] |= set(json.loads(path.read_text())["tracks"])
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    assert len(shards[0] | shards[1]) == 8
    merged, _ = load_codes_dataset(output)
    assert _as_rows(merged) == _as_rows(procedural_reference)


def test_the_work_folder_another_process_just_created_does_not_make_the_output_foreign(tmp_path, monkeypatch):
    """The processes of one launch claim the output folder at the same moment: one may find no _build, and an
    instant later the _build another has just created. That is not a foreign, non-empty --output_dir (CI saw one
    process of the two-process build refuse so); anything else there still is."""
    work = WorkDir(tmp_path / "codes" / "_build")
    work.parts.mkdir(parents=True)  # what the other process created
    plain_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda path: path != work.root and plain_exists(path))  # seen just before
    assert work.check_claim({"source": "procedural"}) is False
    (tmp_path / "codes" / "notes.txt").write_text("someone else's")
    with pytest.raises(ValueError, match="is not empty and holds no earlier build"):
        work.check_claim({"source": "procedural"})


def test_cli_user_errors_exit_2_with_one_line(tmp_path, capsys, monkeypatch):
    for argv, message in [
        (["--output_dir", str(tmp_path / "a"), "--audio_dir", str(tmp_path / "nowhere")], "not a directory"),
        (["--output_dir", str(tmp_path / "b"), "--audio_dir", "x", "--fma_dir", "y"], "one source"),
        (["--output_dir", str(tmp_path / "c"), "--segment", "first", "--segment_seconds", "0.5"], "segment_seconds"),
        (["--output_dir", str(tmp_path / "d"), "--text_column", "caption"], "--text_column applies to --hf_dataset"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("error:") and message in error


def test_an_input_where_every_file_is_rejected_exits_2_with_one_line_and_claims_no_folder(tmp_path, capsys):
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "song.mp3").write_text("not music, only a text file\n")
    output = tmp_path / "codes"
    with pytest.raises(SystemExit) as exit_info:
        main(["--output_dir", str(output), "--audio_dir", str(audio), *_cli_options(CODEC)])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == ["error: no usable audio: 1 file rejected (song.mp3: a text file, not audio (28 bytes))"]
    assert not output.exists()
    # other settings on the same folder are not refused, and the text file is a reject, not a decoder warning
    _mp3_folder(audio, ["clean.mp3"])
    main(["--output_dir", str(output), "--audio_dir", str(audio), "--min_seconds", "0.5", *_cli_options(CODEC)])
    assert [reject.reason for reject in read_rejects(output / "rejects.jsonl")] == ["not_audio"]
    assert read_decoder_warnings(output / "decoder_warnings.jsonl") == []
    assert "made the decoder print warnings" not in (output / "README.md").read_text()


def test_unavailable_pretrained_codec_names_the_random_option(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SystemExit) as exit_info:
        main(["--output_dir", str(tmp_path), "--procedural_tracks", "1", "--procedural_seconds", "1.5"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "descript/dac_44khz" in error and "--codec random --codec_seed N" in error


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    for option in ("--fma_dir", "--hf_dataset", "--streaming", "--codec", "--segment", "--split_mode", "--num_workers"):
        assert option in usage


def test_the_decode_bar_times_decoding_only(tmp_path, capsys, monkeypatch):
    """Encoding 2 s per track (slowed here) must not show in the decode bar's seconds per track: the bar would
    read 2 s or more if it did, and decoding a procedural track takes a small part of that even on a loaded
    machine."""
    original = Codec.encode

    def slow(self, waveforms):
        time.sleep(2.0)
        return original(self, waveforms)

    monkeypatch.setattr(Codec, "encode", slow)
    build_dataset(output_dir=str(tmp_path), **{**PROCEDURAL, "procedural_tracks": 3})
    rates = [float(rate) for rate in re.findall(r"([0-9.]+) s/track decoding", capsys.readouterr().err)]
    assert rates and max(rates) < 1.0, rates


def _mp3_folder(folder, names):
    """Damaged mp3s (the decoder warns about them on fd 2) and clean ones, 1.2 s each."""
    from tests.conftest import synthesize, write_audio, write_damaged_mp3

    for index, name in enumerate(names):
        if "damaged" in name:
            write_damaged_mp3(folder / name, seconds=1.2, seed=index)
        else:
            write_audio(folder / name, synthesize(1.2, seed=index), 44100)
    return folder


DECODER_TEXT = ("Illegal Audio-MPEG-Header", "Xing stream size off")


def test_mp3_decoder_warnings_go_to_the_tracks_report_not_between_the_bars(tmp_path):
    audio = _mp3_folder(tmp_path, ["damaged.mp3", "clean.mp3"])
    output = tmp_path / "codes"
    command = [sys.executable, "-m", "data.build_dataset", "--output_dir", str(output), "--audio_dir", str(audio)]
    result = subprocess.run(command + _cli_options(CODEC), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "decode: 100%|" in result.stderr and "encode:" in result.stderr  # the bars still reach the terminal
    assert not any(text in result.stderr for text in DECODER_TEXT), result.stderr
    [warned] = read_decoder_warnings(output / "decoder_warnings.jsonl")  # the clean track has none
    assert (warned.track_id, warned.path) == ("damaged.mp3", str(audio / "damaged.mp3"))
    assert all(any(text in message for message in warned.messages) for text in DECODER_TEXT), warned.messages
    assert read_rejects(output / "rejects.jsonl") == []  # both tracks are in the dataset
    assert sum(len(split) for split in load_codes_dataset(output)[0].values()) == 2
    assert "1 tracks made the decoder print warnings" in result.stderr
    assert "decoder_warnings.jsonl" in (output / "README.md").read_text()


# The data CLI with soundfile's read patched for two things a plain run cannot show on demand: while an mp3's fd 2 is
# captured, Python writes to stderr the three ways other threads do (print, a logging handler made before the build,
# a warning), which must reach the terminal and not the track's report; and a "held" file keeps the capture open so
# that an interrupt lands inside it.
PATCHED_CLI = """
import logging, os, sys, time, warnings
from pathlib import Path
import soundfile
from transformers.utils import logging as transformers_logging

decode = soundfile.SoundFile.read
logger = transformers_logging.get_logger("transformers")  # its handler keeps the sys.stderr it found

def read(self, *args, **kwargs):
    name = Path(self.name).name
    if name.startswith("1-"):
        print("a print while fd 2 is captured", file=sys.stderr)
        logger.warning("a log line while fd 2 is captured")
        warnings.warn("a warning while fd 2 is captured")
    if "held" in name:
        Path(os.environ["HELD_MARKER"]).touch()
        time.sleep(3)
    return decode(self, *args, **kwargs)

soundfile.SoundFile.read = read
from data.build_dataset import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_interrupt_while_fd2_is_captured_gives_the_terminal_its_stderr_back(tmp_path, num_workers):
    names = ["1-damaged.mp3", "2-clean.mp3", "3-held-damaged.mp3"]
    (tmp_path / "audio").mkdir()
    audio = _mp3_folder(tmp_path / "audio", names)
    output, marker = tmp_path / "codes", tmp_path / "held"
    options = {"audio_dir": audio, "num_workers": num_workers, "part_tracks": 1, "batch_size": 1, **CODEC}
    command = [sys.executable, "-c", PATCHED_CLI, "--output_dir", str(output), *_cli_options(options)]
    environment = {**os.environ, "HELD_MARKER": str(marker)}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)  # the held decode is inside its capture window now
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    finished = {track for path in (output / "_build" / "parts").glob("*.json")
                for track in json.loads(path.read_text())["tracks"]}
    assert stderr.strip().splitlines()[-1].startswith(f"interrupted: {len(finished)} of 3 tracks are done"), stderr
    for line in ("a print", "a log line", "a warning"):
        assert f"{line} while fd 2 is captured" in stderr, stderr
    assert not any(text in stderr for text in DECODER_TEXT), stderr
    assert not list(output.rglob("*.tmp"))
    build_dataset(output_dir=str(output), **{**options, "audio_dir": str(audio)})  # resumes
    warnings = read_decoder_warnings(output / "decoder_warnings.jsonl")
    warned = {warning.track_id: warning.messages for warning in warnings}
    assert sorted(warned) == ["1-damaged.mp3", "3-held-damaged.mp3"]
    assert not any("captured" in message for messages in warned.values() for message in messages), warned
