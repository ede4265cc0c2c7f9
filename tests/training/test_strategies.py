"""Strategies decide what trains; the optimizer sees exactly that, decayed where it should be."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from training.config import TrainConfig
from training.data import LabeledData
from training.strategies import apply_strategy, param_groups
from training.train import class_weights, label_counts, length_grouped_batches, load_base


def strategy_applied(base: Path, data: Path, **options: object) -> torch.nn.Module:
    """The tiny model with a strategy applied (options are TrainConfig fields)."""
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=3)
    apply_strategy(model, TrainConfig(data=data, base_model=str(base), **options))
    return model


def test_freeze_freezes_embeddings_and_lower_layers(
    tiny_base_model: Path, sentiment_csv: Path
) -> None:
    model = strategy_applied(tiny_base_model, sentiment_csv, strategy="freeze", freeze_layers=1)
    bert = model.bert
    assert not any(p.requires_grad for p in bert.embeddings.parameters())
    assert not any(p.requires_grad for p in bert.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in bert.encoder.layer[1].parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())


def test_full_with_frozen_word_embeddings_trains_the_rest(
    tiny_base_model: Path, sentiment_csv: Path
) -> None:
    model = strategy_applied(tiny_base_model, sentiment_csv)
    assert not model.bert.embeddings.word_embeddings.weight.requires_grad
    assert model.bert.embeddings.position_embeddings.weight.requires_grad
    assert all(p.requires_grad for p in model.bert.encoder.parameters())


def test_optimizer_groups_hold_only_trainable_and_skip_decay_on_biases_and_norms(
    tiny_base_model: Path, sentiment_csv: Path
) -> None:
    model = strategy_applied(tiny_base_model, sentiment_csv, strategy="freeze", freeze_layers=1)
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    grouped = {id(p) for g in (decay, no_decay) for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert grouped == trainable
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(
        names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)] for p in no_decay["params"]
    )
    assert all(p.ndim == 2 for p in decay["params"])


def test_class_weights_only_when_imbalanced() -> None:
    assert class_weights([10, 10, 10]) is None
    assert class_weights([30, 20, 10]) is None  # 3:1 is not yet imbalanced
    weights = class_weights([60, 30, 10])
    assert weights is not None
    assert weights[2] > weights[1] > weights[0]
    assert torch.isclose((weights * torch.tensor([60.0, 30.0, 10.0])).sum(), torch.tensor(100.0))


def test_length_grouped_batches_cover_every_row_once_and_cut_padding() -> None:
    import random

    rng = random.Random(0)
    lengths = [rng.randint(5, 60) for _ in range(2000)]
    batches = length_grouped_batches(lengths, 32, random.Random(1))
    assert sorted(i for b in batches for i in b) == list(range(2000))
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    shuffled = list(range(2000))
    random.Random(2).shuffle(shuffled)
    random_padded = sum(
        max(lengths[i] for i in shuffled[s : s + 32]) * len(shuffled[s : s + 32])
        for s in range(0, 2000, 32)
    )
    assert padded < 0.75 * random_padded


def test_the_configured_dropout_reaches_every_dropout_layer(
    tiny_base_model: Path, sentiment_csv: Path
) -> None:
    def dropouts(p: float) -> set[float]:
        cfg = TrainConfig(data=sentiment_csv, base_model=str(tiny_base_model), dropout=p)
        model, _ = load_base(cfg, ["negative", "neutral", "positive"])
        return {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}

    # The tiny BERT's config says 0.1 for hidden and attention dropout, None for the head.
    assert dropouts(0.0) == {0.0}
    assert dropouts(0.25) == {0.25}


def test_class_weights_count_the_given_store_counts_not_the_sample(sentiment_csv: Path) -> None:
    sample = LabeledData(("a", "b", "c"), (0, 0, 1), ("neg", "pos"))
    assert label_counts(TrainConfig(data=sentiment_csv), sample) == [2, 1]
    store = TrainConfig(data=sentiment_csv, class_counts={"neg": 900, "pos": 100, "other": 5})
    assert label_counts(store, sample) == [900, 100]
