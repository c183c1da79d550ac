"""Typed run configuration. Hydra composes YAML from `conf/`; `from_dict` turns the result into these
dataclasses (unknown keys and wrong types fail here, naming the key); library code takes the
dataclasses, never hydra globals.

A run's results depend only on `model`, `data`, `train` (minus the speed-only knobs) and `seed`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from .errors import ConfigError, check_output_dir, check_source, require
from .model import TransformerConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the hydra YAML


@dataclass
class ModelConfig(TransformerConfig):
    """model.*: the architecture, whose fields, defaults and checks are TransformerConfig's (one definition),
    plus what a run does with it. vocab_size (null), causal and the special-token ids follow the
    tokenizer and the family; `transformer_config(tokenizer)` gives the plain config the model takes."""

    vocab_size: int | None = None  # None: follows the tokenizer; set, it must match it
    causal: bool | None = None  # follows the family (gpt, llama: causal)
    pad_token_id: int | None = None  # from the tokenizer
    family: Literal["bert", "gpt", "roberta", "modernbert", "llama"] = "bert"
    name: str = "custom"
    nsp: bool = True  # BERT: train the next-sentence head too
    init: str | None = None  # start from weights: our checkpoint / export, or a HF directory or hub name

    def __post_init__(self) -> None:
        pass  # checked by validate(), which names model.* keys, once the run's settings are known

    @property
    def style(self) -> str:
        """The pretraining objective and data layout: "bert" (masked LM) for encoders, "gpt" (causal LM)."""
        return "gpt" if self.family in ("gpt", "llama") else "bert"

    def validate(self, export: bool = False) -> None:
        """Every model value checked before any data is prepared: the sizes and ranges, the
        architecture as TransformerConfig checks it, and (export=True) that the Hugging Face export
        at the end of the run can express it."""
        if self.nsp and self.family in ("roberta", "modernbert"):
            raise ConfigError(
                f"model.nsp=true with model.family={self.family}: only BERT has a next-sentence head; "
                "set model.nsp=false"
            )
        for name in ("hidden_size", "num_layers", "num_heads", "ffn_size", "max_positions"):
            require(getattr(self, name) > 0, f"model.{name}", getattr(self, name), "it must be > 0")
        require(self.segment_vocab_size >= 0, "model.segment_vocab_size", self.segment_vocab_size, "it must be >= 0")
        for name in ("dropout", "attention_dropout"):
            require(0 <= getattr(self, name) < 1, f"model.{name}", getattr(self, name), "it must be in [0, 1)")
        require(0 < self.layer_norm_eps < 1, "model.layer_norm_eps", self.layer_norm_eps, "it must be in (0, 1)")
        require(0 < self.init_std < 1, "model.init_std", self.init_std, "it must be in (0, 1)")
        if self.vocab_size is not None:
            require(self.vocab_size > 0, "model.vocab_size", self.vocab_size, "it must be > 0", "or null")
        derived = {"causal": self.causal in (None, self.style == "gpt")}  # the rest must be unset
        for name in ("causal", "pad_token_id", "bos_token_id", "eos_token_id"):
            ok = derived.get(name, getattr(self, name) is None)
            require(ok, f"model.{name}", getattr(self, name), "it follows model.family and the tokenizer", "remove it")
        config = self._structure(self.vocab_size or 8)
        if export and not self.init:
            from .interop import build_model, hf_config_dict

            head = ("pretraining" if self.nsp else "mlm") if self.style == "bert" else "causal_lm"
            with torch.device("meta"):  # no memory: only the structure is checked
                model = build_model(config, head)
            try:
                hf_config_dict(model)
            except ValueError as e:
                raise ConfigError(
                    f"train.export=true but {e} Set train.export=false (keep our checkpoint format), or change "
                    "the model config"
                ) from None

    def _structure(self, vocab: int, **tokens: int | None) -> TransformerConfig:
        """The plain TransformerConfig of these values (its checks, as model.* keys)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(TransformerConfig)}
        values.update(vocab_size=vocab, causal=self.style == "gpt", pad_token_id=0)
        values.update(tokens)
        try:
            return TransformerConfig(**values)
        except ValueError as e:  # TransformerConfig names the field: say it is a model.* key
            raise ConfigError(f"{str(e).replace('model config: ', 'model.')}") from None

    def transformer_config(self, tokenizer: Any) -> TransformerConfig:
        vocab = len(tokenizer)
        if self.vocab_size is not None and self.vocab_size != vocab:
            raise ConfigError(
                f"model.vocab_size={self.vocab_size} does not match the tokenizer's vocabulary ({vocab}); "
                "remove model.vocab_size (it follows the tokenizer) or use the matching tokenizer"
            )
        eos = tokenizer.eos_token_id if self.style == "gpt" else None
        return self._structure(vocab, pad_token_id=tokenizer.pad_token_id, bos_token_id=eos, eos_token_id=eos)


