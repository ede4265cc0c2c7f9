"""Which parameters train: one switch (`full`, `freeze`, `lora`) applied in one place.

The training loop never asks which strategy is on; it trains whatever has
`requires_grad`, and `param_groups` hands the optimizer only those, with weight
decay on matrices alone (biases and LayerNorm weights are not decayed).
"""

from __future__ import annotations

import logging
from typing import Any

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from training.config import TrainConfig

log = logging.getLogger(__name__)


def _encoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The transformer blocks of any HF encoder (BERT, RoBERTa, DistilBERT, ...)."""
    base = model.base_model
    for path in ("encoder.layer", "transformer.layer", "layers", "encoder.layers"):
        module: Any = base
        try:
            for part in path.split("."):
                module = getattr(module, part)
        except AttributeError:
            continue
        if isinstance(module, nn.ModuleList):
            return module
    raise ValueError(f"cannot find the encoder layers of {type(model).__name__} to freeze")


def _embeddings(model: PreTrainedModel) -> nn.Module:
    """The whole embedding block (words, positions, norm) where the model has one."""
    block = getattr(model.base_model, "embeddings", None)
    if isinstance(block, nn.Module):
        return block
    words: nn.Module = model.get_input_embeddings()
    return words


def apply_strategy(model: PreTrainedModel, cfg: TrainConfig) -> nn.Module:
    """Set `requires_grad` (or wrap with LoRA) as the strategy says; returns the model to train."""
    if cfg.strategy == "lora":
        lora = LoraConfig(
            task_type="SEQ_CLS",
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules="all-linear",
        )  # task_type SEQ_CLS makes peft train the (new) classifier head in full
        wrapped: nn.Module = get_peft_model(model, lora)
    else:
        wrapped = model
        if cfg.strategy == "freeze":
            _embeddings(model).requires_grad_(False)
            layers = _encoder_layers(model)
            frozen = min(cfg.freeze_layers, len(layers) - 1)
            if frozen < cfg.freeze_layers:
                log.warning(
                    "freeze_layers=%d but the base model has %d layers; freezing the lower %d",
                    cfg.freeze_layers,
                    len(layers),
                    frozen,
                )
            for layer in layers[:frozen]:
                layer.requires_grad_(False)
    if cfg.freeze_embeddings and cfg.strategy != "lora":
        word_embeddings: nn.Module = model.get_input_embeddings()
        word_embeddings.requires_grad_(False)
    trainable = count_trainable(wrapped)
    total = sum(p.numel() for p in wrapped.parameters())
    log.info(
        "strategy=%s trains %d of %d parameters (%.1f%%)",
        cfg.strategy,
        trainable,
        total,
        100 * trainable / total,
    )
    return wrapped


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters only; decay matrices, not biases or normalization weights."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def merged_for_export(model: nn.Module) -> PreTrainedModel:
    """A plain transformers model: LoRA adapters are merged into the weights."""
    merged = model.merge_and_unload() if isinstance(model, PeftModel) else model
    if not isinstance(merged, PreTrainedModel):
        raise TypeError(f"expected a transformers model to export, got {type(merged).__name__}")
    return merged


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
