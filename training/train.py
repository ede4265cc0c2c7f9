"""The fine-tuning loop: readable top to bottom, fast on a 2-core CPU.

Where the speed comes from (measured on this machine, MiniLM-L6, batch 32;
see bench/TRAINING.md):
- bf16 autocast: AVX-512 BF16 GEMMs run ~4x fp32 ones;
- eager attention: PyTorch's CPU flash-attention backward took 39% of a step
  (sdpa 54 vs eager 91 samples/s with bf16);
- length-grouped batches with dynamic padding: a random batch of tweets pads
  to ~60 tokens for a mean of ~33;
- frozen word embeddings: a dense 30k x 384 gradient and AdamW update for a
  matrix that barely moves when fine-tuning a classifier;
- no dropout (configurable): torch draws dropout masks on CPU at ~4 ms per
  activation of a batch, 18% of a step.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)

from core.registry import HF_DIR
from training.config import TrainConfig
from training.data import LabeledData
from training.evaluate import classification_metrics
from training.strategies import apply_strategy, count_trainable, param_groups

log = logging.getLogger(__name__)

PAD_MULTIPLE = 8
# Sort by length within windows of this many batches, as HF's LengthGroupedSampler
# does: enough to cut padding, small enough to keep batches varied.
LENGTH_GROUP_BATCHES = 50

# Called after each evaluation with (step, total_steps, dev macro-F1).
EvalFn = Callable[[int, int, float], None]
# Called after every optimizer step with (step, total_steps).
StepFn = Callable[[int, int], None]


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    best_dev_macro_f1: float = 0.0
    steps: int = 0
    samples_per_s: float = 0.0
    seconds: float = 0.0
    trainable_parameters: int = 0
    bf16: bool = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def bf16_available() -> bool:
    """True where the CPU has native bf16 (AVX-512 BF16 / AMX); elsewhere it would be slower."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def dropout_overrides(base_model: str, p: float) -> dict[str, float]:
    """`p` for every float dropout setting of the base model's config, whatever it is called.

    BERT says `hidden_dropout_prob`, DistilBERT `dropout`, others `attention_dropout`;
    settings left at None (BERT's `classifier_dropout`) fall back to one of those.
    """
    config = AutoConfig.from_pretrained(base_model).to_dict()
    return {k: p for k, v in config.items() if "dropout" in k and isinstance(v, float)}


def load_base(cfg: TrainConfig, label_names: Sequence[str]) -> tuple[PreTrainedModel, Any]:
    """The model to fine-tune, with a head for `label_names`, and its tokenizer.

    From the base encoder with a fresh head, or (`init_from`) from a version's
    fine-tuned weights, whose head keeps its rows and grows one per new label.
    Seeds first: a new head is initialised randomly, and must be the same every run.
    """
    seed_everything(cfg.seed)
    source = warm_start_folder(cfg.init_from) if cfg.init_from else cfg.base_model
    tokenizer = AutoTokenizer.from_pretrained(source)
    known: list[str] = list(label_names)
    if cfg.init_from:
        labels = AutoConfig.from_pretrained(source).id2label
        known = [labels[i] for i in range(len(labels))]
        if known != list(label_names[: len(known)]):
            raise ValueError(
                f"warm start from {cfg.init_from}: its labels {known} must come first, in "
                f"order, in {list(label_names)}"
            )
    model = AutoModelForSequenceClassification.from_pretrained(
        source,
        **dropout_overrides(source, cfg.dropout),
        num_labels=len(known),
        id2label=dict(enumerate(known)),
        label2id={name: i for i, name in enumerate(known)},
        attn_implementation="eager",
        ignore_mismatched_sizes=not cfg.init_from,
    )
    if len(label_names) > len(known):
        extend_head(model, label_names)
    return model, tokenizer


def warm_start_folder(init_from: str) -> str:
    """The Hugging Face folder inside a version folder, or `init_from` itself."""
    folder = Path(init_from) / HF_DIR
    return str(folder if folder.is_dir() else init_from)


