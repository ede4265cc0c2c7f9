"""The Hugging Face text-classification shape at the base URL: `POST /`.

`InferenceClient(model="http://HOST:PORT").text_classification(text, top_k=...,
function_to_apply=...)` posts `{"inputs": ..., "parameters": {...}}` to the URL
it is given and reads element 0 of a list of lists, so every input gets its
own inner list, one input included. Scores follow `function_to_apply` as the
transformers pipeline applies it to the logits (softmax by default for a
model with several labels; ours is the calibrated one, logits / temperature);
items come sorted by score, cut to `top_k`.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from service.docs import error_responses
from service.predict_route import Scoring
from service.schemas import NOT_A_BOOL, Prediction, Text, Texts

Function = Literal["softmax", "sigmoid", "none"]


class HFParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_k: Annotated[int, Field(ge=1), NOT_A_BOOL] | None = Field(
        None, description="Keep the k best labels; all by default."
    )
    function_to_apply: Function | None = Field(
        None, description="softmax (default), sigmoid, or none (the raw logits)."
    )


class HFRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"inputs": "I love this!", "parameters": {"top_k": 2}}]},
    )
    inputs: Text | Texts = Field(description="One text, or a list of texts.")
    parameters: HFParameters | None = None


class HFLabel(BaseModel):
    label: str
    score: float
    model_version: str = Field(description="The model version that scored this text.")


def _scores(prediction: Prediction, function: Function) -> dict[str, float]:
    if function == "softmax":
        return prediction.scores
    if function == "sigmoid":
        return {k: 1.0 / (1.0 + math.exp(-v)) for k, v in prediction.logits.items()}
    return prediction.logits


def ranked(prediction: Prediction, top_k: int | None, function: Function) -> list[HFLabel]:
    scores = _scores(prediction, function)
    order = sorted(scores, key=scores.__getitem__, reverse=True)[:top_k]
    return [
        HFLabel(label=k, score=scores[k], model_version=prediction.model_version) for k in order
    ]


def build_router(scoring: Scoring) -> APIRouter:
    """`POST /`; `scoring` is the worker's scoring path (/predict's batches)."""
    router = APIRouter(
        tags=["huggingface"], responses=error_responses(400, 413, 415, 422, 500, 503)
    )

    @router.post("/", summary="Classify texts (Hugging Face inference shape)")
    async def classify(body: HFRequest) -> list[list[HFLabel]]:
        """One list of {label, score} per input, best first: what InferenceClient expects."""
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        params = body.parameters or HFParameters()
        answers = await scoring.classify(texts)
        function = params.function_to_apply or "softmax"
        return [ranked(a, params.top_k, function) for a in answers]

    return router
