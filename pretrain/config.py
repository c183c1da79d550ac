"""Typed run configuration. Hydra composes YAML from `conf/`; `from_dict` turns the result into these
dataclasses (unknown keys and wrong types fail here, naming the key); library code takes the
dataclasses, never hydra globals.

A run's results depend only on `model`, `data`, `train` (minus the speed-only knobs) and `seed`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .model import TransformerConfig


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and the fix."""


@dataclass
class ModelConfig:
    family: Literal["bert", "gpt"] = "bert"
    name: str = "custom"
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    ffn_size: int = 512
    max_positions: int = 128
    segment_vocab_size: int = 2
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    position_embedding: Literal["learned", "sinusoidal"] = "learned"
    norm_placement: Literal["post", "pre"] = "post"
    activation: Literal["gelu", "gelu_tanh", "relu"] = "gelu"
    tie_embeddings: bool = True
    init_std: float = 0.02
    nsp: bool = True  # BERT: train the next-sentence head too
    vocab_size: int | None = None  # None: follows the tokenizer; set, it must match it
    init: str | None = None  # start from weights: our checkpoint / export, or a HF directory or hub name

    def transformer_config(self, tokenizer: Any) -> TransformerConfig:
        vocab = len(tokenizer)
        if self.vocab_size is not None and self.vocab_size != vocab:
            raise ConfigError(
                f"model.vocab_size={self.vocab_size} does not match the tokenizer's vocabulary ({vocab}); "
                "remove model.vocab_size (it follows the tokenizer) or use the matching tokenizer"
            )
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(TransformerConfig) if hasattr(self, f.name)}
        gpt = self.family == "gpt"
        eos = tokenizer.eos_token_id if gpt else None
        return TransformerConfig(
            **{**values, "vocab_size": vocab},
            causal=gpt,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=eos,
            eos_token_id=eos,
        )


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
    validation_fraction: float = 0.05  # of documents, held out
    max_documents: int | None = None  # use only the first N documents (quick experiments)
    num_proc: int = 1  # speed only
    cache_dir: str | None = None  # speed only; default ~/.cache/pretrain


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
    precision: Literal["no", "fp16", "bf16"] = "no"
    cpu: bool = False  # force CPU even when a GPU is present
    save_every: int = 100  # steps between checkpoints (0: only at the end)
    keep_last: int = 2  # checkpoints kept
    eval_every: int = 100  # steps between evaluations (0: only at the end)
    eval_batches: int | None = 20  # cap on evaluation batches (None: the whole split)
    log_every: int = 10
    output_dir: str = "runs/default"
    resume: str | None = None  # "auto" (latest checkpoint in output_dir) or a checkpoint path
    tensorboard: bool = True
    wandb_project: str | None = None
    plot: bool = True  # loss curve PNG at the end
    export: bool = True  # Hugging Face export at the end
    num_workers: int = 0  # speed only
    max_minutes: float | None = None  # time budget: stop when spent; the lr schedule follows its elapsed fraction
    compile: bool = False  # torch.compile the model (speed only; the first steps pay the compile time)
    peak_flops: float | None = None  # device peak FLOP/s for the logged MFU; None: from the GPU table

    def validate(self) -> None:
        positive = ("max_steps", "batch_size", "grad_accum_steps", "log_every", "keep_last")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be > 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if len(self.adam_betas) != 2:
            raise ConfigError("train.adam_betas must be two numbers, e.g. [0.9, 0.999]")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"train.max_minutes must be > 0 (or null for no time budget), got {self.max_minutes}")
        if self.peak_flops is not None and self.peak_flops <= 0:
            raise ConfigError(f"train.peak_flops must be > 0 FLOP/s (or null), got {self.peak_flops}")


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

    def validate(self) -> None:
        self.train.validate()
        if self.data.format == "sample" and self.data.paths:  # `data.paths=[...]` alone means those files
            suffixes = {Path(p).suffix.lower() for p in self.data.paths}
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
        if self.data.format == "hub" and not self.data.hub_name:
            raise ConfigError("data.format=hub needs data.hub_name (a `datasets` name such as wikitext)")
        if not 0 < self.data.mlm_probability < 1:
            raise ConfigError("data.mlm_probability must be in (0, 1)")


def from_dict(cls: type, values: Any, where: str = "") -> Any:
    """Build dataclass `cls` from plain nested dicts, checking every key and type."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(values).__name__}")
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
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
