"""generate_audio.py with a genre-conditioned checkpoint: --list-genres, --genre (one, or one per sample),
--guidance-scale, file names that carry the genre, and the mistakes it refuses before any work."""

import pytest
import torch

from configuration_music_hybrid import MusicHybridConfig
from generate_audio import main
from generation.pipeline import generate_audio
from modeling_music_hybrid import MusicHybridForCausalLM
from processing_music_hybrid import random_codec_identity

CODEC_IDENTITY = random_codec_identity(seed=0, small=True)
GENRES = ["Rock", "Hip-Hop", "Old-Time / Historic"]
pytestmark = [
    pytest.mark.filterwarnings("ignore:codec. DAC with RANDOM weights"),
    pytest.mark.usefixtures("single_torch_thread"),
]


def save_checkpoint(folder, genres):
    torch.manual_seed(0)
    config = MusicHybridConfig.from_preset(
        "hybrid-tiny", codec=CODEC_IDENTITY, genres=genres, max_position_embeddings=64
    )
    model = MusicHybridForCausalLM(config)
    if genres:
        with torch.no_grad():
            model.model.embed_genres.weight.normal_()
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def conditional(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("conditional"), GENRES)


@pytest.fixture(scope="module")
def unconditional(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("unconditional"), None)


def test_list_genres_prints_the_checkpoints_genres(conditional, unconditional, capsys):
    assert main([str(conditional), "--list-genres"]) == 0
    assert capsys.readouterr().out.splitlines() == GENRES
    assert main([str(unconditional), "--list-genres"]) == 0
    assert "is unconditional: it takes no genre" in capsys.readouterr().out


def test_genre_and_guidance_reach_generate_and_name_the_files(conditional, tmp_path):
    result = generate_audio(conditional, tmp_path / "guided", num_samples=2, duration=0.1, genre="Rock",
                            guidance_scale=3.0, seed=4, progress=False)
    assert [path.name for path in result.paths] == ["sample_000_Rock.wav", "sample_001_Rock.wav"]
    assert all(path.is_file() for path in result.paths)
    model = MusicHybridForCausalLM.from_pretrained(conditional).eval()
    torch.manual_seed(4)
    expected = model.generate(max_new_tokens=result.codes.shape[2], num_return_sequences=2, genre="Rock",
                              guidance_scale=3.0)
    assert torch.equal(result.codes, expected)
    # Without --guidance-scale a genre is sampled with MusicGen's 3.0; 1 switches guidance off.
    default = generate_audio(conditional, tmp_path / "default", num_samples=2, duration=0.1, genre="Rock", seed=4,
                             progress=False)
    assert torch.equal(default.codes, expected)
    plain = generate_audio(conditional, tmp_path / "plain", num_samples=2, duration=0.1, genre="Rock",
                           guidance_scale=1.0, seed=4, progress=False)
    assert not torch.equal(plain.codes, expected)


def test_one_genre_per_sample_across_batches(conditional, tmp_path, capsys):
    arguments = [str(conditional), "--output-dir", str(tmp_path), "--duration", "0.1", "--num-samples", "3",
                 "--batch-size", "2", "--genre", "Hip-Hop", "Old-Time / Historic", "Rock", "--prefix", "take"]
    assert main(arguments) == 0
    assert "x real time (" in capsys.readouterr().out
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "take_000_Hip-Hop.wav", "take_001_Old-Time-Historic.wav", "take_002_Rock.wav"
    ]


@pytest.mark.parametrize(
    "checkpoint, arguments, message",
    [
        ("conditional", ["--genre", "Metal"], "unknown genre 'Metal'; this checkpoint knows: Rock, Hip-Hop"),
        ("conditional", ["--genre", "Rock", "Rock"], "one genre or one per sample (3), got 2"),
        ("conditional", ["--guidance-scale", "3"], "--guidance-scale needs --genre"),
        ("conditional", ["--genre", "Rock", "--guidance-scale", "0.5"], "--guidance-scale must be a number >= 1"),
        ("unconditional", ["--genre", "Rock"], "--genre needs a genre-conditioned checkpoint"),
        ("unconditional", ["--guidance-scale", "3"], "--guidance-scale needs a genre- or text-conditioned checkpoint"),
    ],
)
def test_genre_mistakes_fail_before_any_work(request, tmp_path, capsys, checkpoint, arguments, message):
    output_dir = tmp_path / "out"
    folder = request.getfixturevalue(checkpoint)
    assert main([str(folder), "--output-dir", str(output_dir), "--duration", "0.1", "--num-samples", "3",
                 *arguments]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and message in error[0], error
    assert not output_dir.exists()
