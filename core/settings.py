"""Settings the layers below the service read: where the state lives, how a retrain
behaves, and how retrain jobs are launched and kept.

The service's `Settings` extends these. The retrain job reads only
`RetrainSettings`, which the service forwards to each retrain process or
Kubernetes Job (`retrain_env`), so one environment configures both;
`RunnerSettings` adds what the job runner (`runner/`) needs to launch, watch and
clean up after them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StateSettings(BaseSettings):
    # hide_input_in_errors: a refused value (a token, a URL with a password) is never printed.
    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", protected_namespaces=(), hide_input_in_errors=True
    )

    state_dir: Path = Field(
        Path("var"),
        description="Where the SQLite database and job logs live when DATABASE_URL is unset.",
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the example/job/version store; empty: SQLite in STATE_DIR.",
    )

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir.resolve() / 'service.db'}"


class RetrainSettings(StateSettings):
    """How a retrain job trains and decides; environment variables in upper case."""

    model_name: str = Field(
        "text-classifier",
        description="Name of the model in the BentoML store whose active version is served.",
    )
    retrain_threads: int = Field(1, ge=1, description="CPU threads a retrain may use.")
    gate_margin: float = Field(
        0.03,
        ge=0,
        le=1,
        description="Non-inferiority margin in macro-F1: the candidate's one-sided lower bound "
        "of its difference from the active version (overall, on the old slice) and from the "
        "chain's reference version must be above -this (retrain/gate.py).",
    )
    gate_refit_margin: float = Field(
        0.045,
        ge=0,
        le=1,
        description="GATE_MARGIN for a refit candidate (never less than GATE_MARGIN): a model "
        "trained afresh differs from the active version by its seed as well as by its data, so "
        "it gets a wider margin (bench/RETRAIN.md).",
    )
    gate_confidence: float = Field(
        0.95, gt=0.5, lt=1, description="One-sided confidence of the gate's bounds."
    )
    gate_min_eval: int = Field(
        30,
        ge=1,
        description="Fewest evaluation texts a gate decides on; fewer: the job is rejected "
        "(unless no model is active). The old slice and the reference need as many.",
    )
    gate_min_new: int = Field(
        30,
        ge=1,
        description="Fewest new evaluation texts (and new labels) the gate judges the new "
        "slice (and the labels' plausibility) on; fewer: not judged, and the record says so.",
    )
    replay_ratio: float = Field(
        4.0, ge=0, description="Incremental: old examples replayed per new training example."
    )
    replay_min: int = Field(500, ge=0, description="Incremental: replay at least this many.")
    replay_max: int = Field(4000, ge=0, description="Incremental: replay at most this many.")
    incremental_epochs: float = Field(
        2.0, gt=0, le=20, description="Incremental: passes over new + replayed examples."
    )
    incremental_min_steps: int = Field(
        120,
        ge=0,
        description="Incremental: train at least this many optimizer steps, with more passes "
        "when the new and replayed examples are few (bench/RETRAIN.md).",
    )
    incremental_average: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Incremental: keep this share of what training moved the active version's "
        "weights (WiSE-FT weight averaging); 1 keeps the fine-tuned weights.",
    )
    refit_epochs: float = Field(
        1.0, gt=0, le=20, description="Refit: passes over all training examples (early-stopped)."
    )
    refit_share: float = Field(
        0.3,
        gt=0,
        le=1,
        description="auto: refit when the new data is more than this share of the store.",
    )
    refit_every: int = Field(
        10, ge=1, description="auto: refit after this many incremental versions in a row."
    )

    def retrain_env(self) -> dict[str, str]:
        """These settings as environment variables, for the process or Job that retrains."""
        fields = RetrainSettings.model_fields
        env = {
            name.upper(): str(value)
            for name in fields
            if name != "state_dir" and (value := getattr(self, name)) is not None
        }
        env["STATE_DIR"] = str(self.state_dir)
        env["DATABASE_URL"] = self.resolved_database_url
        return env


class RunnerSettings(RetrainSettings):
    """How the job runner launches retrain jobs, watches them and cleans up after them."""

    retrain_backend: Literal["local", "kubernetes"] = "local"
    retrain_timeout_s: int = Field(3600, ge=10)
    job_stale_seconds: float = Field(
        30.0,
        gt=0,
        description="A running job nothing has heartbeated for this long is failed: "
        "its training process and its runner both beat while alive.",
    )
    retain_versions: int = Field(
        5,
        ge=0,
        description="Rejected, retired and abandoned versions kept, most recently changed "
        "first; older ones are deleted, with their job logs, after each job. The active "
        "version, its rollback target and their incremental chains are always kept.",
    )
    retain_version_days: float = Field(
        30.0,
        ge=0,
        description="Nor is one of those kept longer than this many days after its status "
        "last changed; 0: no age limit.",
    )
    retrain_pod_template: str = Field(
        "selftune-retrain", description="PodTemplate the kubernetes backend builds Jobs from."
    )
    pod_namespace: str = Field("default", description="Namespace for retrain Jobs (downward API).")
