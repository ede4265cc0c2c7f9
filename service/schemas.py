"""The predict contract: what a request may carry, and what each text gets back.

/predict and every protocol validate texts against these types; anything they
refuse (empty list, non-string item, too many texts, a text over the character
cap) becomes a 4xx with the reason. Limits come from `Settings`, read at import
time because the types (and the documented schema) are made from them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, Field, StrictStr

from service.settings import get_settings

_settings = get_settings()
PREDICT_ROUTE = "/predict"


def _not_a_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("a number is required, not true/false")
    return value


# JSON numbers as JSON Schema reads them: 588.0 is an integer, true is no number
# (pydantic's lax mode takes true as 1; its strict mode refuses 588.0). Put it after
# the number's Field constraints, or they leave the documented schema.
NOT_A_BOOL = BeforeValidator(_not_a_bool)

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
    score: float = Field(description="Calibrated probability of `label`.")
    scores: dict[str, float] = Field(description="Calibrated probability of every label.")
    logits: dict[str, float] = Field(
        description="The model's raw output per label; `scores` is the softmax of these "
        "divided by the version's temperature (`calibration` in its metrics)."
    )
    model_version: str = Field(description="The model version that scored this text.")
