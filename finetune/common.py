"""What every fine-tuning task shares: the tokenizer next to model.init, dropout, the validation split
and caps, batched prediction across processes, the evaluation that remembers its last result, and the
Task the shared loop trains. The task modules import this; run.py imports them."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from pretrain.data import pad_to_tensor, padding_mask
from pretrain.errors import ConfigError, DataError
from pretrain.tokenizer import load_tokenizer, special_affixes
from pretrain.train import Task
from pretrain.train.checkpoints import resolve_run_dir

from .config import FinetuneConfig

# A task builder's result: the Task for the loop, the final evaluation ((model, accelerator) ->
# (metrics, (predictions file name, its content))) and the metric that picks the best model.
FinalEval = Callable[[Any, Any], tuple[dict[str, float], tuple[str, str]]]
Built = tuple[Task, FinalEval, str]

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


def causal_inputs(tokenizer: Any, first: list[str], second: list[str] | None, max_length: int) -> list[list[int]]:
    """A causal model's input ids: each text, or each pair as `a <eos> b`, between the special tokens the
    tokenizer puts around one text (BOS for a Llama-style tokenizer, as Hugging Face fine-tuning keeps it; none
    for GPT-2's). save_hf writes this pair form and left truncation into the export's tokenizer, so
    tok(a, b, truncation=True, max_length=...) there gives these ids. Too long, texts lose their start (the
    classifier reads the last token); a pair is cut as `tokenizers` cuts "longest_first", both texts and the
    <eos> kept."""
    prefix, suffix = special_affixes(tokenizer)
    room = max(max_length - len(prefix) - len(suffix) - (second is not None), 1)
    texts = tokenizer(first, add_special_tokens=False)["input_ids"]
    if second is None:
        return [prefix + a[-room:] + suffix for a in texts]
    tails = tokenizer(second, add_special_tokens=False)["input_ids"]
    pairs = []
    for a, b in zip(texts, tails, strict=True):
        keep_a, keep_b = longest_first(len(a), len(b), room)
        pairs.append(prefix + a[len(a) - keep_a :] + [tokenizer.eos_token_id] + b[len(b) - keep_b :] + suffix)
    return pairs


def longest_first(n1: int, n2: int, room: int) -> tuple[int, int]:
    """How many tokens of each text a pair keeps in `room` (the `tokenizers` library's "longest_first"): the
    shorter text whole if the longer still gets as much, else half the room each (the odd one to the second)."""
    if n1 + n2 <= room:
        return n1, n2
    short, long = min(n1, n2), max(n1, n2)
    long = short if short > room else max(short, room - short)
    if short + long > room:
        short, long = room // 2, room // 2 + room % 2
    return (long, short) if n1 > n2 else (short, long)


def head_matches_labels(model: Any, head: nn.Linear, labels: list[str], init: str) -> bool:
    """Whether a classification head trained elsewhere (model.init) can serve this run's labels, made
    to agree with their order. The checkpoint's label names (`id2label`) in another order: the head's
    rows are permuted to this run's order. Labels "0".."n-1" of this data are read as the checkpoint's
    indices; Hugging Face's placeholder names (LABEL_0, ...) or none say nothing: kept as they are.
    Other names: False, and the caller re-initialises the head (warned): its scores mean other classes."""
    old = [str(name) for _, name in sorted((getattr(model, "id2label", None) or {}).items())]
    placeholder = all(name == f"LABEL_{i}" for i, name in enumerate(old))
    if not old or old == labels or placeholder or labels == [str(i) for i in range(len(labels))]:
        return True
    if sorted(old) != sorted(labels):
        log.warning(
            "model.init=%s was trained for the labels %s, this data has %s: its classifier is re-initialised "
            "(if they are the same classes, name them as the checkpoint does)",
            init,
            old,
            labels,
        )
        return False
    order = [old.index(name) for name in labels]
    with torch.no_grad():
        head.weight.copy_(head.weight[order])
        if head.bias is not None:
            head.bias.copy_(head.bias[order])
    log.info("model.init=%s: its classifier's labels %s reordered to this run's %s", init, old, labels)
    return True


def check_aux_lm_loss(cfg: FinetuneConfig, model: Any) -> None:
    """model.lm_loss_weight is GPT's auxiliary objective: a bidirectional model would ignore it."""
    if cfg.model.lm_loss_weight and not model.config.causal:
        raise ConfigError(
            f"model.lm_loss_weight={cfg.model.lm_loss_weight}: the auxiliary LM loss is for causal (GPT-style) "
            f"models, and model.init={cfg.model.init} is bidirectional; remove it"
        )


def set_dropout(model: torch.nn.Module, p: float) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = p


# ----------------------------------------------------------------------------- examples


def subset(items: list, n: int | None, seed: int | None) -> list:
    """At most n items: the first n without a seed, else n drawn at random (kept in file order)."""
    if n is None or n >= len(items):
        return items
    if seed is None:
        return items[:n]
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), n))]


def holdout(items: list, fraction: float, seed: int, group: Callable[[Any], str] | None = None) -> tuple[list, list]:
    """Split one file in two: by group (SQuAD articles) so no context is in both, else by item."""
    keys = sorted({group(x) for x in items}) if group else list(range(len(items)))
    n_held = max(1, round(len(keys) * fraction))
    if n_held >= len(keys):
        what = "group(s) (SQuAD articles)" if group else "example(s)"
        raise DataError(
            f"data.holdout_fraction={fraction}: the training data has {len(keys)} {what}; holding out {n_held} for "
            "validation leaves none to train on; give data.validation=<file> or more training data"
        )
    held = set(random.Random(seed).sample(keys, n_held))
    if group:
        return [x for x in items if group(x) not in held], [x for x in items if group(x) in held]
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def with_validation(
    cfg: FinetuneConfig,
    train: list,
    load_validation: Callable[[], list],
    group: Callable[[Any], str] | None = None,
    hub_holdout: bool = True,
) -> tuple[list, list]:
    """(train, validation): data.validation (or, with no files, the hub's validation split), else
    data.holdout_fraction of the training data. `hub_holdout=False`: a hub dataset always gives its
    validation split (SQuAD), whatever data.holdout_fraction says."""
    d = cfg.data
    train_file, validation_file = cfg.files()
    if validation_file or (not train_file and (d.holdout_fraction == 0 or not hub_holdout)):
        return train, load_validation()
    if d.holdout_fraction == 0:
        raise ConfigError("no validation data: give data.validation=<file> or data.holdout_fraction=0.1")
    return holdout(train, d.holdout_fraction, cfg.seed, group)


def capped(cfg: FinetuneConfig, train: list, validation: list) -> tuple[list, list]:
    """data.max_train_examples drawn with the run's seed, the first data.max_eval_examples."""
    return subset(train, cfg.data.max_train_examples, cfg.seed), subset(validation, cfg.data.max_eval_examples, None)


# ----------------------------------------------------------------------------- prediction


def padded_inputs(examples: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """A collator's model inputs: input_ids padded on the right with pad_id, their attention_mask, and
    token_type_ids (padded with 0) when the examples have them."""
    ids = [e["input_ids"] for e in examples]
    batch = {"input_ids": pad_to_tensor(ids, pad_id), "attention_mask": padding_mask(ids)}
    if "token_type_ids" in examples[0]:
        batch["token_type_ids"] = pad_to_tensor([e["token_type_ids"] for e in examples], 0)
    return batch


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


def jsonl(records: Iterable[dict[str, Any]]) -> str:
    """A predictions.jsonl file's content: one JSON object a line."""
    return "\n".join(json.dumps(r) for r in records) + "\n"
