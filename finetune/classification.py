"""Sequence classification: single sentences (SST-2, CoLA) and pairs (MRPC, RTE), binary,
multi-class or regression. BERT reads the pooled [CLS]; GPT reads the last token."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.data import next_token_labels, padding_id
from pretrain.errors import ConfigError, DataError, not_a_file
from pretrain.train import Task

from . import multiple_choice as mc
from .common import (
    Built,
    Evaluation,
    capped,
    causal_inputs,
    check_aux_lm_loss,
    head_matches_labels,
    jsonl,
    logits_of,
    padded_inputs,
    predict,
    with_validation,
)
from .config import FinetuneConfig, FinetuneDataConfig
from .files import hub_split, read_rows, read_utf8

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- reading


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
        raise FileNotFoundError(f"data.exclude_ids_file {path}: {not_a_file(path)}; give a .tsv of ids")
    excluded = set()
    for number, line in enumerate(read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        ids = tuple(line.rstrip("\r\n").split("\t"))  # an empty last id keeps its field
        if len(ids) != len(id_columns):  # another separator (a comma) would silently match nothing
            raise DataError(
                f"{path}, line {number}: {len(ids)} tab-separated ids ({line.strip()!r:.60}), but data.id_columns "
                f"names {len(id_columns)} ({id_columns}); write one line per row, its ids separated by tabs"
            )
        excluded.add(ids)
    kept = [r for r in rows if tuple(str(r[c]).strip() for c in id_columns) not in excluded]
    if excluded and len(kept) == len(rows):
        log.warning("no training row has an id listed in %s: nothing was excluded; check data.id_columns", path)
    else:
        log.info("excluded %d training rows listed in %s", len(rows) - len(kept), path)
    return kept


def load_split(cfg: FinetuneDataConfig, path: str | None, split: str) -> list[dict[str, Any]]:
    if path is not None:
        return read_rows(path, cfg.columns)
    return list(hub_split(cfg.hub_name, cfg.hub_config, split))


def check_columns(rows: list[dict[str, Any]], cfg: FinetuneDataConfig, where: str) -> None:
    """Every row: the text column(s) hold non-empty text and the label column a label (a number for
    regression); the error names the file, the row and the fix."""
    if not rows:
        raise DataError(f"{where} has no examples")
    needed = [cfg.text_column, cfg.label_column] + ([cfg.text_pair_column] if cfg.text_pair_column else [])
    missing = [c for c in needed if c not in rows[0]]
    if missing:
        key = {cfg.text_column: "data.text_column", cfg.label_column: "data.label_column"}.get(
            missing[0], "data.text_pair_column"
        )
        raise ConfigError(f"{where} has no column {missing[0]!r} (columns: {list(rows[0])}); set {key}")
    texts = [cfg.text_column] + ([cfg.text_pair_column] if cfg.text_pair_column else [])
    labels = [label_name(r.get(cfg.label_column)) for r in rows[:1000]]
    numeric_after_first = len(labels) > 1 and all(map(_is_number, labels[1:]))
    if not (cfg.regression or cfg.label_names) and not _is_number(labels[0]) and numeric_after_first:
        raise DataError(  # a header whose names differ from data.columns would be an example of a class of its own
            f"{where}, row 1: the label {labels[0]!r} among numeric labels looks like a header line; remove it, or "
            "give data.columns its names (the header is then skipped)"
        )
    for number, row in enumerate(rows, start=1):
        at = f"{where}, row {number}"
        for column in needed:
            if column not in row:
                raise DataError(f"{at} has no {column!r} field; every row needs {needed}")
        for column in texts:
            value = row[column]
            if value is None or (isinstance(value, str) and not value.strip()):
                state = "null" if value is None else "empty"
                raise DataError(f"{at}: the text {column!r} is {state}; fix or drop the row")
            if not isinstance(value, str):
                raise DataError(f"{at}: the text {column!r} is {type(value).__name__} {value!r:.40}, not a string")
        label = row[cfg.label_column]
        if label is None or (isinstance(label, str) and not label.strip()):
            raise DataError(f"{at}: the label {cfg.label_column!r} is missing; fix or drop the row")
        if isinstance(label, float) and label != label and not cfg.regression:  # JSON NaN: not a class
            raise DataError(f"{at}: the label {cfg.label_column!r} is NaN; fix or drop the row")
        if isinstance(label, (list, dict)):
            raise DataError(f"{at}: the label {cfg.label_column!r} is a {type(label).__name__}, not one label")
        if cfg.regression:
            if isinstance(label, bool):  # float(True) would train on 1.0
                raise DataError(f"{at}: the regression target is {label!r}, not a number (data.regression)")
            try:
                value = float(label)
            except (TypeError, ValueError):
                raise DataError(f"{at}: the regression target {label!r} is not a number (data.regression)") from None
            if value != value or value in (float("inf"), float("-inf")):
                raise DataError(f"{at}: the regression target is {label!r}; it must be a finite number")


def label_name(value: Any) -> str:
    """A class label as its name: JSON 1 and 1.0 name one class, and whitespace around a TSV label is not
    part of it ('0 ' is '0')."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def label_vocabulary(train_rows: list[dict[str, Any]], cfg: FinetuneDataConfig) -> list[str]:
    if cfg.regression:
        return ["score"]
    if cfg.label_names:
        return [label_name(x) for x in cfg.label_names]
    values = {label_name(r[cfg.label_column]) for r in train_rows}
    numeric = all(v.lstrip("-").isdigit() for v in values)
    score = next((v for v in sorted(values) if _is_number(v) and not float(v).is_integer()), None)
    if score is not None and all(_is_number(v) for v in values):  # STS-B's 3.8: a class per distinct score
        raise ConfigError(
            f"data.label_column={cfg.label_column!r} holds numbers such as {score}, not class names; set "
            "data.regression=true for a numeric target, or list the classes in data.label_names"
        )
    return sorted(values, key=int) if numeric else sorted(values)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def encode_labels(rows: list[dict[str, Any]], cfg: FinetuneDataConfig, labels: list[str], where: str) -> list[Any]:
    if cfg.regression:
        return [float(r[cfg.label_column]) for r in rows]
    index = {name: i for i, name in enumerate(labels)}
    unseen = sorted({label_name(r[cfg.label_column]) for r in rows} - set(index))
    if unseen:
        source = "data.label_names does not list" if cfg.label_names else "the training data does not have"
        raise DataError(
            f"{where} has labels {unseen} that {source} (labels: {labels}); "
            "fix the data or list every label in data.label_names"
        )
    return [index[label_name(r[cfg.label_column])] for r in rows]


