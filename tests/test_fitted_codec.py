"""The fitted codec (codec_fitted_music_hybrid.py): deterministic fits, round-trip quality, pitched output, its
parameters travelling through a dataset and a checkpoint folder, and the refusals of bad input."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import codec_fitted_music_hybrid as fitted
from configuration_music_hybrid import MusicHybridConfig
from data.codec_fit import save_fit
from data.procedural_music import generate_track
from metrics.log_mel import log_mel_distance
from modeling_music_hybrid import MusicHybridForCausalLM
from processing_music_hybrid import CodecUnavailableError, load_codec

REPO_ROOT = Path(__file__).resolve().parents[1]
CENTROIDS = 64  # the default is 1024; a small fit keeps each test to seconds


def features_of(clips):
    edges = fitted.band_edges()
    return [fitted.band_features(clip, edges) for clip in clips]


@pytest.fixture(scope="module")
def procedural_fit(tmp_path_factory):
    """(codec, its folder, a held-out clip): fitted on six 3 s procedural tracks."""
    clips = [generate_track(0, index, 3.0)[0] for index in range(6)]
    folder = tmp_path_factory.mktemp("fit")
    identity = save_fit(folder, fitted.fit_codec(features_of(clips), seed=0, num_centroids=CENTROIDS), seed=0)
    return load_codec(identity, device="cpu", location=folder), folder, clips[0]


def test_a_fit_depends_on_its_seed_only_not_on_the_thread_count():
    blocks = features_of([generate_track(0, index, 1.0)[0] for index in range(3)])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = fitted.fit_codec(blocks, seed=5, num_centroids=32)
        torch.set_num_threads(2)
        two_threads = fitted.fit_codec(blocks, seed=5, num_centroids=32)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one_thread, two_threads) and one_thread.shape == (9, 32, len(fitted.band_edges()) - 1)
    assert not torch.equal(one_thread, fitted.fit_codec(blocks, seed=6, num_centroids=32))


def test_round_trip_keeps_the_log_mel_spectrogram_and_never_clips(procedural_fit):
    codec, _, clip = procedural_fit
    [codes] = codec.encode([clip])
    assert codes.shape == (9, -(-clip.size // 512)) and 0 <= codes.min() and codes.max() < CENTROIDS
    audio = codec.decode(codes[None], num_samples=clip.size)[0]
    assert audio.shape == (clip.size,) and audio.abs().max() <= fitted.PEAK_LIMIT + 1e-6
    l1_db, correlation = log_mel_distance(clip, audio.numpy())
    assert correlation > 0.9 and l1_db < 5.0
    coarse = codec.decode(codes[None, :1], num_samples=clip.size)[0]  # codebook 0 alone: coarser, still related
    assert log_mel_distance(clip, coarse.numpy())[1] < correlation
    loud = codec.decode(codec.encode([clip * 30])[0][None])[0]
    assert loud.abs().max() <= fitted.PEAK_LIMIT + 1e-6


def test_decoded_audio_keeps_the_pitches_of_a_chord():
    """Spectral peaks of the decoded audio sit at the chord's fundamentals, not between them."""
    time = np.arange(3 * 44100) / 44100
    pitches = [220.0, 277.18, 329.63]  # an A major triad: A3, C#4, E4
    chord = sum(0.2 * np.sin(2 * np.pi * pitch * time) for pitch in pitches).astype(np.float32)
    noise = np.random.default_rng(0).standard_normal(time.size).astype(np.float32) * 0.01
    edges = fitted.band_edges()
    centroids = fitted.fit_codec([fitted.band_features(chord + noise, edges)], seed=0, num_centroids=32)
    codec = fitted.FittedCodec(centroids, edges, identity={})
    audio = codec.decode(codec.encode([chord])[0][None])[0].numpy()
    spectrum = np.abs(np.fft.rfft(audio[44100:88200] * np.hanning(44100)))  # 1 Hz bins
    for pitch in pitches:
        at_pitch = spectrum[round(pitch) - 3 : round(pitch) + 4].max()
        between = spectrum[round(pitch) + 20 : round(pitch) + 30].max()
        assert at_pitch > 10 * between


