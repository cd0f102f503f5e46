import json
from pathlib import Path

import numpy as np
import pytest

from compare_models import main

NUM_CODEBOOKS = 9
NUM_SEGMENTS = 60
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_results(folder, segment_losses, segment_ids=None):
    """An eval_results.json as evaluation.evaluate_model writes it, from per-segment losses."""
    folder.mkdir(parents=True, exist_ok=True)
    codebook_loss = segment_losses.mean(axis=0)
    top1 = np.linspace(0.17, 0.04, NUM_CODEBOOKS) - 0.01 * (codebook_loss - np.linspace(4.0, 5.7, NUM_CODEBOOKS))
    results = {
        "segment_length": 64,
        "num_segments": len(segment_losses),
        "segment_ids": segment_ids or [f"track{i // 3}:{(i % 3) * 55}" for i in range(len(segment_losses))],
        "codebook_loss": codebook_loss.tolist(),
        "codebook_top1": top1.tolist(),
        "codebook_top5": (top1 * 2.5).tolist(),
        "mean_loss": float(codebook_loss.mean()),
        "mean_top1": float(top1.mean()),
        "mean_top5": float(2.5 * top1.mean()),
        "perplexity": float(np.exp(codebook_loss.mean())),
        "segment_codebook_loss": segment_losses.tolist(),
    }
    path = folder / "eval_results.json"
    path.write_text(json.dumps(results))
    return path


def synthetic_losses(rng, shift):
    segment_effect = rng.normal(0.0, 0.4, size=(NUM_SEGMENTS, 1))
    base = np.linspace(4.0, 5.7, NUM_CODEBOOKS) + segment_effect
    return lambda offset: base + offset + rng.normal(0.0, 0.01, size=base.shape) + shift


@pytest.fixture
def three_runs(tmp_path):
    rng = np.random.default_rng(0)
    losses = synthetic_losses(rng, shift=0.0)
    return [
        write_results(tmp_path / "transformer", losses(0.0)),
        write_results(tmp_path / "hybrid", losses(-0.03)),
        write_results(tmp_path / "mamba", losses(0.0)),
    ]


def test_report_tables_intervals_and_plots(three_runs, tmp_path, capsys):
    output_dir = tmp_path / "report"
    exit_code = main([*map(str, three_runs), "--output-dir", str(output_dir), "--num-resamples", "500"])
    assert exit_code == 0
    report = json.loads((output_dir / "comparison.json").read_text())
    assert [model["name"] for model in report["models"]] == ["transformer", "hybrid", "mamba"]
    hybrid, mamba = report["comparisons"]
    assert (hybrid["candidate"], hybrid["reference"]) == ("hybrid", "transformer")
    assert hybrid["codebooks_significantly_lower"] == NUM_CODEBOOKS
    assert np.allclose(hybrid["loss_difference"]["difference"], -0.03, atol=0.01)
    assert all(
        low < -0.03 + 0.01 and high > -0.03 - 0.01
        for low, high in zip(hybrid["loss_difference"]["ci_low"], hybrid["loss_difference"]["ci_high"])
    )
    assert mamba["codebooks_significantly_lower"] + mamba["codebooks_significantly_higher"] <= 1
    assert "wins on every codebook" in capsys.readouterr().out

    markdown = (output_dir / "comparison.md").read_text()
    assert "| Codebook | transformer Loss | hybrid Loss | Δ | 95% CI | p (Holm) |" in markdown
    assert "| 0 (coarsest) |" in markdown and "| 8 (finest) |" in markdown
    assert "| Mean |" in markdown and "Top-1" in markdown

    import matplotlib.image

    for name in ("loss_per_codebook.png", "loss_difference.png"):
        path = output_dir / name
        assert path.read_bytes().startswith(PNG_SIGNATURE)
        assert matplotlib.image.imread(path).shape[0] > 100
    assert not list(output_dir.glob("*.tmp"))