# ----------------------------------------------------------------------------- model


def load_classifier(
    init: str,
    num_labels: int,
    lm_loss_weight: float,
    labels: list[str],
    pad_token_id: int | None,
    symmetric: bool = False,
):
    """A sequence classifier from model.init. A classifier checkpoint with the same number of labels
    keeps its trained head, its rows in this run's label order (re-initialised, warned, where the
    checkpoint names other labels: common.head_matches_labels); one with another number (an MNLI
    model moved to RTE) gets a fresh head, logged; any other checkpoint gets a fresh head on its trunk.
    A GPT without a pad token gets the tokenizer's, so its export classifies batches
    (GPT2ForSequenceClassification needs one). `symmetric`: the GPT paper's similarity head (both
    orders of a pair, their features added)."""
    from pretrain.model import SequenceClassifier
    from pretrain.train.checkpoints import load_pretrained

    model = load_pretrained(init)
    if isinstance(model, SequenceClassifier):
        if model.num_labels == num_labels and (
            num_labels == 1 or head_matches_labels(model, model.classifier, labels, init)
        ):
            log.info("model.init=%s: keeping its trained classifier (%d labels)", init, num_labels)
            model.lm_loss_weight = lm_loss_weight
            model.symmetric = symmetric
            if model.config.causal and lm_loss_weight and not hasattr(model, "lm_head"):
                model = _reheaded(model, num_labels, lm_loss_weight, keep_classifier=True, symmetric=symmetric)
        else:
            if model.num_labels != num_labels:
                log.warning(
                    "model.init=%s has a classifier for %d labels; the data has %d: the classifier is re-initialised",
                    init,
                    model.num_labels,
                    num_labels,
                )
            model = _reheaded(model, num_labels, lm_loss_weight, keep_classifier=False, symmetric=symmetric)
    else:
        model = load_pretrained(
            init,
            head="classification",
            num_labels=num_labels,
            lm_loss_weight=lm_loss_weight,
            **({"symmetric": True} if symmetric else {}),
        )
    if model.config.causal and model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    model.id2label = dict(enumerate(labels))
    return model