def model_preset(name: str) -> ModelConfig:
    """A model preset of conf/model/ (e.g. "bert-tiny") as a ModelConfig, for scripts and tests."""
    import yaml

    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        presets = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"no model preset {name!r}; the presets are {presets}")
    return from_dict(ModelConfig, yaml.safe_load(path.read_text(encoding="utf-8")), "model")


DocumentLayout = Literal["auto", "blank_lines", "rows", "wikitext_articles", "sentence_rows"]


@dataclass
class HubSource:
    """One `datasets` corpus of a mixture (data.hub_sources), e.g. Wikipedia and BookCorpus."""

    name: str = ""
    config: str | None = None
    split: str = "train"
    text_column: str = "text"
    documents: DocumentLayout = "rows"  # how rows make documents (see DataConfig.documents)


@dataclass
class DataConfig:
    name: str = "sample"
    format: Literal["sample", "text", "json", "parquet", "hub"] = "sample"
    paths: list[str] = field(default_factory=list)  # local files (text: blank line between documents)
    hub_name: str | None = None  # a `datasets` name, e.g. wikitext (needs internet)
    hub_config: str | None = None
    hub_split: str = "train"
    text_column: str = "text"
    tokenizer: str | None = None  # directory or hub name; None: train one on the corpus
    vocab_size: int = 8000  # for a trained tokenizer
    lowercase: bool = True
    max_length: int = 128
    short_seq_prob: float = 0.1  # BERT: fraction of shorter examples
    mlm_probability: float = 0.15
    whole_word_mask: bool = False
    # BERT: batches of similar-length examples (each run of 50 optimizer steps' examples sorted by length, cut
    # into steps, the steps shuffled), so little padding is computed; short documents make short examples
    # (Hugging Face's group_by_length)
    group_by_length: bool = True
    validation_fraction: float = 0.05  # of documents, held out
    max_documents: int | None = None  # use only the first N documents (quick experiments)
    num_proc: int | None = None  # speed only; None: all cores
    cache_dir: str | None = None  # speed only; default ~/.cache/pretrain
    seed: int = 0  # the held-out split and BERT pairings; separate from the training seed
    tokenizer_sample_mb: float = 20.0  # a trained tokenizer learns from this much of the corpus (reproducible)
    dupe_factor: int = 1  # BERT: copies of the corpus per epoch, each with its own sentence pairings
    # auto: blank lines separate documents in text files, one row is one document elsewhere;
    # wikitext_articles: rows/lines are WikiText lines, articles start at ` = Title = `;
    # sentence_rows: rows are sentences (BookCorpus), grouped into documents of 100
    documents: DocumentLayout = "auto"
    hub_sources: list[HubSource] = field(default_factory=list)  # format=hub: several corpora, interleaved

    def validate(self, family: str) -> None:
        if self.tokenizer is None:  # trained on the corpus: it needs room beyond its alphabet
            least = 100 if family == "bert" else 300
            require(
                self.vocab_size >= least,
                "data.vocab_size",
                self.vocab_size,
                f"a trained {family} tokenizer needs >= {least} entries "
                + ("(special tokens and characters)" if family == "bert" else "(256 bytes, <|endoftext|>, merges)"),
                "raise it (8000-30000 is usual)",
            )
        else:
            check_source("data.tokenizer", self.tokenizer, "tokenizer directory")
        require(self.max_length >= 8, "data.max_length", self.max_length, "it must be >= 8 tokens")
        if self.cache_dir:
            check_output_dir("data.cache_dir", self.cache_dir)
        require(0 <= self.short_seq_prob <= 1, "data.short_seq_prob", self.short_seq_prob, "it must be in [0, 1]")
        require(
            0 <= self.validation_fraction < 1,
            "data.validation_fraction",
            self.validation_fraction,
            "it must be in [0, 1)",
            "e.g. 0.05 holds out 5% of the documents; 0 holds out none",
        )
        require(0 < self.mlm_probability < 1, "data.mlm_probability", self.mlm_probability, "it must be in (0, 1)")
        require(0 <= self.seed < 2**32, "data.seed", self.seed, "it must be in [0, 2**32)")
        if self.max_documents is not None:
            require(self.max_documents >= 1, "data.max_documents", self.max_documents, "it must be >= 1", "or null")
        if self.num_proc is not None:
            require(self.num_proc >= 1, "data.num_proc", self.num_proc, "it must be >= 1", "or null for all cores")


