"""A fine-tuning run: model + task data + the shared training loop, then predictions, metrics.json
and a Hugging Face export."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.config import to_dict
from pretrain.data import padding_id
from pretrain.errors import ConfigError, check_output_dir
from pretrain.tokenizer import load_tokenizer
from pretrain.tokenizer_identity import same_tokenizer, saved_tokenizer_dir
from pretrain.train import Task, make_accelerator, prepare_output_dir, train
from pretrain.train.checkpoints import load_pretrained, resolve_run_dir, save_model_dir

from . import classification as cls
from . import conlleval, qa
from . import multiple_choice as mc
from . import token_classification as tc
from .config import FinetuneConfig
from .squad_metric import squad_scores

log = logging.getLogger(__name__)


def find_tokenizer(init: str) -> Any:
    """The tokenizer saved with model.init: in the directory, its tokenizer/ or its latest checkpoint;
    a hub name otherwise."""
    path = Path(init).expanduser()
    for c in (path, path / "tokenizer", resolve_run_dir(path)):
        if (c / "tokenizer_config.json").exists() or (c / "tokenizer.json").exists():
            return load_tokenizer(str(c))
    if path.exists():
        raise FileNotFoundError(f"no tokenizer found with model.init={init}; pass model.tokenizer=<directory>")
    return load_tokenizer(init)


def set_dropout(model: torch.nn.Module, p: float) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = p


def logits_of(out: Any, batch: dict) -> list[np.ndarray]:
    """Per example: the classification logits (or the choice scores)."""
    return list(out.logits.float().cpu().numpy())


def predict(
    model: Any,
    accelerator: Any,
    features: list[dict[str, Any]],
    collate: Callable,
    batch_size: int,
    outputs: Callable[[Any, dict[str, torch.Tensor]], list[Any]],
) -> list[Any]:
    """One result per feature, in order. Each process takes every world-th batch; results are gathered."""
    results = []
    n_batches = (len(features) + batch_size - 1) // batch_size
    for k in range(accelerator.process_index, n_batches, accelerator.num_processes):
        chunk = features[k * batch_size : (k + 1) * batch_size]
        batch = {key: v.to(accelerator.device) for key, v in collate(chunk).items()}
        for target in ("labels", "start_positions", "end_positions"):  # prediction needs no loss
            batch.pop(target, None)
        results += list(enumerate(outputs(model(**batch), batch), start=k * batch_size))
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        results = gather_object(results)
    return [r for _, r in sorted(results, key=lambda x: x[0])]


class Evaluation:
    """A task's evaluation that remembers its last (metrics, predictions): the loop always evaluates
    after its final step, so the final report reuses that rather than evaluating twice."""

    def __init__(self, evaluate_all: Callable[[Any, Any], tuple[dict[str, float], Any]]):
        self.evaluate_all = evaluate_all
        self.last: tuple[dict[str, float], Any] | None = None

    def __call__(self, model: Any, accelerator: Any) -> dict[str, float]:
        self.last = self.evaluate_all(model, accelerator)
        return self.last[0]

    def final(self, model: Any, accelerator: Any) -> tuple[dict[str, float], Any]:
        if self.last is None:  # e.g. resumed at the last step: nothing was evaluated
            model.eval()
            with torch.no_grad():
                self.last = self.evaluate_all(model, accelerator)
        return self.last


class BestModel:
    """Keeps the model of the best evaluation so far in <output_dir>/best (our checkpoint format)."""

    def __init__(self, out: Path, metric: str, tokenizer: Any, is_main: bool):
        self.out, self.metric, self.tokenizer, self.is_main = out / "best", metric, tokenizer, is_main
        self.best: float | None = None
        self.step = 0

    def __call__(self, step: int, metrics: dict[str, float], model: Any) -> None:
        value = metrics.get(self.metric)
        if value is None or (self.best is not None and value <= self.best):
            return
        self.best, self.step = value, step
        if self.is_main:
            save_model_dir(model, self.out)
            self.tokenizer.save_pretrained(str(self.out))
            (self.out / "metrics.json").write_text(json.dumps({"step": step, **metrics}, indent=2))


def run_finetune(cfg: FinetuneConfig) -> dict[str, float]:
    """Fine-tune as configured; returns the final evaluation metrics (also in metrics.json)."""
    from accelerate.utils import set_seed

    cfg.validate()
    check_output_dir("train.output_dir", cfg.train.output_dir)
    prepare_output_dir(cfg.train)
    accelerator = make_accelerator(cfg.train, cfg.impl)
    out = Path(cfg.train.output_dir)
    tokenizer = load_tokenizer(cfg.model.tokenizer) if cfg.model.tokenizer else find_tokenizer(cfg.model.init)
    saved = saved_tokenizer_dir(cfg.model.init)
    if cfg.model.tokenizer and saved is not None and not same_tokenizer(tokenizer, load_tokenizer(str(saved))):
        raise ConfigError(
            f"model.tokenizer={cfg.model.tokenizer} is not the tokenizer model.init={cfg.model.init} was trained with "
            f"({saved}): their vocabularies differ in content; remove model.tokenizer to use the model's own"
        )
    builders = {
        "classification": _classification,
        "qa": _qa,
        "token_classification": _token_classification,
        "multiple_choice": _multiple_choice,
    }
    builder = builders[cfg.task]
    set_seed(cfg.seed)
    task, final_eval, metric = builder(cfg, tokenizer, accelerator)
    if len(tokenizer) > task.model.config.vocab_size:
        raise ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens but model.init's vocabulary is {task.model.config.vocab_size}; "
            "use the tokenizer the model was trained with (model.tokenizer=...)"
        )
    if cfg.data.max_length > task.model.config.max_positions:
        raise ConfigError(
            f"data.max_length={cfg.data.max_length} is longer than the model's position table "
            f"({task.model.config.max_positions}); lower data.max_length"
        )
    if cfg.model.dropout is not None:
        set_dropout(task.model, cfg.model.dropout)
    if cfg.eval_per_epoch:
        global_batch = cfg.train.batch_size * accelerator.num_processes * cfg.train.grad_accum_steps
        cfg.train.eval_every = max(1, len(task.train_data) // global_batch)
    best = BestModel(out, metric, tokenizer, accelerator.is_main_process)
    task.on_evaluate = best
    train(task, cfg.train, cfg.seed, run_config=to_dict(cfg), accelerator=accelerator, impl=cfg.impl)

    metrics, predictions = final_eval(accelerator.unwrap_model(task.model), accelerator)
    if accelerator.is_main_process:
        summary = {**metrics, "best_step": best.step, f"best_{metric}": best.best}
        (out / "metrics.json").write_text(json.dumps(summary, indent=2))
        name, content = predictions
        (out / name).write_text(content)
        log.info("final evaluation: %s", summary)
    accelerator.wait_for_everyone()
    return metrics


def _subset(items: list, n: int | None, seed: int | None) -> list:
    if n is None or n >= len(items):
        return items
    if seed is None:
        return items[:n]
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), n))]


def _holdout(items: list, fraction: float, seed: int, group: Callable[[Any], str] | None = None) -> tuple[list, list]:
    """Split one file in two: by group (SQuAD articles) so no context is in both, else by item."""
    keys = sorted({group(x) for x in items}) if group else list(range(len(items)))
    held = set(random.Random(seed).sample(keys, max(1, round(len(keys) * fraction))))
    if group:
        return [x for x in items if group(x) not in held], [x for x in items if group(x) in held]
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


# ----------------------------------------------------------------------------- classification


def _classification(cfg: FinetuneConfig, tokenizer: Any, accelerator: Any):
    d = cfg.data
    train_file, validation_file = cfg.files()
    train_rows = cls.load_split(d, train_file, d.train_split)
    cls.check_columns(train_rows, d, train_file or d.train_split)
    if d.exclude_ids_file:
        train_rows = cls.exclude_rows(train_rows, d.exclude_ids_file, d.id_columns)
    if validation_file or (not train_file and d.holdout_fraction == 0):
        val_rows = cls.load_split(d, validation_file, d.validation_split)
        cls.check_columns(val_rows, d, validation_file or d.validation_split)
    else:
        if d.holdout_fraction == 0:
            raise ConfigError("no validation data: give data.validation=<file> or data.holdout_fraction=0.1")
        train_rows, val_rows = _holdout(train_rows, d.holdout_fraction, cfg.seed)
    train_rows = _subset(train_rows, d.max_train_examples, cfg.seed)
    val_rows = _subset(val_rows, d.max_eval_examples, None)
    labels = cls.label_vocabulary(train_rows, d)
    num_labels = 1 if d.regression else len(labels)

    pad = padding_id(tokenizer)
    model = cls.load_classifier(cfg.model.init, num_labels, cfg.model.lm_loss_weight, labels, pad, d.symmetric)
    causal = model.config.causal
    aux_lm = causal and cfg.model.lm_loss_weight > 0  # the batches carry the auxiliary LM loss's targets
    features = []
    for split, rows in (("train", train_rows), ("validation", val_rows)):
        where = {"train": train_file, "validation": validation_file}[split] or f"the {split} split"
        targets = cls.encode_labels(rows, d, labels, where)
        if d.symmetric:  # GPT-paper similarity: each pair in both orders, (batch, 2, length)
            a, b = [str(r[d.text_column]) for r in rows], [str(r[d.text_pair_column]) for r in rows]
            ab, ba = (mc.encode_pairs(tokenizer, x, y, d.max_length, causal) for x, y in ((a, b), (b, a)))
            features.append([{"choices": [x, y], "labels": t} for x, y, t in zip(ab, ba, targets, strict=True)])
            continue
        enc = cls.encode_texts(tokenizer, rows, d, causal)
        features.append([{**{k: v[i] for k, v in enc.items()}, "labels": targets[i]} for i in range(len(rows))])
    train_features, val_features = features
    if d.symmetric:
        collate = mc.ChoicesCollator(pad, torch.float if d.regression else torch.long, aux_lm)
    else:
        collate = cls.ClassificationCollator(pad, d.regression, aux_lm)
    batch_size = cfg.train.batch_size

    def evaluate_all(m: Any, acc: Any) -> tuple[dict[str, float], np.ndarray]:
        logits = np.stack(predict(m, acc, val_features, collate, batch_size, logits_of))
        gold = np.array([f["labels"] for f in val_features])
        if d.regression:
            return cls.regression_metrics(logits[:, 0], gold), logits[:, 0]
        predictions = logits.argmax(-1)
        return cls.classification_metrics(predictions, gold, num_labels), predictions

    evaluation = Evaluation(evaluate_all)

    def final_eval(m: Any, acc: Any):
        metrics, predictions = evaluation.final(m, acc)
        lines = [
            json.dumps(
                {
                    "index": i,
                    "prediction": float(p) if d.regression else labels[int(p)],
                    "label": r[d.label_column],
                    "text": r[d.text_column],
                    **({"text_pair": r[d.text_pair_column]} if d.text_pair_column else {}),
                }
            )
            for i, (p, r) in enumerate(zip(predictions, val_rows, strict=True))
        ]
        return metrics, ("predictions.jsonl", "\n".join(lines) + "\n")

    task = Task(
        model=model,
        train_data=train_features,
        collate=collate,
        evaluate=evaluation,
        tokenizer=tokenizer,
    )
    return task, final_eval, "pearson" if d.regression else "accuracy"


# ----------------------------------------------------------------------------- span QA


def _qa(cfg: FinetuneConfig, tokenizer: Any, accelerator: Any):
    d = cfg.data
    train_file, validation_file = cfg.files()

    def load(path: str | None, split: str) -> list[qa.QAExample]:
        return qa.read_squad(path) if path else qa.squad_from_hub(d.hub_name, d.hub_config, split)

    train_examples = load(train_file, d.train_split)
    if validation_file or not train_file:
        val_examples = load(validation_file, d.validation_split)
    elif d.holdout_fraction > 0:
        train_examples, val_examples = _holdout(train_examples, d.holdout_fraction, cfg.seed, lambda x: x.title)
    else:
        raise ConfigError("no validation data: give data.validation=<file> or data.holdout_fraction=0.1")
    train_examples, skipped = qa.check_answers(train_examples, train_file or "the training split")
    if not d.version_2 and any(not ex.answers for ex in train_examples):
        raise ConfigError("the training data has unanswerable questions (SQuAD 2.0): set data.version_2=true")
    train_examples = _subset(train_examples, d.max_train_examples, cfg.seed)
    val_examples = _subset(val_examples, d.max_eval_examples, None)

    model = load_pretrained(cfg.model.init, head="qa")
    if model.config.causal:
        raise ConfigError("span QA is implemented for BERT-style (bidirectional) models; model.init is a GPT")
    train_features = qa.windows(tokenizer, train_examples, d, training=True)
    val_features = qa.windows(tokenizer, val_examples, d, training=False)
    collate = qa.QACollator(tokenizer.pad_token_id)
    golds = {ex.id: ex.answers for ex in val_examples}
    batch_size = cfg.train.batch_size

    def spans_of(out: Any, batch: dict) -> list[tuple[np.ndarray, np.ndarray]]:
        lengths = batch["attention_mask"].sum(-1).tolist()
        s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
        return [(s[i, :n], e[i, :n]) for i, n in enumerate(lengths)]

    def evaluate_all(m: Any, acc: Any) -> tuple[dict[str, float], dict[str, str]]:
        logits = predict(m, acc, val_features, collate, batch_size, spans_of)
        answers = qa.best_answers(val_examples, val_features, [x[0] for x in logits], [x[1] for x in logits], d)
        return squad_scores(answers, golds, "2.0" if d.version_2 else "1.1"), answers

    evaluation = Evaluation(evaluate_all)

    def final_eval(m: Any, acc: Any):
        metrics, answers = evaluation.final(m, acc)
        metrics = {**metrics, "skipped_training_examples": float(skipped)}
        return metrics, ("predictions.json", json.dumps(answers, indent=1, ensure_ascii=False))

    task = Task(
        model=model,
        train_data=train_features,
        collate=collate,
        evaluate=evaluation,
        tokenizer=tokenizer,
    )
    return task, final_eval, "f1"


# ----------------------------------------------------------------------------- token classification


def _token_classification(cfg: FinetuneConfig, tokenizer: Any, accelerator: Any):
    d = cfg.data
    train_file, validation_file = cfg.files()
    train_sentences, hub_names = tc.load_sentences(d, train_file, d.train_split)
    if validation_file or (not train_file and d.holdout_fraction == 0):
        val_sentences, _ = tc.load_sentences(d, validation_file, d.validation_split)
    else:
        if d.holdout_fraction == 0:
            raise ConfigError("no validation data: give data.validation=<file> or data.holdout_fraction=0.1")
        train_sentences, val_sentences = _holdout(train_sentences, d.holdout_fraction, cfg.seed)
    train_sentences = _subset(train_sentences, d.max_train_examples, cfg.seed)
    val_sentences = _subset(val_sentences, d.max_eval_examples, None)
    labels = tc.tag_vocabulary(train_sentences, d, hub_names, val_sentences)
    tc.check_tags(train_sentences, labels, train_file or d.train_split)
    tc.check_tags(val_sentences, labels, validation_file or d.validation_split)

    model = load_pretrained(cfg.model.init, head="token_classification", num_labels=len(labels))
    model.id2label = dict(enumerate(labels))
    causal = model.config.causal
    train_features = tc.windows(tokenizer, train_sentences, labels, d, causal)
    val_features = tc.windows(tokenizer, val_sentences, labels, d, causal)
    pad = padding_id(tokenizer)
    collate = tc.TokenCollator(pad)
    gold = [s.tags for s in val_sentences]
    batch_size = cfg.train.batch_size

    def argmax_of(out: Any, batch: dict) -> list[np.ndarray]:
        lengths = batch["attention_mask"].sum(-1).tolist()
        best = out.logits.argmax(-1).cpu().numpy()
        return [best[i, :n] for i, n in enumerate(lengths)]

    def evaluate_all(m: Any, acc: Any) -> tuple[dict[str, float], list[list[str]]]:
        best = predict(m, acc, val_features, collate, batch_size, argmax_of)
        predicted = tc.assemble(val_sentences, val_features, best, labels)
        return conlleval.evaluate(gold, predicted), predicted

    evaluation = Evaluation(evaluate_all)

    def final_eval(m: Any, acc: Any):
        metrics, predicted = evaluation.final(m, acc)
        return metrics, ("predictions.conll", tc.conll_text(val_sentences, predicted))

    task = Task(model=model, train_data=train_features, collate=collate, evaluate=evaluation, tokenizer=tokenizer)
    return task, final_eval, "f1"


# ----------------------------------------------------------------------------- multiple choice


def _multiple_choice(cfg: FinetuneConfig, tokenizer: Any, accelerator: Any):
    d = cfg.data
    mc.check_config(d)
    train_file, validation_file = cfg.files()
    train_examples = mc.load_examples(d, train_file, d.train_split)
    if validation_file or (not train_file and d.holdout_fraction == 0):
        val_examples = mc.load_examples(d, validation_file, d.validation_split)
    else:
        if d.holdout_fraction == 0:
            raise ConfigError("no validation data: give data.validation=<file> or data.holdout_fraction=0.1")
        train_examples, val_examples = _holdout(train_examples, d.holdout_fraction, cfg.seed)
    train_examples = _subset(train_examples, d.max_train_examples, cfg.seed)
    val_examples = _subset(val_examples, d.max_eval_examples, None)

    model = load_pretrained(cfg.model.init, head="multiple_choice", lm_loss_weight=cfg.model.lm_loss_weight)
    causal = model.config.causal
    train_features = mc.features(tokenizer, train_examples, d.max_length, causal)
    val_features = mc.features(tokenizer, val_examples, d.max_length, causal)
    pad = padding_id(tokenizer)
    collate = mc.ChoicesCollator(pad, lm_labels=causal and cfg.model.lm_loss_weight > 0)
    gold = np.array([ex.label for ex in val_examples])
    batch_size = cfg.train.batch_size

    def evaluate_all(m: Any, acc: Any) -> tuple[dict[str, float], np.ndarray]:
        scores = np.stack(predict(m, acc, val_features, collate, batch_size, logits_of))
        return mc.accuracy(scores, gold), scores

    evaluation = Evaluation(evaluate_all)

    def final_eval(m: Any, acc: Any):
        metrics, scores = evaluation.final(m, acc)
        lines = [
            json.dumps(
                {
                    "index": i,
                    "prediction": int(row.argmax()),
                    "label": ex.label,
                    "scores": [round(float(x), 6) for x in row],
                    "context": ex.context,
                    "choices": ex.choices,
                }
            )
            for i, (row, ex) in enumerate(zip(scores, val_examples, strict=True))
        ]
        return metrics, ("predictions.jsonl", "\n".join(lines) + "\n")

    task = Task(model=model, train_data=train_features, collate=collate, evaluate=evaluation, tokenizer=tokenizer)
    return task, final_eval, "accuracy"
