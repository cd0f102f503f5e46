import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import soundfile
import torch

from configuration_music_hybrid import MusicHybridConfig
from generate_audio import main
from generation.chunked_decoder import ChunkedDecoder
from generation.pipeline import generate_audio, load_prompt_audio
from generation.streaming_wav import StreamingWavWriter
from modeling_music_hybrid import MusicHybridForCausalLM, codes_to_model_inputs
from processing_music_hybrid import load_codec, random_codec_identity

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 44100
HOP = 512
CODEC_IDENTITY = random_codec_identity(seed=0, small=True)
pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def codec():
    return load_codec(CODEC_IDENTITY, device="cpu")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Save a tiny random model recording the small random codec; returns its folder."""

    def save(preset, **overrides):
        folder = tmp_path_factory.mktemp(preset)
        torch.manual_seed(0)
        config = MusicHybridConfig.from_preset(preset, codec=CODEC_IDENTITY, **overrides)
        MusicHybridForCausalLM(config).save_pretrained(folder)
        return folder

    return save


@pytest.fixture(scope="module")
def hybrid(checkpoint):
    return checkpoint("hybrid-tiny", max_position_embeddings=128)


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    """A stereo 22.05 kHz FLAC: exercises downmixing and resampling."""
    path = tmp_path_factory.mktemp("prompt") / "prompt.flac"
    time_axis = np.arange(int(0.2 * 22050)) / 22050
    left = 0.5 * np.sin(2 * np.pi * 220 * time_axis)
    soundfile.write(path, np.stack([left, 0.5 * left], axis=1), 22050)
    return path


def read_both_ways(path):
    """Samples via soundfile and via Python's wave module, which must agree."""
    audio, sample_rate = soundfile.read(path, dtype="int16")
    with wave.open(str(path)) as reader:
        assert reader.getframerate() == sample_rate and reader.getsampwidth() == 2
        pcm = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    assert np.array_equal(audio, pcm)
    return audio.astype(np.float32) / 32768, sample_rate


def snr_db(reference, estimate):
    with np.errstate(divide="ignore"):  # identical signals: infinite
        return 10 * np.log10(np.sum(reference**2) / np.sum((reference - estimate) ** 2))


