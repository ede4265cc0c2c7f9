"""The evaluation contract: macro-F1 and macro-recall first, the rest beside them.

Classes are usually imbalanced (tweets: 43% negative, 18% positive), so
accuracy alone flatters a model that ignores the small class; macro averages
weigh every label equally. Always computed on data the model never trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from core.registry import ModelVersion
from core.runtime import Classifier
from training.data import LabeledData


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], label_names: Sequence[str]
) -> dict[str, Any]:
    """JSON-ready metrics; rows of `confusion_matrix` are true labels, columns predictions."""
    labels = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    return {
        "macro_f1": float(np.mean(f1)),
        "macro_recall": float(np.mean(recall)),
        "macro_precision": float(np.mean(precision)),
        "accuracy": float(np.mean(np.asarray(y_true) == np.asarray(y_pred))),
        "samples": len(y_true),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(label_names)
        },
        "labels": list(label_names),
        "confusion_matrix": matrix.tolist(),
    }


def evaluate_onnx(classifier: Classifier, data: LabeledData) -> dict[str, Any]:
    """Metrics of an exported model (the artifact that is served) on `data`."""
    return classification_metrics(
        data.labels, classifier.predict_indices(data.texts), data.label_names
    )


def evaluate_version(version: ModelVersion, data: LabeledData, threads: int) -> dict[str, Any]:
    """Metrics of a registered version; `data` must use the version's label order."""
    if tuple(data.label_names) != version.labels:
        raise ValueError(
            f"data labels {list(data.label_names)} do not match "
            f"{version.tag}'s {list(version.labels)}"
        )
    classifier = Classifier(version.path, version.max_length, threads)
    return evaluate_onnx(classifier, data)
