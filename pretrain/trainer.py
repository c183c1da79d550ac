"""The one training loop, shared by pretraining and fine-tuning.

A task hands it a model, an indexable training set, a collator and an evaluation function.
Accelerate owns devices, processes and mixed precision; the loop owns the rest: AdamW with no decay
on biases and LayerNorms, warmup + decay, clipping, gradient accumulation with the loss normalised
over the whole global batch (per token, not per micro-batch), evaluation, logging, and checkpoints
that resume exactly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .budget import TrainClock, budget_spent, lr_factor, progress_fn
from .checkpoint import (
    latest_checkpoint,
    load_model_weights,
    read_trainer_state,
    resolve_run_dir,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from .config import ConfigError, TrainConfig
from .data import BatchPlan, PlannedBatches, SeededExamples
from .flops import device_peak_flops, throughput, training_flops

log = logging.getLogger(__name__)


@dataclass
class Task:
    model: torch.nn.Module
    train_data: Any  # indexable (a datasets.Dataset)
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]
    evaluate: Callable[[torch.nn.Module, Any], dict[str, float]]  # (model, accelerator) -> metrics
    tokenizer: Any = None
    export: Callable[[torch.nn.Module, Path], None] | None = None  # default: save_hf with the tokenizer
    on_evaluate: Callable[[int, dict[str, float], torch.nn.Module], None] | None = None  # e.g. keep the best model


def make_accelerator(cfg: TrainConfig) -> Any:
    """Without a GPU, processes started by torchrun / `accelerate launch --multi_gpu` train on the CPU
    together (gloo); Accelerate only forms that group when told to use the CPU."""
    from accelerate import Accelerator

    return Accelerator(cpu=cfg.cpu or not torch.cuda.is_available(), mixed_precision=cfg.precision)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and embeddings; not biases or LayerNorm weights (every 1-d parameter)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        decay = 1.0 - progress if cfg.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay

    return factor


def budget_lr_lambda(cfg: TrainConfig, clock: TrainClock) -> Callable[[int], float]:
    """The step schedule without a time budget; with `train.max_minutes`, the same shape over the
    run's progress (its step or time fraction, whichever is further along)."""
    if cfg.max_minutes is None:
        return lr_lambda(cfg)
    progress = progress_fn(cfg.max_steps, clock)
    return lambda step: lr_factor(step, progress(step), cfg.warmup_steps, cfg.schedule, cfg.min_lr_ratio)


