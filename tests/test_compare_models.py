import json

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
