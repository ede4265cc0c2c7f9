"""Topic shifts of the shared tweets, for the retrain benchmarks.

The tweets are a mix of crowd-labelled topics (airlines, the Super Bowl's
"deflategate", Coachella, Apple, self-driving cars, allergy medicine, ...), so a
topic the active model never saw can be held out by keyword and posted later as
new labels. Every held-out topic is out of the store at once: one setup version
serves every shift. What the benchmarks score on is their own:

- `rest_eval`: validation.csv tweets of no held-out topic, plus `REST_WITHHELD`
  train.csv ones kept out of the store (the gate never sees them);
- per topic, `eval`: its validation.csv tweets topped up to `TOPIC_EVAL` with
  train.csv ones that are never posted; `pool`: the rest, from which a run with
  seed s posts the first N of a shuffle by s.
"""

from __future__ import annotations

import csv
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "datasets" / "tweets-sentiment"
TOPIC_EVAL = 400
REST_WITHHELD = 2000

TOPICS = {
    # The model knows next to nothing of these (a festival, a company and its products):
    "coachella": r"coachella",
    "apple": r"@apple\b|#aapl\b|#apple\b|\bapple\b|\biphone|\bipad\b|\bmacbook|\bitunes\b",
    # Airlines it half-knows: the other carriers' tweets stay in the store.
    "usairways": r"@usairways(?!\w)",
    "americanair": r"@americanair(?!\w)",
}

# Recipes are screened (bench/warm_start_screen.py --topic-set screen) on other topics than
# the matrix judges them on, so a recipe is not tuned to the topics it is judged on.
SCREEN_TOPICS = {
    "selfdriving": r"self[- ]?driving|driverless|autonomous|robot ?car",
    "allergy": r"claritin|zyrtec|allegra|benadryl|allerg",
    "airline-b": r"@(jetblue|southwestair|virginamerica)(?!\w)",
    "united": r"@united(?!\w)",
}
TOPIC_SETS = {"matrix": TOPICS, "screen": SCREEN_TOPICS}

Row = tuple[str, str]  # text, label


def read_rows(path: Path) -> list[Row]:
    """Stripped, non-empty texts, one row per text; texts seen with two labels are dropped."""
    labels: dict[str, set[str]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            if (text := r["text"].strip()) and (label := r["label"].strip()):
                labels.setdefault(text, set()).add(label)
    return [(text, next(iter(ls))) for text, ls in labels.items() if len(ls) == 1]


@dataclass
class Topic:
    name: str
    pool: list[Row]
    eval: list[Row]

    def posted(self, n: int, seed: int) -> list[Row]:
        rows = list(self.pool)
        random.Random(seed).shuffle(rows)
        return rows[:n]


@dataclass
class Shifts:
    store: list[Row]  # what the store holds before any topic is posted
    rest_eval: list[Row]
    topics: dict[str, Topic] = field(default_factory=dict)


def topic_of(text: str, topics: dict[str, str]) -> str | None:
    found = [n for n, pattern in topics.items() if re.search(pattern, text, re.I)]
    return found[0] if len(found) == 1 else ("several" if found else None)


def load_shifts(topics: dict[str, str] = TOPICS) -> Shifts:
    """The store, the rest evaluation set and each held-out topic's pool and evaluation set.

    Every topic of `topics` is held out, whichever a run posts: the store stays the same."""
    train, valid = read_rows(DATA / "train.csv"), read_rows(DATA / "validation.csv")
    random.Random(0).shuffle(train)
    in_train = {t for t, _ in train}
    valid = [r for r in valid if r[0] not in in_train]
    rest_train = [r for r in train if topic_of(r[0], topics) is None]
    withheld, store = rest_train[:REST_WITHHELD], rest_train[REST_WITHHELD:]
    shifts = Shifts(store, [r for r in valid if topic_of(r[0], topics) is None] + withheld)
    for name in topics:
        of_topic = [r for r in train if topic_of(r[0], topics) == name]
        held = [r for r in valid if topic_of(r[0], topics) == name]
        top_up = max(0, TOPIC_EVAL - len(held))
        shifts.topics[name] = Topic(name, of_topic[top_up:], held + of_topic[:top_up])
    return shifts


def wrong_labels(rows: list[Row], labels: list[str], seed: int) -> list[Row]:
    """Each row with a label it does not have, chosen at random: a labeling tool gone wrong."""
    rng = random.Random(seed)
    return [(t, rng.choice([x for x in labels if x != y])) for t, y in rows]
