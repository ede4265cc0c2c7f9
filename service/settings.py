"""One settings object for the service, read from the environment.

Every knob an operator may turn lives here, with its default, so that the
README table, the Kubernetes manifests and the code cannot drift apart.
Values are read once per process (`get_settings` is cached): BentoML's
decorators need batching limits at import time, and workers are forked
processes that each read the same environment.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator

from core.settings import RunnerSettings

# A token must not be guessable: at least this many distinct bytes (a URL-safe
# token of 32 random bytes has ~35), no whitespace (a paste accident), and none
# of the placeholders our templates ship (k8s/secret.example.yaml).
MIN_TOKEN_DISTINCT_BYTES = 16
PLACEHOLDER_TOKENS = frozenset({"REPLACE_WITH_A_RANDOM_TOKEN"})
MAKE_A_TOKEN = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class Settings(RunnerSettings):
    """Service configuration. Environment variables use the field name in upper case."""

    # --- model -------------------------------------------------------------
    model_poll_seconds: float = Field(
        2.0, gt=0, description="How often each worker checks which version is active."
    )

    # --- serving -----------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    # One single-threaded worker per core: a worker's Python request path runs
    # under one GIL, so one worker with 2 ORT threads served 129 texts/s at 64
    # clients where 2 workers x 1 thread served 237 (bench/SERVING.md).
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="BentoML worker processes; default one per core.",
    )
    ort_threads: int = Field(
        0,
        ge=0,
        description="ONNX Runtime intra-op threads per worker; 0 means cores // workers.",
    )
    ort_spin: bool = Field(
        True,
        description="Let idle ONNX Runtime threads busy-wait for the next run; turn off when "
        "WORKERS x ORT_THREADS exceeds the cores.",
    )
    allow_oversubscription: bool = Field(
        False, description="Allow WORKERS x ORT_THREADS to exceed the cores."
    )
    max_batch_size: int = Field(64, ge=1, description="Batching: texts per batch at most.")
    max_latency_ms: int = Field(
        5000,
        ge=1,
        description="Batching: a request is shed with 503 when the texts queued ahead of it "
        "would take longer than this, or once it has waited this long; keep it above a full "
        "batch's time.",
    )
    max_texts_per_request: int = Field(256, ge=1)
    max_text_chars: int = Field(5000, ge=1)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    request_timeout_s: int = Field(
        30, ge=1, description="A request not answered in this long gets a 504."
    )
    access_log: bool = Field(
        False, description="BentoML's access-log line per request (costs throughput)."
    )

    # --- admin (retraining: core.settings.RunnerSettings) -------------------
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token for the admin endpoints; unset (with ADMIN_TOKEN_FILE) "
        "disables them.",
    )
    admin_token_file: Path | None = Field(
        None,
        description="A file holding the admin token (a mounted Secret), instead of ADMIN_TOKEN.",
    )
    max_admin_body_bytes: int = Field(
        33_554_432, ge=1024, description="Body cap of the admin endpoints (example uploads)."
    )
    max_examples_per_request: int = Field(50_000, ge=1)

    # --- monitoring (service.monitoring) --------------------------------------
    monitor_window: int = Field(
        200, ge=10, description="Drift signals: each worker's window of its latest predictions."
    )
    monitor_window_seconds: float = Field(
        3600.0, gt=0, description="Drift signals: predictions older than this leave the window."
    )
    monitor_min_predictions: int = Field(
        100,
        ge=10,
        description="Drift signals are computed once a worker's window holds this many "
        "predictions; until then it reports the reference's own values and no drift.",
    )
    drift_p_value: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="A label-mix or confidence signal is drift when its test's p-value is "
        "below this and its size passes the signal's threshold.",
    )
    drift_label_distance: float = Field(
        0.1, gt=0, le=1, description="Label-mix drift: Jensen-Shannon distance (base 2) at least."
    )
    drift_confidence_statistic: float = Field(
        0.1, gt=0, le=1, description="Confidence drift: Kolmogorov-Smirnov statistic at least."
    )
    drift_accuracy_drop: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Accuracy drift: estimated accuracy this far below the evaluation's.",
    )

    # --- automatic retraining (store.triggers) -----------------------------------
    retrain_after_labels: int = Field(
        0,
        ge=0,
        description="Queue a retrain once this many examples were added or relabeled since the "
        "last job or the active version's data; 0: never by count.",
    )
    retrain_min_interval_minutes: float = Field(
        30.0, ge=0, description="Automatic retrains start no sooner than this after the last job."
    )
    retrain_on_drift: bool = Field(
        False,
        description="Queue a retrain when drift is detected and there is at least one new "
        "label to train on (never on no new data).",
    )

    # --- the review queue (service.review, store.review) -------------------------
    review_queue: bool = Field(
        False,
        description="Keep served texts the model was least sure of for labeling "
        "(GET /review-queue); off by default because it stores user text.",
    )
    review_sample_rate: float = Field(
        0.1, gt=0, le=1, description="Review queue: share of served texts considered."
    )
    review_capacity: int = Field(
        1000, ge=1, description="Review queue: texts kept at most, the least sure first."
    )
    review_ttl_hours: float = Field(
        168.0, gt=0, description="Review queue: a text leaves the queue this long after it came."
    )

    @model_validator(mode="after")
    def _check_threads(self) -> Settings:
        cores = os.cpu_count() or 1
        if self.workers * self.threads_per_worker > cores and not self.allow_oversubscription:
            raise ValueError(
                f"WORKERS ({self.workers}) x ORT_THREADS ({self.threads_per_worker}) exceeds the "
                f"{cores} CPU cores; lower one of them or set ALLOW_OVERSUBSCRIPTION=true"
            )
        return self

    @field_validator("admin_token", mode="before")
    @classmethod
    def _strip_line_end(cls, value: object) -> object:
        return strip_line_end(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_admin_token(self) -> Settings:
        if self.admin_token_file is not None:
            if self.admin_token is not None:
                raise ValueError("set ADMIN_TOKEN or ADMIN_TOKEN_FILE, not both")
            try:
                text = self.admin_token_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(
                    f"ADMIN_TOKEN_FILE {self.admin_token_file} cannot be read "
                    f"({type(exc).__name__}); mount the token there or unset ADMIN_TOKEN_FILE"
                ) from None
            self.admin_token = SecretStr(strip_line_end(text))
        if self.admin_token is not None:
            weakness = token_weakness(self.admin_token.get_secret_value())
            if weakness:
                raise ValueError(f"ADMIN_TOKEN {weakness}; generate one with: {MAKE_A_TOKEN}")
        return self

    @property
    def threads_per_worker(self) -> int:
        """ONNX Runtime threads for one worker: explicit, or an even share of the cores."""
        return self.ort_threads or max(1, (os.cpu_count() or 1) // self.workers)


def strip_line_end(token: str) -> str:
    """`echo token > file` and `kubectl create secret --from-file` end a token with a newline."""
    return token.rstrip("\r\n")


def token_weakness(token: str) -> str | None:
    """Why `token` would be a weak admin token (a phrase for the error), or None."""
    if token in PLACEHOLDER_TOKENS:
        return "is the template's placeholder"
    if any(char.isspace() for char in token):
        return "contains whitespace"
    if len(set(token.encode())) < MIN_TOKEN_DISTINCT_BYTES:
        return f"has fewer than {MIN_TOKEN_DISTINCT_BYTES} distinct characters"
    return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
