"""Extractive span QA (SQuAD v1.1 / v2.0): windows over long contexts, offsets back to characters,
n-best span search across windows, and the no-answer score for v2."""

from __future__ import annotations

import json
import logging
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.errors import ConfigError, DataError
from pretrain.train import Task
from pretrain.train.checkpoints import load_pretrained

from .common import Built, Evaluation, capped, padded_inputs, predict, with_validation
from .config import FinetuneConfig, FinetuneDataConfig
from .files import hub_split, read_utf8
from .squad_metric import squad_scores

log = logging.getLogger(__name__)


@dataclass
class QAExample:
    id: str
    title: str
    question: str
    context: str
    answers: list[str]  # gold texts; empty: unanswerable
    answer_starts: list[int]


def read_squad(path: str) -> list[QAExample]:
    """The official SQuAD JSON layout: data -> paragraphs -> qas, every field checked; an error names
    the file and the path of the field (data[0].paragraphs[2].qas[1].id)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"SQuAD file {file} does not exist; check data.train / data.validation")
    layout = "{'data': [{'title': ..., 'paragraphs': [{'context': ..., 'qas': [{'id', 'question', 'answers'}]}]}]}"
    try:
        root = json.loads(read_utf8(file))  # a byte-order mark (files saved on Windows) is not JSON's
    except json.JSONDecodeError as e:
        raise DataError(f"{file} is not SQuAD JSON ({e.msg}, line {e.lineno}); it should look like {layout}") from None

    def field(node: Any, key: str, where: str, kind: type | tuple[type, ...]) -> Any:
        if not isinstance(node, dict) or key not in node:
            missing = f"{where}.{key}".lstrip(".")
            raise DataError(f"{file} is not SQuAD JSON: {missing} is missing; SQuAD files look like {layout}")
        value = node[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise DataError(f"{file}: {where}.{key} is {type(value).__name__} {value!r:.40}, expected {names}")
        return value

    examples = []
    articles = field(root, "data", "", list)
    for a, article in enumerate(articles):
        title = article.get("title", "") if isinstance(article, dict) else ""
        for p, paragraph in enumerate(field(article, "paragraphs", f"data[{a}]", list)):
            where = f"data[{a}].paragraphs[{p}]"
            context = field(paragraph, "context", where, str)
            if not context.strip():
                raise DataError(f"{file}: {where}.context is empty")
            for q, qa in enumerate(field(paragraph, "qas", where, list)):
                at = f"{where}.qas[{q}]"
                qid = str(field(qa, "id", at, (str, int)))
                question = field(qa, "question", at, str)
                if not question.strip():
                    raise DataError(f"{file}: {at}.question is empty")
                impossible = qa.get("is_impossible", False)
                if not isinstance(impossible, bool):  # "false" would count as true and drop the answers
                    raise DataError(f"{file}: {at}.is_impossible is {type(impossible).__name__} {impossible!r:.20}, "
                                    "expected true or false")  # fmt: skip
                answers = [] if impossible else field(qa, "answers", at, list)
                texts, starts = [], []
                for n, answer in enumerate(answers):
                    texts.append(field(answer, "text", f"{at}.answers[{n}]", str))
                    starts.append(field(answer, "answer_start", f"{at}.answers[{n}]", int))
                examples.append(QAExample(qid, str(title), question, context, texts, starts))
    if not examples:
        raise DataError(f"{file} holds no questions; SQuAD files look like {layout}")
    return examples


def squad_from_hub(name: str, config: str | None, split: str) -> list[QAExample]:
    return [
        QAExample(
            r["id"],
            r.get("title", ""),
            r["question"],
            r["context"],
            list(r["answers"]["text"]),
            list(r["answers"]["answer_start"]),
        )
        for r in hub_split(name, config, split)
    ]


def check_answers(examples: list[QAExample], where: str) -> tuple[list[QAExample], int]:
    """Keep training examples whose first answer_start points at its text; report the rest."""
    kept, bad = [], 0
    for ex in examples:
        if ex.answers:
            start, text = ex.answer_starts[0], ex.answers[0]
            if start < 0 or not text or ex.context[start : start + len(text)] != text:
                bad += 1
                continue
        kept.append(ex)
    answerable = sum(1 for ex in examples if ex.answers)
    if answerable and bad == answerable:
        raise DataError(
            f"{where}: none of the {answerable} answers can be located: no answer_start points at its answer's "
            "text in the context; answer_start must be the character offset of the answer in the context"
        )
    if bad:
        log.warning(
            "%s: skipped %d of %d examples whose answer_start does not match the answer text", where, bad, len(examples)
        )
    return kept, bad


def check_evaluation_set(examples: list[QAExample], where: str, version_2: bool) -> None:
    """Before training: the questions the evaluation scores. Its predictions and gold answers are keyed
    by question id, so an id may appear once; SQuAD 1.1 scoring has no unanswerable question."""
    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:
            raise DataError(f"{where}: the question id {ex.id!r} appears more than once; SQuAD ids must be unique")
        seen.add(ex.id)
        if not version_2 and not ex.answers:
            raise ConfigError(
                f"{where}: question {ex.id!r} has no answer (SQuAD 2.0 style); set data.version_2=true, "
                "or give every question an answer"
            )


def windows(tokenizer: Any, examples: list[QAExample], cfg: FinetuneDataConfig, training: bool) -> list[dict[str, Any]]:
    """Question + context windows of data.max_length, neighbours sharing data.doc_stride tokens.

    Training windows get start/end token positions (0, the [CLS] token, when the answer is not
    inside the window or there is none); evaluation windows keep each context token's character
    offsets (None elsewhere) to map spans back to text."""
    questions = [ex.question.lstrip() for ex in examples]
    questions = [tokenizer.convert_tokens_to_string(tokenizer.tokenize(q)[: cfg.max_query_length]) for q in questions]
    enc = tokenizer(
        questions,
        [ex.context for ex in examples],
        truncation="only_second",
        max_length=cfg.max_length,
        stride=cfg.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    features = []
    for i, example_index in enumerate(enc["overflow_to_sample_mapping"]):
        ex = examples[example_index]
        sequence_ids = enc.sequence_ids(i)
        offsets = [o if s == 1 else None for o, s in zip(enc["offset_mapping"][i], sequence_ids, strict=True)]
        feature = {"input_ids": enc["input_ids"][i]}
        if "token_type_ids" in enc:  # ModernBERT's and byte-level RoBERTa's tokenizers return none
            feature["token_type_ids"] = enc["token_type_ids"][i]
        if training:
            start = end = 0
            if ex.answers:
                start_char = ex.answer_starts[0]
                end_char = start_char + len(ex.answers[0])
                context = [k for k, o in enumerate(offsets) if o is not None]
                # a window with no context token (one of invisible characters only) cannot hold the answer
                if context and offsets[context[0]][0] <= start_char and offsets[context[-1]][1] >= end_char:
                    start = next(k for k in context if offsets[k][1] > start_char)
                    end = max(k for k in context if offsets[k][0] < end_char)
            feature["start_positions"], feature["end_positions"] = start, end
        else:
            feature["example_index"], feature["offsets"] = example_index, offsets
        features.append(feature)
    return features


class QACollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = padded_inputs(features, self.pad_id)
        if "start_positions" in features[0]:
            batch["start_positions"] = torch.tensor([f["start_positions"] for f in features])
            batch["end_positions"] = torch.tensor([f["end_positions"] for f in features])
        return batch


def best_answers(
    examples: list[QAExample],
    features: list[dict[str, Any]],
    start_logits: list[np.ndarray],
    end_logits: list[np.ndarray],
    cfg: FinetuneDataConfig,
) -> dict[str, str]:
    """For each example: the highest start + end score over the n-best candidates of all its windows,
    with end >= start, at most max_answer_length tokens, inside the context. For v2, "" when the
    no-answer score (start + end at [CLS], the lowest over windows) beats it by more than the threshold."""
    by_example: dict[int, list[int]] = {}
    for f, feature in enumerate(features):
        by_example.setdefault(feature["example_index"], []).append(f)
    predictions = {}
    for e, ex in enumerate(examples):
        best_score, best_text, null_score = -np.inf, "", np.inf
        for f in by_example.get(e, []):
            offsets, start, end = features[f]["offsets"], start_logits[f], end_logits[f]
            null_score = min(null_score, start[0] + end[0])
            top_starts = np.argsort(start)[::-1][: cfg.n_best]
            top_ends = np.argsort(end)[::-1][: cfg.n_best]
            for s in top_starts:
                if offsets[s] is None:
                    continue
                for t in top_ends:
                    if t < s or t - s + 1 > cfg.max_answer_length or offsets[t] is None:
                        continue
                    score = start[s] + end[t]
                    if score > best_score:
                        best_score, best_text = score, ex.context[offsets[s][0] : past_marks(ex.context, offsets[t][1])]
        if cfg.version_2 and null_score - best_score > cfg.null_score_threshold:
            best_text = ""
        predictions[ex.id] = best_text
    return predictions


def past_marks(text: str, end: int) -> int:
    """`end` moved past the combining marks that follow it: a tokenizer that strips accents gives a word of
    decomposed (NFD) text offsets that end before its last accent ('Re\u0301sume' for 'Re\u0301sume\u0301')."""
    while end < len(text) and unicodedata.combining(text[end]):
        end += 1
    return end


# ----------------------------------------------------------------------------- the task


def build_task(cfg: FinetuneConfig, tokenizer: Any, accelerator: Any) -> Built:
    """Span QA for the shared loop: the Task, the final evaluation (SQuAD metrics and
    predictions.json) and the metric that keeps the best model (f1)."""
    d = cfg.data
    train_file, validation_file = cfg.files()

    def load(path: str | None, split: str) -> list[QAExample]:
        return read_squad(path) if path else squad_from_hub(d.hub_name, d.hub_config, split)

    train_examples, val_examples = with_validation(
        cfg,
        load(train_file, d.train_split),
        lambda: load(validation_file, d.validation_split),
        group=lambda x: x.title or x.context,  # an article, or a context where titles are missing
        hub_holdout=False,
    )
    train_examples, skipped = check_answers(train_examples, train_file or "the training split")
    if not d.version_2 and any(not ex.answers for ex in train_examples):
        raise ConfigError("the training data has unanswerable questions (SQuAD 2.0): set data.version_2=true")
    train_examples, val_examples = capped(cfg, train_examples, val_examples)
    check_evaluation_set(val_examples, validation_file or "the validation split", d.version_2)

    model = load_pretrained(cfg.model.init, head="qa")
    if model.config.causal:
        raise ConfigError("span QA is implemented for BERT-style (bidirectional) models; model.init is a GPT")
    train_features = windows(tokenizer, train_examples, d, training=True)
    val_features = windows(tokenizer, val_examples, d, training=False)
    collate = QACollator(tokenizer.pad_token_id)
    golds = {ex.id: ex.answers for ex in val_examples}
    batch_size = cfg.train.batch_size

    def spans_of(out: Any, batch: dict) -> list[tuple[np.ndarray, np.ndarray]]:
        lengths = batch["attention_mask"].sum(-1).tolist()
        s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
        return [(s[i, :n], e[i, :n]) for i, n in enumerate(lengths)]

    def evaluate_all(m: Any, acc: Any) -> tuple[dict[str, float], dict[str, str]]:
        logits = predict(m, acc, val_features, collate, batch_size, spans_of)
        answers = best_answers(val_examples, val_features, [x[0] for x in logits], [x[1] for x in logits], d)
        return squad_scores(answers, golds, "2.0" if d.version_2 else "1.1"), answers

    evaluation = Evaluation(evaluate_all)

    def final_eval(m: Any, acc: Any) -> tuple[dict[str, float], tuple[str, str]]:
        metrics, answers = evaluation.final(m, acc)
        metrics = {**metrics, "skipped_training_examples": float(skipped)}
        return metrics, ("predictions.json", json.dumps(answers, indent=1, ensure_ascii=False))

    task = Task(model=model, train_data=train_features, collate=collate, evaluate=evaluation, tokenizer=tokenizer)
    return task, final_eval, "f1"
