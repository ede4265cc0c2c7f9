"""Do the new labels look like labels? The active model's view of rows it never trained on.

The statistic is the *support* the active model gives a row's label: the
probability of that label minus the average probability of each other label
(1 - 1/K at best, -1/(K-1) at worst, 0 for a model that knows nothing). Its
mean over the new rows is above zero for right labels wherever the model knows
anything of the topic, and below zero for wrong ones, because a wrong label
takes the place of the one the model leans to. So the gate asks the sign, with
a confidence bound, and needs no threshold tuned on a topic. (Comparing how
often the model disagrees with the new labels against how often it is wrong
on old ones cannot tell a topic it does not know from wrong labels: measured,
in bench/RETRAIN.md.)

Which rows look wrong is confident learning's job (cleanlab's
`find_label_issues`, Northcutt et al. 2021): it estimates each class's
confidence threshold from the model's out-of-sample probabilities and flags
rows whose label the model confidently contradicts. The thresholds come from the
new rows together with a sample of the evaluation split's old rows, so a batch
that is all wrong cannot set its own bar. The flagged rows, most suspect first,
go into the job record so a user can correct them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from cleanlab.filter import find_label_issues

from core.registry import ModelVersion
from core.runtime import Classifier

REFERENCE_ROWS = 500
# New rows scored at most (a seeded sample of a larger batch): enough for the mean's sign,
# and a first refit over a whole corpus does not score every text again.
MAX_CHECKED = 2000
MAX_LISTED = 50
CHUNK = 256

Labeled = tuple[str, str]  # text, label
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Suspect:
    index: int  # into the rows checked
    label: str
    predicted: str
    confidence: float  # the active model's probability of the given label


@dataclass(frozen=True)
class Support:
    """Mean support of some rows' labels, with its standard error."""

    rows: int
    mean: float
    stderr: float

    @classmethod
    def of(cls, values: Floats) -> Support:
        if len(values) < 2:
            return cls(len(values), float(values.mean()) if len(values) else 0.0, math.inf)
        return cls(
            len(values), float(values.mean()), float(values.std(ddof=1)) / len(values) ** 0.5
        )


@dataclass
class LabelNoise:
    """How the active model sees the new rows' labels, and old ones it knows are right."""

    new: Support
    reference: Support
    flagged: int  # new rows confident learning flags
    reference_flagged: int
    suspects: list[Suspect] = field(default_factory=list)

    def summary(self) -> dict[str, float | int]:
        def share(flagged: int, rows: int) -> float:
            return round(flagged / rows, 4) if rows else 0.0

        return {
            "checked": self.new.rows,
            "support": round(self.new.mean, 4),
            "support_stderr": round(self.new.stderr, 4),
            "reference_rows": self.reference.rows,
            "reference_support": round(self.reference.mean, 4),
            "flagged_share": share(self.flagged, self.new.rows),
            "reference_flagged_share": share(self.reference_flagged, self.reference.rows),
        }


def support(probabilities: Floats, given: npt.NDArray[np.int64]) -> Floats:
    """Per row: p(given label) minus the mean probability of the other labels."""
    own = probabilities[np.arange(len(given)), given]
    others = (1.0 - own) / (probabilities.shape[1] - 1)
    return np.asarray(own - others, dtype=np.float64)


def label_noise(
    active: ModelVersion,
    new: Sequence[Labeled],
    reference: Sequence[Labeled],
    threads: int,
    seed: int = 0,
) -> LabelNoise:
    """Score up to MAX_CHECKED of `new` and REFERENCE_ROWS of `reference` with `active`;
    flag label issues.

    Rows whose label `active` does not know (a new label) cannot be judged and are
    left out of both.
    """
    index = {name: i for i, name in enumerate(active.labels)}
    rng = random.Random(seed)
    judged = [i for i, (_, y) in enumerate(new) if y in index]
    judged = sorted(rng.sample(judged, min(MAX_CHECKED, len(judged))))
    known = [r for r in reference if r[1] in index]
    ref = rng.sample(known, min(REFERENCE_ROWS, len(known)))
    rows = [new[i] for i in judged] + ref
    if not judged:
        return LabelNoise(Support.of(np.zeros(0)), Support.of(np.zeros(0)), 0, 0)
    classifier = Classifier(active.path, active.max_length, threads)
    texts = [t for t, _ in rows]
    probs = np.concatenate(
        [classifier.predict_proba(texts[i : i + CHUNK]) for i in range(0, len(texts), CHUNK)]
    ).astype(np.float64)
    given = np.array([index[y] for _, y in rows], dtype=np.int64)
    n = len(judged)
    issues = np.zeros(len(rows), dtype=bool)
    if len(set(given.tolist())) > 1 and len(active.labels) > 1:  # confident learning needs two
        issues = find_label_issues(given, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    confidence = probs[np.arange(len(rows)), given]
    order = sorted((i for i in range(n) if issues[i]), key=lambda i: confidence[i])
    suspects = [
        Suspect(judged[i], rows[i][1], active.labels[int(probs[i].argmax())],
                round(float(confidence[i]), 4))
        for i in order[:MAX_LISTED]
    ]  # fmt: skip
    values = support(probs, given)
    return LabelNoise(
        new=Support.of(values[:n]),
        reference=Support.of(values[n:]),
        flagged=int(issues[:n].sum()),
        reference_flagged=int(issues[n:].sum()),
        suspects=suspects,
    )
