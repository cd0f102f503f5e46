"""The codec interface with the small random DAC: shapes, length rule, batching and window
invariance, seeded weights, identity checks."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from processing_music_hybrid import Codec, check_identity, load_codec, plan_windows, random_codec_identity
from tests.conftest import synthesize

pytestmark = pytest.mark.usefixtures("single_torch_thread")
REPO_ROOT = Path(__file__).resolve().parents[1]


def _clip(seconds, seed):
    return synthesize(seconds, seed=seed)[:, 0]


def test_encode_shape_and_decode_length(small_codec):
    clip = _clip(1.3, 0)
    [codes] = small_codec.encode([clip])
    assert codes.dtype == torch.int64 and codes.shape == (9, math.ceil(clip.size / 512))
    assert 0 <= codes.min() and codes.max() < 1024
    assert len(set(codes[0].tolist())) > 5  # random weights still give varied codes
    audio = small_codec.decode(codes[None], num_samples=clip.size)
    assert audio.shape == (1, clip.size) and audio.dtype == torch.float32
    assert small_codec.decode(codes[None]).shape == (1, codes.shape[1] * 512)


def test_codes_do_not_depend_on_batching(small_codec):
    clips = [_clip(1.0, 1), _clip(1.0, 2), _clip(1.7, 3), _clip(1.0, 4)]  # equal and unequal lengths
    alone = [small_codec.encode([clip])[0] for clip in clips]
    together = small_codec.encode(clips)
    as_tensor = small_codec.encode(torch.from_numpy(np.stack([clips[0], clips[1]])))
    for one, batched in zip(alone, together, strict=True):
        torch.testing.assert_close(one, batched, rtol=0, atol=0)
    torch.testing.assert_close(as_tensor[1], alone[1], rtol=0, atol=0)


def test_window_plan_covers_every_frame_once():
    for total in [1, 50, 100, 101, 257]:
        windows = plan_windows(total, window_frames=40, overlap_frames=8)
        kept = [frame for window in windows for frame in range(window.keep_start, window.keep_stop)]
        assert kept == list(range(total))
        for window in windows:
            assert window.stop - window.start == min(40, total) and 0 <= window.start and window.stop <= total
            inner = window.keep_start > 0, window.keep_stop < total
            assert not inner[0] or window.keep_start - window.start >= 4
            assert not inner[1] or window.stop - window.keep_stop >= 4


def test_windowed_encode_agrees_with_one_shot_on_a_60s_track(small_codec):
    track = _clip(60.0, 5)
    windowed = Codec(small_codec.model, small_codec.identity, small_codec.device, window_seconds=10.0)
    one_shot = Codec(small_codec.model, small_codec.identity, small_codec.device, window_seconds=61.0)
    agreement = (windowed.encode([track])[0] == one_shot.encode([track])[0]).float().mean().item()
    assert agreement >= 0.99


def test_the_random_codec_warning_is_one_line_without_source():
    script = "from processing_music_hybrid import *; load_codec(random_codec_identity(7, small=True), device='cpu')"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        "codec: DAC with RANDOM weights (seed 7); its codes carry no musical meaning. "
        "Use it for tests and offline demos only."
    ]


def test_same_seed_same_weights_and_a_warning(caplog):
    with caplog.at_level("WARNING"):
        first = load_codec(random_codec_identity(seed=7, small=True), device="cpu")
    assert "no musical meaning" in caplog.text
    torch.manual_seed(123)  # the caller's RNG state must not matter
    second = load_codec(random_codec_identity(seed=7, small=True), device="cpu")
    other = load_codec(random_codec_identity(seed=8, small=True), device="cpu")
    first_state, second_state, other_state = (codec.model.state_dict() for codec in (first, second, other))
    assert all(torch.equal(first_state[name], second_state[name]) for name in first_state)
    assert not all(torch.equal(first_state[name], other_state[name]) for name in first_state)


def test_full_size_identity_has_the_real_architecture():
    from transformers import DacConfig

    from processing_music_hybrid import DAC_44KHZ_CONFIG

    config = DacConfig(**DAC_44KHZ_CONFIG)
    assert (config.sampling_rate, config.hop_length, config.n_codebooks, config.codebook_size) == (44100, 512, 9, 1024)
    assert random_codec_identity(seed=1)["config_overrides"] is None


def test_identity_checks():
    check_identity(random_codec_identity(0))
    with pytest.raises(ValueError, match="hop_length"):
        check_identity({**random_codec_identity(0), "hop_length": 320})
    with pytest.raises(ValueError, match="backend"):
        check_identity({"backend": "encodec"})


def test_in_place_snake_is_bitwise_equal_to_transformers(small_codec):
    from transformers import DacConfig, DacModel

    from processing_music_hybrid import DAC_44KHZ_CONFIG, SMALL_CONFIG_OVERRIDES

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        original = DacModel(DacConfig(**{**DAC_44KHZ_CONFIG, **SMALL_CONFIG_OVERRIDES})).eval()
    clip = torch.from_numpy(_clip(0.5, 6))[None, None, :22528]
    with torch.inference_mode():
        expected, got = original.encode(clip), small_codec.model.encode(clip)
        torch.testing.assert_close(got.quantized_representation, expected.quantized_representation, rtol=0, atol=0)
        torch.testing.assert_close(
            small_codec.model.decode(audio_codes=got.audio_codes).audio_values,
            original.decode(audio_codes=expected.audio_codes).audio_values,
            rtol=0,
            atol=0,
        )


def test_missing_descript_package_is_a_clear_error():
    import importlib.util

    if importlib.util.find_spec("dac") is not None:
        pytest.skip("descript-audio-codec is installed")
    from processing_music_hybrid import CodecUnavailableError, dac_package_identity

    with pytest.raises(CodecUnavailableError, match="pip install 'music-hybrid\\[dac\\]'"):
        load_codec(dac_package_identity(), device="cpu")