def test_unconditional_samples_have_the_requested_length_and_rate(hybrid, tmp_path):
    result = generate_audio(hybrid, tmp_path, num_samples=3, duration=0.3, batch_size=2, seed=1, progress=False)
    assert [path.name for path in result.paths] == ["sample_000.wav", "sample_001.wav", "sample_002.wav"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [path.name for path in result.paths]  # no leftovers
    for path in result.paths:
        audio, sample_rate = read_both_ways(path)
        assert sample_rate == SAMPLE_RATE and audio.shape == (round(0.3 * SAMPLE_RATE),)
    assert result.codes.shape == (3, 9, 26)  # ceil(13230 / 512) frames
    assert result.times_real_time == pytest.approx(3 * 0.3 / result.elapsed_seconds)  # audio per compute second
    again = generate_audio(
        hybrid, tmp_path / "again", num_samples=3, duration=0.3, batch_size=2, seed=1, progress=False
    )
    assert torch.equal(result.codes, again.codes)


def test_compiled_decoding_writes_the_same_music(hybrid, tmp_path):
    """--compile (inductor on CPU; about 20 s of compilation) with top-k 1, where only the logits decide."""
    settings = dict(num_samples=2, duration=0.2, top_k=1, seed=0, progress=False)
    eager = generate_audio(hybrid, tmp_path / "eager", **settings)
    compiled = generate_audio(hybrid, tmp_path / "compiled", compile_decoding=True, **settings)
    assert torch.equal(compiled.codes, eager.codes)
    assert [path.name for path in compiled.paths] == ["sample_000.wav", "sample_001.wav"]


def test_written_audio_matches_a_one_shot_decode(hybrid, codec, tmp_path):
    result = generate_audio(hybrid, tmp_path, duration=0.4, chunk_seconds=0.05, stream=True, progress=False)
    audio, _ = read_both_ways(result.paths[0])
    one_shot = codec.decode(result.codes)[0, : audio.size].numpy()
    assert snr_db(np.clip(one_shot, -1, 1), audio) >= 40


def test_continuation_starts_with_the_prompt_audio(hybrid, codec, prompt_file, tmp_path):
    prompt_audio = load_prompt_audio(prompt_file, HOP)
    assert prompt_audio.size == int(0.2 * SAMPLE_RATE) // HOP * HOP  # resampled, cut to whole frames
    result = generate_audio(hybrid, tmp_path, num_samples=2, duration=0.25, prompt=prompt_file, progress=False)
    prompt_codes = codec.encode([prompt_audio])[0]
    for row, path in enumerate(result.paths):
        audio, _ = read_both_ways(path)
        assert audio.size == prompt_audio.size + round(0.25 * SAMPLE_RATE)
        assert np.allclose(audio[: prompt_audio.size], prompt_audio, atol=2 / 32768)
        assert torch.equal(result.codes[row, :, : prompt_codes.shape[1]], prompt_codes)

    only = generate_audio(
        hybrid, tmp_path / "only", duration=0.25, prompt=prompt_file, continuation_only=True, progress=False
    )
    audio, _ = read_both_ways(only.paths[0])
    assert audio.size == round(0.25 * SAMPLE_RATE)


def test_write_samples_hands_over_each_samples_audio_as_it_is_written(hybrid, codec, prompt_file, tmp_path):
    """What app.py plays while it renders: on_audio gets every piece appended to each file, the prompt first."""
    import threading

    from generation.pipeline import GenerationInterrupted, load_model, plan_generation, write_samples

    sampling = {"temperature": 1.0, "top_k": 250, "top_p": 1.0}
    plan = plan_generation(hybrid, 0.3, prompt_file, sampling, None, None, None, num_samples=2)
    model = load_model(hybrid, torch.device("cpu"))
    pieces = {0: [], 1: []}
    paths = [tmp_path / "a.wav", tmp_path / "b.wav"]
    result = write_samples(model, codec, plan, paths, seed=3, chunk_seconds=0.05, progress=False,
                           on_audio=lambda index, samples: pieces[index].append(samples))
    for index, path in enumerate(result.paths):
        assert len(pieces[index]) > 2 and np.array_equal(pieces[index][0], plan.prompt_audio)
        audio, _ = read_both_ways(path)
        assert np.allclose(np.concatenate(pieces[index]), audio, atol=1 / 32767)

    stop = threading.Event()
    stop.set()
    with pytest.raises(GenerationInterrupted):
        write_samples(model, codec, plan, [tmp_path / "stopped" / "c.wav"], stop=stop, progress=False)
    assert not (tmp_path / "stopped").exists()  # nothing finished: the unfinished file and its new folder removed


def test_per_codebook_override_changes_only_its_codebook(hybrid, tmp_path):
    top_k = [0] * 9
    top_k[2] = 1  # greedy on codebook 2 only
    result = generate_audio(hybrid, tmp_path, num_samples=2, duration=0.3, top_k=top_k, progress=False)
    model = MusicHybridForCausalLM.from_pretrained(hybrid).eval()
    inputs = codes_to_model_inputs(result.codes, model.config)["input_ids"]
    with torch.no_grad():
        predicted = model(inputs).logits.argmax(-1)
    num_frames = result.codes.shape[2]
    # Frame f of codebook k sits at position 1 + f + k and is predicted from position f + k.
    greedy = torch.stack(
        [
            (inputs[:, k, 1 + k : 1 + k + num_frames] == predicted[:, k, k : k + num_frames]).float().mean()
            for k in range(9)
        ]
    )
    assert greedy[2] == 1.0
    assert (greedy[[0, 1, 3, 4, 5, 6, 7, 8]] < 0.5).all()


def test_windowed_long_form_goes_beyond_the_learned_positions(checkpoint, tmp_path, capsys):
    short_context = checkpoint("transformer-tiny", max_position_embeddings=32)  # 23 frames, 0.27 s
    assert main([str(short_context), "--output-dir", str(tmp_path), "--duration", "0.7"]) == 2
    assert "--long-form" in capsys.readouterr().err
    result = generate_audio(short_context, tmp_path, duration=0.7, long_form="window", context_window=8, progress=False)
    audio, _ = read_both_ways(result.paths[0])
    assert audio.size == round(0.7 * SAMPLE_RATE) and result.codes.shape[2] > 23


def test_sliding_long_form_goes_beyond_the_context_and_keeps_the_mamba_state(checkpoint, tmp_path):
    rope_hybrid = checkpoint("hybrid-tiny", position_embedding_type="rope", max_position_embeddings=32)
    result = generate_audio(
        rope_hybrid, tmp_path / "a", duration=0.7, long_form="sliding", context_window=8, progress=False
    )
    audio, _ = read_both_ways(result.paths[0])
    assert audio.size == round(0.7 * SAMPLE_RATE)

    # A window covering everything is plain decoding.
    plain = generate_audio(rope_hybrid, tmp_path / "b", duration=0.2, seed=3, progress=False)
    covering = generate_audio(
        rope_hybrid, tmp_path / "c", duration=0.2, seed=3, long_form="sliding", context_window=1000, progress=False
    )
    assert torch.equal(plain.codes, covering.codes)

    # Without attention layers the window changes nothing: the Mamba state runs on unbroken past the context,
    # unlike windowed continuation, which restarts it from a re-prefilled window.
    mamba = checkpoint("mamba-tiny", max_position_embeddings=32)
    settings = dict(duration=0.7, seed=4, progress=False)
    narrow = generate_audio(mamba, tmp_path / "d", long_form="sliding", context_window=4, **settings)
    wide = generate_audio(mamba, tmp_path / "e", long_form="sliding", context_window=1000, **settings)
    restarted = generate_audio(mamba, tmp_path / "f", long_form="window", context_window=4, **settings)
    assert torch.equal(narrow.codes, wide.codes)
    assert not torch.equal(narrow.codes, restarted.codes)


def test_streamed_file_is_a_valid_wav_after_sigkill(hybrid, tmp_path):
    output = tmp_path / "sample_000.wav"
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO_ROOT / "generate_audio.py"), str(hybrid), "--output-dir", str(tmp_path)]
    command += ["--duration", "60", "--long-form", "window", "--stream", "--chunk-seconds", "0.05"]
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (output.exists() and output.stat().st_size > 44 + 4 * 2 * 2560) and time.monotonic() < deadline:
            assert process.poll() is None, "the generation ended before it could be killed"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    audio, sample_rate = read_both_ways(output)
    assert sample_rate == SAMPLE_RATE and 4 * 2560 <= audio.size < 60 * SAMPLE_RATE