def extend_head(model: PreTrainedModel, label_names: Sequence[str]) -> None:
    """Grow the classifier's output layer to `label_names`, keeping the rows it has.

    New rows start from the mean of the old ones (a neutral guess), plus small
    noise so the new classes can separate.
    """
    owner: Any = model.classifier
    attr = "out_proj" if hasattr(owner, "out_proj") else None
    layer = getattr(owner, attr) if attr else owner
    if not isinstance(layer, nn.Linear):
        raise ValueError(
            f"cannot extend the head of {type(model).__name__} with new labels; "
            'retrain with "mode": "refit"'
        )
    old = layer.out_features
    grown = nn.Linear(layer.in_features, len(label_names))
    with torch.no_grad():
        grown.weight[:old] = layer.weight
        grown.bias[:old] = layer.bias
        grown.weight[old:] = layer.weight.mean(0) + 0.02 * torch.randn_like(grown.weight[old:])
        grown.bias[old:] = layer.bias.mean()
    if attr:
        setattr(owner, attr, grown)
    else:
        model.classifier = grown
    model.config.num_labels = len(label_names)
    setattr(model, "num_labels", len(label_names))  # noqa: B010  (typed as a Module attribute)
    model.config.id2label = dict(enumerate(label_names))
    model.config.label2id = {name: i for i, name in enumerate(label_names)}


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the model's floating-point tensors."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


@torch.no_grad()
def average_with(model: nn.Module, start: dict[str, torch.Tensor], share: float) -> None:
    """In place: start + share x (model - start), tensor by tensor (WiSE-FT weight averaging)."""
    for name, value in model.state_dict().items():
        if name in start:
            value.copy_(start[name] + share * (value - start[name]))