@dataclass
class TrainConfig:
    max_steps: int = 300
    batch_size: int = 32  # per device, per micro-batch
    grad_accum_steps: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-6
    warmup_steps: int = 30
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    min_lr_ratio: float = 0.0  # cosine / linear decay floor, as a fraction of lr
    max_grad_norm: float = 1.0  # 0 = no clipping
    save_every: int = 100  # steps between checkpoints (0: only at the end)
    keep_last: int = 2  # checkpoints kept
    eval_every: int = 100  # steps between evaluations (0: only at the end)
    eval_batches: int | None = 20  # cap on evaluation batches (None: the whole split)
    log_every: int = 10
    output_dir: str = "runs/default"
    run_name: str | None = None  # names the run directory (runs/<model>/<run_name>); a stable one resumes
    resume: str | None = "auto"  # "auto": the latest intact checkpoint in output_dir, if any; a checkpoint path;
    # null: a fresh run that refuses a directory holding one
    max_bad_steps: int = 5  # non-finite steps (skipped) in a row before the run stops
    tensorboard: bool = True
    wandb_project: str | None = None
    plot: bool = True  # loss curve PNG at the end
    export: bool = True  # Hugging Face export at the end
    max_minutes: float | None = None  # time budget: stop when spent; the lr schedule follows its elapsed fraction
    peak_flops: float | None = None  # device peak FLOP/s for the logged MFU; None: from the GPU table

    def validate(self) -> None:
        positive = ("max_steps", "batch_size", "grad_accum_steps", "log_every", "keep_last", "max_bad_steps")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be > 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if len(self.adam_betas) != 2:
            raise ConfigError("train.adam_betas must be two numbers, e.g. [0.9, 0.999]")
        for i, beta in enumerate(self.adam_betas):
            require(0 <= beta < 1, f"train.adam_betas[{i}]", beta, "it must be in [0, 1)")
        require(self.warmup_steps >= 0, "train.warmup_steps", self.warmup_steps, "it must be >= 0")
        require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "it must be >= 0")
        require(self.adam_eps > 0, "train.adam_eps", self.adam_eps, "it must be > 0")
        require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", self.min_lr_ratio, "it must be in [0, 1]")
        require(self.max_grad_norm >= 0, "train.max_grad_norm", self.max_grad_norm, "it must be >= 0 (0: no clipping)")
        for name in ("save_every", "eval_every"):
            require(getattr(self, name) >= 0, f"train.{name}", getattr(self, name), "it must be >= 0")
        if self.eval_batches is not None:
            require(self.eval_batches >= 1, "train.eval_batches", self.eval_batches, "it must be >= 1", "or null")
        if not self.output_dir:
            raise ConfigError("train.output_dir is empty; give a directory, e.g. train.output_dir=runs/my-run")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"train.max_minutes must be > 0 (or null for no time budget), got {self.max_minutes}")
        if self.peak_flops is not None and self.peak_flops <= 0:
            raise ConfigError(f"train.peak_flops must be > 0 FLOP/s (or null), got {self.peak_flops}")
        if self.max_minutes is None and self.warmup_steps > self.max_steps:
            logging.getLogger(__name__).warning(
                "train.warmup_steps=%d > train.max_steps=%d: the learning rate never reaches train.lr=%g "
                "(it ends at %.3g); lower train.warmup_steps",
                self.warmup_steps,
                self.max_steps,
                self.lr,
                self.lr * self.max_steps / self.warmup_steps,
            )


