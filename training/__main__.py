"""`python -m training fit|evaluate|search`: the training CLI.

Flags for `fit` and `search` are generated from TrainConfig's fields, so the
CLI, config files and stored provenance can never disagree on a name or a
default. stdout carries only the result (a version tag, a metrics JSON, a
table); logs and the progress bar go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.registry import VersionNotFoundError
from training.config import TrainConfig, load_config_file
from training.data import DataError
from training.errors import ExportError

log = logging.getLogger("training")

EXIT_BAD_INPUT = 2
EXIT_EXPORT_FAILED = 3


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (`lr` → `--lr`, `eval_data` → `--eval-data`)."""
    parser.add_argument("--config", type=Path, help="JSON or TOML file of these options; flags win")
    for name, info in TrainConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        annotation = info.annotation
        # argparse %-formats help strings; a literal "18%" in a description must not break --help.
        help_text = (info.description or "").replace("%", "%%")
        if annotation is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
            continue
        choices = None
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if inner and typing.get_origin(inner[0]) is dict:
            continue  # a mapping has no one-string form: --config sets it
        if typing.get_origin(annotation) is typing.Literal:
            choices = list(typing.get_args(annotation))
        elif (
            isinstance(annotation, types.UnionType)
            and inner
            and typing.get_origin(inner[0]) is typing.Literal
        ):
            choices = list(typing.get_args(inner[0]))
        parser.add_argument(flag, dest=name, default=None, choices=choices, help=help_text)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = load_config_file(args.config) if args.config else {}
    values.update(
        {
            name: getattr(args, name)
            for name in TrainConfig.model_fields
            if getattr(args, name, None) is not None  # a field with no flag is absent
        }
    )
    return TrainConfig(**values)


def cmd_fit(args: argparse.Namespace) -> int:
    from training import stored_fit
    from training.pipeline import run_fit

    cfg = config_from_args(args)
    use_store = stored_fit.store_configured() if args.store is None else args.store
    if use_store:
        cfg, revision = stored_fit.prepare(cfg)
    version = run_fit(cfg).version
    if use_store:
        stored_fit.record(version, revision)
    sys.stdout.write(version.tag + "\n")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from core.registry import get
    from training import data as datamod
    from training.evaluate import evaluate_version

    version = get(args.model)
    data = datamod.load(
        args.data, args.text_column, args.label_column, version.labels, for_training=False
    )
    metrics = evaluate_version(version, data, threads=args.threads)
    sys.stdout.write(json.dumps({"model": version.tag, **metrics}, indent=2) + "\n")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from training.search import run_search

    return run_search(
        config_from_args(args), trials=args.trials, fit_best=args.fit_best, timeout=args.timeout
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="fine-tune, evaluate, export and register a new version")
    _add_config_flags(fit)
    fit.add_argument(
        "--store",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="put the training data into the service's example store, so retrains replay "
        "it (default: on where DATABASE_URL is set or STATE_DIR's database exists)",
    )
    fit.set_defaults(func=cmd_fit)

    evaluate = sub.add_parser("evaluate", help="metrics of a registered version on a labeled file")
    evaluate.add_argument("--model", required=True, help="version tag, e.g. text-classifier:latest")
    evaluate.add_argument("--data", required=True, type=Path)
    evaluate.add_argument("--text-column", default="text")
    evaluate.add_argument("--label-column", default="label")
    evaluate.add_argument("--threads", type=int, default=2)
    evaluate.set_defaults(func=cmd_evaluate)

    search = sub.add_parser("search", help="Optuna search over training hyperparameters")
    _add_config_flags(search)
    search.add_argument("--trials", type=int, required=True)
    search.add_argument(
        "--timeout", type=float, default=None, help="stop starting trials after this many seconds"
    )
    search.add_argument(
        "--fit-best", action="store_true", help="fit and register the best trial's config"
    )
    search.set_defaults(func=cmd_search)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Third-party loggers (ORT's quantizer logs every tensor at INFO) stay at WARNING.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for ours in ("training", "core"):
        logging.getLogger(ours).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args))
    except (DataError, ValidationError, FileNotFoundError, VersionNotFoundError) as exc:
        log.error("%s", exc)
        return EXIT_BAD_INPUT
    except ExportError as exc:
        log.error("export failed: %s", exc)
        return EXIT_EXPORT_FAILED


if __name__ == "__main__":
    sys.exit(main())
