"""Hyperparameter search with Optuna, scored on the dev split only.

Each trial fine-tunes from the base model with sampled hyperparameters and is
scored by its best dev macro-F1; the evaluation split is never looked at, so
`--fit-best` still reports an honest evaluation afterwards. Trials that cannot
win are pruned at their intermediate dev scores.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import optuna

from training.config import TrainConfig
from training.pipeline import make_splits, run_fit
from training.train import fine_tune, load_base

log = logging.getLogger(__name__)


def sample(trial: optuna.Trial) -> dict[str, Any]:
    """The search space: learning rate, epochs, batch size, warmup, weight decay, strategy."""
    return {
        "lr": trial.suggest_float("lr", 2e-5, 5e-4, log=True),
        "epochs": trial.suggest_float("epochs", 0.5, 4.0, step=0.5),
        "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64]),
        "warmup": trial.suggest_float("warmup", 0.0, 0.2),
        "weight_decay": trial.suggest_float("weight_decay", 0.0, 0.1),
        "strategy": trial.suggest_categorical("strategy", ["full", "freeze", "lora"]),
    }


def with_params(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """`base` with `params` applied, validated again (model_copy would skip validation)."""
    return TrainConfig(**{**base.model_dump(), **params})


def format_table(study: optuna.Study) -> str:
    names = sorted({k for t in study.trials for k in t.params})
    header = ["trial", "state", "dev_macro_f1", "seconds", *names]
    rows = [header]
    for t in study.trials:
        seconds = t.duration.total_seconds() if t.duration else 0.0
        value = f"{t.value:.4f}" if t.value is not None else "-"
        params = [
            f"{t.params[n]:.3g}"
            if isinstance(t.params.get(n), float)
            else str(t.params.get(n, "-"))
            for n in names
        ]
        rows.append([str(t.number), t.state.name, value, f"{seconds:.0f}", *params])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def run_search(base: TrainConfig, trials: int, fit_best: bool, timeout: float | None) -> int:
    """Run the study, print the trials table to stdout, optionally fit the best config."""
    splits = make_splits(base)

    def objective(trial: optuna.Trial) -> float:
        cfg = with_params(base, sample(trial))
        model, tokenizer = load_base(cfg, splits.train.label_names)

        def on_eval(step: int, _total: int, dev_f1: float) -> None:
            trial.report(dev_f1, step)
            if trial.should_prune():
                raise optuna.TrialPruned()

        result = fine_tune(cfg, model, tokenizer, splits.train, splits.dev, on_eval)
        return result.best_dev_macro_f1

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=base.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2),
    )
    study.optimize(objective, n_trials=trials, timeout=timeout)
    sys.stdout.write(format_table(study) + "\n")
    best = study.best_trial
    log.info("best trial %d: dev macro-F1 %.4f %s", best.number, best.value, best.params)
    if fit_best:
        version = run_fit(with_params(base, best.params)).version
        sys.stdout.write(version.tag + "\n")
    return 0
