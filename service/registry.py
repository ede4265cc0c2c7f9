"""Model versions in the BentoML model store: the on-disk contract between training and serving.

A version is an immutable folder written once by training (`register`) and read
by every serving worker (`get`, `list_versions`). BentoML writes it to a
temporary folder and moves it into place, so a reader never sees half a model.
Which version is *active* is not stored here: that is a separate, atomically
updated record (see `service.store`), so that promotion and rollback never
touch artifacts (shared/DESIGN.md #4).

Only `bentoml`, the standard library and JSON are used here, so that the
serving path stays free of torch.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import NotFound

ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "metrics.json"
METADATA_FILE = "metadata.json"
REPORT_FILE = "report.png"
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
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER_FILE

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
            if item.is_file():
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


def list_versions(name: str) -> list[ModelVersion]:
    """Every version of `name`, newest first; empty when there is none."""
    try:
        models = bentoml.models.list(name)
    except NotFound:
        return []
    versions = [_from_model(m) for m in models if (Path(m.path) / READY_FILE).exists()]
    return sorted(versions, key=lambda v: v.created, reverse=True)


def latest(name: str) -> ModelVersion | None:
    versions = list_versions(name)
    return versions[0] if versions else None
