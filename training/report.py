"""report.png: what a reviewer looks at before trusting a version.

Four panels: the evaluation confusion matrix (row-normalised, counts
printed), train and dev loss per evaluation, dev macro-F1 with the step whose
weights were kept, and the reliability diagram of the scores before and after
calibration (training/temperature.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or in CI

import matplotlib.pyplot as plt
import numpy as np

from training.temperature import Calibration

# Labels are user text: "$" must print as a dollar, not start mathtext (it broke a report).
matplotlib.rcParams["text.parse_math"] = False


def write_report(
    path: Path,
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, float]],
    best_step: int,
    title: str,
    calibration: Calibration | None = None,
) -> None:
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.8))
    labels = list(metrics["labels"])
    matrix = np.asarray(metrics["confusion_matrix"], dtype=float)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax = axes[0]
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                f"{int(matrix[i, j])}",
                ha="center",
                va="center",
                color="white" if normalised[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"evaluation: macro-F1 {metrics['macro_f1']:.3f}, acc {metrics['accuracy']:.3f}")

    steps = [h["step"] for h in history]
    axes[1].plot(steps, [h["train_loss"] for h in history], marker="o", label="train loss")
    axes[1].plot(steps, [h["dev_loss"] for h in history], marker="o", label="dev loss")
    axes[1].set_xlabel("step")
    axes[1].set_title("loss")
    axes[1].legend()

    axes[2].plot(steps, [h["dev_macro_f1"] for h in history], marker="o", color="tab:green")
    axes[2].axvline(best_step, color="grey", linestyle="--", label=f"kept: step {best_step}")
    axes[2].set_xlabel("step")
    axes[2].set_title("dev macro-F1")
    axes[2].legend()

    ax = axes[3]
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
    if calibration is not None:
        for bins, name, ece in (
            (calibration.bins_before, "softmax", calibration.ece_before),
            (calibration.bins_after, f"T = {calibration.temperature:.2f}", calibration.ece_after),
        ):
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins],
                    marker="o", label=f"{name} (ECE {ece:.3f})")  # fmt: skip
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability (evaluation texts)")
    ax.legend()

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
