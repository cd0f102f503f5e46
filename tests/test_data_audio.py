"""Audio decoding, downmix/resample, reject reasons, loudness, segments, procedural music."""

import math
import re

import numpy as np
import pytest

from data.audio import decode_audio, integrated_loudness, normalize_loudness, plan_segments, read_track
from data.procedural_music import SCALES, generate_track, track_plan
from data.rejects import RejectedInput
from data.sources import fma_tracks, folder_tracks

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _path(tree, track_id):
    return next(tree.fma_dir.rglob(f"{track_id}.*"))


def test_every_format_decodes_to_mono_44k_from_path_and_bytes(audio_tree):
    for track_id in ["000002", "000003", "000005", "000010", "000011"]:
        path = _path(audio_tree, track_id)
        from_path = read_track(str(path))
        from_bytes = read_track(path.read_bytes())
        assert from_path.dtype == np.float32 and from_path.ndim == 1
        np.testing.assert_array_equal(from_path, from_bytes)
        # 1.4 s at any source rate (22.05 / 44.1 / 48 kHz, 1-3 channels) becomes ~1.4 s at 44.1 kHz
        assert abs(from_path.size - 1.4 * 44100) < 0.01 * 44100, (path.name, from_path.size)


def test_multichannel_is_averaged_and_resampled():
    samples, rate = decode_audio(_write_stereo_48k())
    assert samples.shape[1] == 2 and rate == 48000
    mono = read_track((samples, rate))
    assert mono.size == 44100
    assert np.abs(mono).max() == pytest.approx(0.375, abs=0.01)  # mean of a 0.5 and a 0.25 sine


def _write_stereo_48k():
    import io

    import soundfile

    time = np.arange(48000) / 48000
    left = 0.5 * np.sin(2 * np.pi * 440 * time)
    buffer = io.BytesIO()
    soundfile.write(buffer, np.stack([left, left / 2], axis=1), 48000, format="WAV")
    return buffer.getvalue()


def test_broken_inputs_get_their_reason(audio_tree):
    for track_id, reason in audio_tree.rejects.items():
        path = next(audio_tree.fma_dir.rglob(f"{track_id}.*"), audio_tree.fma_dir / "000" / f"{track_id}.mp3")
        with pytest.raises(RejectedInput) as rejected:
            read_track(str(path))
        assert rejected.value.reason == reason, (track_id, rejected.value)
    with pytest.raises(RejectedInput, match="empty"):
        read_track(b"")


def test_fma_listing_counts_missing_and_unlisted(audio_tree):
    tracks, counts = fma_tracks(audio_tree.fma_dir)  # metadata found beside the archive
    ids = [track.track_id for track in tracks]
    assert ids == sorted(ids) and "000040" in ids and "099999" not in ids  # fma_large-only track not expected
    assert counts == {"files": 11, "in_metadata": 10, "not_in_metadata": 1, "listed_but_missing": 1}
    genres = {track.track_id: track.genre for track in tracks}
    assert genres["000002"] == "Hip-Hop" and genres["001000"] is None
    texts = {track.track_id: track.text for track in tracks}  # genre, sub-genres from genres.csv, title
    assert texts["000002"] == 'Hip-Hop music (Hip-Hop Beats) titled "Title of 000002, with a second line"'
    assert texts["000011"].startswith("Rock music (Punk, Garage) titled") and texts["001000"] is None
    with pytest.raises(ValueError, match="fma_subset"):
        renamed = audio_tree.fma_dir.parent / "my_copy"
        renamed.mkdir(exist_ok=True)
        fma_tracks(renamed, audio_tree.metadata)


def test_folder_listing_is_recursive_and_keeps_only_audio(audio_tree):
    (audio_tree.fma_dir / "notes.txt").write_text("not listed")
    ids = [track.track_id for track in folder_tracks(audio_tree.fma_dir)]
    assert "000/000002.mp3" in ids and "001/001000.wav" in ids and "notes.txt" not in ids
    assert len(ids) == 11


def test_loudness_matches_bs1770_and_normalizes():
    time = np.arange(5 * 44100) / 44100
    sine = np.sin(2 * np.pi * 997 * time)
    assert integrated_loudness(sine) == pytest.approx(-3.01, abs=0.05)  # the standard's reference value
    quiet = (0.05 * sine).astype(np.float32)
    assert integrated_loudness(normalize_loudness(quiet, -20.0)) == pytest.approx(-20.0, abs=0.01)
    loud = normalize_loudness(quiet, 0.0)  # would clip: limited to a 0.999 peak instead
    assert np.abs(loud).max() == pytest.approx(0.999, abs=1e-4)


def test_segments_whole_first_and_chunks():
    rate, hop = 44100, 512
    [whole] = plan_segments(10 * rate + 5)
    assert (whole.start_frame, whole.num_frames) == (0, math.ceil((10 * rate + 5) / hop))
    chunks = plan_segments(10 * rate, "chunks", 4.0, min_seconds=1.0)
    assert [chunk.start_frame for chunk in chunks] == [0, 345, 690]
    assert chunks[-1].duration == pytest.approx(10 - 2 * 345 * hop / rate)
    dropped = plan_segments(int(8.5 * rate), "chunks", 4.0, min_seconds=1.0)  # a 0.5 s tail is dropped
    assert len(dropped) == 2