@dataclass
class ImplConfig:
    """impl.*: how a run computes, never what it computes (cramming's `impl` group): speed, memory and
    devices. A run's results depend on model, data, train and seed; these change them only within
    floating-point noise (bf16 / fp16 rounding, kernel choice)."""

    precision: Literal["no", "fp16", "bf16"] = "no"  # Accelerate mixed precision
    compile: bool = False  # torch.compile the model (the first steps pay the compile time)
    cpu: bool = False  # the CPU even when a GPU is present
    parallelism: Literal["auto", "ddp", "fsdp"] = "auto"  # auto: FSDP2 under an accelerate FSDP config, else DDP
    num_workers: int = 0  # DataLoader worker processes

    def validate(self) -> None:
        require(self.num_workers >= 0, "impl.num_workers", self.num_workers, "it must be >= 0")
        self.check_precision()

    def check_precision(self) -> None:
        """Mixed precision needs hardware that has it: fp16 autocast is a GPU feature (a CPU would
        silently train in fp32)."""
        on_cpu = self.cpu or not torch.cuda.is_available()
        if self.precision == "fp16" and on_cpu:
            raise ConfigError(
                "impl.precision=fp16 needs a GPU and this run is on the CPU"
                + (" (impl.cpu=true)" if self.cpu else " (no CUDA device found)")
                + "; use impl.precision=no (or bf16, which the CPU supports)"
            )
        if self.precision == "bf16" and not on_cpu and not torch.cuda.is_bf16_supported():
            raise ConfigError("impl.precision=bf16: this GPU does not support bfloat16; use impl.precision=fp16")


# keys that moved into impl: still accepted where they were, with a warning
MOVED_KEYS = {("train", name): ("impl", name) for name in ("precision", "compile", "cpu", "parallelism", "num_workers")}


