"""demo.py's pipeline through the same code path at reduced size (the fitted codec with 32 centroids, tiny models, a
few steps, tenth-of-a-second samples): every stage runs, the comparison, baselines and FAD (with its floor and
ceiling) are printed and written, and a rerun reuses the encoded codes."""

import json
from pathlib import Path

import pytest
import soundfile
import torch

import demo
from data.dataset_io import load_codes_dataset

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see conftest.py

TINY = dict(
    num_tracks=4, track_seconds=1.5, codec_centroids=32, segment_length=48, batch_size=2, max_steps=2, samples_per_model=2,
    prompt_seconds=0.05, sample_seconds=0.1, num_resamples=100,
    model_overrides="hidden_size=32,intermediate_size=64,num_attention_heads=2,max_position_embeddings=128",
)


def test_demo_compares_both_models_with_baselines_and_fad_and_reuses_its_codes(tmp_path, capsys):
    settings = demo.DemoSettings(output_dir=str(tmp_path / "demo"), **TINY)
    result = demo.run_demo(settings)
    printed = capsys.readouterr().out
    assert demo.RANDOM_CODEC_WARNING not in printed and "fitted codec" in printed
    for number in range(1, demo.NUM_STAGES + 1):
        assert f"=== {number}/{demo.NUM_STAGES}" in printed
    assert "| unigram |" in printed and "| bigram |" in printed

    paths = result["paths"]
    comparison = Path(paths["comparison"])
    report = json.loads((comparison / "comparison.json").read_text())
    assert [model["name"] for model in report["models"]] == list(demo.MODELS)
    for name in ("comparison.md", "loss_per_codebook.png", "loss_difference.png"):
        assert (comparison / name).is_file()
    for model_dir in paths["models"].values():
        for plot in ("training_curves.png", "codebook_metrics.png"):
            assert (Path(model_dir) / plot).read_bytes()[:4] == b"\x89PNG"
    # the final lines: each model against the best baseline, the paired difference with its interval, FAD per model
    summary = printed.rsplit("Result on", 1)[1]
    best = result["baselines"][result["baselines"]["best"]]["mean_loss"]
    for model in report["models"]:
        assert f"{model['name']} ({model['num_parameters'] / 1e6:.2f}M parameters)" in summary
        assert f"{best - model['mean_loss']:+.3f} below the best context-free baseline" in summary
        assert f"FAD of {model['name']} to the validation audio: {report['fad']['models'][model['name']]['fad']:.4g}" \
            in summary
    mean = report["comparisons"][0]["mean_loss_difference"]
    assert f"hybrid-small - transformer-small: {mean['difference']:+.3f} nats [{mean['ci_low']:+.3f}" in summary
    assert report["fad"]["embedding"].startswith("log-mel") and report["fad"]["note"] is None
    fad = report["fad"]
    assert f"FAD scale: floor {fad['floor']['fad']:.4g}" in summary and f"ceiling {fad['ceiling']['fad']:.4g}" in summary
    assert len(paths["wavs"]) == 2 * len(demo.MODELS)
    # the text-conditioned hybrid: its text information with its interval, one guided sample per validation
    # description, each file named and listed with its description
    text_config = json.loads((Path(paths["models"]["hybrid-small-text"]) / "config.json").read_text())
    assert text_config["text_encoder"] == paths["text_encoder"]
    descriptions = sorted({text for text in load_codes_dataset(paths["codes"])[0]["validation"]["text"]})
    assert descriptions and len(paths["description_wavs"]) == len(descriptions)
    for path, description in zip(paths["description_wavs"], descriptions, strict=True):
        assert f"{Path(path).name}: {description}" in printed
    information = result["evaluations"]["hybrid-small-text"]["text_information"]
    low, high = information["mean_information_ci"]
    assert (f"hybrid-small-text: text information (null-description minus true-description loss) "
            f"{information['mean_information']:+.4f} nats [{low:+.4f}, {high:+.4f}]") in summary
    memory_config = json.loads((Path(paths["models"]["hybrid-small-memory"]) / "config.json").read_text())
    assert memory_config["mamba_memory_segment_length"] == 32
    for name, kind in (("hybrid-small-mamba2", "mamba2"), ("hybrid-small-gdn", "gated_deltanet")):
        config = json.loads((Path(paths["models"][name]) / "config.json").read_text())
        assert kind in config["mixer_types"] and "mamba" not in config["mixer_types"]
    for path in paths["wavs"]:
        assert abs(soundfile.info(path).duration - 9 * 512 / 44100) < 1e-3  # 0.1 s = 9 frames of new audio

    parts = sorted((Path(paths["codes"]) / "_build" / "parts").iterdir())
    demo.build_codes(settings, paths["codes"])  # a rerun encodes nothing: no new part is committed
    assert sorted((Path(paths["codes"]) / "_build" / "parts").iterdir()) == parts


def test_demo_help_describes_the_pipeline(capsys):
    with pytest.raises(SystemExit) as exit:
        demo.main(["--help"])
    assert exit.value.code == 0
    help_text = capsys.readouterr().out
    assert "--pretrained_codec" in help_text and "--codec {fitted,random,pretrained}" in help_text
    assert "baselines" in help_text and "Frechet" in help_text


def test_demo_refuses_a_negative_thread_count_in_one_line_before_any_work(tmp_path, capsys):
    assert demo.main(["--threads", "-1", "--output_dir", str(tmp_path / "demo")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--threads" in error
    assert not (tmp_path / "demo").exists()


def test_demo_threads_are_the_given_count_or_torchs_or_one():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert demo.demo_threads(demo.DemoSettings(threads=3)) == 3
        assert demo.demo_threads(demo.DemoSettings(**TINY)) in (1, 2)  # the calibration's pick: load decides which
        assert torch.get_num_threads() == 2  # choosing does not set it: run_demo does, and restores it after
    finally:
        torch.set_num_threads(threads)
