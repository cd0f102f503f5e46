"""Shared fixtures: the small random DAC codec and a synthesized FMA-like audio tree."""

import os

# Tiny models and codecs run fastest on one intra-op thread, and two threads spin against each other as soon as
# anything else loads the machine; the cores go to test workers instead (pytest -n, see
# pytest_xdist_auto_num_workers). Set before torch is imported; child processes of the tests inherit it.
# MUSIC_HYBRID_TEST_THREADS=2 runs tests on two threads instead: .ci/run does so for the files whose decoding paths
# depend on the thread count (the split products, the thread-count calibration).
if os.environ.get("MUSIC_HYBRID_TEST_THREADS"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MUSIC_HYBRID_TEST_THREADS"]
os.environ.setdefault("OMP_NUM_THREADS", "1")

import csv
import signal
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile

from processing_music_hybrid import load_codec, random_codec_identity

SOUNDFILE_FORMATS = {
    ".mp3": ("MP3", "MPEG_LAYER_III"),
    ".ogg": ("OGG", "VORBIS"),
    ".flac": ("FLAC", None),
    ".wav": ("WAV", None),
}


def synthesize(seconds, rate=44100, channels=1, seed=0):
    """A few seconds of tones and noise, shape (samples, channels), float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    time = np.arange(round(seconds * rate)) / rate
    voices = [0.3 * np.sin(2 * np.pi * rng.uniform(110, 880) * time + rng.uniform(0, 6)) for _ in range(channels)]
    audio = np.stack(voices, axis=1) + 0.03 * rng.standard_normal((time.size, channels))
    return audio.astype(np.float32)


def write_audio(path, audio, rate):
    audio_format, subtype = SOUNDFILE_FORMATS[Path(path).suffix]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, audio, rate, format=audio_format, subtype=subtype)


def write_damaged_mp3(path, seconds=1.5, seed=0, junk_places=1):
    """An mp3 that libmpg123 decodes in full but warns about on fd 2: 200 junk bytes in the stream (in the middle, or
    at `junk_places` even intervals) make it print "Illegal Audio-MPEG-Header" (then resync, 4 lines each) and
    "Xing stream size off" (the header's length is wrong)."""
    write_audio(path, synthesize(seconds, seed=seed), 44100)
    encoded = Path(path).read_bytes()
    cuts = [len(encoded) * place // (junk_places + 1) for place in range(junk_places + 2)]
    pieces = [encoded[start:end] for start, end in zip(cuts, cuts[1:], strict=False)]
    Path(path).write_bytes((b"\x55" * 200).join(pieces))


def pytest_xdist_auto_num_workers(config):
    """Workers for `-n auto` (pyproject.toml's default): one per core, at most four, since each holds its own torch,
    models and codecs in memory."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def ctrl_c_reaches_child_processes():
    """Ctrl-C delivered as usual before each test: child processes inherit an ignored or blocked SIGINT, so a test
    sending one to its command would wait in vain if an earlier test in this worker process left it so (seen only
    with the suite's files in parallel workers)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


@dataclass(frozen=True)
class AudioTree:
    fma_dir: Path  # fma_small/NNN/NNNNNN.ext
    metadata: Path  # fma_metadata/tracks.csv beside it
    good: dict  # track_id -> (genre or None, FMA split or None) of every file that should encode
    rejects: dict  # track_id -> expected reject reason


@pytest.fixture(scope="module")
def single_torch_thread():
    """One intra-op thread: on a loaded 2-core machine two threads spin against each other
    (the small codec encodes about 7x slower, measured)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def two_threads():
    """Two intra-op threads, for the paths that only run with several (the thread-split products, the thread-count
    calibration); the suite itself runs on one."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def small_codec():
    """The small random DAC (44.1 kHz, hop 512, 9 x 1024 codes, shrunk channels)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_codec(random_codec_identity(seed=0, small=True), device="cpu")


@pytest.fixture(scope="session")
def audio_tree(tmp_path_factory):
    """An FMA-like tree in all four formats, with multi-channel, 22.05 and 48 kHz files, broken
    files of every kind, a track listed but missing, and a file absent from tracks.csv."""
    root = tmp_path_factory.mktemp("fma")
    fma_dir = root / "fma_small"
    good = {
        "000002": ("Hip-Hop", "training", ".mp3", 44100, 2),
        "000003": ("Rock", "validation", ".ogg", 48000, 1),
        "000005": ("Pop", "test", ".flac", 22050, 3),
        "000010": ("Folk", "training", ".wav", 44100, 1),
        "000011": ("Rock", "training", ".wav", 48000, 2),
    }
    for index, (track_id, (_, _, extension, rate, channels)) in enumerate(good.items()):
        write_audio(fma_dir / track_id[:3] / f"{track_id}{extension}", synthesize(1.4, rate, channels, index), rate)
    write_audio(fma_dir / "001" / "001000.wav", synthesize(1.3, seed=9), 44100)  # not in tracks.csv

    broken = fma_dir / "000"
    (broken / "000030.mp3").write_bytes(b"")
    write_audio(broken / "000031.flac", synthesize(1.5, seed=3), 44100)
    flac = (broken / "000031.flac").read_bytes()
    (broken / "000031.flac").write_bytes(flac[: len(flac) // 2])
    (broken / "000032.mp3").write_text("this is a text file, not an mp3\n" * 20)
    write_audio(broken / "000033.wav", np.zeros((44100 * 2, 1), np.float32), 44100)
    write_audio(broken / "000034.wav", synthesize(0.3, seed=4), 44100)
    rejects = {
        "000030": "empty",
        "000031": "unreadable",
        "000032": "not_audio",
        "000033": "silent",
        "000034": "too_short",
        "000040": "missing",
    }

    metadata = root / "fma_metadata" / "tracks.csv"
    metadata.parent.mkdir()
    listed = {track_id: (genre, split) for track_id, (genre, split, *_) in good.items()}
    listed |= {track_id: ("Experimental", "training") for track_id in rejects}
    genre_ids = {"Hip-Hop": 21, "Rock": 12, "Pop": 10, "Folk": 17, "Experimental": 38}
    sub_genres = {"000002": [811], "000011": [25, 85]}  # Hip-Hop Beats; Punk, Garage
    with open(metadata, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["", "set", "set", "track", "track", "track"])
        writer.writerow(["", "split", "subset", "genre_top", "title", "genres"])
        writer.writerow(["track_id", "", "", "", "", ""])
        for track_id, (genre, split) in listed.items():
            genres = str([genre_ids[genre], *sub_genres.get(track_id, [])])
            writer.writerow([int(track_id), split, "small", genre, f"Title of {track_id},\nwith a second line", genres])
        writer.writerow([99999, "training", "large", "Rock", "in fma_large only: not expected in fma_small", "[12]"])
    with open(metadata.with_name("genres.csv"), "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["genre_id", "#tracks", "parent", "title", "top_level"])
        names = {**{number: name for name, number in genre_ids.items()}, 811: "Hip-Hop Beats", 25: "Punk", 85: "Garage"}
        writer.writerows([number, 1, 0, name, number] for number, name in names.items())
    expected_good = {track_id: (genre, split) for track_id, (genre, split, *_) in good.items()}
    expected_good["001000"] = (None, None)
    return AudioTree(fma_dir, metadata, expected_good, rejects)