def _move_keys(values: dict[str, Any]) -> dict[str, Any]:
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for (old_group, name), (new_group, new_name) in MOVED_KEYS.items():
        if isinstance(values.get(old_group), dict) and name in values[old_group]:
            value = values[old_group].pop(name)
            if value is None:  # the YAML's placeholder, not set by the user
                continue
            logging.getLogger("pretrain").warning(
                "%s.%s is now %s.%s (settings that change speed, never results); using %s.%s=%s",
                old_group,
                name,
                new_group,
                new_name,
                new_group,
                new_name,
                value,
            )
            values.setdefault(new_group, {})
            if isinstance(values[new_group], dict):
                values[new_group][new_name] = value
    return values


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    impl: ImplConfig = field(default_factory=ImplConfig)
    seed: int = 0

    def validate(self) -> None:
        require(0 <= self.seed < 2**32, "seed", self.seed, "it must be in [0, 2**32)")
        self.train.validate()
        self.impl.validate()
        self.model.validate(export=self.train.export)
        if self.model.init:
            check_source("model.init", self.model.init, "checkpoint or directory")
        self.data.validate(self.model.family)
        if self.data.format == "sample" and self.data.paths:  # `data.paths=[...]` alone means those files
            suffixes = {Path(p.removesuffix(".gz")).suffix.lower() for p in self.data.paths}
            by_suffix = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
            formats = {by_suffix.get(s, "text") for s in suffixes}
            if len(formats) > 1:
                raise ConfigError(f"data.paths mixes file types {sorted(suffixes)}; use one kind per run")
            self.data.format = formats.pop()
            self.data.name = Path(self.data.paths[0]).stem
        if self.data.max_length > self.model.max_positions:
            raise ConfigError(
                f"data.max_length={self.data.max_length} is longer than model.max_positions="
                f"{self.model.max_positions}; lower data.max_length or pick a model with more positions"
            )
        if self.data.format in ("text", "json", "parquet") and not self.data.paths:
            raise ConfigError(f"data.format={self.data.format} needs files: data.paths=[file1,file2]")
        if self.data.format == "hub" and not (self.data.hub_name or self.data.hub_sources):
            raise ConfigError("data.format=hub needs data.hub_name (a `datasets` name such as wikitext)")
        if self.data.whole_word_mask and self.model.style == "gpt":
            raise ConfigError(
                f"data.whole_word_mask=true with model.family={self.model.family}: whole-word masking is for "
                "masked-LM (BERT-style) models and a causal model masks nothing; remove it"
            )
        if not 0 < self.data.mlm_probability < 1:
            raise ConfigError("data.mlm_probability must be in (0, 1)")
        if self.data.dupe_factor < 1:
            raise ConfigError(f"data.dupe_factor must be >= 1, got {self.data.dupe_factor}")
        if self.data.tokenizer_sample_mb <= 0:
            raise ConfigError(f"data.tokenizer_sample_mb must be > 0, got {self.data.tokenizer_sample_mb}")
        if self.data.num_proc is not None and self.data.num_proc < 1:
            raise ConfigError(f"data.num_proc must be >= 1 or null (all cores), got {self.data.num_proc}")


def check_positions(max_length: int, config: Any) -> None:
    """A data.max_length sequence fits the model's position table (RoBERTa's positions start after
    pad_token_id, so it needs that many rows more). Pretraining and fine-tuning check it before any data."""
    needed = config.positions_needed(max_length)
    if needed > config.max_positions:
        offset = f" (positions count from pad_token_id + 1 = {config.pad_token_id + 1})" if needed > max_length else ""
        raise ConfigError(
            f"data.max_length={max_length} needs {needed} positions{offset}, but the model's position table has "
            f"{config.max_positions}; lower data.max_length or use a model with more positions"
        )


def estimate_run_bytes(model: ModelConfig, vocab_size: int, train: TrainConfig) -> int:
    """About what a run writes: `keep_last` checkpoints (weights and two Adam moments, fp32) and the
    export (weights), plus 10% and 10 MiB for tokenizer, logs and plots."""
    h, layers = model.hidden_size, model.num_layers
    params = layers * (4 * h * h + 2 * h * model.ffn_size) + (vocab_size + model.max_positions) * h
    checkpoints = params * 4 * 3 * (max(train.keep_last, 1) + 1)  # +1: the next one is written before the oldest goes
    export = params * 4 if train.export else 0
    return int(1.1 * (checkpoints + export)) + 10 * 2**20


def from_dict(cls: type, values: Any, where: str = "") -> Any:
    """Build dataclass `cls` from plain nested dicts, checking every key and type."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(values).__name__}")
    if not where and "impl" in {f.name for f in dataclasses.fields(cls)}:
        values = _move_keys(values)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key {where + '.' if where else ''}{unknown[0]}"
            f"{' (and ' + str(unknown[1:]) + ')' if unknown[1:] else ''}; valid keys are {sorted(fields)}"
        )
    kwargs = {
        name: _coerce(hints[name], value, f"{where + '.' if where else ''}{name}") for name, value in values.items()
    }
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, e.g. {key}=[a,b], got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):  # nan passes every `<= 0` check and would silently poison the run
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
