"""BERT examples over prepared token shards, stored as token ranges (5 int64 per example).

With next-sentence prediction the rules are Google's `create_pretraining_data.py`: per document a
target length (shorter with `short_seq_prob`); sentences are gathered into a chunk until it reaches
the target; A is a random-length head of the chunk; B is the rest of the chunk, or - half the time,
and always when the chunk holds a single sentence - a run of sentences from another document, in
which case the chunk's unused sentences go back to start the next chunk. The longer segment is
trimmed at a random end until the pair fits. Every epoch draws new pairings (new targets, random
B's, chunks and trims): epoch e of the training split holds `data.dupe_factor` copies, random streams
e * dupe_factor ... (e + 1) * dupe_factor - 1. An epoch's pairing is built once, when first needed,
by one process under the cache lock, and memory-mapped (it is a pure function of the shards,
data.seed and e: exact resume needs nothing else). The held-out split keeps the pairing of epoch 0,
so evaluations compare.

The number of pairs varies a little with the draw, while the batch plan gives every epoch the size
of epoch 0 (so a step's data position is arithmetic on the step, knowing nothing of other epochs):
example i of epoch e is pair i * n_e // n_0 of its pairing, spread evenly over the corpus, dropping
(or repeating) the few pairs by which the counts differ.

Without NSP (`model.nsp=false`) the examples are RoBERTa's FULL-SENTENCES: whole sentences taken
contiguously, across document boundaries (marked with [SEP]), filling `data.max_length`, with no B.

Every segment is a contiguous range of the flat token array: an example is (a_start, a_end,
b_start, b_end, label), label 1 meaning B is random (Hugging Face's convention), -1 no B at all.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig
from .shards import TokenSplit, cache_entry, cache_root, key_of

log = logging.getLogger(__name__)

PAIRS_VERSION = "2"  # 2: one pairing per epoch
NO_PAIR = -1


def document_pairs(
    bounds: list[int],
    n_docs: int,
    doc_index: int,
    other_bounds: Any,
    max_length: int,
    short_seq_prob: float,
    rng: random.Random,
) -> list[tuple[int, int, int, int, int]]:
    """Pairs of one document whose sentences span bounds[j]..bounds[j+1] in the token array.
    `other_bounds(d)` gives another document's bounds (for random B segments)."""
    max_tokens = max_length - 3  # [CLS] A [SEP] B [SEP]
    target = max_tokens if rng.random() >= short_seq_prob else rng.randint(2, max_tokens)
    n = len(bounds) - 1
    pairs = []
    first = 0  # the chunk's first sentence
    i = 0
    while i < n:
        if i == n - 1 or bounds[i + 1] - bounds[first] >= target:
            k = i - first + 1  # sentences in the chunk
            a_sentences = rng.randint(1, k - 1) if k >= 2 else 1
            a0, a1 = bounds[first], bounds[first + a_sentences]
            if n_docs > 1 and (k == 1 or rng.random() < 0.5):
                label = 1
                other = rng.randrange(n_docs - 1)
                other += other >= doc_index  # any document but this one
                ob = other_bounds(other)
                start = rng.randint(0, len(ob) - 2)
                end = start + 1
                while end < len(ob) - 1 and ob[end] - ob[start] < target - (a1 - a0):
                    end += 1
                b0, b1 = ob[start], ob[end]
                i -= k - a_sentences  # the unused sentences start the next chunk
            elif k == 1:  # a single document in the corpus: no random B to take
                b0 = b1 = a1
                label = 0
            else:
                label = 0
                b0, b1 = a1, bounds[i + 1]
            a0, a1, b0, b1 = _truncate_pair(a0, a1, b0, b1, max_tokens, rng)
            if a1 > a0 and b1 > b0:
                pairs.append((a0, a1, b0, b1, label))
            first = i + 1
        i += 1
    return pairs


def _truncate_pair(a0: int, a1: int, b0: int, b1: int, max_tokens: int, rng: random.Random) -> tuple[int, ...]:
    """Google's truncate_seq_pair on ranges: trim the longer segment at a random end, one token at a time."""
    while (a1 - a0) + (b1 - b0) > max_tokens:
        if a1 - a0 > b1 - b0:
            if rng.random() < 0.5:
                a0 += 1
            else:
                a1 -= 1
        elif rng.random() < 0.5:
            b0 += 1
        else:
            b1 -= 1
    return a0, a1, b0, b1


