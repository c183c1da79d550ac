"""Multiple choice (SWAG, HellaSwag, PIQA, your own JSON lines): a context with N choices; each
`context + choice` is scored to one number, a softmax across the choices, cross-entropy on the right
one. BERT reads `[CLS] context [SEP] choice [SEP]` at [CLS]; GPT reads `context <eos> choice` at its
last token. The same (batch, choices, length) layout carries GPT-paper similarity: a pair in both orders."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pretrain.data import next_token_labels, padding_id
from pretrain.errors import ConfigError, DataError
from pretrain.train import Task
from pretrain.train.checkpoints import load_pretrained

from .common import (
    Built,
    Evaluation,
    capped,
    causal_inputs,
    check_aux_lm_loss,
    jsonl,
    logits_of,
    padded_inputs,
    predict,
    with_validation,
)
from .config import FinetuneConfig, FinetuneDataConfig
from .files import hub_split, read_rows

log = logging.getLogger(__name__)


@dataclass
class ChoiceExample:
    context: str
    choices: list[str]  # each with the question (data.question_column) in front, when there is one
    label: int


def _label_index(value: Any, choices: list[str]) -> int | None:
    """A label is a choice's index (an int or a numeric string: HellaSwag stores "0".."3") or its text
    (matched against the choices as the file gives them, before any question is put in front)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        index = int(value)
        return index if 0 <= index < len(choices) else None
    return choices.index(value) if isinstance(value, str) and value in choices else None


def _ambiguous(value: Any, choices: list[str]) -> bool:
    """A numeric string label that is also the text of another choice than the one its index names."""
    return isinstance(value, str) and value in choices and _label_index(value, choices) != choices.index(value)


def examples_from_rows(rows: list[dict[str, Any]], cfg: FinetuneDataConfig, where: str) -> list[ChoiceExample]:
    if not rows:
        raise DataError(f"{where} has no examples")
    examples: list[ChoiceExample] = []
    ambiguous: list[int] = []
    for number, row in enumerate(rows, start=1):
        needed = [cfg.context_column, cfg.label_column] + (cfg.choice_columns or [cfg.choices_column or "choices"])
        needed += [cfg.question_column] if cfg.question_column else []
        missing = [c for c in needed if c not in row]
        if missing:
            raise DataError(
                f"{where}, row {number}: no column {missing[0]!r} (columns: {sorted(row)}); set data.context_column, "
                "data.question_column, data.choices_column / data.choice_columns or data.label_column"
            )
        if cfg.choice_columns:
            raw_choices = [row[c] for c in cfg.choice_columns]
        else:
            raw_choices = row[cfg.choices_column]
            if not isinstance(raw_choices, (list, tuple)):
                raise DataError(f"{where}, row {number}: {cfg.choices_column!r} is not a list of choices")
        texts = {"the context": row[cfg.context_column], **{f"choice {i}": c for i, c in enumerate(raw_choices)}}
        if cfg.question_column and row[cfg.question_column] is None:  # empty is allowed (HellaSwag's ctx_b)
            texts["the question"] = None
        for what, text in texts.items():  # null would become the text "None" (empty text is scored as it is)
            if text is None:
                raise DataError(f"{where}, row {number}: {what} is null; fix or drop the row")
        for i, choice in enumerate(raw_choices):
            if not isinstance(choice, (str, int, float)) or isinstance(choice, bool):
                raise DataError(
                    f"{where}, row {number}: choice {i} is {type(choice).__name__} {choice!r:.40}, not text"
                )
        choices = raw = [str(c) for c in raw_choices]
        if cfg.question_column:
            question = str(row[cfg.question_column])
            choices = [f"{question} {c}".strip() for c in choices]
        if examples and len(choices) != len(examples[0].choices):
            raise DataError(
                f"{where}, row {number}: {len(choices)} choices where row 1 has {len(examples[0].choices)}; "
                "every example needs the same number of choices"
            )
        if len(choices) < 2:
            raise DataError(f"{where}, row {number}: {len(choices)} choice(s); multiple choice needs at least 2")
        label = _label_index(row[cfg.label_column], raw)
        if _ambiguous(row[cfg.label_column], raw):
            ambiguous.append(number)
        if label is None:
            raise DataError(
                f"{where}, row {number}: label {row[cfg.label_column]!r} is outside the choices "
                f"(an index 0..{len(choices) - 1} or one of the choices' texts)"
            )
        examples.append(ChoiceExample(str(row[cfg.context_column]), choices, label))
    if ambiguous:  # HellaSwag's convention: a numeric string is the index
        log.warning(
            "%s: %d row(s) (the first: row %d) have a label that is a choice's index and also another choice's "
            "text; read as the index",
            where,
            len(ambiguous),
            ambiguous[0],
        )
    return examples


