"""Sequence classification: single sentences (SST-2, CoLA) and pairs (MRPC, RTE), binary,
multi-class or regression. BERT reads the pooled [CLS]; GPT reads the last token."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.config import ConfigError
from pretrain.data import pad_to_tensor

from .config import FinetuneDataConfig

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- reading


def read_rows(path: str, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of a GLUE .tsv, a .csv, or a .json / .jsonl file, as dicts."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"data file {file} does not exist; check data.train / data.validation")
    suffix = file.suffix.lower()
    if suffix in (".json", ".jsonl"):
        text = file.read_text(encoding="utf-8-sig")
        try:
            rows = json.loads(text)
            rows = rows["data"] if isinstance(rows, dict) and "data" in rows else rows
            rows = [rows] if isinstance(rows, dict) else rows  # a JSON-lines file of one row
        except json.JSONDecodeError:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return list(rows)
    if suffix not in (".tsv", ".csv", ".txt"):
        raise ConfigError(f"{file}: unknown file type {suffix!r}; use .tsv, .csv, .json or .jsonl")
    with file.open(encoding="utf-8-sig", newline="") as f:  # utf-8-sig: MRPC files start with a BOM
        if suffix == ".csv":
            reader = csv.reader(f)
        else:  # GLUE TSVs contain bare quotes: no quoting
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        lines = [row for row in reader if row]
    if columns is None:
        header, lines = lines[0], lines[1:]
    else:
        header = columns
    rows = []
    for number, values in enumerate(lines, start=2 if columns is None else 1):
        if len(values) != len(header):
            raise ValueError(f"{file}, line {number}: {len(values)} fields where the header has {len(header)}")
        rows.append(dict(zip(header, values, strict=True)))
    return rows


def exclude_rows(rows: list[dict[str, Any]], ids_file: str, id_columns: list[str] | None) -> list[dict[str, Any]]:
    """Rows whose id (the values of `id_columns`) is not a line of `ids_file` (tab-separated ids).
    GLUE's MRPC train split is the Microsoft training file minus the pairs listed in dev_ids.tsv."""
    if not id_columns:
        raise ConfigError("data.exclude_ids_file needs data.id_columns, e.g. ['#1 ID','#2 ID']")
    missing = [c for c in id_columns if c not in rows[0]]
    if missing:
        raise ConfigError(f"data.id_columns {missing} are not columns of the training data ({list(rows[0])})")
    path = Path(ids_file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data.exclude_ids_file {path} does not exist")
    excluded = {tuple(line.split("\t")) for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()}
    kept = [r for r in rows if tuple(str(r[c]) for c in id_columns) not in excluded]
    log.info("excluded %d training rows listed in %s", len(rows) - len(kept), path)
    return kept


def load_split(cfg: FinetuneDataConfig, path: str | None, split: str) -> list[dict[str, Any]]:
    if path is not None:
        return read_rows(path, cfg.columns)
    import datasets  # a hub dataset by name: needs internet

    return list(datasets.load_dataset(cfg.hub_name, cfg.hub_config, split=split))


def check_columns(rows: list[dict[str, Any]], cfg: FinetuneDataConfig, where: str) -> None:
    if not rows:
        raise ValueError(f"{where} has no examples")
    needed = [cfg.text_column, cfg.label_column] + ([cfg.text_pair_column] if cfg.text_pair_column else [])
    missing = [c for c in needed if c not in rows[0]]
    if missing:
        key = {cfg.text_column: "data.text_column", cfg.label_column: "data.label_column"}.get(
            missing[0], "data.text_pair_column"
        )
        raise ConfigError(f"{where} has no column {missing[0]!r} (columns: {list(rows[0])}); set {key}")


def label_vocabulary(train_rows: list[dict[str, Any]], cfg: FinetuneDataConfig) -> list[str]:
    if cfg.regression:
        return ["score"]
    if cfg.label_names:
        return [str(x) for x in cfg.label_names]
    values = {str(r[cfg.label_column]) for r in train_rows}
    numeric = all(v.lstrip("-").isdigit() for v in values)
    return sorted(values, key=int) if numeric else sorted(values)


def encode_labels(rows: list[dict[str, Any]], cfg: FinetuneDataConfig, labels: list[str], where: str) -> list[Any]:
    if cfg.regression:
        return [float(r[cfg.label_column]) for r in rows]
    index = {name: i for i, name in enumerate(labels)}
    unseen = sorted({str(r[cfg.label_column]) for r in rows} - set(index))
    if unseen:
        raise ValueError(
            f"{where} has labels {unseen} that the training data does not have (labels: {labels}); "
            "fix the data or list every label in data.label_names"
        )
    return [index[str(r[cfg.label_column])] for r in rows]


# ----------------------------------------------------------------------------- features


def encode_texts(tokenizer: Any, rows: list[dict[str, Any]], cfg: FinetuneDataConfig, causal: bool) -> dict[str, list]:
    """BERT: [CLS] a [SEP] (b [SEP]). GPT: a (<eos> b); the classifier reads the last token."""
    texts = [str(r[cfg.text_column]) for r in rows]
    pairs = [str(r[cfg.text_pair_column]) for r in rows] if cfg.text_pair_column else None
    if not causal:
        enc = tokenizer(texts, pairs, truncation=True, max_length=cfg.max_length)
        return {k: enc[k] for k in ("input_ids", "token_type_ids") if k in enc}
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if pairs is not None:
        second = tokenizer(pairs, add_special_tokens=False)["input_ids"]
        ids = [a + [tokenizer.eos_token_id] + b for a, b in zip(ids, second, strict=True)]
    return {"input_ids": [x[-cfg.max_length :] for x in ids]}  # keep the end: it is what the head reads


class ClassificationCollator:
    def __init__(self, pad_id: int, regression: bool):
        self.pad_id, self.regression = pad_id, regression

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [e["input_ids"] for e in examples]
        batch = {
            "input_ids": pad_to_tensor(ids, self.pad_id),
            "attention_mask": pad_to_tensor([[1] * len(x) for x in ids], 0),
        }
        if "token_type_ids" in examples[0]:
            batch["token_type_ids"] = pad_to_tensor([e["token_type_ids"] for e in examples], 0)
        if "labels" in examples[0]:
            dtype = torch.float if self.regression else torch.long
            batch["labels"] = torch.tensor([e["labels"] for e in examples], dtype=dtype)
        return batch


# ----------------------------------------------------------------------------- metrics


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    """accuracy, F1 (of class 1 when binary, else macro), Matthews correlation."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    out = {"accuracy": float((predictions == labels).mean())}
    f1s = []
    for c in range(num_labels) if num_labels > 2 else [1]:
        tp = float(((predictions == c) & (labels == c)).sum())
        fp = float(((predictions == c) & (labels != c)).sum())
        fn = float(((predictions != c) & (labels == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    out["f1"] = float(np.mean(f1s))
    out["mcc"] = matthews_corrcoef(predictions, labels, num_labels)
    return out


def matthews_corrcoef(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    """The multi-class MCC (Gorodkin); for two classes the usual phi coefficient. 0 when undefined."""
    confusion = np.zeros((num_labels, num_labels))
    np.add.at(confusion, (labels, predictions), 1)
    t, p = confusion.sum(axis=1), confusion.sum(axis=0)
    c, s = np.trace(confusion), confusion.sum()
    denominator = np.sqrt((s**2 - (p**2).sum()) * (s**2 - (t**2).sum()))
    return float((c * s - (t * p).sum()) / denominator) if denominator else 0.0


def regression_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    def pearson(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a - a.mean(), b - b.mean()
        d = np.sqrt((a**2).sum() * (b**2).sum())
        return float((a * b).sum() / d) if d else 0.0

    def ranks(x: np.ndarray) -> np.ndarray:  # average ranks for ties, as Spearman needs
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):
            r[x == v] = r[x == v].mean()
        return r

    predictions, labels = np.asarray(predictions, float), np.asarray(labels, float)
    return {
        "pearson": pearson(predictions, labels),
        "spearman": pearson(ranks(predictions), ranks(labels)),
        "mse": float(((predictions - labels) ** 2).mean()),
    }
