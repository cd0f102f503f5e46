"""demo.py's pipeline at reduced size (shrunk random codec, tiny model, a few steps, half-second samples)."""

import json

import pytest
import soundfile

import demo

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see conftest.py


def test_demo_runs_every_stage_and_says_where_the_outputs_are(tmp_path, capsys):
    settings = demo.DemoSettings(
        output_dir=str(tmp_path / "demo"), small_codec=True, num_tracks=3, track_seconds=2.0,
        model_preset="hybrid-tiny", segment_length=64, batch_size=2, max_steps=3, sample_seconds=0.5,
    )
    paths = demo.run_demo(settings)
    printed = capsys.readouterr().out
    assert printed.startswith(demo.RANDOM_CODEC_WARNING)
    for number in (1, 2, 4, 5):  # stage 3, evaluation, runs inside stage 2's training run
        assert f"=== {number}/5" in printed
    for path in [paths["eval_results"], *paths["plots"], *paths["wavs"]]:
        assert path in printed

    results = json.loads(open(paths["eval_results"]).read())
    assert len(results["codebook_loss"]) == 9 and results["num_segments"] >= 1
    for plot in paths["plots"]:
        assert open(plot, "rb").read(4) == b"\x89PNG"
    durations = {path.rsplit("/", 1)[1]: soundfile.info(path).duration for path in paths["wavs"]}
    assert durations["reference.wav"] == 2.0 and durations["prompt.wav"] == 2.0
    assert abs(durations["unconditional_000.wav"] - 0.5) < 0.02
    assert abs(durations["continuation_000.wav"] - 2.5) < 0.02  # the prompt, then the new half second


def test_demo_help_describes_the_pipeline(capsys):
    with pytest.raises(SystemExit) as exit:
        demo.main(["--help"])
    assert exit.value.code == 0
    assert "--pretrained_codec" in capsys.readouterr().out
