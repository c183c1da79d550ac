"""Tokenizers: trained with `tokenizers` from the corpus (WordPiece for BERT, byte-level BPE for
GPT), or loaded from a directory / hub name. Always returned as a `transformers` tokenizer, so it
saves next to an export and `AutoTokenizer` / `pipeline` load it as it is."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
END_OF_TEXT = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], family: str, vocab_size: int, lowercase: bool = True) -> Any:
    """Train a WordPiece (bert) or byte-level BPE (gpt) tokenizer on `texts`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if family == "bert":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=BERT_SPECIALS, min_frequency=2, show_progress=False
        )
        tok.train_from_iterator(_batches(texts), trainer=trainer)
        from transformers import BertTokenizer

        # the trainer numbers tokens of equal frequency in hash order; WordPiece segments by the set of
        # tokens only, so a fixed order (specials first, then sorted) makes training reproducible
        learned = sorted(set(tok.get_vocab()) - set(BERT_SPECIALS))
        vocab = {t: i for i, t in enumerate(BERT_SPECIALS + learned)}
        return BertTokenizer(vocab=vocab, do_lower_case=lowercase)
    if family == "gpt":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[END_OF_TEXT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            min_frequency=2,
            show_progress=False,
        )
        tok.train_from_iterator(_batches(texts), trainer=trainer)
        model = json.loads(tok.to_str())["model"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        from transformers import GPT2Tokenizer

        # GPT-2 has no pad token; padding (fine-tuning batches) reuses end-of-text
        return GPT2Tokenizer(vocab=model["vocab"], merges=merges, pad_token=END_OF_TEXT)
    raise ValueError(f"unknown model family {family!r}; expected 'bert' or 'gpt'")


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for t in texts:
        batch.append(t)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_tokenizer(name_or_path: str) -> Any:
    """A tokenizer directory (ours or Hugging Face's) or a hub name (needs internet)."""
    from transformers import AutoTokenizer

    path = Path(name_or_path)
    if not path.exists() and str(name_or_path).startswith((".", "/", "~")):
        raise FileNotFoundError(f"tokenizer directory {name_or_path} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(str(path) if path.exists() else name_or_path)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_family(tokenizer: Any, family: str) -> None:
    """The data pipeline relies on these special tokens; say which is missing rather than fail later."""
    needed = ("cls_token", "sep_token", "mask_token", "pad_token") if family == "bert" else ("eos_token",)
    missing = [n for n in needed if getattr(tokenizer, n, None) is None]
    if missing:
        raise ValueError(
            f"the tokenizer has no {', '.join(missing)}, which a {family} model needs; "
            f"use a {'WordPiece/BERT' if family == 'bert' else 'GPT-2 style'} tokenizer or let one be trained "
            "(data.tokenizer=null)"
        )