def step_flops(model: torch.nn.Module, micro: list[dict[str, torch.Tensor]], counts: dict, world: int) -> float:
    """Model FLOPs of one optimizer step over all processes (pretrain.flops). The MLM head runs at the
    labelled positions only: their count is a device tensor, so this stays free of host syncs."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "ffn_size"):
        return 0.0
    batch, length = micro[0]["input_ids"].shape
    n = len(micro) * world
    if "mlm" in counts:
        predicted = counts["mlm"]  # already global
    else:
        predicted = batch * length * n if hasattr(model, "lm_head") else 0  # a classifier has no vocabulary head
    with_pooler = getattr(model.transformer, "pooler", None) is not None
    return training_flops(config, batch * n, length, predicted, with_pooler)


def prepare_output_dir(cfg: TrainConfig) -> Path | None:
    """Returns the checkpoint to resume from. Refuses to write into a directory that already holds a
    run unless resuming, so no earlier checkpoint is ever overwritten by accident."""
    out = Path(cfg.output_dir)
    checkpoints = out / "checkpoints"
    if cfg.resume is None:
        if (out / "metrics.jsonl").exists() or latest_checkpoint(checkpoints):
            raise ConfigError(
                f"train.output_dir={out} already holds a run; pass train.resume=auto to continue it, "
                "or choose another train.output_dir"
            )
        return None
    if cfg.resume == "auto":
        found = latest_checkpoint(checkpoints)
        if found is None:
            log.warning("train.resume=auto: no checkpoint in %s yet, starting from scratch", checkpoints)
        return found
    path = resolve_run_dir(Path(cfg.resume))
    if not (path / "trainer_state.pt").exists():
        raise FileNotFoundError(f"train.resume={cfg.resume}: no checkpoint there (no trainer_state.pt)")
    return path


class MetricsLog:
    """metrics.jsonl (one object per logged step), TensorBoard and W&B when configured; main process only."""

    def __init__(self, out: Path, cfg: TrainConfig, active: bool, resumed_step: int | None, run_config: dict):
        self.path = out / "metrics.jsonl"
        self.active = active
        self.writers: list[Any] = []
        if not active:
            return
        out.mkdir(parents=True, exist_ok=True)
        if resumed_step is not None and self.path.exists():  # drop what a killed run logged past its checkpoint
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= resumed_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writers.append(SummaryWriter(str(out / "tensorboard")))
            except ImportError:
                log.warning("tensorboard is not installed; logging to metrics.jsonl only")
        if cfg.wandb_project:
            import wandb

            self.wandb = wandb.init(project=cfg.wandb_project, config=run_config, dir=str(out))

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.active:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        for w in self.writers:
            for k, v in values.items():
                w.add_scalar(k, v, step)
        if hasattr(self, "wandb"):
            self.wandb.log(values, step=step)

    def close(self) -> None:
        for w in self.writers:
            w.close()
        if hasattr(self, "wandb"):
            self.wandb.finish()


def train(task: Task, cfg: TrainConfig, seed: int, run_config: dict | None = None, accelerator: Any = None) -> dict:
    """Runs `task` for cfg.max_steps optimizer steps. Returns the final evaluation metrics."""
    from tqdm.auto import tqdm

    accelerator = accelerator or make_accelerator(cfg)
    out = Path(cfg.output_dir)
    resume_from = prepare_output_dir(cfg)
    accelerator.wait_for_everyone()
    main = accelerator.is_main_process
    world = accelerator.num_processes

    model = task.model
    optimizer = torch.optim.AdamW(
        parameter_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=tuple(cfg.adam_betas),
        eps=cfg.adam_eps,
        fused=accelerator.device.type == "cuda" or None,  # one kernel for all parameters on CUDA
    )
    clock = TrainClock(cfg.max_minutes)  # training seconds, for the time budget and the schedule that follows it
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, budget_lr_lambda(cfg, clock))
    step = 0
    state = None
    if resume_from is not None:
        state = read_trainer_state(resume_from)
        load_model_weights(model, resume_from / "model.safetensors")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
        clock.elapsed_before = state.get("elapsed_s", 0.0)
        if (
            state["world_size"] * state["batch_size"] * state["grad_accum_steps"]
            != world * cfg.batch_size * cfg.grad_accum_steps
        ):
            raise ConfigError(
                f"cannot resume {resume_from}: it was trained with a global batch of "
                f"{state['world_size']} x {state['batch_size']} x {state['grad_accum_steps']}; keep the same "
                "train.batch_size x processes x train.grad_accum_steps"
            )
        if main:
            log.info("resuming from %s (step %d)", resume_from, step)
    if cfg.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    plan = BatchPlan(len(task.train_data), cfg.batch_size * world, seed)
    sampler = PlannedBatches(
        plan, start=step * cfg.grad_accum_steps, rank=accelerator.process_index, world_size=world, seed=seed
    )
    loader = torch.utils.data.DataLoader(
        SeededExamples(task.train_data),
        batch_sampler=sampler,
        collate_fn=task.collate,
        num_workers=cfg.num_workers,
        generator=torch.Generator(),  # never draws from the global RNG
    )
    batches = iter(loader)
    # resuming (even from nothing: killed before its first checkpoint) drops what was logged past `step`
    metrics = MetricsLog(out, cfg, main, step if cfg.resume is not None else None, run_config or {})
    if state is not None:
        if len(state["rng"]) == world:
            set_rng_state(state["rng"][accelerator.process_index])
        elif main:  # same global batch, other process count: the same data order, other dropout draws
            log.warning("resuming with %d processes instead of %d: dropout draws differ", world, len(state["rng"]))

    def save(at: int) -> None:
        states = _gather(accelerator, rng_state())
        full_state = accelerator.get_state_dict(model)  # collective: gathers FSDP / ZeRO-3 shards
        if main:
            trainer_state = {
                "step": at,
                "micro_batches": at * cfg.grad_accum_steps,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": states,
                "world_size": world,
                "batch_size": cfg.batch_size,
                "grad_accum_steps": cfg.grad_accum_steps,
                "elapsed_s": clock.elapsed_s,
            }
            path = write_checkpoint(
                out / "checkpoints", at, unwrapped, trainer_state, task.tokenizer, cfg.keep_last, full_state
            )
            log.info("checkpoint: %s", path)
        accelerator.wait_for_everyone()

    def evaluate() -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            result = task.evaluate(unwrapped, accelerator)
        model.train()
        return result

    bar = tqdm(
        total=cfg.max_steps,
        initial=step,
        disable=not main,
        desc="training",
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 30,
    )  # a log file gets a line every 30 s
    model.train()
    last_eval: dict[str, float] = {}
    peak = device_peak_flops(accelerator.device, cfg.precision, cfg.peak_flops)
    clock.restart()
    tokens_seen, flops_seen, window_start, window_paused = 0, 0.0, time.perf_counter(), clock.paused_s
    done = step >= cfg.max_steps or budget_spent(clock, accelerator)
    while not done:
        micro = [_to_device(next(batches), accelerator.device) for _ in range(cfg.grad_accum_steps)]
        counts = _global_counts(accelerator, [unwrapped.loss_counts(b) for b in micro])
        flops_seen += step_flops(unwrapped, micro, counts, world)
        step_loss = torch.zeros((), device=accelerator.device)
        for i, batch in enumerate(micro):
            sync = i == len(micro) - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                output = model(**batch)
                loss = sum(total / counts[name] for name, (total, _) in output.loss_terms.items())
                accelerator.backward(loss * world)  # DDP averages over processes; we want the global sum
            step_loss += loss.detach().float()
            # a tensor sum, read only when logging: no device sync per micro-batch
            tokens_seen += batch["attention_mask"].sum() if "attention_mask" in batch else batch["input_ids"].numel()
        if cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        done = step >= cfg.max_steps or budget_spent(clock, accelerator)

        if step % cfg.log_every == 0 or done:
            loss_value = accelerator.reduce(step_loss, reduction="sum").item()
            seconds = time.perf_counter() - window_start - (clock.paused_s - window_paused)  # no eval / checkpoint
            values = {
                "loss": loss_value,
                "lr": scheduler.get_last_lr()[0],
                **throughput(float(tokens_seen) * world, flops_seen, seconds, peak),
                "train_seconds": clock.elapsed_s,  # evaluation and checkpoints excluded; carried over resumes
            }
            tokens_seen, flops_seen, window_start, window_paused = 0, 0.0, time.perf_counter(), clock.paused_s
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"loss became {loss_value} at step {step}; lower train.lr or use train.precision=bf16/no"
                )
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{values['lr']:.2e}", tok_s=f"{values['tokens_per_s']:.0f}")
            metrics.write(step, values)
        bar.update(1)
        if (cfg.eval_every and step % cfg.eval_every == 0) or done:
            trained_for = clock.elapsed_s
            with clock.pause():
                last_eval = evaluate()
                metrics.write(step, {**{f"eval_{k}": v for k, v in last_eval.items()}, "train_seconds": trained_for})
                if task.on_evaluate is not None:
                    task.on_evaluate(step, last_eval, unwrapped)
            if main:
                bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in last_eval.items()))
        if (cfg.save_every and step % cfg.save_every == 0) or done:
            with clock.pause():
                save(step)
    bar.close()
    metrics.close()

    if main:
        if cfg.plot:
            plot_losses(out / "metrics.jsonl", out / "loss_curve.png")
        if cfg.export:
            export_dir = out / "export"
            if task.export is not None:
                task.export(unwrapped, export_dir)
            else:
                from .hf_interop import save_hf

                save_hf(unwrapped, export_dir, tokenizer=task.tokenizer)
            log.info("exported a Hugging Face model to %s", export_dir)
    accelerator.wait_for_everyone()
    return last_eval


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _global_counts(accelerator: Any, per_batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Labelled items of each loss term over all micro-batches and processes: the denominators."""
    names = sorted(per_batch[0])
    local = torch.stack([sum(c[n] for c in per_batch).to(accelerator.device).float() for n in names])
    total = accelerator.reduce(local, reduction="sum") if accelerator.num_processes > 1 else local
    return {n: total[i].clamp(min=1) for i, n in enumerate(names)}


def _gather(accelerator: Any, obj: Any) -> list[Any]:
    if accelerator.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def plot_losses(metrics_file: Path, png: Path) -> None:
    """Training loss (and evaluation loss where logged) against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()] if metrics_file.exists() else []
    train_rows = [r for r in rows if "loss" in r]
    if not train_rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], label="train loss")
    eval_key = next((k for r in rows for k in r if k.startswith("eval_") and k.endswith("loss")), None)
    if eval_key:
        ev = [r for r in rows if eval_key in r]
        ax.plot([r["step"] for r in ev], [r[eval_key] for r in ev], "o-", label=eval_key.replace("_", " "))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