def test_models_scored_on_different_segments_are_refused(tmp_path, capsys):
    rng = np.random.default_rng(1)
    losses = synthetic_losses(rng, shift=0.0)
    first = write_results(tmp_path / "a", losses(0.0))
    other_ids = [f"other{i}:0" for i in range(NUM_SEGMENTS)]
    second = write_results(tmp_path / "b", losses(0.0), segment_ids=other_ids)
    exit_code = main([str(first), str(second), "--output-dir", str(tmp_path / "out")])
    assert exit_code == 2
    assert "different validation segments" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "extra_args, message",
    [
        (["--names", "only-one"], "--names has 1 entries"),
        (["--names", "same", "same"], "must be unique"),
        (["--reference", "5"], "--reference"),
    ],
)
def test_user_mistakes_give_one_line_errors(three_runs, tmp_path, capsys, extra_args, message):
    exit_code = main([str(three_runs[0]), str(three_runs[1]), "--output-dir", str(tmp_path / "out"), *extra_args])
    assert exit_code == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_missing_results_file_and_missing_validation_data(tmp_path, three_runs, capsys):
    assert main([str(three_runs[0]), str(tmp_path / "nope" / "eval_results.json"), "--output-dir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(three_runs[0]), str(tmp_path / "some_checkpoint"), "--output-dir", str(tmp_path)]) == 2
    assert "--validation-data is required" in capsys.readouterr().err


@pytest.fixture
def tiny_checkpoints(tmp_path):
    """A tiny Transformer and hybrid (random weights) and a small validation set, all on the small random codec."""
    import torch

    from configuration_music_hybrid import MusicHybridConfig
    from modeling_music_hybrid import MusicHybridForCausalLM
    from training_helpers import make_codes_dataset, random_codec

    folders = []
    for preset in ("transformer-tiny", "hybrid-tiny"):
        torch.manual_seed(0)
        model = MusicHybridForCausalLM(MusicHybridConfig.from_preset(preset, codec=random_codec()))
        model.save_pretrained(tmp_path / preset)
        folders.append((tmp_path / preset, model.num_parameters()))
    dataset = make_codes_dataset(tmp_path / "codes", train_lengths=(30,), validation_lengths=(70, 130, 45))
    return folders, dataset


def test_checkpoints_are_evaluated_on_the_same_segments(tiny_checkpoints, tmp_path):
    (transformer, transformer_size), (hybrid, hybrid_size) = tiny_checkpoints[0]
    output_dir = tmp_path / "report"
    arguments = [
        str(transformer),
        str(hybrid),
        "--validation-data",
        tiny_checkpoints[1],
        "--output-dir",
        str(output_dir),
    ]
    assert main([*arguments, "--segment-length", "41", "--num-resamples", "200"]) == 0
    report = json.loads((output_dir / "comparison.json").read_text())
    # 70, 130 and 45 frames in windows of 41 - 9 = 32 frames: 3 + 5 + 2 segments.
    assert report["num_segments"] == 10 and report["segment_length"] == 41
    assert [model["num_parameters"] for model in report["models"]] == [transformer_size, hybrid_size]
    assert f"{hybrid_size / 1e6:.2f}M" in (output_dir / "comparison.md").read_text()
    for model in report["models"]:  # random weights over 1024 codes: loss near log(1024)
        assert all(abs(loss - np.log(1024)) < 0.5 for loss in model["codebook_loss"])

    # The saved per-model results can be compared again without re-evaluating; sizes come from the configs.
    for model in report["models"]:
        results_path = Path(model["source"]) / "eval_results.json"
        results_path.write_text(json.dumps(report["evaluations"][model["name"]]))
    results_files = [str(transformer / "eval_results.json"), str(hybrid / "eval_results.json")]
    assert main([*results_files, "--output-dir", str(tmp_path / "again"), "--num-resamples", "200"]) == 0
    again = json.loads((tmp_path / "again" / "comparison.json").read_text())
    assert again["comparisons"] == report["comparisons"]
    assert [model["num_parameters"] for model in again["models"]] == [transformer_size, hybrid_size]


def test_checkpoint_trained_on_another_codec_is_refused(tiny_checkpoints, tmp_path, capsys):
    from training_helpers import make_codes_dataset, random_codec

    other_codec_data = make_codes_dataset(
        tmp_path / "other", train_lengths=(30,), validation_lengths=(40,), codec=random_codec(seed=5)
    )
    (transformer, _), (hybrid, _) = tiny_checkpoints[0]
    arguments = [
        str(transformer),
        str(hybrid),
        "--validation-data",
        other_codec_data,
        "--output-dir",
        str(tmp_path / "out"),
    ]
    assert main(arguments) == 2
    assert "validation data uses" in capsys.readouterr().err


def test_loss_by_position_bucket_is_compared_per_bucket_and_plotted(tmp_path):
    """A candidate better only late in the segment (the long-range effect memory should have): the bucket table
    shows significant differences in the late buckets only, and loss_by_position.png is drawn."""
    rng = np.random.default_rng(1)
    segment_effect = rng.normal(0.0, 0.4, size=(NUM_SEGMENTS, 1, 1))
    base = np.linspace(4.0, 5.7, NUM_CODEBOOKS)[None, None, :] + segment_effect + np.zeros((1, 8, 1))
    late = np.where(np.arange(8) >= 4, -0.05, 0.0)[None, :, None]
    paths = []
    for name, offset in (("mamba", 0.0), ("memory", late)):
        buckets = base + offset + rng.normal(0.0, 0.01, size=base.shape)
        path = write_results(tmp_path / name, buckets.mean(axis=1))
        results = json.loads(path.read_text())
        results.update(
            position_buckets=8, bucket_positions=[[max(1, 8 * b), 8 * b + 7] for b in range(8)],
            bucket_codebook_loss=buckets.mean(axis=0).tolist(), bucket_mean_loss=buckets.mean(axis=(0, 2)).tolist(),
            segment_bucket_codebook_loss=buckets.tolist(), segment_bucket_num_tokens=[[8] * 8] * NUM_SEGMENTS,
        )
        path.write_text(json.dumps(results))
        paths.append(path)
    output_dir = tmp_path / "report"
    assert main([*map(str, paths), "--output-dir", str(output_dir), "--num-resamples", "500"]) == 0
    report = json.loads((output_dir / "comparison.json").read_text())
    test = report["comparisons"][0]["bucket_loss_difference"]
    assert test["significant"] == [False] * 4 + [True] * 4
    assert np.allclose(test["difference"][4:], -0.05, atol=0.01)
    assert all(low <= d <= high for d, low, high in zip(test["difference"], test["ci_low"], test["ci_high"], strict=True))
    markdown = (output_dir / "comparison.md").read_text()
    assert "| Positions | mamba Loss | memory Loss | Δ | 95% CI | p (Holm) |" in markdown and "| 32-39 |" in markdown
    assert (output_dir / "loss_by_position.png").read_bytes().startswith(PNG_SIGNATURE)


def test_generate_adds_the_fad_of_samples_from_the_same_prompts_and_seeds(tiny_checkpoints, tmp_path, capsys):
    import soundfile

    (transformer, _), (hybrid, _) = tiny_checkpoints[0]
    output_dir = tmp_path / "report"
    arguments = [str(transformer), str(hybrid), "--validation-data", tiny_checkpoints[1], "--output-dir",
                 str(output_dir), "--segment-length", "41", "--num-resamples", "200", "--generate", "3",
                 "--generate-seconds", "0.1", "--prompt-seconds", "0.05", "--fad-resamples", "50"]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    report = json.loads((output_dir / "comparison.json").read_text())
    fad = report["fad"]
    assert set(fad["models"]) == {"transformer-tiny", "hybrid-tiny"}
    for name, result in fad["models"].items():
        assert result["ci_low"] <= result["fad"] <= result["ci_high"] and result["num_samples"] == 3
        assert f"FAD of {name}'s 3 samples" in printed
        files = fad["sample_files"][name]
        assert len(files) == 3 and all(abs(soundfile.info(path).duration - 9 * 512 / 44100) < 1e-3 for path in files)
    assert fad["embedding"].startswith("log-mel")  # offline codecs: a codec-independent embedding
    assert "random" in fad["note"] and fad["note"] in printed  # and the random codec's audio is called noise
    assert 0 <= fad["floor"]["fad"] and fad["ceiling"]["fad"] > 0 and "FAD scale: floor" in printed
    markdown = (output_dir / "comparison.md").read_text()
    assert "Frechet Audio Distance" in markdown and fad["note"] in markdown and "| ceiling: " in markdown

    # same prompts, same seed: generating again gives the same samples and the same FAD
    assert main([*arguments[:5], str(tmp_path / "again"), *arguments[6:]]) == 0
    again = json.loads((tmp_path / "again" / "comparison.json").read_text())["fad"]
    assert again["models"] == fad["models"]


@pytest.mark.parametrize(
    "extra_args, message",
    [(["--generate", "1"], "at least 2 samples"), (["--generate", "2", "--generate-seconds", "0"], "must be positive")],
)
def test_impossible_generation_requests_are_refused_before_any_work(tiny_checkpoints, tmp_path, capsys, extra_args,
                                                                   message):
    (transformer, _), (hybrid, _) = tiny_checkpoints[0]
    output_dir = tmp_path / "out"
    arguments = [str(transformer), str(hybrid), "--validation-data", tiny_checkpoints[1], "--output-dir",
                 str(output_dir), *extra_args]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error and not output_dir.exists()


def test_generate_needs_checkpoints_and_validation_data(three_runs, tmp_path, capsys):
    assert main([*map(str, three_runs[:2]), "--output-dir", str(tmp_path / "out"), "--generate", "4"]) == 2
    assert "--validation-data" in capsys.readouterr().err
    arguments = [*map(str, three_runs[:2]), "--validation-data", str(tmp_path), "--output-dir", str(tmp_path / "o")]
    assert main([*arguments, "--generate", "4"]) == 2
    assert "no config.json beside it" in capsys.readouterr().err
