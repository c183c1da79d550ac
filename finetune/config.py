"""Typed fine-tuning configuration (hydra YAML -> these dataclasses -> plain objects)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pretrain.config import ImplConfig, TrainConfig
from pretrain.errors import ConfigError, check_source, not_a_file, require


@dataclass
class FinetuneModelConfig:
    init: str | None = None  # our checkpoint / run directory / export, or a HF BERT / GPT-2 directory or hub name
    tokenizer: str | None = None  # default: the tokenizer saved with model.init
    lm_loss_weight: float = 0.0  # GPT classification: auxiliary LM loss weight (0.5 in the GPT paper)
    dropout: float | None = None  # override the checkpoint's dropout for fine-tuning


@dataclass
class FinetuneDataConfig:
    name: str = "custom"
    hub_name: str | None = None  # a `datasets` name (needs internet), used when no files are given
    hub_config: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    paths: list[str] = field(default_factory=list)  # [train] or [train, validation]
    train: str | None = None  # a file: .tsv (GLUE), .csv, .json / .jsonl; SQuAD .json for qa
    validation: str | None = None
    holdout_fraction: float = 0.0  # no validation file: hold out this fraction of train (SQuAD: by article)
    columns: list[str] | None = None  # names for a header-less TSV / CSV (CoLA)
    exclude_ids_file: str | None = None  # drop training rows whose ids are listed here (MRPC: dev_ids.tsv)
    id_columns: list[str] | None = None  # the columns that form a row's id for exclude_ids_file
    text_column: str = "sentence"
    text_pair_column: str | None = None
    label_column: str = "label"
    label_names: list[str] | None = None  # label order; default: sorted labels of the training set
    regression: bool = False  # STS-B style: one float target, MSE loss
    max_length: int = 128
    doc_stride: int = 128  # qa: tokens shared by neighbouring windows of a long context
    max_query_length: int = 64  # qa
    max_answer_length: int = 30  # qa: in tokens
    n_best: int = 20  # qa: start / end candidates per window
    version_2: bool = False  # qa: unanswerable questions (SQuAD 2.0)
    null_score_threshold: float = 0.0  # qa v2: predict no answer when null - best span score > threshold
    max_train_examples: int | None = None  # cap, for CPU budgets
    max_eval_examples: int | None = None
    symmetric: bool = False  # classification of pairs, GPT-paper similarity: both orders, representations added
    tags_column: str = "tags"  # token_classification, JSON lines / hub: the column of tags (conll2003: ner_tags)
    conll_column: int = -1  # token_classification, CoNLL text files: the column of the tag (-1: the last)
    label_all_subwords: bool = False  # token_classification: train every sub-word of a word, not only its first
    context_column: str = "context"  # multiple_choice
    question_column: str | None = None  # multiple_choice: put before every choice (SWAG's sent2)
    choices_column: str | None = "choices"  # multiple_choice: a column holding the list of choices
    choice_columns: list[str] | None = None  # multiple_choice: one column per choice (SWAG ending0..3, PIQA sol1/2)


@dataclass
class FinetuneConfig:
    task: Literal["classification", "qa", "token_classification", "multiple_choice"] = "classification"
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    impl: ImplConfig = field(default_factory=ImplConfig)
    eval_per_epoch: bool = True  # evaluate at the end of each epoch (and keep the best model)
    seed: int = 0

    def validate(self) -> None:
        require(0 <= self.seed < 2**32, "seed", self.seed, "it must be in [0, 2**32)")
        self.train.validate()
        self.impl.validate()
        if not self.model.init:
            raise ConfigError(
                "model.init is required: one of our checkpoints or exports, or a Hugging Face BERT / GPT-2 "
                "directory or hub name, e.g. model.init=runs/bert-tiny/<run> or model.init=bert-base-uncased"
            )
        d = self.data
        if not (d.paths or d.train or d.hub_name):
            raise ConfigError(
                "no data: give data.train=<file> (and data.validation=<file>), data.paths, or data.hub_name"
            )
        if len(d.paths) > 2:
            raise ConfigError("data.paths takes [train] or [train, validation]")
        if d.paths and (d.train or d.validation):
            raise ConfigError("data.paths and data.train / data.validation both name files; give one of them")
        if not 0 <= d.holdout_fraction < 1:
            raise ConfigError("data.holdout_fraction must be in [0, 1)")
        if d.holdout_fraction and (d.validation or len(d.paths) == 2):
            raise ConfigError(
                f"data.holdout_fraction={d.holdout_fraction} with a validation file: the file is the validation "
                "set and nothing would be held out; remove one of them"
            )
        if self.model.lm_loss_weight and self.task in ("qa", "token_classification"):
            raise ConfigError(
                f"model.lm_loss_weight={self.model.lm_loss_weight}: the auxiliary LM loss is for GPT classification "
                f"and multiple choice, not task={self.task}; remove it"
            )
        if d.symmetric and (self.task != "classification" or not d.text_pair_column):
            raise ConfigError("data.symmetric=true needs task=classification with pairs (data.text_pair_column)")
        check_source("model.init", self.model.init, "checkpoint or directory")
        if self.model.tokenizer:
            check_source("model.tokenizer", self.model.tokenizer, "tokenizer directory")
        require(self.model.lm_loss_weight >= 0, "model.lm_loss_weight", self.model.lm_loss_weight, "it must be >= 0")
        if self.model.dropout is not None:
            require(0 <= self.model.dropout < 1, "model.dropout", self.model.dropout, "it must be in [0, 1)", "or null")
        require(d.max_length >= 8, "data.max_length", d.max_length, "it must be >= 8 tokens")
        for name in ("doc_stride", "max_query_length", "max_answer_length", "n_best"):
            require(getattr(d, name) >= 1, f"data.{name}", getattr(d, name), "it must be >= 1")
        for name in ("max_train_examples", "max_eval_examples"):
            if getattr(d, name) is not None:
                require(getattr(d, name) >= 1, f"data.{name}", getattr(d, name), "it must be >= 1", "or null")
        if d.label_names is not None and len(set(map(str, d.label_names))) != len(d.label_names):
            raise ConfigError(f"data.label_names={d.label_names} lists a label twice; list each label once")
        if d.regression and d.label_names:
            raise ConfigError("data.label_names is for classification; remove it with data.regression=true")
        if d.exclude_ids_file and not d.id_columns:
            raise ConfigError("data.exclude_ids_file needs data.id_columns, e.g. ['#1 ID','#2 ID']")
        for key, path in (
            ("data.train", d.train),
            ("data.validation", d.validation),
            *((f"data.paths[{i}]", x) for i, x in enumerate(d.paths)),
        ):
            if path is not None and not Path(path).expanduser().is_file():
                what = not_a_file(Path(path).expanduser())
                raise ConfigError(f"{key}={path}: {what}; give a data file (.tsv, .csv, .json, .jsonl)")
        if self.task == "qa" and d.doc_stride >= d.max_length - d.max_query_length - 3:
            raise ConfigError(
                f"data.doc_stride={d.doc_stride} leaves no room for new context in a window of data.max_length="
                f"{d.max_length} with questions of up to {d.max_query_length} tokens; lower data.doc_stride"
            )

    def files(self) -> tuple[str | None, str | None]:
        paths = list(self.data.paths)
        train = self.data.train or (paths[0] if paths else None)
        validation = self.data.validation or (paths[1] if len(paths) > 1 else None)
        return train, validation
