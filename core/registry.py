"""Model versions in the BentoML model store: the on-disk contract between training and serving.

A version is an immutable folder written once by training (`register`) and read
by every serving worker (`get`, `list_versions`). BentoML writes it to a
temporary folder and moves it into place, so a reader never sees half a model.
Which version is *active* is not stored here: that is a separate, atomically
updated record in the store, so that promotion and rollback never touch
artifacts. Only `bentoml`, the standard library and JSON: no torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException, NotFound

ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "metrics.json"
METADATA_FILE = "metadata.json"
REPORT_FILE = "report.png"
# The fine-tuned weights as a Hugging Face folder (safetensors): what a later
# incremental retrain warm-starts from. Never loaded by serving.
HF_DIR = "hf"
# 8-byte prefixes of sha256(text) of every text the version trained on (uint64,
# native order): the gate scores a version only on texts it never saw.
TRAINED_FILE = "trained-texts.u64"
# Its prediction (label index) for each evaluation text it was scored on, by text key:
# a later gate reuses them instead of scoring this version again.
EVAL_PREDICTIONS_FILE = "eval-predictions.npz"
# Written after BentoML has copied every file into the store: BentoML copies a
# temporary folder into place file by file, so without it a reader on a shared
# volume could load a version whose model.onnx is still being written.
READY_FILE = "READY"
REQUIRED_FILES = (ONNX_FILE, TOKENIZER_FILE, METRICS_FILE, METADATA_FILE)


class VersionNotFoundError(LookupError):
    """The asked-for version is not in the model store."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version, as serving and the admin API see it."""

    tag: str
    path: Path
    labels: tuple[str, ...]
    max_length: int
    created: datetime
    metadata: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.tag.split(":", 1)[0]

    @property
    def version(self) -> str:
        return self.tag.split(":", 1)[1]

    @property
    def warm_startable(self) -> bool:
        """True if the version keeps its fine-tuned weights (HF_DIR) to warm-start from."""
        return (self.path / HF_DIR / "config.json").exists()

    def trained_keys(self) -> set[int] | None:
        """`core.text.text_key` of every text this version trained on; None if not recorded."""
        path = self.path / TRAINED_FILE
        if not path.exists():
            return None
        return {int(k) for k in np.fromfile(path, dtype=np.uint64)}

    def eval_predictions(self) -> dict[int, int]:
        """Text key → predicted label index, for the texts it was evaluated on (may be empty)."""
        path = self.path / EVAL_PREDICTIONS_FILE
        if not path.exists():
            return {}
        with np.load(path) as saved:
            return dict(zip(saved["keys"].tolist(), saved["predictions"].tolist(), strict=True))

    def metrics(self) -> dict[str, Any]:
        """The evaluation report written at training time (metrics.json)."""
        return dict(json.loads((self.path / METRICS_FILE).read_text()))


def register(name: str, staging_dir: Path, metadata: Mapping[str, Any]) -> ModelVersion:
    """Copy a finished staging folder into the store as a new version and return it.

    `staging_dir` must hold every file in REQUIRED_FILES except metadata.json,
    which is written here from `metadata` (it must carry `labels` and
    `max_length`). The copy goes through `bentoml.models.create`, which only
    publishes the version once the block completes.
    """
    missing = [f for f in REQUIRED_FILES if f != METADATA_FILE and not (staging_dir / f).exists()]
    if missing:
        raise FileNotFoundError(f"cannot register {staging_dir}: missing {', '.join(missing)}")
    if not metadata.get("labels") or not metadata.get("max_length"):
        raise ValueError("version metadata must carry 'labels' and 'max_length'")
    with bentoml.models.create(
        name,
        labels={"task": "text-classification"},
        metadata={"labels": list(metadata["labels"]), "max_length": int(metadata["max_length"])},
    ) as model:
        dest = Path(model.path)
        for item in staging_dir.iterdir():
            if item.is_dir():
                shutil.copytree(item, dest / item.name)
            elif item.is_file():
                shutil.copy2(item, dest / item.name)
        (dest / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
        tag = str(model.tag)
    stored = Path(bentoml.models.get(tag).path)
    (stored / READY_FILE).touch()
    return get(tag)


def _from_model(model: bentoml.Model) -> ModelVersion:
    path = Path(model.path)
    if not (path / READY_FILE).exists():
        raise VersionNotFoundError(f"model version {model.tag} is still being written")
    metadata = json.loads((path / METADATA_FILE).read_text())
    return ModelVersion(
        tag=str(model.tag),
        path=path,
        labels=tuple(metadata["labels"]),
        max_length=int(metadata["max_length"]),
        created=model.info.creation_time,
        metadata=metadata,
    )


def get(tag: str) -> ModelVersion:
    """Look up `name:version` (or `name:latest`); raises VersionNotFoundError."""
    try:
        return _from_model(bentoml.models.get(tag))
    except NotFound as exc:
        raise VersionNotFoundError(f"model version {tag!r} is not in the model store") from exc
    except BentoMLException as exc:  # an invalid tag: BentoML says "Invalid Tag ..."
        raise VersionNotFoundError(f"{tag!r} is not a valid version name ({exc})") from exc


def list_versions(name: str) -> list[ModelVersion]:
    """Every complete version of `name`, newest first; empty when there is none.

    Folder by folder, skipping any without READY: `bentoml.models.list` parses
    every folder and fails on one being written, or being removed (`delete`),
    by another process on the same store.
    """
    folder = store_dir() / name
    if not folder.is_dir():
        return []
    versions = []
    for entry in folder.iterdir():
        if entry.is_dir() and (entry / READY_FILE).exists():
            with contextlib.suppress(VersionNotFoundError):  # removed since
                versions.append(get(f"{name}:{entry.name}"))
    return sorted(versions, key=lambda v: v.created, reverse=True)


def latest(name: str) -> ModelVersion | None:
    versions = list_versions(name)
    return versions[0] if versions else None


def delete(tag: str) -> bool:
    """Remove a version from the model store (version retention); False if it was gone.

    READY goes first, so our readers skip the version while BentoML removes the rest.
    """
    try:
        path = Path(bentoml.models.get(tag).path)
    except NotFound:
        return False
    (path / READY_FILE).unlink(missing_ok=True)
    try:
        bentoml.models.delete(tag)
    except NotFound:
        return False
    except BentoMLException:
        # Removed, then BentoML re-reads the other versions to re-point its "latest"
        # file, which fails on one being written or removed beside it: not our concern.
        if path.exists():
            raise
    return True


def store_dir() -> Path:
    """The model store's folder: BentoML's home (BENTOML_HOME, default ~/bentoml) + models/."""
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml") / "models"