def _reheaded(model: Any, num_labels: int, lm_loss_weight: float, keep_classifier: bool, symmetric: bool) -> Any:
    from pretrain.interop import build_model

    extra = {"symmetric": True} if symmetric else {}
    target = build_model(model.config, "classification", num_labels=num_labels, lm_loss_weight=lm_loss_weight, **extra)
    target.transformer.load_state_dict(model.transformer.state_dict())
    if keep_classifier:
        target.classifier.load_state_dict(model.classifier.state_dict())
    return target


# ----------------------------------------------------------------------------- features


def encode_texts(tokenizer: Any, rows: list[dict[str, Any]], cfg: FinetuneDataConfig, causal: bool) -> dict[str, list]:
    """BERT: [CLS] a [SEP] (b [SEP]). GPT: a (<eos> b), with the tokenizer's BOS if it adds one
    (common.causal_inputs); the classifier reads the last token."""
    texts = [str(r[cfg.text_column]) for r in rows]
    pairs = [str(r[cfg.text_pair_column]) for r in rows] if cfg.text_pair_column else None
    if not causal:
        enc = tokenizer(texts, pairs, truncation=True, max_length=cfg.max_length)
        return {k: enc[k] for k in ("input_ids", "token_type_ids") if k in enc}
    return {"input_ids": causal_inputs(tokenizer, texts, pairs, cfg.max_length)}


class ClassificationCollator:
    """Right-padded batches; `lm_labels=True` adds the targets of GPT's auxiliary LM loss."""

    def __init__(self, pad_id: int, regression: bool, lm_labels: bool = False):
        self.pad_id, self.regression, self.lm_labels = pad_id, regression, lm_labels

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = padded_inputs(examples, self.pad_id)
        if "labels" in examples[0]:
            dtype = torch.float if self.regression else torch.long
            batch["labels"] = torch.tensor([e["labels"] for e in examples], dtype=dtype)
            if self.lm_labels:
                batch["lm_labels"] = next_token_labels(batch["input_ids"], batch["attention_mask"])
        return batch


