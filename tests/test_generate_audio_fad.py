"""generate_audio.py --reference DIR: the FAD of the new audio to a folder of audio files, refused early when the
folder is unusable."""

import re

import numpy as np
import pytest
import soundfile
import torch

from configuration_music_hybrid import MusicHybridConfig
from generate_audio import main
from modeling_music_hybrid import MusicHybridForCausalLM
from processing_music_hybrid import random_codec_identity

pytestmark = [
    pytest.mark.filterwarnings("ignore:codec. DAC with RANDOM weights"),
    pytest.mark.usefixtures("single_torch_thread"),
]


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hybrid")
    torch.manual_seed(0)
    config = MusicHybridConfig.from_preset("hybrid-tiny", codec=random_codec_identity(0, small=True),
                                           max_position_embeddings=128)
    MusicHybridForCausalLM(config).save_pretrained(folder)
    return folder


def printed_fad(output):
    return float(re.search(r"reference file\(s\) in \S+: ([0-9.e+-]+) \[", output).group(1))


def test_fad_to_its_own_earlier_samples_is_near_zero_and_to_noise_is_not(hybrid, tmp_path, capsys):
    arguments = [str(hybrid), "--num-samples", "2", "--duration", "0.2", "--seed", "3", "--continuation-only"]
    assert main([*arguments, "--output-dir", str(tmp_path / "first")]) == 0
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    for index in range(2):
        soundfile.write(noise_dir / f"noise{index}.wav", np.random.default_rng(index).normal(0, 0.3, 8820), 44100)
    capsys.readouterr()

    assert main([*arguments, "--output-dir", str(tmp_path / "again"), "--reference", str(tmp_path / "first")]) == 0
    same = capsys.readouterr().out
    assert "FAD of the 2 sample(s) to the 2 reference file(s)" in same and "random" in same
    assert main([*arguments, "--output-dir", str(tmp_path / "third"), "--reference", str(noise_dir)]) == 0
    other = capsys.readouterr().out
    assert printed_fad(same) < 1e-3 * printed_fad(other)


def test_mp3_decoder_warnings_of_reference_files_are_counted_not_printed(hybrid, tmp_path, capfd):
    from tests.conftest import write_damaged_mp3

    reference = tmp_path / "reference"
    reference.mkdir()
    write_damaged_mp3(reference / "damaged.mp3")
    soundfile.write(reference / "clean.wav", np.random.default_rng(0).normal(0, 0.3, 8820), 44100)
    arguments = [str(hybrid), "--output-dir", str(tmp_path / "out"), "--duration", "0.1", "--reference", str(reference)]
    assert main(arguments) == 0
    captured = capfd.readouterr()
    assert "to the 2 reference file(s)" in captured.out and "1 read despite mp3 decoder warnings" in captured.out
    assert "Illegal Audio-MPEG-Header" not in captured.err and "Xing" not in captured.err


@pytest.mark.parametrize("make, message", [(lambda path: None, "is not a directory"),
                                           (lambda path: path.mkdir(), "holds no audio files")])
def test_an_unusable_reference_folder_is_refused_before_any_work(hybrid, tmp_path, capsys, make, message):
    make(tmp_path / "reference")
    output_dir = tmp_path / "out"
    arguments = [str(hybrid), "--output-dir", str(output_dir), "--duration", "0.1", "--reference",
                 str(tmp_path / "reference")]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error and not output_dir.exists()
