"""app.py, the listening page, driven in headless Chromium (Debian's `chromium`, through Playwright) against the app
started on two tiny random checkpoints in a subprocess: generate, compare, a blind A/B vote, a bad upload, stopping,
the file access rules and no request leaving the machine; and its refusals at start-up."""

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from configuration_music_hybrid import MusicHybridConfig
from modeling_music_hybrid import MusicHybridForCausalLM
from processing_music_hybrid import random_codec_identity

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CODEC_IDENTITY = random_codec_identity(seed=0, small=True)
SAMPLE_RATE = 44100
DURATION = 0.5  # seconds: 44 frames of a tiny model, well inside its 128 positions


def save_checkpoint(folder, preset, genres=None):
    torch.manual_seed(0)
    config = MusicHybridConfig.from_preset(preset, codec=CODEC_IDENTITY, genres=genres, max_position_embeddings=128)
    MusicHybridForCausalLM(config).save_pretrained(folder)
    return folder


def run_app(*args, cwd=REPO_ROOT):
    return subprocess.run([sys.executable, str(REPO_ROOT / "app.py"), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


# ---- refusals at start-up (no browser needed)

def test_a_bad_model_path_is_refused_in_one_line(tmp_path):
    result = run_app("--model", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: --model {str(tmp_path / 'missing')!r}: no such folder; give the "
                                          "folder of a model saved by run_clm_audio.py"]
    assert not (tmp_path / "out").exists()


def test_without_a_model_or_demo_output_it_says_how_to_get_one(tmp_path):
    result = run_app(cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("error: no --model given and no demo_output/ here") and "python demo.py" in line


def test_preferences_accumulate_in_one_json_file_with_a_tally_per_pair(tmp_path):
    from listening.preferences import read_preferences, record_preference, tally

    path = tmp_path / "preferences.json"
    record_preference(path, ["b", "a"], "a", {"seed": 1})
    record_preference(path, ["a", "b"], "a", {"seed": 2})
    record_preference(path, ["c", "a"], "c", {"seed": 3})
    assert [trial["preferred"] for trial in read_preferences(path)] == ["a", "a", "c"]
    assert tally(read_preferences(path)) == [("a", "b", 2, 2, 0), ("a", "c", 1, 0, 1)]
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(ValueError, match="was not one of the pair"):
        record_preference(path, ["a", "b"], "c", {})


# ---- the page in a browser

def browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no browser at {CHROMIUM}: install Debian's chromium (apt-get install chromium), as .ci/run does")
    return sync_playwright


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a free localhost port, serving a genre-conditioned hybrid and an unconditional transformer."""
    browser_or_skip()
    root = tmp_path_factory.mktemp("app")
    models = [save_checkpoint(root / "hybrid-tiny", "hybrid-tiny", genres=["Rock", "Jazz"]),
              save_checkpoint(root / "transformer-tiny", "transformer-tiny")]
    port = free_port()
    output_dir = root / "out"
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "app.py"), "--model", str(models[0]), "--model", str(models[1]),
         "--port", str(port), "--output-dir", str(output_dir), "--no-compile"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_served(url, process)
        yield {"url": url, "output_dir": output_dir, "root": root}
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_until_served(url, process, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the app exited with {process.returncode}: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    pytest.fail(f"the app did not answer at {url} within {timeout} s")


@pytest.fixture(scope="module")
def browser(server):
    """One browser context (its cache shared by the tests' pages)."""
    with browser_or_skip()() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium.new_context(viewport={"width": 1400, "height": 1000})
        chromium.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the app; afterwards, every request it made must have stayed on the app's own server."""
    page = browser.new_page()
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(server["url"])
    page.get_by_role("button", name="Generate").wait_for()
    yield page
    page.close()
    external = [url for url in requests if not url.startswith((server["url"], "blob:", "data:"))]
    assert not external, f"the page made requests off the machine: {external}"


def set_duration(page, seconds):
    field = page.get_by_label("number input for Duration")
    field.fill(str(seconds))
    field.press("Enter")


def download(page, server, link) -> tuple:
    """The audio behind a player's download link: (samples, sample rate, path on the server)."""
    href = link.get_attribute("href")
    assert href.startswith(f"{server['url']}/gradio_api/file=")
    response = page.request.get(href)
    assert response.ok
    path = Path(href.split("file=", 1)[1])
    audio, rate = soundfile.read(io.BytesIO(response.body()), dtype="float32")
    return audio, rate, path


def test_generate_plays_a_44k_wav_of_the_duration_asked(page, server):
    set_duration(page, DURATION)
    page.get_by_role("button", name="Generate").click()
    link = page.locator(".finished-sample").first.get_by_test_id("download-link")
    link.wait_for(timeout=60_000)
    audio, rate, path = download(page, server, link)
    assert rate == SAMPLE_RATE
    assert len(audio) == round(DURATION * SAMPLE_RATE)
    assert np.abs(audio).max() > 0
    assert path.name.startswith("hybrid-tiny_0.5s_seed0_") and path.is_relative_to(server["output_dir"])
    assert "x real time" in page.get_by_text("hybrid-tiny: 1 sample(s)").inner_text()
    # the file under its settings' name in the output folder
    assert (server["output_dir"] / "samples" / path.name).is_file()


def test_compare_plays_both_checkpoints_with_the_same_seed(page, server):
    set_duration(page, DURATION)
    page.get_by_role("tab", name="Compare").click()
    # a genre the unconditional checkpoint cannot take: one message, before any work
    page.get_by_label("Genre").click()
    page.get_by_role("option", name="Rock").click()
    page.get_by_role("button", name="Compare").click()
    page.get_by_text("transformer-tiny: --genre needs a genre-conditioned checkpoint").wait_for(timeout=30_000)
    page.get_by_label("Genre").click()
    page.get_by_role("option", name="(none)").click()
    page.get_by_role("button", name="Compare").click()
    page.get_by_text("Same seed (0) and settings for every checkpoint.").wait_for(timeout=90_000)
    audio = {}
    for name in ("hybrid-tiny", "transformer-tiny"):
        player = page.get_by_test_id(f"audio-player-{name}")
        link = page.locator(".block", has=player).get_by_test_id("download-link")
        audio[name], rate, path = download(page, server, link)
        assert rate == SAMPLE_RATE and len(audio[name]) == round(DURATION * SAMPLE_RATE)
        assert path.name.startswith(f"{name}_0.5s_seed0_")
    spectrograms = page.locator(".spectrogram img")
    assert spectrograms.count() == 2
    assert all(spectrograms.nth(index).evaluate("image => image.complete && image.naturalWidth > 0")
               for index in range(2))
    assert not np.array_equal(audio["hybrid-tiny"], audio["transformer-tiny"])


def test_a_blind_vote_is_recorded_with_a_running_tally(page, server):
    set_duration(page, DURATION)
    page.get_by_role("tab", name="A/B test").click()
    page.get_by_role("button", name="New blind pair").click()
    prefer = page.get_by_role("button", name="Prefer sample 2")
    page.get_by_text("Listen to both, then vote.").wait_for(timeout=90_000)
    # unlabelled: the players and their files say nothing about the checkpoints
    for number in (1, 2):
        href = page.get_by_test_id(f"audio-player-Sample {number}").locator("xpath=ancestor::*[contains(@class,"
                                                                            "'block')][1]").get_by_test_id(
            "download-link").get_attribute("href")
        assert "tiny" not in href
    prefer.click()
    page.get_by_text("you preferred").wait_for()
    trials = json.loads((server["output_dir"] / "preferences.json").read_text())
    assert len(trials) == 1
    assert sorted(trials[0]["played"]) == ["hybrid-tiny", "transformer-tiny"]
    assert trials[0]["preferred"] == trials[0]["played"][1]
    assert page.get_by_role("cell", name="1", exact=True).count() >= 2  # trials 1, one side preferred once
    assert prefer.evaluate("button => button.disabled")  # one vote per pair


def test_a_bad_upload_shows_one_message(page, server, tmp_path):
    bad = tmp_path / "not-audio.wav"
    bad.write_text("this is not audio\n" * 50)
    page.locator("input[type=file]").first.set_input_files(bad)
    message = page.get_by_text("cannot read the prompt file not-audio.wav")
    message.wait_for(timeout=30_000)
    assert str(tmp_path) not in page.content()  # the server's paths stay on the server


def test_stop_ends_the_generation_and_keeps_no_partial_file(page, server):
    set_duration(page, 20)  # beyond the tiny model's context: refused, then windowed long form, seconds of work
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("hybrid-tiny: prompt + duration (20.0 s) exceed the model's context").wait_for(timeout=30_000)
    page.get_by_text("Decoding").click()
    page.get_by_role("radio", name="window").check()
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Rendering hybrid-tiny").wait_for(timeout=60_000)
    page.get_by_role("button", name="Stop").click()
    page.get_by_text("Stopped: the unfinished samples were removed.").wait_for(timeout=30_000)
    deadline = time.monotonic() + 30
    samples = server["output_dir"] / "samples"
    while any(samples.glob("*20s*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    assert not list(samples.glob("*20s*"))
    # the slot is free again: a short request finishes
    page.get_by_role("radio", name="off").check()
    set_duration(page, DURATION)
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("hybrid-tiny: 1 sample(s)").wait_for(timeout=60_000)


def test_no_request_reads_files_outside_the_output_folder(page, server):
    secret = server["root"] / "secret.txt"
    secret.write_text("not for the browser")
    for path in ("/etc/passwd", secret, server["output_dir"] / ".." / "secret.txt",
                 server["root"] / "hybrid-tiny" / "config.json"):
        response = page.request.get(f"{server['url']}/gradio_api/file={path}")
        assert not response.ok and b"not for the browser" not in response.body(), path
