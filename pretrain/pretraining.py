"""Pretraining: tokenizer + data + model + the shared loop, from one validated PretrainConfig."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from .config import PretrainConfig, check_positions, estimate_run_bytes, to_dict
from .data import (
    IGNORE_INDEX,
    CausalCollator,
    MLMCollator,
    SeededExamples,
    build_pretraining_data,
    example_seed,
    trained_tokenizer,
)
from .data.sampling import corpus_digest
from .errors import ConfigError, check_output_dir
from .interop import build_model, check_exportable
from .tokenizer import check_family, load_tokenizer
from .tokenizer_identity import same_tokenizer, saved_tokenizer_dir
from .train import Task, load_pretrained, make_accelerator, prepare_output_dir, train
from .train.metrics import check_wandb
from .train.resume import check_resumable_model

log = logging.getLogger(__name__)


def get_tokenizer(cfg: PretrainConfig, out: Path, is_main: bool, accelerator: Any, resume_from: Path | None) -> Any:
    """A resumed run keeps the tokenizer of the checkpoint it resumes (another run's too, with
    train.resume=<its checkpoint>); otherwise load the given one or train one on a sample of the corpus (main
    process first, the others then load it). A tokenizer/ left by a run that never wrote a checkpoint is
    replaced: the data settings may have changed since."""
    saved = out / "tokenizer"
    if resume_from is not None:
        own = resume_from if (resume_from / "tokenizer_config.json").exists() else saved  # older checkpoints: none
        tokenizer = load_tokenizer(str(own))
        if cfg.data.tokenizer and not same_tokenizer(load_tokenizer(cfg.data.tokenizer), tokenizer):
            raise ConfigError(
                f"data.tokenizer={cfg.data.tokenizer} is not the tokenizer of the run being resumed ({own}); a "
                "resumed run keeps its own: remove data.tokenizer, or start a new run in another train.output_dir"
            )
        if is_main and own != saved:
            tokenizer.save_pretrained(str(saved))
        return tokenizer
    if cfg.data.tokenizer:
        tokenizer = load_tokenizer(cfg.data.tokenizer)
    else:
        with accelerator.main_process_first():
            tokenizer = trained_tokenizer(cfg.data, cfg.model.style)
    check_family(tokenizer, cfg.model.style)
    if is_main:
        tokenizer.save_pretrained(str(saved))
    return tokenizer


def build_pretraining_model(cfg: PretrainConfig, tokenizer: Any) -> torch.nn.Module:
    head = ("pretraining" if cfg.model.nsp else "mlm") if cfg.model.style == "bert" else "causal_lm"
    if cfg.model.init:
        model = load_pretrained(cfg.model.init, head=head)
        if model.config.vocab_size != len(tokenizer):
            raise ConfigError(
                f"model.init={cfg.model.init} has a vocabulary of {model.config.vocab_size} but the tokenizer has "
                f"{len(tokenizer)}; pass its own tokenizer as data.tokenizer"
            )
        adopt_init_structure(cfg, model.config)
        return model
    return build_model(cfg.model.transformer_config(tokenizer), head)


def adopt_init_structure(cfg: PretrainConfig, loaded: Any) -> None:
    """A model.init model keeps its own structure: the model.* values that differ are named (warned), and
    replaced in cfg by the model's, so the run's config.json records the model that is trained."""
    derived = {"vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "causal"}
    differing = [
        (f.name, getattr(cfg.model, f.name), getattr(loaded, f.name))
        for f in dataclasses.fields(loaded)
        if f.name not in derived and getattr(cfg.model, f.name) != getattr(loaded, f.name)
    ]
    if differing:
        log.warning(
            "model.init=%s keeps its own structure; these model.* settings are not used: %s",
            cfg.model.init,
            ", ".join(f"{name}={ours!r} (the model's: {theirs!r})" for name, ours, theirs in differing),
        )
    for name, _, theirs in differing:
        setattr(cfg.model, name, theirs)


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


def check_run_inputs(cfg: PretrainConfig) -> None:
    """Early checks that touch the disk: the output directory is writable and has room, and a
    model.init gets its own tokenizer (data.tokenizer unset: the one saved with it; set: it must
    be the same tokenizer by content, not only by size)."""
    vocab = cfg.model.vocab_size or cfg.data.vocab_size
    check_output_dir("train.output_dir", cfg.train.output_dir, estimate_run_bytes(cfg.model, vocab, cfg.train))
    for data_dir in (Path(p).expanduser().resolve() for p in cfg.data.paths if Path(p).expanduser().is_dir()):
        for key, where in (("train.output_dir", cfg.train.output_dir), ("data.cache_dir", cfg.data.cache_dir)):
            if where and Path(where).expanduser().resolve().is_relative_to(data_dir):  # it would read its own files
                raise ConfigError(
                    f"{key}={where} lies inside the data directory {data_dir} (data.paths), whose every file is "
                    f"read as corpus; put {key} outside it"
                )
    resuming = cfg.train.resume not in (None, "auto") or (
        cfg.train.resume == "auto" and (Path(cfg.train.output_dir) / "checkpoints").is_dir()
    )
    if not cfg.model.init or resuming:
        return
    saved = saved_tokenizer_dir(cfg.model.init)
    if saved is None:
        if cfg.data.tokenizer is None and Path(cfg.model.init).expanduser().exists():
            raise ConfigError(
                f"model.init={cfg.model.init} has no tokenizer saved with it, and training a new one would "
                "scramble its vocabulary; pass the tokenizer it was trained with as data.tokenizer=<directory>"
            )
        return
    if cfg.data.tokenizer is None:
        log.info("model.init=%s: using the tokenizer saved with it (%s)", cfg.model.init, saved)
        cfg.data.tokenizer = str(saved)
        return
    given = load_tokenizer(cfg.data.tokenizer)
    if not same_tokenizer(given, load_tokenizer(str(saved))):
        raise ConfigError(
            f"data.tokenizer={cfg.data.tokenizer} is not the tokenizer model.init={cfg.model.init} was trained with "
            f"({saved}; vocabularies of {len(given)} and {len(load_tokenizer(str(saved)))} entries differ in content); "
            "remove data.tokenizer to use the model's own"
        )


def run_pretraining(cfg: PretrainConfig) -> dict[str, float]:
    """Pretrain as configured; returns the final evaluation metrics."""
    from accelerate.utils import set_seed

    cfg.validate()
    check_run_inputs(cfg)  # before any data is read: output directory, disk, tokenizer identity
    check_wandb(cfg.train)
    accelerator = make_accelerator(cfg.train, cfg.impl)
    out = Path(cfg.train.output_dir)
    # fail before any work if the directory holds another run
    resume_from = prepare_output_dir(cfg.train, accelerator)
    tokenizer = get_tokenizer(cfg, out, accelerator.is_main_process, accelerator, resume_from)
    family = cfg.model.style
    set_seed(cfg.seed)  # the data preparation draws from its own seeded generators, not the global one
    model = build_pretraining_model(cfg, tokenizer)
    check_positions(cfg.data.max_length, model.config)
    check_exportable(model, cfg.train.export)  # model.init's structure (a RoBERTa run) may not be cfg.model's
    if resume_from is not None:  # a checkpoint of another model is refused before hours of tokenising
        check_resumable_model(resume_from, model, cfg.train, accelerator.num_processes)
    with accelerator.main_process_first():  # one process prepares the shards, the others map them
        data = build_pretraining_data(cfg.data, tokenizer, family, nsp=cfg.model.nsp)
    if accelerator.is_main_process:
        log.info(
            "%s: %.2fM parameters, %d training / %d evaluation examples, unigram baseline %.3f nats/token",
            cfg.model.name,
            model.num_parameters() / 1e6,
            len(data.train),
            len(data.validation),
            data.unigram_entropy,
        )
    if family == "bert":
        collate = MLMCollator(tokenizer, cfg.data.mlm_probability, cfg.data.whole_word_mask, cfg.data.max_length)
    else:
        collate = CausalCollator(tokenizer)

    def evaluate(m: Any, acc: Any) -> dict[str, float]:
        metrics = evaluate_pretraining(
            m, acc, data.validation, collate, cfg.train.batch_size, cfg.train.eval_batches, cfg.seed
        )
        metrics["unigram_baseline"] = data.unigram_entropy
        return metrics

    lengths = getattr(data.train, "epoch_lengths", None) if cfg.data.group_by_length else None
    digest = corpus_digest(cfg.data)
    task = Task(model, data.train, collate, evaluate, tokenizer=tokenizer, lengths=lengths, data_digest=digest)
    return train(task, cfg.train, cfg.seed, run_config=to_dict(cfg), accelerator=accelerator, impl=cfg.impl)