# ----------------------------------------------------------------------------- metrics


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    """accuracy, F1 (of class 1 when binary, else macro over the classes in the gold labels or the predictions,
    as scikit-learn's: a class absent from both would count as F1 0), Matthews correlation."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    out = {"accuracy": float((predictions == labels).mean())}
    f1s = []
    for c in np.union1d(predictions, labels) if num_labels > 2 else [1]:
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


# ----------------------------------------------------------------------------- the task


def build_task(cfg: FinetuneConfig, tokenizer: Any, accelerator: Any) -> Built:
    """Sequence classification (or regression) for the shared loop: the Task, the final evaluation
    (metrics and predictions.jsonl) and the metric that keeps the best model."""
    d = cfg.data
    train_rows, val_rows = _rows(cfg)
    labels = label_vocabulary(train_rows, d)
    if not d.regression and len(labels) < 2:
        raise DataError(
            f"{cfg.files()[0] or 'the train split'}: every training label is {labels[0]!r}; classification needs at "
            "least two classes: check data.label_column (or data.label_names), or set data.regression=true for a "
            "numeric target"
        )
    validation_where = cfg.files()[1] or "the validation split"
    encode_labels(val_rows, d, labels, validation_where)  # unseen labels: refused before the model and tokenising
    num_labels = 1 if d.regression else len(labels)
    pad = padding_id(tokenizer)
    model = load_classifier(cfg.model.init, num_labels, cfg.model.lm_loss_weight, labels, pad, d.symmetric)
    check_aux_lm_loss(cfg, model)
    causal = model.config.causal
    aux_lm = causal and cfg.model.lm_loss_weight > 0  # the batches carry the auxiliary LM loss's targets
    train_file, validation_file = cfg.files()
    train_features = _features(tokenizer, train_rows, d, labels, train_file or "the train split", causal)
    val_features = _features(tokenizer, val_rows, d, labels, validation_file or "the validation split", causal)
    if d.symmetric:
        collate = mc.ChoicesCollator(pad, torch.float if d.regression else torch.long, aux_lm)
    else:
        collate = ClassificationCollator(pad, d.regression, aux_lm)
    batch_size = cfg.train.batch_size

    def evaluate_all(m: Any, acc: Any) -> tuple[dict[str, float], np.ndarray]:
        logits = np.stack(predict(m, acc, val_features, collate, batch_size, logits_of))
        gold = np.array([f["labels"] for f in val_features])
        if d.regression:
            return regression_metrics(logits[:, 0], gold), logits[:, 0]
        predictions = logits.argmax(-1)
        return classification_metrics(predictions, gold, num_labels), predictions

    evaluation = Evaluation(evaluate_all)

    def final_eval(m: Any, acc: Any) -> tuple[dict[str, float], tuple[str, str]]:
        metrics, predictions = evaluation.final(m, acc)
        return metrics, ("predictions.jsonl", jsonl(_prediction_records(predictions, val_rows, d, labels)))

    task = Task(model=model, train_data=train_features, collate=collate, evaluate=evaluation, tokenizer=tokenizer)
    return task, final_eval, "pearson" if d.regression else "accuracy"


def _rows(cfg: FinetuneConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The training and validation rows, checked; rows listed in data.exclude_ids_file dropped from
    training; the held-out part and the caps applied."""
    d = cfg.data
    train_file, validation_file = cfg.files()

    def load(path: str | None, split: str) -> list[dict[str, Any]]:
        rows = load_split(d, path, split)
        check_columns(rows, d, path or split)
        return rows

    train_rows = load(train_file, d.train_split)
    if d.exclude_ids_file:
        train_rows = exclude_rows(train_rows, d.exclude_ids_file, d.id_columns)
        if not train_rows:
            raise DataError(f"data.exclude_ids_file={d.exclude_ids_file} lists every training row; none is left")
    train_rows, val_rows = with_validation(cfg, train_rows, lambda: load(validation_file, d.validation_split))
    return capped(cfg, train_rows, val_rows)


def _features(
    tokenizer: Any, rows: list[dict[str, Any]], cfg: FinetuneDataConfig, labels: list[str], where: str, causal: bool
) -> list[dict[str, Any]]:
    """Encoded rows with their targets. data.symmetric (GPT-paper similarity): each pair in both
    orders, batched as (batch, 2, length) by the multiple-choice collator."""
    targets = encode_labels(rows, cfg, labels, where)
    if cfg.symmetric:
        a, b = [str(r[cfg.text_column]) for r in rows], [str(r[cfg.text_pair_column]) for r in rows]
        ab, ba = (mc.encode_pairs(tokenizer, x, y, cfg.max_length, causal) for x, y in ((a, b), (b, a)))
        return [{"choices": [x, y], "labels": t} for x, y, t in zip(ab, ba, targets, strict=True)]
    enc = encode_texts(tokenizer, rows, cfg, causal)
    return [{**{k: v[i] for k, v in enc.items()}, "labels": targets[i]} for i in range(len(rows))]


def _prediction_records(
    predictions: np.ndarray, rows: list[dict[str, Any]], cfg: FinetuneDataConfig, labels: list[str]
) -> list[dict[str, Any]]:
    """predictions.jsonl: each validation row's prediction (a label name, or a score) beside its label and text."""
    return [
        {
            "index": i,
            "prediction": float(p) if cfg.regression else labels[int(p)],
            "label": r[cfg.label_column],
            "text": r[cfg.text_column],
            **({"text_pair": r[cfg.text_pair_column]} if cfg.text_pair_column else {}),
        }
        for i, (p, r) in enumerate(zip(predictions, rows, strict=True))
    ]
