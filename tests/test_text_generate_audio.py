"""generate_audio.py with a text-conditioned checkpoint: --text (one description, or one per sample), guidance 3.0
by default, file names that carry the description's first words, and the mistakes it refuses before any work."""

import pytest
import torch

from configuration_music_hybrid import MusicHybridConfig
from generate_audio import main
from generation.pipeline import generate_audio
from modeling_music_hybrid import MusicHybridForCausalLM
from processing_music_hybrid import random_codec_identity
from training.text_encoders import save_random_text_encoder

CODEC_IDENTITY = random_codec_identity(seed=0, small=True)
pytestmark = [
    pytest.mark.filterwarnings("ignore:codec. DAC with RANDOM weights"),
    pytest.mark.usefixtures("single_torch_thread"),
]


def save_checkpoint(folder, text_encoder=None, genres=None):
    torch.manual_seed(0)
    config = MusicHybridConfig.from_preset(
        "hybrid-tiny", codec=CODEC_IDENTITY, text_encoder=text_encoder, genres=genres, max_position_embeddings=64
    )
    MusicHybridForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def described(tmp_path_factory):
    encoder = save_random_text_encoder(tmp_path_factory.mktemp("encoder"))
    return save_checkpoint(tmp_path_factory.mktemp("described"), text_encoder=encoder)


@pytest.fixture(scope="module")
def genres_only(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("genres"), genres=["Rock"])


def test_a_description_and_guidance_reach_generate_and_name_the_files(described, tmp_path):
    text = "A calm piano ballad, in D minor!"
    result = generate_audio(described, tmp_path / "guided", num_samples=2, duration=0.1, text=text, seed=4,
                            progress=False)
    assert [path.name for path in result.paths] == ["sample_000_A-calm-piano-ballad-in.wav",
                                                    "sample_001_A-calm-piano-ballad-in.wav"]
    model = MusicHybridForCausalLM.from_pretrained(described).eval()
    torch.manual_seed(4)  # without --guidance-scale a description is sampled with MusicGen's 3.0
    expected = model.generate(max_new_tokens=result.codes.shape[2], num_return_sequences=2, text=text,
                              guidance_scale=3.0)
    assert torch.equal(result.codes, expected)
    plain = generate_audio(described, tmp_path / "plain", num_samples=2, duration=0.1, text=text,
                           guidance_scale=1.0, seed=4, progress=False)
    assert not torch.equal(plain.codes, expected)


def test_one_description_per_sample_across_batches(described, tmp_path, capsys):
    texts = ["fast drums", "a slow ballad", "noise"]
    arguments = [str(described), "--output-dir", str(tmp_path / "out"), "--duration", "0.1", "--num-samples", "3",
                 "--batch-size", "2", "--text", *texts, "--seed", "1"]
    assert main(arguments) == 0
    assert "x real time (" in capsys.readouterr().out
    names = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert names == ["sample_000_fast-drums.wav", "sample_001_a-slow-ballad.wav", "sample_002_noise.wav"]
    model = MusicHybridForCausalLM.from_pretrained(described).eval()
    result = generate_audio(described, tmp_path / "again", num_samples=3, duration=0.1, text=texts, seed=1,
                            batch_size=2, progress=False)
    torch.manual_seed(1)
    first = model.generate(max_new_tokens=result.codes.shape[2], num_return_sequences=2, text=texts[:2],
                           guidance_scale=3.0)
    assert torch.equal(result.codes[:2], first)


@pytest.mark.parametrize(
    "checkpoint, arguments, message",
    [
        ("described", ["--text", "a", "b"], "--text takes one description or one per sample (3), got 2"),
        ("described", ["--guidance-scale", "3"], "--guidance-scale needs --text"),
        ("described", ["--genre", "Rock"], "--genre needs a genre-conditioned checkpoint; this one is conditioned on"),
        ("genres_only", ["--text", "calm"], "--text needs a text-conditioned checkpoint; this one is conditioned on"),
    ],
)
def test_text_mistakes_fail_before_any_work(request, tmp_path, capsys, checkpoint, arguments, message):
    output_dir = tmp_path / "out"
    folder = request.getfixturevalue(checkpoint)
    assert main([str(folder), "--output-dir", str(output_dir), "--duration", "0.1", "--num-samples", "3",
                 *arguments]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and message in error[0], error
    assert not output_dir.exists()
