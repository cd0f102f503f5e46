"""PNG figures of a training run: loss curves over steps, and per-codebook validation loss and accuracy."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curves(log_history: list[dict], path: str) -> None:
    """Training and validation loss (left) and learning rate (right) against the optimizer step."""
    train = [entry for entry in log_history if "loss" in entry]
    evaluations = [entry for entry in log_history if "eval_loss" in entry]
    figure, (loss_axis, lr_axis) = plt.subplots(1, 2, figsize=(11, 4))
    loss_axis.plot([e["step"] for e in train], [e["loss"] for e in train], label="training loss")
    if evaluations:
        loss_axis.plot(
            [e["step"] for e in evaluations], [e["eval_loss"] for e in evaluations], "o-", label="validation loss"
        )
    loss_axis.set(xlabel="step", ylabel="mean cross entropy over codebooks (nats)", title="Loss")
    loss_axis.legend()
    lr_axis.plot([e["step"] for e in train], [e["learning_rate"] for e in train])
    lr_axis.set(xlabel="step", ylabel="learning rate", title="Learning rate")
    save(figure, path)


def plot_codebook_metrics(evaluation: dict, path: str) -> None:
    """Bars per codebook: validation cross entropy (left), top-1 and top-5 accuracy (right)."""
    codebooks = list(range(len(evaluation["codebook_loss"])))
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    loss_axis.bar(codebooks, evaluation["codebook_loss"])
    loss_axis.set(xlabel="codebook", ylabel="cross entropy (nats)", title="Validation loss per codebook")
    width = 0.4
    accuracy_axis.bar([k - width / 2 for k in codebooks], evaluation["codebook_top1"], width, label="top-1")
    accuracy_axis.bar([k + width / 2 for k in codebooks], evaluation["codebook_top5"], width, label="top-5")
    accuracy_axis.set(xlabel="codebook", ylabel="accuracy", title="Validation accuracy per codebook")
    accuracy_axis.legend()
    for axis in (loss_axis, accuracy_axis):
        axis.set_xticks(codebooks)
    save(figure, path)


def save(figure, path: str) -> None:
    figure.tight_layout()
    figure.savefig(path + ".tmp.png", dpi=100)
    plt.close(figure)
    os.replace(path + ".tmp.png", path)
