"""Tokenizers: trained with `tokenizers` from the corpus (WordPiece for BERT, byte-level BPE for
GPT), or loaded from a directory / hub name. Always returned as a `transformers` tokenizer, so it
saves next to an export and `AutoTokenizer` / `pipeline` load it as it is."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
END_OF_TEXT = "<|endoftext|>"
# any one of these makes a directory a saved tokenizer's (what AutoTokenizer.from_pretrained reads)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
)


def train_tokenizer(texts: Iterable[str], family: str, vocab_size: int, lowercase: bool = True) -> Any:
    """Train a WordPiece (bert) or byte-level BPE (gpt) tokenizer on `texts` (a bounded sample: BERT
    holds it in memory). The same texts give the same tokenizer in any process: byte-level BPE numbers
    its 256-byte alphabet in codepoint order, and WordPiece's pieces are registered so too (below)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if family == "bert":
        texts = list(texts)  # a bounded sample (data.tokenizer_sample_mb): read twice
        normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
        pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        continuing = continuing_characters(texts, normalizer, pre_tokenizer)
        vocab = _train_wordpiece(texts, normalizer, pre_tokenizer, vocab_size, continuing)
        missed = {t[2:] for t in vocab if t.startswith("##") and len(t) == 3} - continuing
        if missed:  # a normalisation this scan did not foresee: train again with those registered too
            vocab = _train_wordpiece(texts, normalizer, pre_tokenizer, vocab_size, continuing | missed)
        from transformers import BertTokenizer

        # WordPiece segments by the set of tokens only: a fixed order (specials first, then sorted) of a
        # reproducible set is a reproducible tokenizer
        learned = sorted(vocab - set(BERT_SPECIALS))
        return BertTokenizer(vocab={t: i for i, t in enumerate(BERT_SPECIALS + learned)}, do_lower_case=lowercase)
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


def _train_wordpiece(
    texts: list[str], normalizer: Any, pre_tokenizer: Any, vocab_size: int, continuing: set[str]
) -> set[str]:
    """The vocabulary of the Rust WordPiece trainer, made independent of hash order. The trainer breaks
    ties between pairs of equal count by token id, and numbers the "##c" continuation tokens in the
    (per-process random) order of its word hash map; registering every "##c" up front, in codepoint
    order, fixes those ids and so every tie-break. A spare "##c" costs one vocabulary entry."""
    from tokenizers import Tokenizer, models, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    registered = BERT_SPECIALS + ["##" + c for c in sorted(continuing)]
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=registered, min_frequency=2, show_progress=False
    )
    tok.train_from_iterator(_batches(texts), trainer=trainer)
    return set(tok.get_vocab())


def continuing_characters(texts: list[str], normalizer: Any, pre_tokenizer: Any) -> set[str]:
    """The characters that can follow another inside a word once the texts are normalised and
    pre-tokenised (an over-approximation: never missing one the trainer meets, in practice).

    Normalising 20 MB in `tokenizers` takes seconds, so each distinct raw character is normalised alone
    and the text is scanned as code points: a raw character's normalised form continues a word when the
    raw character before it ends one (a character the normaliser deletes counts as ending one)."""
    import numpy as np

    word_char: dict[str, bool] = {}

    def is_word_char(c: str) -> bool:  # neither whitespace nor punctuation, per the pre-tokenizer itself
        if c not in word_char:
            word_char[c] = len(pre_tokenizer.pre_tokenize_str(f"a{c}a")) == 1
        return word_char[c]

    continuing: set[str] = set()
    leading: dict[str, str] = {}  # raw character -> the word character its normal form starts with
    ends_word = np.zeros(0x110000, bool)
    follows_word = np.zeros(0x110000, bool)
    known: set[str] = set()
    for chunk in _chunks(texts, 1 << 20):
        for c in set(chunk) - known:
            known.add(c)
            normal = normalizer.normalize_str(c)
            flags = [is_word_char(n) for n in normal]
            continuing.update(n for i, n in enumerate(normal) if i and flags[i] and flags[i - 1])
            if normal and flags[0]:
                leading[c] = normal[0]
            ends_word[ord(c)] = not normal or flags[-1]
        codes = np.frombuffer(chunk.encode("utf-32-le"), np.uint32)
        follows_word[codes[1:][ends_word[codes[:-1]]]] = True
    continuing.update(n for c, n in leading.items() if follows_word[ord(c)])
    return continuing


def _chunks(texts: list[str], size: int) -> Iterator[str]:
    """Texts joined by newlines (which no word spans) into strings of about `size` characters."""
    batch: list[str] = []
    n = 0
    for t in texts:
        batch.append(t)
        n += len(t)
        if n >= size:
            yield "\n".join(batch)
            batch, n = [], 0
    if batch:
        yield "\n".join(batch)


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
    if path.exists() and not (path.is_dir() and any((path / f).exists() for f in TOKENIZER_FILES)):
        raise ConfigError(
            f"{name_or_path} is not a tokenizer directory (it holds none of {', '.join(TOKENIZER_FILES)}); give "
            "the directory a tokenizer was saved to (save_pretrained) as data.tokenizer / model.tokenizer"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path) if path.exists() else name_or_path)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids of the special tokens a tokenizer puts before and after one text: none for our GPT-2 tokenizers,
    BOS for a Llama-style one, [CLS] / [SEP] for BERT's. Read from what it does to a text, whatever the kind."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    raise ValueError(f"the tokenizer encodes 'a' as {bare} alone and as {full} with its special tokens")


def check_family(tokenizer: Any, family: str) -> None:
    """The data pipeline relies on these special tokens; say which is missing rather than fail later."""
    needed = ("cls_token", "sep_token", "mask_token", "pad_token") if family == "bert" else ("eos_token",)
    missing = [n for n in needed if getattr(tokenizer, n, None) is None]
    if missing:
        raise ConfigError(
            f"the tokenizer has no {', '.join(missing)}, which a {family} model needs; "
            f"use a {'WordPiece/BERT' if family == 'bert' else 'GPT-2 style'} tokenizer or let one be trained "
            "(data.tokenizer=null)"
        )
