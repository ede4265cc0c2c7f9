"""A tiny BERT, built from a config inside the tests: a real HF model folder in ~1 MB.

Fast enough to fine-tune in seconds on 2 cores, and a real `tokenizer.json`
(WordPiece over a vocabulary made from the test words) so that the whole
train -> export -> serve path runs exactly as it does for MiniLM.
"""

from __future__ import annotations

from pathlib import Path

POSITIVE = "good great love happy wonderful excellent nice best awesome fine".split()
NEGATIVE = "bad awful hate sad terrible horrible worst poor ugly angry".split()
NEUTRAL = "ok okay average plain neutral normal usual regular some thing".split()
FILLER = "the a is was it this that movie day food service and very so really".split()
WORDS = POSITIVE + NEGATIVE + NEUTRAL + FILLER
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_tiny_bert(out_dir: Path, hidden: int = 64, layers: int = 2) -> Path:
    """Write a randomly initialised BertModel (no head, like MiniLM) + fast tokenizer to out_dir."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    letters = sorted({c for w in WORDS for c in w} | set("0123456789.,!?'"))
    # dict.fromkeys: one id per token ("a" is both a word and a letter).
    vocab_list = list(
        dict.fromkeys(SPECIAL + sorted(set(WORDS)) + letters + [f"##{c}" for c in letters])
    )
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    fast.save_pretrained(out_dir)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
    )
    # Seeded: every session starts from the same weights, so what the tests' fine-tunes
    # learn does not depend on the luck of one random initialisation.
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out_dir)
    return out_dir
