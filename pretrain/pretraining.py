"""Pretraining: tokenizer + data + model + the shared loop, from one validated PretrainConfig."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_pretrained
from .config import ConfigError, PretrainConfig, to_dict
from .data import (
    IGNORE_INDEX,
    CausalCollator,
    MLMCollator,
    SeededExamples,
    build_pretraining_data,
    cache_root,
    example_seed,
    load_documents,
)
from .interop import build_model
from .tokenizer import check_family, load_tokenizer, train_tokenizer
from .trainer import Task, make_accelerator, prepare_output_dir, train

log = logging.getLogger(__name__)


def get_tokenizer(cfg: PretrainConfig, docs: Any, out: Path, is_main: bool, accelerator: Any) -> Any:
    """A resumed run reuses the tokenizer saved in its output directory; otherwise load the given one
    or train one on the corpus (main process first, the others then load it)."""
    saved = out / "tokenizer"
    if (saved / "tokenizer_config.json").exists() and cfg.train.resume is not None:
        return load_tokenizer(str(saved))
    if cfg.data.tokenizer:
        tokenizer = load_tokenizer(cfg.data.tokenizer)
    else:
        trained = trained_tokenizer_dir(cfg, docs)
        if is_main and not trained.exists():
            tmp = trained.with_name(trained.name + ".tmp")
            train_tokenizer(
                iter(docs["text"]), cfg.model.family, cfg.data.vocab_size, cfg.data.lowercase
            ).save_pretrained(str(tmp))
            tmp.rename(trained)
        accelerator.wait_for_everyone()
        tokenizer = load_tokenizer(str(trained))
    check_family(tokenizer, cfg.model.family)
    if is_main:
        tokenizer.save_pretrained(str(saved))
    return tokenizer


def trained_tokenizer_dir(cfg: PretrainConfig, docs: Any) -> Path:
    """Where the tokenizer trained for this corpus and these settings is cached. Trainers break
    frequency ties in hash order, so training twice can give two vocabularies: the cache makes runs
    on the same data share one (and skips the work)."""
    key = hashlib.sha256(
        json.dumps([docs._fingerprint, cfg.model.family, cfg.data.vocab_size, cfg.data.lowercase]).encode()
    ).hexdigest()[:24]
    return cache_root(cfg.data) / "tokenizers" / key


def build_pretraining_model(cfg: PretrainConfig, tokenizer: Any) -> torch.nn.Module:
    head = ("pretraining" if cfg.model.nsp else "mlm") if cfg.model.family == "bert" else "causal_lm"
    if cfg.model.init:
        model = load_pretrained(cfg.model.init, head=head)
        if model.config.vocab_size != len(tokenizer):
            raise ConfigError(
                f"model.init={cfg.model.init} has a vocabulary of {model.config.vocab_size} but the tokenizer has "
                f"{len(tokenizer)}; pass its own tokenizer as data.tokenizer"
            )
        return model
    return build_model(cfg.model.transformer_config(tokenizer), head)


def evaluate_pretraining(
    model: Any, accelerator: Any, dataset: Any, collate: Any, batch_size: int, max_batches: int | None, seed: int
) -> dict[str, float]:
    """MLM loss and accuracy, NSP accuracy (BERT); LM loss and perplexity (GPT), over the first
    max_batches global batches. Each process takes every world-th example; sums are reduced before
    dividing, so the figures do not depend on the number of processes."""
    world, rank = accelerator.num_processes, accelerator.process_index
    n_examples = len(dataset) if not max_batches else min(len(dataset), max_batches * batch_size * world)
    mine = list(range(rank, n_examples, world))
    names = ["mlm_loss", "mlm_correct", "mlm_count", "nsp_loss", "nsp_correct", "nsp_count", "lm_loss", "lm_count"]
    sums = dict.fromkeys(names, 0.0)
    examples = SeededExamples(dataset)
    for k in range(0, len(mine), batch_size):
        batch = collate([examples[(i, example_seed(seed, 10**6, i))] for i in mine[k : k + batch_size]])  # fixed masks
        batch = {key: v.to(accelerator.device) for key, v in batch.items()}
        out = model(**batch)
        if "mlm" in out.loss_terms:
            labels = batch["labels"][batch["labels"] != IGNORE_INDEX]
            sums["mlm_loss"] += out.loss_terms["mlm"][0].item()
            sums["mlm_count"] += labels.numel()
            sums["mlm_correct"] += (out.prediction_logits.argmax(-1) == labels).sum().item()
        if "nsp" in out.loss_terms:
            sums["nsp_loss"] += out.loss_terms["nsp"][0].item()
            sums["nsp_count"] += batch["next_sentence_label"].numel()
            sums["nsp_correct"] += (out.seq_relationship_logits.argmax(-1) == batch["next_sentence_label"]).sum().item()
        if "lm" in out.loss_terms:
            sums["lm_loss"] += out.loss_terms["lm"][0].item()
            sums["lm_count"] += out.loss_terms["lm"][1].item()
    totals = torch.tensor([sums[n] for n in names], dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    s = dict(zip(names, totals.tolist(), strict=True))
    result = {}
    if s["mlm_count"]:
        result.update(mlm_loss=s["mlm_loss"] / s["mlm_count"], mlm_accuracy=s["mlm_correct"] / s["mlm_count"])
    if s["nsp_count"]:
        result.update(nsp_loss=s["nsp_loss"] / s["nsp_count"], nsp_accuracy=s["nsp_correct"] / s["nsp_count"])
    if s["lm_count"]:
        result.update(lm_loss=s["lm_loss"] / s["lm_count"])
        result["perplexity"] = float(torch.tensor(result["lm_loss"]).exp())
    return result


def run_pretraining(cfg: PretrainConfig) -> dict[str, float]:
    """Pretrain as configured; returns the final evaluation metrics."""
    from accelerate.utils import set_seed

    cfg.validate()
    accelerator = make_accelerator(cfg.train)
    out = Path(cfg.train.output_dir)
    prepare_output_dir(cfg.train)  # fail before any work if the directory holds another run
    with accelerator.main_process_first():  # once: files are checked, read and cached (as Arrow) here
        docs = load_documents(cfg.data)
    tokenizer = get_tokenizer(cfg, docs, out, accelerator.is_main_process, accelerator)
    family = cfg.model.family
    with accelerator.main_process_first():  # one process builds the cache, the others read it
        data = build_pretraining_data(cfg.data, tokenizer, family, cfg.seed, docs)
    set_seed(cfg.seed)
    model = build_pretraining_model(cfg, tokenizer)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        log.info(
            "%s: %.2fM parameters, %d training / %d evaluation examples, unigram baseline %.3f nats/token",
            cfg.model.name,
            model.num_parameters() / 1e6,
            len(data.train),
            len(data.validation),
            data.unigram_entropy,
        )
    if family == "bert":
        collate = MLMCollator(tokenizer, cfg.data.mlm_probability, cfg.data.whole_word_mask)
    else:
        collate = CausalCollator(tokenizer)

    def evaluate(m: Any, acc: Any) -> dict[str, float]:
        metrics = evaluate_pretraining(
            m, acc, data.validation, collate, cfg.train.batch_size, cfg.train.eval_batches, cfg.seed
        )
        metrics["unigram_baseline"] = data.unigram_entropy
        return metrics

    task = Task(model=model, train_data=data.train, collate=collate, evaluate=evaluate, tokenizer=tokenizer)
    return train(task, cfg.train, cfg.seed, run_config=to_dict(cfg), accelerator=accelerator)