def test_parameters_travel_with_a_checkpoint_and_decode_in_a_fresh_process_offline(procedural_fit, tmp_path):
    codec, _, clip = procedural_fit
    codes = codec.encode([clip])[0][None]
    model = MusicHybridForCausalLM(MusicHybridConfig.from_preset("hybrid-tiny", codec=codec.identity))
    model.save_pretrained(tmp_path / "checkpoint")
    assert (tmp_path / "checkpoint" / fitted.PARAMETERS_FILE).is_file()
    assert (tmp_path / "checkpoint" / "codec_fitted_music_hybrid.py").is_file()
    torch.save(codes, tmp_path / "codes.pt")
    torch.save(codec.decode(codes), tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "checkpoint")!r}, trust_remote_code=True)
        audio = model.decode_audio(torch.load({str(tmp_path / "codes.pt")!r}))
        assert torch.equal(audio, torch.load({str(tmp_path / "expected.pt")!r}))
        assert not {{"processing_music_hybrid", "codec_fitted_music_hybrid"}} & set(sys.modules)
    """)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    result = subprocess.run([sys.executable, "-c", script], cwd=workdir, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_missing_or_foreign_parameters_file_is_refused(procedural_fit, tmp_path):
    codec, folder, _ = procedural_fit
    identity = json.loads(json.dumps(codec.identity))
    unknown = dict(identity, config_overrides={**identity["config_overrides"], "parameters_sha256": "0" * 64})
    with pytest.raises(CodecUnavailableError, match="parameters file codec_fitted.safetensors is missing"):
        load_codec(unknown, location=tmp_path)
    with pytest.raises(ValueError, match="comes from another fit or version"):
        load_codec(unknown, location=folder)
    older = dict(identity, config_overrides={**identity["config_overrides"], "format_version": 0})
    with pytest.raises(ValueError, match="format version 0"):
        load_codec(older, location=folder)


def run_build(tmp_path, *options):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "data.build_dataset", "--output_dir", str(tmp_path / "codes"), "--codec", "fitted"]
    return subprocess.run(command + list(options), cwd=REPO_ROOT, env=env, capture_output=True, text=True)


def test_build_dataset_refuses_too_little_audio_to_fit_in_one_line(tmp_path):
    result = run_build(tmp_path, "--procedural_tracks", "3", "--procedural_seconds", "2")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "too little audio to fit the codec" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "codes").exists()


def test_build_dataset_fits_encodes_and_ships_the_parameters_and_training_refuses_a_dataset_without_them(tmp_path):
    result = run_build(tmp_path, "--procedural_tracks", "5", "--procedural_seconds", "2", "--codec_centroids",
                       "16", "--codec_seed", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fitted in" in result.stderr
    codes = tmp_path / "codes"
    identity = json.loads((codes / "codec.json").read_text())
    assert identity["backend"] == "fitted" and identity["seed"] == 3
    assert identity["config_overrides"]["parameters_sha256"] == fitted.file_sha256(codes / fitted.PARAMETERS_FILE)
    (codes / fitted.PARAMETERS_FILE).unlink()
    script = f"from data.dataset_io import load_codes_dataset; load_codes_dataset({str(codes)!r})"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    failed = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert "codec_fitted.safetensors is missing" in failed.stderr


def test_streamed_generation_decodes_the_fitted_codec_in_one_pass_with_no_seams(procedural_fit):
    from generation.chunked_decoder import ChunkedDecoder

    codec, _, clip = procedural_fit
    codes = codec.encode([clip])[0][None]
    decoder = ChunkedDecoder(codec, chunk_frames=20, start_frame=30)
    assert all(decoder.push(codes[..., start : start + 25]).shape == (1, 0) for start in range(0, codes.shape[2], 25))
    np.testing.assert_array_equal(decoder.flush(), codec.decode(codes)[:, 30 * 512 :].numpy())