def test_first_seconds_crop_reads_only_what_it_needs(audio_tree):
    samples = read_track(str(_path(audio_tree, "000010")), max_seconds=1.0)
    assert samples.size == 44100


def test_procedural_music_is_deterministic_and_varied():
    first, plan = generate_track(seed=3, index=1, seconds=2.0)
    again, _ = generate_track(seed=3, index=1, seconds=2.0)
    other, _ = generate_track(seed=3, index=2, seconds=2.0)
    np.testing.assert_array_equal(first, again)
    assert first.shape == (88200,) and first.dtype == np.float32 and np.abs(first).max() <= 0.8 + 1e-6
    assert not np.allclose(first, other)
    assert plan == track_plan(3, 1)
    assert len({track_plan(0, index).style for index in range(20)}) > 1
    assert len({track_plan(0, index).description() for index in range(20)}) == 20


DESCRIBED = re.compile(r"in (?P<tonic>[A-G]#?) (?P<mode>major|minor) at (?P<tempo>\d+) BPM")


@pytest.mark.parametrize("index", range(6))
def test_a_procedural_description_is_true_of_the_audio(index):
    """The key, mode and tempo the description names are those heard: the scale's seven pitch classes carry the
    most energy, and the audio repeats after two described beats (one bar)."""
    samples, plan = generate_track(seed=0, index=index, seconds=6.0)
    described = DESCRIBED.search(plan.description())
    assert described and plan.style.lower() in plan.description().lower()
    spectrum = np.abs(np.fft.rfft(samples)) ** 2
    frequencies = np.fft.rfftfreq(samples.size, 1 / 44100)
    audible = (frequencies > 200) & (frequencies < 2000)  # above the kick's sweep and the snare's body
    pitch_class = np.round(12 * np.log2(frequencies[audible] / 440) + 69).astype(int) % 12
    energy = np.bincount(pitch_class, weights=spectrum[audible], minlength=12)
    tonic = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"].index(described["tonic"])
    assert set(np.argsort(energy)[-7:]) == {(tonic + step) % 12 for step in SCALES[described["mode"]]}
    bar = 2 * 60 / int(described["tempo"]) * 44100  # two beats, in samples
    lags = np.arange(int(0.8 * bar), int(1.25 * bar))
    similarity = [np.dot(samples[:-lag], samples[lag:]) / (samples.size - lag) for lag in lags]
    assert abs(lags[int(np.argmax(similarity))] / bar - 1) < 0.01


def test_rejects_say_what_was_found_not_libsndfiles_pipe_message(tmp_path):
    from tests.conftest import synthesize, write_audio

    write_audio(tmp_path / "whole.mp3", synthesize(1.5), 44100)
    (tmp_path / "truncated.mp3").write_bytes((tmp_path / "whole.mp3").read_bytes()[:300])
    (tmp_path / "page.mp3").write_text("<!DOCTYPE html>\n<html><body>403 Forbidden</body></html>\n")
    expected = {
        "truncated.mp3": ("unreadable", "MP3 file that cannot be decoded: truncated or corrupt (300 bytes)"),
        "page.mp3": ("not_audio", "an HTML page, not audio (56 bytes)"),
    }
    for name, (reason, detail) in expected.items():
        with pytest.raises(RejectedInput) as rejected:
            decode_audio(str(tmp_path / name))
        assert (rejected.value.reason, rejected.value.detail) == (reason, detail)
        with pytest.raises(RejectedInput) as from_bytes:
            decode_audio((tmp_path / name).read_bytes())
        assert from_bytes.value.detail == detail


def test_mp3_decoder_warnings_are_collected_per_track_not_printed(tmp_path, capfd):
    """libmpg123 prints from C straight to fd 2; with a list to collect them, they go there and fd 2 comes back."""
    import os

    from tests.conftest import synthesize, write_audio, write_damaged_mp3

    write_damaged_mp3(tmp_path / "damaged.mp3")
    write_audio(tmp_path / "clean.mp3", synthesize(1.5), 44100)
    write_audio(tmp_path / "clean.flac", synthesize(1.5), 44100)
    collected = {}
    for name in ("damaged.mp3", "clean.mp3", "clean.flac"):
        for source in (str(tmp_path / name), (tmp_path / name).read_bytes()):
            messages = collected.setdefault(name, [])
            samples = read_track(source, decoder_messages=messages)
            assert abs(samples.size - 1.5 * 44100) < 0.01 * 44100  # decoded whole despite the warnings
    os.write(2, b"fd 2 is back\n")
    assert capfd.readouterr().err == "fd 2 is back\n"
    damaged = "\n".join(collected["damaged.mp3"])
    assert damaged.count("Illegal Audio-MPEG-Header") == 2 and damaged.count("Xing stream size off") == 2, damaged
    assert collected["clean.mp3"] == [] and collected["clean.flac"] == []
    write_damaged_mp3(tmp_path / "very_damaged.mp3", junk_places=12)  # dozens of lines: the first 20 are kept
    messages = []
    read_track(str(tmp_path / "very_damaged.mp3"), decoder_messages=messages)
    assert len(messages) == 21 and re.fullmatch(r"\.\.\. and \d+ more lines", messages[-1]), messages