@pytest.mark.parametrize("signal_number, stream", [(signal.SIGINT, False), (signal.SIGTERM, False),
                                                   (signal.SIGTERM, True)], ids=["ctrl-c", "sigterm", "sigterm-stream"])
def test_an_interrupt_leaves_finished_files_only_and_says_which(hybrid, tmp_path, signal_number, stream):
    output_dir = tmp_path / "out"
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO_ROOT / "generate_audio.py"), str(hybrid), "--output-dir", str(output_dir)]
    command += ["--duration", "0.3", "--num-samples", "200", "--batch-size", "1"] + (["--stream"] if stream else [])
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (output_dir / "sample_001.wav").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.01)
    process.send_signal(signal_number)
    message = process.communicate(timeout=60)[1].strip().splitlines()[-1]
    assert process.returncode == 130, message
    written = sorted(path.name for path in output_dir.iterdir())
    assert not any(name.endswith(".partial") for name in written), written
    finished = message.split(": ", 2)[2].split(";")[0].split(", ")
    assert message.startswith(f"interrupted: finished files in {output_dir}: ") and "sample_000.wav" in finished
    if stream:
        assert "streamed, unfinished (valid WAVs, shorter than asked)" in message
    else:
        assert written == finished and "unfinished samples were removed" in message
    for name in written:
        audio, sample_rate = read_both_ways(output_dir / name)
        assert sample_rate == SAMPLE_RATE and audio.size <= round(0.3 * SAMPLE_RATE)