def full_sentences(split: TokenSplit, max_length: int) -> Iterator[tuple[int, int, int, int, int]]:
    """RoBERTa's FULL-SENTENCES: whole sentences, contiguous across documents, up to max_length with
    [CLS], [SEP] and one [SEP] per document boundary inside; a sentence longer than that is cut."""
    budget = max_length - 2
    start = end = -1
    used = 0
    for d in range(split.num_documents):
        bounds = split.sentence_bounds(d)
        for s0, s1 in zip(bounds[:-1], bounds[1:], strict=True):
            crossing = 1 if start >= 0 and s0 == bounds[0] else 0  # a new document inside the example
            if start >= 0 and used + crossing + (s1 - s0) > budget:
                yield (start, end, end, end, NO_PAIR)
                start, used, crossing = -1, 0, 0
            if start < 0:
                start = s0
                if s1 - s0 > budget:
                    yield (s0, s0 + budget, s0 + budget, s0 + budget, NO_PAIR)
                    start = -1
                    continue
            used += crossing + (s1 - s0)
            end = s1
    if start >= 0:
        yield (start, end, end, end, NO_PAIR)


def pairing_seed(seed: int, stream: int) -> int:
    """The random stream of one copy of the corpus's pairs: stream = epoch * dupe_factor + copy."""
    return seed * 1_000_003 + stream


def build_pairs(
    split: TokenSplit, cfg: DataConfig, nsp: bool, copies: int, out: Path, epoch: int = 0
) -> tuple[int, int]:
    """Writes examples to out/pairs.bin in chunks (memory stays bounded); returns their number and how
    many of them are NSP's random-next pairs."""
    n = random_next = 0
    with open(out / "pairs.bin", "wb") as f:

        def write(rows: list[tuple[int, ...]]) -> None:
            nonlocal n, random_next
            if rows:
                array = np.asarray(rows, dtype=np.int64)
                f.write(array.tobytes())
                n += len(rows)
                random_next += int(array[:, -1].sum()) if nsp else 0

        if not nsp:
            rows: list[tuple[int, ...]] = []
            for row in full_sentences(split, cfg.max_length):
                rows.append(row)
                if len(rows) >= 100_000:
                    write(rows)
                    rows = []
            write(rows)
            return n, 0
        n_docs = split.num_documents
        for copy in range(copies):
            rng = random.Random(pairing_seed(cfg.seed, epoch * copies + copy))
            rows = []
            for d in range(n_docs):
                rows.extend(
                    document_pairs(
                        split.sentence_bounds(d),
                        n_docs,
                        d,
                        split.sentence_bounds,
                        cfg.max_length,
                        cfg.short_seq_prob,
                        rng,
                    )
                )
                if len(rows) >= 100_000:
                    write(rows)
                    rows = []
            write(rows)
    return n, random_next