def encode(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> list[list[int]]:
    ids: list[list[int]] = tokenizer(list(texts), truncation=True, max_length=max_length)[
        "input_ids"
    ]
    return ids


def collate(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest row, rounded up to PAD_MULTIPLE; returns (input_ids, attention_mask)."""
    width = -(-max(len(r) for r in rows) // PAD_MULTIPLE) * PAD_MULTIPLE
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random
) -> list[list[int]]:
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * LENGTH_GROUP_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def class_weights(counts: Sequence[int]) -> torch.Tensor | None:
    """Inverse-frequency weights from label `counts` when the largest is over 3x the smallest.

    Not below: on the tweets (2.4:1) weighting bought the minority class recall
    with more of its precision and cost 0.46 macro-F1 points (bench/TRAINING.md).
    """
    per_label = np.maximum(np.asarray(counts, dtype=np.float64), 1)  # a label with no rows left
    if per_label.max() <= 3 * per_label.min():
        return None
    weights = per_label.sum() / (len(per_label) * per_label)
    return torch.tensor(weights, dtype=torch.float32)


def label_counts(cfg: TrainConfig, train: LabeledData) -> list[int]:
    """Per label, in head order: `cfg.class_counts` when given, else the training data's."""
    if cfg.class_counts is not None:
        return [cfg.class_counts.get(name, 0) for name in train.label_names]
    return np.bincount(train.labels, minlength=len(train.label_names)).tolist()


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    encoded: Sequence[Sequence[int]],
    pad_id: int,
    bf16: bool,
    batch_size: int = 64,
) -> np.ndarray:
    """Logits in input order, computed in length-sorted batches."""
    model.eval()
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    chunks = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = collate([encoded[i] for i in rows], pad_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            chunks.append((rows, model(input_ids=ids, attention_mask=mask).logits.float().numpy()))
    out = np.zeros((len(encoded), chunks[0][1].shape[1]), dtype=np.float32)
    for rows, logits in chunks:
        out[rows] = logits
    return out


def fine_tune(
    cfg: TrainConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train: LabeledData,
    dev: LabeledData,
    on_eval: EvalFn | None = None,
    on_step: StepFn | None = None,
) -> TrainResult:
    """Train with AdamW + warmup/linear decay; early-stop on dev macro-F1, restore the best."""
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.cpu_threads)
    use_bf16 = cfg.bf16 and bf16_available()
    if cfg.bf16 and not use_bf16:
        log.warning("bf16 requested but this CPU has no native bf16; training in fp32")
    net = apply_strategy(model, cfg)
    pad_id = tokenizer.pad_token_id or 0
    train_ids = encode(tokenizer, train.texts, cfg.max_length)
    dev_ids = encode(tokenizer, dev.texts, cfg.max_length)
    train_labels = torch.tensor(train.labels)

    batches_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total_steps = max(1, math.ceil(cfg.epochs * batches_per_epoch))
    eval_every = max(1, batches_per_epoch // cfg.evals_per_epoch)
    optimizer = torch.optim.AdamW(param_groups(net, cfg.weight_decay), lr=cfg.lr, fused=True)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(cfg.warmup * total_steps), total_steps
    )
    weights = class_weights(label_counts(cfg, train)) if cfg.class_weights == "auto" else None
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    result = TrainResult(model=net, trainable_parameters=count_trainable(net), bf16=use_bf16)
    best_state: dict[str, torch.Tensor] | None = None
    stale = 0
    rng = random.Random(cfg.seed)
    lengths = [len(r) for r in train_ids]
    batches: list[list[int]] = []
    running_loss, running_n, seen, train_time = 0.0, 0, 0, 0.0
    # Redraw rarely when stderr is a log file, not a terminal: job logs stay readable.
    bar = tqdm(
        total=total_steps,
        desc="fine-tuning",
        unit="step",
        dynamic_ncols=True,
        mininterval=0.1 if sys.stderr.isatty() else 10.0,
    )
    for step in range(1, total_steps + 1):
        if not batches:
            batches = length_grouped_batches(lengths, cfg.batch_size, rng)
        rows = batches.pop()
        started = time.perf_counter()
        net.train()
        ids, mask = collate([train_ids[i] for i in rows], pad_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            logits = net(input_ids=ids, attention_mask=mask).logits
        loss = loss_fn(logits.float(), train_labels[rows])
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        train_time += time.perf_counter() - started
        seen += len(rows)
        running_loss += loss.item() * len(rows)
        running_n += len(rows)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", samples_s=f"{seen / train_time:.0f}")
        if on_step is not None:
            on_step(step, total_steps)

        if step % eval_every == 0 or step == total_steps:
            dev_logits = predict_logits(net, dev_ids, pad_id, use_bf16)
            dev_loss = float(
                nn.functional.cross_entropy(torch.from_numpy(dev_logits), torch.tensor(dev.labels))
            )
            dev_f1 = classification_metrics(
                dev.labels, dev_logits.argmax(1).tolist(), dev.label_names
            )["macro_f1"]
            point = {
                "step": step,
                "epoch": step / batches_per_epoch,
                "train_loss": running_loss / max(running_n, 1),
                "dev_loss": dev_loss,
                "dev_macro_f1": dev_f1,
            }
            result.history.append(point)
            if on_eval is not None:
                on_eval(step, total_steps, dev_f1)
            running_loss, running_n = 0.0, 0
            log.info(
                "step=%d epoch=%.2f train_loss=%.4f dev_loss=%.4f dev_macro_f1=%.4f",
                step,
                point["epoch"],
                point["train_loss"],
                dev_loss,
                dev_f1,
            )
            if best_state is None or dev_f1 > result.best_dev_macro_f1:
                result.best_dev_macro_f1, result.best_step, stale = dev_f1, step, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            elif step >= batches_per_epoch:  # never stop inside the first epoch
                stale += 1
                if stale >= cfg.patience:
                    log.info(
                        "early stop at step %d: no better dev macro-F1 for %d evaluations",
                        step,
                        stale,
                    )
                    break
    bar.close()
    if best_state is not None:
        net.load_state_dict(best_state)
    result.steps = step
    result.seconds = train_time
    result.samples_per_s = seen / train_time if train_time else 0.0
    log.info(
        "trained %d steps in %.0fs (%.1f samples/s); best dev macro-F1 %.4f at step %d",
        step,
        train_time,
        result.samples_per_s,
        result.best_dev_macro_f1,
        result.best_step,
    )
    return result