def load_examples(cfg: FinetuneDataConfig, path: str | None, split: str) -> list[ChoiceExample]:
    if path is not None:
        return examples_from_rows(read_rows(path), cfg, path)
    return examples_from_rows(list(hub_split(cfg.hub_name, cfg.hub_config, split)), cfg, split)


def check_config(cfg: FinetuneDataConfig) -> None:
    if not cfg.choice_columns and not cfg.choices_column:
        raise ConfigError("multiple_choice needs data.choices_column (a list column) or data.choice_columns")


# ----------------------------------------------------------------------------- features


def encode_pairs(tokenizer: Any, first: list[str], second: list[str], max_length: int, causal: bool) -> list[dict]:
    """BERT: [CLS] a [SEP] b [SEP]. GPT: a <eos> b, with the tokenizer's BOS if it adds one, keeping the end
    (the token the head reads): common.causal_inputs."""
    if not causal:
        enc = tokenizer(first, second, truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
        return [{k: enc[k][i] for k in keys} for i in range(len(first))]
    return [{"input_ids": ids} for ids in causal_inputs(tokenizer, first, second, max_length)]


def features(tokenizer: Any, examples: list[ChoiceExample], max_length: int, causal: bool) -> list[dict[str, Any]]:
    n = len(examples[0].choices)
    contexts = [ex.context for ex in examples for _ in range(n)]
    choices = [c for ex in examples for c in ex.choices]
    encoded = encode_pairs(tokenizer, contexts, choices, max_length, causal)
    return [{"choices": encoded[i * n : (i + 1) * n], "labels": ex.label} for i, ex in enumerate(examples)]


class ChoicesCollator:
    """Examples of N encoded sequences each -> (batch, N, length) tensors, padded on the right;
    `lm_labels=True` adds the targets of GPT's auxiliary LM loss."""

    def __init__(self, pad_id: int, label_dtype: torch.dtype = torch.long, lm_labels: bool = False):
        self.pad_id, self.label_dtype, self.lm_labels = pad_id, label_dtype, lm_labels

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n = len(examples[0]["choices"])
        flat = [c for e in examples for c in e["choices"]]
        batch = {k: v.view(len(examples), n, -1) for k, v in padded_inputs(flat, self.pad_id).items()}
        if "labels" in examples[0]:
            batch["labels"] = torch.tensor([e["labels"] for e in examples], dtype=self.label_dtype)
            if self.lm_labels:
                batch["lm_labels"] = next_token_labels(batch["input_ids"], batch["attention_mask"])
        return batch


def accuracy(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"accuracy": float((scores.argmax(-1) == labels).mean())}


# ----------------------------------------------------------------------------- the task


def build_task(cfg: FinetuneConfig, tokenizer: Any, accelerator: Any) -> Built:
    """Multiple choice for the shared loop: the Task, the final evaluation (accuracy and
    predictions.jsonl with every choice's score) and the metric that keeps the best model."""
    d = cfg.data
    check_config(d)
    train_file, validation_file = cfg.files()
    train_examples, val_examples = with_validation(
        cfg, load_examples(d, train_file, d.train_split), lambda: load_examples(d, validation_file, d.validation_split)
    )
    train_examples, val_examples = capped(cfg, train_examples, val_examples)

    model = load_pretrained(cfg.model.init, head="multiple_choice", lm_loss_weight=cfg.model.lm_loss_weight)
    check_aux_lm_loss(cfg, model)
    causal = model.config.causal
    train_features = features(tokenizer, train_examples, d.max_length, causal)
    val_features = features(tokenizer, val_examples, d.max_length, causal)
    collate = ChoicesCollator(padding_id(tokenizer), lm_labels=causal and cfg.model.lm_loss_weight > 0)
    gold = np.array([ex.label for ex in val_examples])
    batch_size = cfg.train.batch_size

    def evaluate_all(m: Any, acc: Any) -> tuple[dict[str, float], np.ndarray]:
        scores = np.stack(predict(m, acc, val_features, collate, batch_size, logits_of))
        return accuracy(scores, gold), scores

    evaluation = Evaluation(evaluate_all)

    def final_eval(m: Any, acc: Any) -> tuple[dict[str, float], tuple[str, str]]:
        metrics, scores = evaluation.final(m, acc)
        records = (
            {
                "index": i,
                "prediction": int(row.argmax()),
                "label": ex.label,
                "scores": [round(float(x), 6) for x in row],
                "context": ex.context,
                "choices": ex.choices,
            }
            for i, (row, ex) in enumerate(zip(scores, val_examples, strict=True))
        )
        return metrics, ("predictions.jsonl", jsonl(records))

    task = Task(model=model, train_data=train_features, collate=collate, evaluate=evaluation, tokenizer=tokenizer)
    return task, final_eval, "accuracy"
