"""A fine-tuning run: model + task data + the shared training loop, then predictions, metrics.json
and a Hugging Face export. Each task's module builds its Task (`build_task`); this module runs it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pretrain.config import check_positions, to_dict
from pretrain.errors import ConfigError, check_output_dir
from pretrain.interop import check_exportable, config_from_hf
from pretrain.model import TransformerConfig
from pretrain.tokenizer import load_tokenizer
from pretrain.tokenizer_identity import same_tokenizer, saved_tokenizer_dir
from pretrain.train import make_accelerator, prepare_output_dir, train
from pretrain.train.checkpoints import read_model_meta, resolve_run_dir, save_model_dir
from pretrain.train.metrics import check_wandb

from . import classification, multiple_choice, qa, token_classification
from .common import find_tokenizer, set_dropout
from .config import FinetuneConfig

log = logging.getLogger(__name__)

# cfg.task -> its builder: (cfg, tokenizer, accelerator) -> (Task, final evaluation, the best model's metric)
TASKS = {
    "classification": classification.build_task,
    "qa": qa.build_task,
    "token_classification": token_classification.build_task,
    "multiple_choice": multiple_choice.build_task,
}


class BestModel:
    """Keeps the model of the best evaluation so far in <output_dir>/best (our checkpoint format)."""

    def __init__(self, out: Path, metric: str, tokenizer: Any, is_main: bool):
        self.out, self.metric, self.tokenizer, self.is_main = out / "best", metric, tokenizer, is_main
        self.best: float | None = None
        self.step = 0
        saved = self.out / "metrics.json"
        if saved.is_file():  # a resumed run: the best so far is beaten only by a better model, not replaced
            try:
                previous = json.loads(saved.read_text(encoding="utf-8"))
                if not isinstance(previous, dict):  # valid JSON but not the record this class writes
                    raise TypeError(type(previous).__name__)
                self.best, self.step = previous.get(metric), int(previous.get("step", 0))
            except (ValueError, TypeError):
                log.warning("%s is unreadable: the next evaluation replaces the best model", saved)

    def __call__(self, step: int, metrics: dict[str, float], model: Any) -> None:
        value = metrics.get(self.metric)
        if value is None or (self.best is not None and value <= self.best):
            return
        self.best, self.step = value, step
        if self.is_main:
            save_model_dir(model, self.out)
            self.tokenizer.save_pretrained(str(self.out))
            (self.out / "metrics.json").write_text(json.dumps({"step": step, **metrics}, indent=2), encoding="utf-8")


def local_model_config(init: str) -> TransformerConfig | None:
    """model.init's structure, read from its config file alone: our checkpoint's model.json or a Hugging Face
    directory's config.json; None for a hub name (known once it is loaded)."""
    path = resolve_run_dir(Path(init).expanduser())
    try:
        if (path / "model.json").is_file():
            return TransformerConfig.from_dict(read_model_meta(path)["config"])
        if (path / "config.json").is_file():
            return config_from_hf(json.loads((path / "config.json").read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError):  # a damaged or foreign file: the model's load names the problem
        return None
    return None


def check_model_fits(cfg: FinetuneConfig, tokenizer: Any, config: TransformerConfig) -> None:
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens but model.init's vocabulary is {config.vocab_size}; "
            "use the tokenizer the model was trained with (model.tokenizer=...)"
        )
    check_positions(cfg.data.max_length, config)


def run_finetune(cfg: FinetuneConfig) -> dict[str, float]:
    """Fine-tune as configured; returns the final evaluation metrics (also in metrics.json)."""
    from accelerate.utils import set_seed

    cfg.validate()
    check_wandb(cfg.train)
    check_output_dir("train.output_dir", cfg.train.output_dir)
    accelerator = make_accelerator(cfg.train, cfg.impl)
    prepare_output_dir(cfg.train, accelerator)
    out = Path(cfg.train.output_dir)
    tokenizer = load_tokenizer(cfg.model.tokenizer) if cfg.model.tokenizer else find_tokenizer(cfg.model.init)
    saved = saved_tokenizer_dir(cfg.model.init)
    if cfg.model.tokenizer and saved is not None and not same_tokenizer(tokenizer, load_tokenizer(str(saved))):
        raise ConfigError(
            f"model.tokenizer={cfg.model.tokenizer} is not the tokenizer model.init={cfg.model.init} was trained with "
            f"({saved}): their vocabularies differ in content; remove model.tokenizer to use the model's own"
        )
    early = local_model_config(cfg.model.init)
    if early is not None:  # before the data are read and tokenised
        check_model_fits(cfg, tokenizer, early)
    builder = TASKS[cfg.task]
    set_seed(cfg.seed)
    task, final_eval, metric = builder(cfg, tokenizer, accelerator)
    if early is None:  # a hub name: its config is known once it is loaded
        check_model_fits(cfg, tokenizer, task.model.config)
    check_exportable(task.model, cfg.train.export)
    if cfg.model.dropout is not None:
        set_dropout(task.model, cfg.model.dropout)
    if cfg.eval_per_epoch and cfg.train.eval_every:  # set by hand: it wins over the per-epoch default
        log.info("train.eval_every=%d: evaluating at that interval, not once per epoch", cfg.train.eval_every)
    elif cfg.eval_per_epoch:
        global_batch = cfg.train.batch_size * accelerator.num_processes * cfg.train.grad_accum_steps
        cfg.train.eval_every = max(1, len(task.train_data) // global_batch)
    best = BestModel(out, metric, tokenizer, accelerator.is_main_process)
    task.on_evaluate = best
    train(task, cfg.train, cfg.seed, run_config=to_dict(cfg), accelerator=accelerator, impl=cfg.impl)

    metrics, predictions = final_eval(accelerator.unwrap_model(task.model), accelerator)
    if accelerator.is_main_process:
        summary = {**metrics, "best_step": best.step, f"best_{metric}": best.best}
        (out / "metrics.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        name, content = predictions
        (out / name).write_text(content, encoding="utf-8")
        log.info("final evaluation: %s", summary)
    accelerator.wait_for_everyone()
    return metrics
