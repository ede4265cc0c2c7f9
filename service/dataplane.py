"""One scoring path for every protocol: the batches /predict's texts join.

The Hugging Face and Open Inference Protocol routes translate their wire
shapes into a list of texts and back (KServe's "one data plane, protocol
adapters at the edge"). Their texts go through `predict_route.classify`, the
call /predict itself makes: they join the same batches, pass the same checks
and get the same refusals.
"""

from __future__ import annotations

from service.errors import RefusedError
from service.model_holder import LoadedModel
from service.predict_route import classify, no_model_message, served_model
from service.schemas import Prediction


class DataPlane:
    """What every protocol shares: the /predict batches, and the model being served."""

    async def predict(self, texts: list[str]) -> list[Prediction]:
        """One Prediction per text, in order; a refusal is a RefusedError with its status."""
        return await classify(texts)

    def model(self) -> LoadedModel | None:
        return served_model()

    def require_model(self) -> LoadedModel:
        loaded = served_model()
        if loaded is None:
            raise RefusedError(503, no_model_message())
        return loaded
