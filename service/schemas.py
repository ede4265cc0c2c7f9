"""The predict contract: what a request may carry, and what each text gets back.

BentoML validates each request against these types; anything they refuse
(empty list, non-string item, too many texts, a text over the character cap)
becomes a 400 with the reason. Limits come from `Settings`, read at import
time because BentoML builds the request schema when the service is defined.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field, StrictStr

from service.settings import get_settings

_settings = get_settings()

Text = Annotated[StrictStr, Field(min_length=1, max_length=_settings.max_text_chars)]
Texts = Annotated[
    list[Text],
    Field(
        min_length=1,
        max_length=_settings.max_texts_per_request,
        description="Texts to classify: one or many per request; answers come back in this order.",
        examples=[["I love this!", "the service was awful", "the train leaves at noon"]],
    ),
]


class Prediction(BaseModel):
    """The answer for one text."""

    label: str = Field(description="The most probable label.")
    score: float = Field(description="Probability of `label`.")
    scores: dict[str, float] = Field(description="Probability of every label.")
    model_version: str = Field(description="The model version that scored this text.")


def predictions(
    probabilities: npt.NDArray[np.float32], labels: Sequence[str], model_version: str
) -> list[Prediction]:
    """One Prediction per row of `probabilities` (columns in the order of `labels`)."""
    winners = probabilities.argmax(axis=1)
    return [
        Prediction(
            label=labels[best],
            score=float(row[best]),
            scores=dict(zip(labels, map(float, row), strict=True)),
            model_version=model_version,
        )
        for row, best in zip(probabilities, winners, strict=True)
    ]
