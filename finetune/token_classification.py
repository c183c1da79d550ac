"""Token labelling (chunking, named entities): CoNLL files, JSON lines or hub datasets in, one tag per
word out. The label sits on the first sub-word of each word (or on all of them); a sentence longer than
the window is cut into overlapping windows and each word is predicted once, by the window where it has
the most context on both sides. Scored with `conlleval`'s chunk F1."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.data import pad_to_tensor, padding_id
from pretrain.errors import ConfigError, DataError
from pretrain.model import IGNORE_INDEX
from pretrain.tokenizer import special_affixes
from pretrain.train import Task
from pretrain.train.checkpoints import load_pretrained

from . import conlleval
from .common import Built, Evaluation, capped, head_matches_labels, padded_inputs, predict, with_validation
from .config import FinetuneConfig, FinetuneDataConfig
from .files import hub_split, read_rows, read_utf8

log = logging.getLogger(__name__)

DOCSTART = "-DOCSTART-"


@dataclass
class Sentence:
    words: list[str]
    tags: list[str]


# ----------------------------------------------------------------------------- reading


def read_conll(path: str, column: int = -1) -> list[Sentence]:
    """One token per line (`word ... tag`), blank lines between sentences, `-DOCSTART-` lines skipped.
    `column` picks the tag among the whitespace-separated fields (-1: the last)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"data file {file} does not exist; check data.train / data.validation")
    sentences, words, tags = [], [], []
    n_fields, first_line = None, 0
    for number, line in enumerate(read_utf8(file).splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == DOCSTART:
            if words:
                sentences.append(Sentence(words, tags))
            words, tags = [], []
            continue
        if n_fields is None:
            n_fields, first_line = len(fields), number
        index = column if column >= 0 else len(fields) + column
        if len(fields) != n_fields:
            raise DataError(
                f"{file}, line {number}: {line.strip()!r} has {len(fields)} fields where line {first_line} has "
                f"{n_fields}; every line needs the same columns (`word ... tag`): a field is missing or extra"
            )
        if not 0 < index < len(fields):
            has = "words only, no tag column" if len(fields) == 1 else f"tag columns 1..{len(fields) - 1} or -1"
            raise DataError(
                f"{file}: data.conll_column={column} is not a tag column of its {len(fields)}-field lines ({has})"
            )
        words.append(fields[0])
        tags.append(fields[index])
    if words:
        sentences.append(Sentence(words, tags))
    if not sentences:
        raise DataError(f"{file} has no sentences (expected `word ... tag` lines, blank lines between sentences)")
    return sentences


def sentences_from_rows(
    rows: list[dict[str, Any]], tags_column: str, where: str, label_names: list[str] | None
) -> list[Sentence]:
    """Rows with a `tokens` list and a list of tags (strings, or indices into `label_names`)."""
    sentences, empty = [], []
    for number, row in enumerate(rows, start=1):
        if "tokens" not in row or tags_column not in row:
            raise DataError(
                f"{where}, row {number}: needs the columns 'tokens' and {tags_column!r} (has {sorted(row)}); "
                "set data.tags_column"
            )
        for column in ("tokens", tags_column):
            if not isinstance(row[column], list):
                raise DataError(f"{where}, row {number}: {column!r} is a {type(row[column]).__name__}, not a list")
        words, tags = [str(w) for w in row["tokens"]], list(row[tags_column])
        if len(words) != len(tags):
            raise DataError(f"{where}, row {number}: {len(words)} tokens but {len(tags)} tags; a tag is missing")
        if any(not isinstance(t, str) for t in tags):
            if not label_names:
                raise ConfigError(f"{where}, row {number}: tags are indices; list the tag names in data.label_names")
            bad = [t for t in tags if not isinstance(t, int) or not 0 <= t < len(label_names)]
            if bad:
                raise DataError(f"{where}, row {number}: tag indices {bad} are outside data.label_names")
            tags = [label_names[t] for t in tags]
        if words:
            sentences.append(Sentence(words, tags))
        else:
            empty.append(number)
    if empty:  # nothing to tag; predictions.conll (one block per sentence) has no block for them
        log.warning("%s: skipped %d rows with no tokens (rows %s)", where, len(empty), empty[:10])
    return sentences


def load_sentences(cfg: FinetuneDataConfig, path: str | None, split: str) -> tuple[list[Sentence], list[str] | None]:
    """Sentences of a file (CoNLL text, or .json / .jsonl rows) or a hub split, and the hub's tag
    names when its features carry them (conll2003's ClassLabel)."""
    if path is not None:
        if Path(path).suffix.lower() in (".json", ".jsonl"):
            return sentences_from_rows(read_rows(path), cfg.tags_column, path, cfg.label_names), None
        return read_conll(path, cfg.conll_column), None
    data = hub_split(cfg.hub_name, cfg.hub_config, split)
    if cfg.tags_column not in data.column_names:
        raise ConfigError(
            f"{cfg.hub_name} has no column {cfg.tags_column!r} ({data.column_names}); set data.tags_column"
        )
    feature = getattr(data.features[cfg.tags_column], "feature", None)
    names = list(feature.names) if hasattr(feature, "names") else None
    where = f"{cfg.hub_name} ({split})"
    return sentences_from_rows(list(data), cfg.tags_column, where, cfg.label_names or names), names


def tag_vocabulary(
    train: list[Sentence], cfg: FinetuneDataConfig, hub_names: list[str] | None, validation: list[Sentence] = ()
) -> list[str]:
    """data.label_names, else the hub's names, else the training tags sorted. Tags only the validation
    data has (CoNLL-2000's test set has one I-LST) are appended: never learnt, but scored fairly."""
    if cfg.label_names:
        return [str(x) for x in cfg.label_names]
    if hub_names:
        return hub_names
    labels = sorted({t for s in train for t in s.tags})
    unseen = sorted({t for s in validation for t in s.tags} - set(labels))
    if unseen:
        log.warning("tags only in the validation data (the model cannot learn them): %s", unseen)
    return labels + unseen


def check_tags(sentences: list[Sentence], labels: list[str], where: str, named: bool = False) -> None:
    """Every tag is one of `labels`; `named`: they are data.label_names (else the training data's or hub's)."""
    unseen = sorted({t for s in sentences for t in s.tags} - set(labels))
    if unseen:
        source = "data.label_names does not list" if named else "the training data does not have"
        raise DataError(
            f"{where} has tags {unseen[:10]} that {source} (tags: {labels}); "
            "fix the data or list every tag in data.label_names"
        )


# ----------------------------------------------------------------------------- windows


def word_pieces(tokenizer: Any, sentences: list[Sentence], causal: bool) -> list[list[list[int]]]:
    """Sub-word ids of every word. GPT-2's byte-level BPE marks a word start with a space, so words
    after the first get one, as in running text. A word with no tokens becomes the unknown token."""
    flat = [(" " + w if causal and i else w) for s in sentences for i, w in enumerate(s.words)]
    ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    fallback = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.eos_token_id
    out, k = [], 0
    for s in sentences:
        out.append([x or [fallback] for x in ids[k : k + len(s.words)]])
        k += len(s.words)
    return out


def split_windows(lengths: list[int], budget: int) -> tuple[list[tuple[int, int]], list[int]]:
    """Word ranges [start, end) of at most `budget` tokens, neighbours overlapping by about half a
    window, and for each word the window that predicts it: the one where it has most context on both
    sides. A single word longer than the budget is cut (its first sub-word, the labelled one, stays)."""
    n = len(lengths)
    windows: list[tuple[int, int]] = []
    start = 0
    while True:
        end, used = start, 0
        while end < n and (end == start or used + lengths[end] <= budget):
            used += lengths[end]
            end += 1
        windows.append((start, end))
        if end == n:
            break
        nxt, tail = end, 0  # back up while the shared tail stays within half a window
        while nxt - 1 > start and tail + lengths[nxt - 1] <= budget // 2:
            nxt -= 1
            tail += lengths[nxt]
        start = nxt
    owner = []
    for w in range(n):
        candidates = [(min(w - s, e - 1 - w), -k) for k, (s, e) in enumerate(windows) if s <= w < e]
        owner.append(-max(candidates)[1])
    return windows, owner


def windows(
    tokenizer: Any,
    sentences: list[Sentence],
    labels: list[str],
    cfg: FinetuneDataConfig,
    causal: bool,
) -> list[dict[str, Any]]:
    """Model inputs: the pieces between the special tokens the tokenizer puts around one text (BERT's `[CLS]`
    and `[SEP]`; none for GPT-2's, BOS for a Llama-style tokenizer, as the export's tokenizer encodes them in a
    pipeline). `labels` carry the tag id on each
    predicted word's first sub-word (all its sub-words with data.label_all_subwords, a `B-X` continued
    as `I-X`) and IGNORE_INDEX elsewhere; `word_starts` lists (position, word) for prediction."""
    index = {name: i for i, name in enumerate(labels)}
    continuation = {i: index.get("I-" + name[2:], i) for name, i in index.items() if name.startswith("B-")}
    prefix, suffix = special_affixes(tokenizer)
    budget = cfg.max_length - len(prefix) - len(suffix)
    features = []
    for k, (sentence, pieces) in enumerate(zip(sentences, word_pieces(tokenizer, sentences, causal), strict=True)):
        spans, owner = split_windows([len(p) for p in pieces], budget)
        for w_index, (start, end) in enumerate(spans):
            ids, targets, starts = list(prefix), [IGNORE_INDEX] * len(prefix), []
            for w in range(start, end):
                word_ids = pieces[w][: budget - (len(ids) - len(prefix))]
                mine = owner[w] == w_index
                tag = index.get(sentence.tags[w], IGNORE_INDEX)
                if mine:
                    starts.append((len(ids), w))
                rest = continuation.get(tag, tag) if mine and cfg.label_all_subwords else IGNORE_INDEX
                targets += [tag if mine else IGNORE_INDEX] + [rest] * (len(word_ids) - 1)
                ids += word_ids
            ids += suffix
            targets += [IGNORE_INDEX] * len(suffix)
            feature = {"input_ids": ids, "labels": targets, "sentence": k, "word_starts": starts}
            if not causal:
                feature["token_type_ids"] = [0] * len(ids)
            features.append(feature)
    return features


class TokenCollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = padded_inputs(examples, self.pad_id)
        batch["labels"] = pad_to_tensor([e["labels"] for e in examples], IGNORE_INDEX)
        return batch


def assemble(
    sentences: list[Sentence], features: list[dict[str, Any]], argmax: list[np.ndarray], labels: list[str]
) -> list[list[str]]:
    """Each word's predicted tag, from the window that owns it."""
    predicted = [[""] * len(s.words) for s in sentences]
    for feature, best in zip(features, argmax, strict=True):
        for position, w in feature["word_starts"]:
            predicted[feature["sentence"]][w] = labels[int(best[position])]
    return predicted


def conll_text(sentences: list[Sentence], predicted: list[list[str]]) -> str:
    """`word gold predicted` per line, blank lines between sentences: conlleval's input format. A word with
    spaces in it (JSON "New York") or none is written with underscores, so every line keeps three fields."""
    blocks = [
        "".join(f"{'_'.join(w.split()) or '_'} {g} {p}\n" for w, g, p in zip(s.words, s.tags, tags, strict=True))
        for s, tags in zip(sentences, predicted, strict=True)
    ]
    return "\n".join(blocks)


# ----------------------------------------------------------------------------- the task


def build_task(cfg: FinetuneConfig, tokenizer: Any, accelerator: Any) -> Built:
    """Token classification for the shared loop: the Task, the final evaluation (conlleval's chunk
    scores and predictions.conll) and the metric that keeps the best model (f1)."""
    d = cfg.data
    train_file, validation_file = cfg.files()
    train_sentences, hub_names = load_sentences(d, train_file, d.train_split)
    train_sentences, val_sentences = with_validation(
        cfg, train_sentences, lambda: load_sentences(d, validation_file, d.validation_split)[0]
    )
    train_sentences, val_sentences = capped(cfg, train_sentences, val_sentences)
    labels = tag_vocabulary(train_sentences, d, hub_names, val_sentences)
    check_tags(train_sentences, labels, train_file or d.train_split, named=bool(d.label_names))
    check_tags(val_sentences, labels, validation_file or d.validation_split, named=bool(d.label_names))

    model = load_pretrained(cfg.model.init, head="token_classification", num_labels=len(labels))
    if not head_matches_labels(model, model.classifier, labels, cfg.model.init):
        model._init_heads(model.classifier)
    model.id2label = dict(enumerate(labels))
    causal = model.config.causal
    train_features = windows(tokenizer, train_sentences, labels, d, causal)
    val_features = windows(tokenizer, val_sentences, labels, d, causal)
    collate = TokenCollator(padding_id(tokenizer))
    gold = [s.tags for s in val_sentences]
    batch_size = cfg.train.batch_size

    def argmax_of(out: Any, batch: dict) -> list[np.ndarray]:
        lengths = batch["attention_mask"].sum(-1).tolist()
        best = out.logits.argmax(-1).cpu().numpy()
        return [best[i, :n] for i, n in enumerate(lengths)]

    def evaluate_all(m: Any, acc: Any) -> tuple[dict[str, float], list[list[str]]]:
        best = predict(m, acc, val_features, collate, batch_size, argmax_of)
        predicted = assemble(val_sentences, val_features, best, labels)
        return conlleval.evaluate(gold, predicted), predicted

    evaluation = Evaluation(evaluate_all)

    def final_eval(m: Any, acc: Any) -> tuple[dict[str, float], tuple[str, str]]:
        metrics, predicted = evaluation.final(m, acc)
        return metrics, ("predictions.conll", conll_text(val_sentences, predicted))

    task = Task(model=model, train_data=train_features, collate=collate, evaluate=evaluation, tokenizer=tokenizer)
    return task, final_eval, "f1"