def prepare_pairs(cfg: DataConfig, tokens_dir: Path, name: str, nsp: bool, epoch: int = 0) -> Path:
    """The examples of split `name` of a prepared token directory for `epoch`, built if missing.
    FULL-SENTENCES (no NSP) has nothing to draw: one set serves every epoch."""
    copies = cfg.dupe_factor if name == "train" else 1
    epoch = epoch if nsp and name == "train" else 0
    key = key_of(PAIRS_VERSION, tokens_dir.name, name, nsp, cfg.max_length, cfg.short_seq_prob, cfg.seed, copies, epoch)
    path = cache_root(cfg) / "bert_pairs" / key
    with cache_entry(path) as tmp:
        if tmp is not None:
            n, random_next = build_pairs(TokenSplit.open(tokens_dir / name), cfg, nsp, copies, tmp, epoch)
            meta = {"examples": n, "nsp": nsp, "copies": copies, "epoch": epoch, "random_next": random_next}
            (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
            if nsp and name == "train" and epoch == 0 and n and random_next > 0.9 * n:
                log.warning(
                    "%.0f%% of the next-sentence pairs are random (IsNext needs documents of several sentences; "
                    "most documents here have one): NSP will learn little; give multi-sentence documents (a blank "
                    "line between documents) or set model.nsp=false",
                    100 * random_next / n,
                )
    return path


CHUNK_ROWS = 1 << 20  # pairs rows read at a time when an epoch's lengths are computed


class BertExamples:
    """Indexable examples {input_ids, token_type_ids[, next_sentence_label]} read from the memory map:
    epoch 0's pairing; `for_epoch(e)` gives epoch e's, of the same length (see the module docstring)."""

    def __init__(
        self,
        split: TokenSplit,
        pairs_dir: Path,
        cls_id: int,
        sep_id: int,
        redraw: Callable[[int], Path] | None = None,
    ):
        self.split, self.tokens, self.doc_ends = split, split.tokens, split.doc_ends
        self.pairs = _open_pairs(pairs_dir)
        self.cls, self.sep = cls_id, sep_id
        self.redraw = redraw  # epoch -> its pairs directory (built if missing); None: the same pairs every epoch
        self._epoch: tuple[int, BertExamples] | None = None  # the last epoch asked for, kept open

    def __len__(self) -> int:
        return len(self.pairs)

    def for_epoch(self, epoch: int) -> BertExamples:
        if epoch == 0 or self.redraw is None:
            return self
        if self._epoch is None or self._epoch[0] != epoch:
            view = BertExamples(self.split, self.redraw(epoch), self.cls, self.sep)
            view.pairs = SpreadRows(view.pairs, len(self))
            self._epoch = (epoch, view)
        return self._epoch[1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        a0, a1, b0, b1, label = self.pairs[index].tolist()
        a = np.array(self.tokens[a0:a1], dtype=np.int64)
        if label == NO_PAIR:
            inner = self.doc_ends[np.searchsorted(self.doc_ends, a0, "right") : np.searchsorted(self.doc_ends, a1)]
            a = np.insert(a, (inner - a0).astype(np.int64), self.sep) if len(inner) else a
            ids = np.concatenate([[self.cls], a, [self.sep]])
            return {"input_ids": ids, "token_type_ids": np.zeros(len(ids), np.int64)}
        b = np.array(self.tokens[b0:b1], dtype=np.int64)
        ids = np.concatenate([[self.cls], a, [self.sep], b, [self.sep]])
        token_types = np.zeros(len(ids), np.int64)
        token_types[len(a) + 2 :] = 1
        return {"input_ids": ids, "token_type_ids": token_types, "next_sentence_label": label}

    def rows(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))

    def epoch_lengths(self, epoch: int) -> np.ndarray:
        """Each example's length in epoch `epoch` as the batch grouping sees it: A + B + 3 ([CLS] A [SEP] B
        [SEP]; a FULL-SENTENCES example, with no B, counts one [SEP] too many and not the [SEP]s between its
        documents: close enough to group by). int32, read from the memory map a chunk at a time."""
        pairs = self.for_epoch(epoch).pairs
        spread = isinstance(pairs, SpreadRows)
        lengths = np.empty(len(pairs), np.int32)
        for start in range(0, len(pairs), CHUNK_ROWS):
            stop = min(len(pairs), start + CHUNK_ROWS)
            rows = np.asarray(pairs.pairs[pairs.source_rows(start, stop)] if spread else pairs[start:stop])
            lengths[start:stop] = rows[:, 1] - rows[:, 0] + rows[:, 3] - rows[:, 2] + 3
        return lengths


def _open_pairs(pairs_dir: Path) -> np.ndarray:
    file = pairs_dir / "pairs.bin"
    return (
        np.memmap(file, dtype=np.int64, mode="r").reshape(-1, 5) if file.stat().st_size else np.zeros((0, 5), np.int64)
    )


class SpreadRows:
    """Rows of `pairs` seen as `length` rows: row i is pairs[i * n // length], evenly spread (distinct
    rows when n >= length; every row, a few twice, when n < length). Nothing is materialised."""

    def __init__(self, pairs: np.ndarray, length: int):
        self.pairs, self.length = pairs, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return self.pairs[index * len(self.pairs) // self.length]

    def source_rows(self, start: int, stop: int) -> np.ndarray:
        """Which row of `pairs` each of rows start..stop-1 is."""
        return np.arange(start, stop, dtype=np.int64) * len(self.pairs) // self.length

    def tolist(self) -> list[list[int]]:
        return [self[i].tolist() for i in range(self.length)]