def test_chunked_decoding_matches_one_shot_decoding(codec):
    codes = torch.randint(0, 1024, (2, 9, 90), generator=torch.Generator().manual_seed(0))
    one_shot = codec.decode(codes).numpy()
    prompt_frames = 10
    decoder = ChunkedDecoder(codec, chunk_frames=20, start_frame=prompt_frames)
    pieces = [decoder.push(codes[..., :prompt_frames])]
    pieces += [decoder.push(codes[..., start : start + 7]) for start in range(prompt_frames, 90, 7)]
    chunked = np.concatenate([*pieces, decoder.flush()], axis=1)
    assert pieces[0].shape == (2, 0)  # the prompt is context, not output
    assert chunked.shape == (2, (90 - prompt_frames) * HOP)
    assert snr_db(one_shot[:, prompt_frames * HOP :], chunked) >= 40


def test_wav_writer_keeps_a_valid_file_after_every_chunk(tmp_path):
    path = tmp_path / "growing.wav"
    chunks = [np.sin(np.arange(n) / 10.0).astype(np.float32) * 0.5 for n in (100, 1, 3000)]
    with StreamingWavWriter(path, SAMPLE_RATE) as writer:
        assert read_both_ways(path)[0].size == 0
        for written, chunk in enumerate(chunks, start=1):
            writer.append(chunk)
            audio, _ = read_both_ways(path)
            assert np.allclose(audio, np.concatenate(chunks[:written]), atol=2 / 32768)


def test_cli_writes_files_and_reports_the_speed_against_real_time(hybrid, tmp_path, capsys):
    arguments = [str(hybrid), "--output-dir", str(tmp_path), "--duration", "0.1", "--num-samples", "2"]
    arguments += ["--temperature", *["0.9"] * 9, "--top-p", "0.95", "--prefix", "take"]
    assert main(arguments) == 0
    captured = capsys.readouterr()
    assert "x real time (" in captured.out
    assert "Loading weights" not in captured.err, captured.err  # transformers' bar, inside the command's own output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["take_000.wav", "take_001.wav"]


def test_int8_cli_writes_files_reports_the_speed_and_hints_at_the_fastest_path(hybrid, tmp_path, capsys):
    """On CPU one line names the fastest options (int8 weights and compiled steps) unless both are given."""
    arguments = [str(hybrid), "--duration", "0.1", "--num-samples", "2"]
    hint = "on CPU, --quantize int8 --compile decodes fastest"
    assert main([*arguments, "--output-dir", str(tmp_path / "int8"), "--quantize", "int8"]) == 0
    captured = capsys.readouterr()
    assert "x real time (" in captured.out and captured.err.count(hint) == 1
    assert sorted(path.name for path in (tmp_path / "int8").iterdir()) == ["sample_000.wav", "sample_001.wav"]
    assert main([*arguments, "--output-dir", str(tmp_path / "float32")]) == 0
    assert hint in capsys.readouterr().err
    with mock.patch.object(MusicHybridForCausalLM, "compile_decoding") as compile_decoding:
        assert main([*arguments, "--output-dir", str(tmp_path / "fastest"), "--quantize", "int8", "--compile"]) == 0
    errors = capsys.readouterr().err
    assert compile_decoding.call_count == 1 and hint not in errors
    assert errors.count("compiling the decoding step: the first frame takes a while") == 1, errors
