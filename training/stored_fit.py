"""`training fit --store`: a CLI fit whose data later retrains replay and gate on.

The fit's rows go into the service's example store first (one transaction; a
text stored with another label refuses the fit, like the API would), and the
fit uses the store's hash split unless it was given evaluation data, so the
gate never scores a model on texts it trained on. The version is recorded
with the store's revision after the import: a later incremental retrain
trains on what came after it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from core.registry import ModelVersion
from core.settings import StateSettings
from core.text import EVAL_FRACTION
from store import examples as store_examples
from store import open_store, versions
from training.config import TrainConfig
from training.data import DataError, read_examples

log = logging.getLogger(__name__)


def store_configured() -> bool:
    """True where a service's state is there to share: DATABASE_URL set, or its SQLite file."""
    settings = StateSettings()
    if os.environ.get("DATABASE_URL"):
        return True
    return Path(settings.resolved_database_url.removeprefix("sqlite:///")).exists()


def prepare(cfg: TrainConfig) -> tuple[TrainConfig, int]:
    """Store the training rows; returns the config to fit with and the store's revision."""
    rows = read_examples(cfg.data, cfg.text_column, cfg.label_column)
    new = [store_examples.NewExample(r.text, r.label) for r in rows]
    store = open_store(StateSettings().resolved_database_url)
    try:
        with store.transaction() as tx:
            result = store_examples.add(tx, new, f"fit:{cfg.data.name}")
    except store_examples.RowProblemsError as exc:  # a conflict, or text the store refuses
        raise DataError(
            f"{cfg.data}: rows the example store cannot take ({exc}); fix them, correct the "
            "store over the API, or pass --no-store"
        ) from exc
    log.info(
        "example store: %d added, %d already there (revision %d)",
        result.accepted, result.duplicates, result.revision,
    )  # fmt: skip
    if cfg.eval_data is None and (cfg.split != "hash" or cfg.eval_fraction != EVAL_FRACTION):
        log.info("evaluating on the store's hash split (%.0f%%)", 100 * EVAL_FRACTION)
        cfg = cfg.model_copy(update={"split": "hash", "eval_fraction": EVAL_FRACTION})
    return cfg, result.revision


def record(version: ModelVersion, revision: int) -> None:
    """The version's data revision, so the next incremental retrain knows what is new."""
    store = open_store(StateSettings().resolved_database_url)
    with store.transaction() as tx:
        versions.set_status(
            tx, version.name, version.tag, versions.VersionStatus.CANDIDATE,
            "trained by `training fit --store`", data_revision=revision,
        )  # fmt: skip
