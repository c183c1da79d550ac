"""The one training loop, shared by pretraining and fine-tuning.

A task hands it a model, an indexable training set, a collator and an evaluation function.
Accelerate owns processes, devices and mixed precision; `distributed` spreads the model (one process,
DDP or FSDP2); the loop owns the rest: AdamW with no decay on biases and LayerNorms, the schedule
(`schedule`), clipping, gradient accumulation with the loss normalised over the whole global batch
(per token, not per micro-batch), non-finite steps skipped, evaluation, logging, checkpoints
(`checkpoints`) that resume exactly, and a save-and-exit on SIGTERM / SIGUSR1.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..budget import TrainClock, budget_spent
from ..config import ConfigError, TrainConfig
from ..data import BatchPlan, PlannedBatches, SeededExamples
from ..flops import device_peak_flops, step_flops, throughput
from ..model.losses import LossTerm
from ..targets import IGNORE_INDEX
from . import distributed
from .checkpoints import (
    CheckpointManager,
    latest_checkpoint,
    list_checkpoints,
    load_model_weights,
    read_trainer_state,
    resolve_run_dir,
    rng_state,
    save_model_dir,
    set_rng_state,
    write_durably,
)
from .schedule import learning_rate, log_schedule_change, schedule_settings, set_learning_rate

log = logging.getLogger(__name__)


@dataclass
class Task:
    model: torch.nn.Module  # after train(): the trained model, whole (unsharded) on every process
    train_data: Any  # indexable (a datasets.Dataset)
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]
    evaluate: Callable[[torch.nn.Module, Any], dict[str, float]]  # (model, accelerator) -> metrics
    tokenizer: Any = None
    export: Callable[[torch.nn.Module, Path], None] | None = None  # default: save_hf with the tokenizer
    on_evaluate: Callable[[int, dict[str, float], torch.nn.Module], None] | None = None  # e.g. keep the best model


class TrainingStopped(SystemExit):
    """SIGTERM / SIGUSR1 arrived: a checkpoint was saved at the step boundary; exit status 0, and the
    same command resumes (train.resume=auto)."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(0)
        self.step, self.signal_name = step, signal_name


def make_accelerator(cfg: TrainConfig) -> Any:
    """Without a GPU, processes started by torchrun / `accelerate launch --multi_gpu` train on the CPU
    together (gloo); Accelerate only forms that group when told to use the CPU."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=cfg.cpu or not torch.cuda.is_available(), mixed_precision=cfg.precision)
    agree_on_output_dir(cfg, accelerator)
    return accelerator


def agree_on_output_dir(cfg: TrainConfig, accelerator: Any) -> None:
    """Every process takes the main process's train.output_dir: the default run name is a timestamp,
    which two processes started a second apart would compute differently."""
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        cfg.output_dir = broadcast_object_list([cfg.output_dir])[0]


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and embeddings; not biases or LayerNorm weights (every 1-d parameter)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Fused AdamW: it takes a device-side `found_inf` flag, so a non-finite step is skipped (weights
    and moments untouched) without a host sync."""
    return torch.optim.AdamW(
        parameter_groups(model, cfg.weight_decay),
        lr=learning_rate(cfg, 0),
        betas=tuple(cfg.adam_betas),
        eps=cfg.adam_eps,
        fused=True,
    )


def prepare_output_dir(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from, before any work (the resume itself verifies it and may fall back
    to an older one). Refuses to write into a directory that already holds a run when
    train.resume=null, so no earlier checkpoint is ever overwritten by accident."""
    out = Path(cfg.output_dir)
    checkpoints = out / "checkpoints"
    if cfg.resume is None:
        if (out / "metrics.jsonl").exists() or latest_checkpoint(checkpoints):
            raise ConfigError(
                f"train.output_dir={out} already holds a run; pass train.resume=auto to continue it, "
                "or choose another train.output_dir / train.run_name"
            )
        return None
    if cfg.resume == "auto":
        return latest_checkpoint(checkpoints)
    path = resolve_run_dir(Path(cfg.resume))
    if not (path / "trainer_state.pt").exists():
        raise FileNotFoundError(f"train.resume={cfg.resume}: no checkpoint there (no trainer_state.pt)")
    return path


# ----------------------------------------------------------------------------- resuming


def working_batches(global_batch: int, world: int) -> str:
    """The (train.batch_size, train.grad_accum_steps) pairs that give `global_batch` on `world` processes."""
    if global_batch % world:
        return f"none with {world} processes; use a process count that divides {global_batch}"
    per_process = global_batch // world
    pairs = [(per_process // a, a) for a in range(1, per_process + 1) if per_process % a == 0][:4]
    return " or ".join(f"train.batch_size={b} train.grad_accum_steps={a}" for b, a in pairs)


def check_global_batch(path: Path, state: dict[str, Any], cfg: TrainConfig, world: int) -> None:
    saved = state["world_size"] * state["batch_size"] * state["grad_accum_steps"]
    ours = world * cfg.batch_size * cfg.grad_accum_steps
    if saved != ours:
        raise ConfigError(
            f"cannot resume {path}: it was trained with a global batch of {saved} ({state['world_size']} processes x "
            f"train.batch_size={state['batch_size']} x train.grad_accum_steps={state['grad_accum_steps']}), this run "
            f"has {ours} ({world} x {cfg.batch_size} x {cfg.grad_accum_steps}); keep the global batch: "
            f"{working_batches(saved, world)}"
        )


def choose_checkpoint(
    manager: CheckpointManager, candidate: Path | None, cfg: TrainConfig, accelerator: Any
) -> Path | None:
    """The main process verifies (newest first with resume=auto, falling back past damaged checkpoints
    with a warning) and tells the others."""
    chosen: Path | None = None
    if accelerator.is_main_process and candidate is not None:
        if cfg.resume == "auto":
            chosen, skipped = manager.find_intact()
        else:
            chosen, skipped = manager.find_intact([candidate])
            if chosen is None:
                raise ValueError(f"train.resume={cfg.resume}: {skipped[0]}; pass another checkpoint")
        for line in skipped:
            log.warning("checkpoint %s; falling back to the previous one", line)
        if chosen is None:
            log.warning("no intact checkpoint in %s; starting from scratch", manager.directory)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        chosen = broadcast_object_list([chosen])[0]
    return chosen


def load_checkpoint(path: Path, state: dict[str, Any], run: Run, accelerator: Any) -> None:
    """Model, optimizer (resharded to this run), GradScaler and RNG states."""
    if (path / "state").exists():
        distributed.load_training_state(run.model, run.optimizer, path / "state")
    else:  # written before checkpoints were sharded: full weights + an optimizer state dict
        load_model_weights(run.unwrapped, path / "model.safetensors")
        run.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler") and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    if len(state["rng"]) == accelerator.num_processes:
        set_rng_state(state["rng"][accelerator.process_index])
    elif accelerator.is_main_process:  # same global batch, other process count: same data order, other dropout
        log.warning(
            "resuming with %d processes instead of %d: dropout draws differ",
            accelerator.num_processes,
            len(state["rng"]),
        )


# ----------------------------------------------------------------------------- the run's state


@dataclass
class Run:
    """What the loop carries: the (wrapped) model and its optimizer, the step, and device-side counters
    of non-finite steps (read only when logging or saving)."""

    model: torch.nn.Module  # as trained: DDP-wrapped, FSDP-sharded or plain
    unwrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer  # the torch optimizer itself (Accelerate's wrapper steps it)
    step_optimizer: Any
    parallelism: str
    full_model: distributed.FullModel | None = None  # FSDP: the unsharded copy for evaluation and export
    step: int = 0
    skipped: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.long))
    skipped_in_a_row: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.long))
    clock: TrainClock = field(default_factory=lambda: TrainClock(None))  # training seconds, for train.max_minutes

    def whole_model(self) -> torch.nn.Module:
        """The model, whole, on every process (collective under FSDP)."""
        return self.full_model.refresh(self.model) if self.full_model is not None else self.unwrapped


def setup_model(task: Task, cfg: TrainConfig, accelerator: Any) -> Run:
    world = accelerator.num_processes
    parallelism = distributed.resolve_parallelism(cfg, world)
    model = task.model
    if cfg.compile and parallelism != "fsdp":
        model = torch.compile(model)  # speed only; the first steps pay the compile time
    if parallelism == "fsdp":
        full_model = distributed.FullModel(model)
        distributed.apply_fsdp(model, cfg.precision)
        optimizer = build_optimizer(model, cfg)
        run = Run(model, model, optimizer, optimizer, parallelism, full_model)
    else:
        optimizer = build_optimizer(model, cfg)
        wrapped, step_optimizer = accelerator.prepare(model, optimizer)
        run = Run(wrapped, accelerator.unwrap_model(wrapped), optimizer, step_optimizer, parallelism)
    run.skipped = run.skipped.to(accelerator.device)
    run.skipped_in_a_row = run.skipped_in_a_row.to(accelerator.device)
    if accelerator.is_main_process:
        log.info(distributed.describe(parallelism, run.model, world))
    return run


# ----------------------------------------------------------------------------- one step


def train_step(
    run: Run, micro: list[dict[str, torch.Tensor]], cfg: TrainConfig, accelerator: Any
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward and backward over the micro-batches, then one optimizer step unless the gradients are
    not finite. Returns the step's loss and the global loss counts, on the device."""
    world = accelerator.num_processes
    counts = global_target_counts(accelerator, micro)
    step_loss = torch.zeros((), device=accelerator.device)
    for i, batch in enumerate(micro):
        last = i == len(micro) - 1
        if run.parallelism == "fsdp":
            distributed.set_gradient_sync(run.model, last)
            context = _null_context()
        else:
            context = _null_context() if last else accelerator.no_sync(run.model)
        with context:
            output = run.model(**batch)
            loss = normalised_loss(output.loss_terms, counts)
            accelerator.backward(loss * world)  # DDP / FSDP average over processes; we want the global sum
        step_loss += loss.detach().float()
    if run.parallelism == "fsdp":
        norm = distributed.total_grad_norm(run.model, cfg.max_grad_norm)
    else:  # Accelerate unscales fp16 gradients first
        norm = accelerator.clip_grad_norm_(run.model.parameters(), cfg.max_grad_norm or float("inf"))
    bad = ~torch.isfinite(norm)  # a non-finite loss gives non-finite gradients
    if accelerator.scaler is None:  # fp16: the GradScaler skips such steps itself
        run.optimizer.found_inf = bad.float()
    set_learning_rate(run.optimizer, learning_rate(cfg, run.step, run.clock.time_fraction()))
    run.step_optimizer.step()
    run.step_optimizer.zero_grad(set_to_none=True)
    run.skipped += bad
    run.skipped_in_a_row.mul_(bad).add_(bad)
    run.step += 1
    return step_loss, counts


def check_skipped_steps(run: Run, cfg: TrainConfig) -> int:
    """Host read of the non-finite step counters (when logging or saving): stops the run after
    train.max_bad_steps skipped steps in a row, before anything is saved."""
    total, in_a_row = (int(v) for v in torch.stack([run.skipped, run.skipped_in_a_row]).tolist())
    if in_a_row >= cfg.max_bad_steps:
        raise FloatingPointError(
            f"{in_a_row} steps in a row up to step {run.step} had a non-finite loss or gradient (train.max_bad_steps="
            f"{cfg.max_bad_steps}); their updates were skipped and no checkpoint was written. Lower train.lr, use "
            "train.precision=bf16 or no, and resume from the last checkpoint"
        )
    return total


# ----------------------------------------------------------------------------- the loop


def train(task: Task, cfg: TrainConfig, seed: int, run_config: dict | None = None, accelerator: Any = None) -> dict:
    """Runs `task` up to cfg.max_steps optimizer steps. Returns the final evaluation metrics; raises
    TrainingStopped (exit status 0) after saving when SIGTERM / SIGUSR1 arrives."""
    accelerator = accelerator or make_accelerator(cfg)
    out = Path(cfg.output_dir)
    candidate = prepare_output_dir(cfg)
    accelerator.wait_for_everyone()
    main, world = accelerator.is_main_process, accelerator.num_processes

    run = setup_model(task, cfg, accelerator)
    manager = CheckpointManager(out / "checkpoints", cfg.keep_last, main, accelerator.wait_for_everyone)
    resumed = choose_checkpoint(manager, candidate, cfg, accelerator)
    state = read_trainer_state(resumed) if resumed is not None else None
    if state is not None:
        check_global_batch(resumed, state, cfg, world)
        load_checkpoint(resumed, state, run, accelerator)
        run.step = state["step"]
        run.skipped += state.get("skipped_steps", 0)
        run.clock = TrainClock(cfg.max_minutes, state.get("elapsed_s", 0.0))
        if main:
            log.info("resuming from %s (step %d)", resumed, run.step)
            log_schedule_change(state.get("schedule"), cfg, run.step)
    manager.accept(resumed)  # the resume is accepted: now the run's files may change
    if main and run_config is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_durably(out / "config.json", json.dumps(run_config, indent=2))

    batches = iter(make_loader(task, cfg, seed, run.step, accelerator))
    # resuming (even from nothing: killed before its first checkpoint) drops what was logged past `step`
    metrics = MetricsLog(out, cfg, main, run.step if cfg.resume is not None else None, run_config or {})
    if state is None:
        run.clock = TrainClock(cfg.max_minutes)
    progress = Progress(cfg, run.step, main, device_peak_flops(accelerator.device, cfg.precision, cfg.peak_flops))
    last_eval: dict[str, float] = {}
    run.model.train()
    run.clock.restart()  # building and preparing is not training time
    done = run.step >= cfg.max_steps or budget_spent(run.clock, accelerator)
    with StopSignals() as stop:
        try:
            while not done:
                micro = [_to_device(next(batches), accelerator.device) for _ in range(cfg.grad_accum_steps)]
                step_loss, counts = train_step(run, micro, cfg, accelerator)
                progress.count(micro, step_flops(run.unwrapped, micro, counts, accelerator.num_processes))
                step = run.step
                done = step >= cfg.max_steps or budget_spent(run.clock, accelerator)
                if step % cfg.log_every == 0 or done:
                    log_step(run, cfg, accelerator, step_loss, progress, metrics)
                progress.bar.update(1)
                if (cfg.eval_every and step % cfg.eval_every == 0) or done:
                    with run.clock.pause():
                        last_eval = evaluate(task, run, accelerator, metrics, progress)
                stopping = stop.requested(accelerator, step, cfg.log_every)
                if (cfg.save_every and step % cfg.save_every == 0) or done or stopping:
                    with run.clock.pause():
                        save(manager, run, cfg, task, accelerator)
                if stopping:
                    if main:
                        log.warning("%s: checkpoint saved at step %d; run the same command to resume", stop.name, step)
                    raise TrainingStopped(step, stop.name)
        finally:
            progress.bar.close()
            metrics.close()

    whole = run.whole_model()
    task.model = whole
    if main:
        if cfg.plot:
            plot_losses(out / "metrics.jsonl", out / "loss_curve.png")
        if cfg.export:
            export_dir = out / "export"
            if task.export is not None:
                task.export(whole, export_dir)
            else:
                from ..interop import save_hf

                save_hf(whole, export_dir, tokenizer=task.tokenizer)
            log.info("exported a Hugging Face model to %s", export_dir)
    accelerator.wait_for_everyone()
    return last_eval


def make_loader(task: Task, cfg: TrainConfig, seed: int, step: int, accelerator: Any) -> torch.utils.data.DataLoader:
    """This process's micro-batches from optimizer step `step` on: the data position is index
    arithmetic on the global batch plan, so it does not depend on how the batch is split."""
    world = accelerator.num_processes
    plan = BatchPlan(len(task.train_data), cfg.batch_size * world, seed)
    sampler = PlannedBatches(
        plan, start=step * cfg.grad_accum_steps, rank=accelerator.process_index, world_size=world, seed=seed
    )
    return torch.utils.data.DataLoader(
        SeededExamples(task.train_data),
        batch_sampler=sampler,
        collate_fn=task.collate,
        num_workers=cfg.num_workers,
        generator=torch.Generator(),  # never draws from the global RNG
    )


def save(manager: CheckpointManager, run: Run, cfg: TrainConfig, task: Task, accelerator: Any) -> Path:
    """Collective. Refuses (raises) when the run is in a streak of non-finite steps."""
    skipped = check_skipped_steps(run, cfg)
    rng_states = _gather(accelerator, rng_state())

    def write_main(directory: Path) -> None:
        # a sharded run's weights are only in state/; the others also keep the plain safetensors file
        save_model_dir(run.unwrapped, directory, write_weights=run.parallelism != "fsdp")
        trainer_state = {
            "step": run.step,
            "micro_batches": run.step * cfg.grad_accum_steps,
            "rng": rng_states,
            "world_size": accelerator.num_processes,
            "batch_size": cfg.batch_size,
            "grad_accum_steps": cfg.grad_accum_steps,
            "parallelism": run.parallelism,
            "schedule": schedule_settings(cfg),
            "skipped_steps": skipped,
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "elapsed_s": run.clock.elapsed_s,
        }
        torch.save(trainer_state, directory / "trainer_state.pt")
        if task.tokenizer is not None:
            task.tokenizer.save_pretrained(str(directory))

    path = manager.save(run.step, lambda d: distributed.save_training_state(run.model, run.optimizer, d), write_main)
    if accelerator.is_main_process:
        log.info("checkpoint: %s", path)
    return path


def evaluate(task: Task, run: Run, accelerator: Any, metrics: MetricsLog, progress: Progress) -> dict[str, float]:
    model = run.whole_model()  # FSDP: gathered, so the task's evaluation runs unchanged
    run.model.eval()
    model.eval()
    with torch.no_grad():
        result = task.evaluate(model, accelerator)
    run.model.train()
    model.train()
    metrics.write(run.step, {**{f"eval_{k}": v for k, v in result.items()}, "train_seconds": run.clock.elapsed_s})
    if task.on_evaluate is not None:
        task.on_evaluate(run.step, result, model)
    if accelerator.is_main_process:
        progress.bar.write(f"step {run.step}: " + ", ".join(f"{k}={v:.4f}" for k, v in result.items()))
    return result


class Progress:
    """The progress bar and the throughput between logged steps (tokens and FLOPs counted on the device;
    evaluation and checkpoint time excluded)."""

    def __init__(self, cfg: TrainConfig, step: int, main: bool, peak_flops: float | None = None):
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=cfg.max_steps,
            initial=step,
            disable=not main,
            desc="training",
            dynamic_ncols=True,
            mininterval=0.5 if sys.stderr.isatty() else 30,
        )  # a log file gets a line every 30 s
        self.peak_flops = peak_flops
        self.tokens: Any = 0
        self.flops: Any = 0.0
        self.window_start, self.window_paused = time.perf_counter(), 0.0

    def count(self, micro: list[dict[str, torch.Tensor]], flops: Any) -> None:
        for batch in micro:  # a tensor sum, read only when logging: no device sync per micro-batch
            self.tokens += batch["attention_mask"].sum() if "attention_mask" in batch else batch["input_ids"].numel()
        self.flops += flops

    def throughput(self, world: int, clock: TrainClock) -> dict[str, float]:
        """Read and reset at each logged step."""
        seconds = time.perf_counter() - self.window_start - (clock.paused_s - self.window_paused)
        values = throughput(float(self.tokens) * world, self.flops, seconds, self.peak_flops)
        self.tokens, self.flops = 0, 0.0
        self.window_start, self.window_paused = time.perf_counter(), clock.paused_s
        return values


def log_step(
    run: Run, cfg: TrainConfig, accelerator: Any, step_loss: torch.Tensor, progress: Progress, metrics: MetricsLog
) -> None:
    loss_value = accelerator.reduce(step_loss, reduction="sum").item()
    skipped = check_skipped_steps(run, cfg)
    values = {
        "loss": loss_value,
        "lr": learning_rate(cfg, run.step - 1, run.clock.time_fraction()),
        **progress.throughput(accelerator.num_processes, run.clock),
        "train_seconds": run.clock.elapsed_s,  # evaluation and checkpoints excluded; carried over resumes
    }
    if skipped:
        values["skipped_steps"] = skipped
    if not math.isfinite(loss_value):
        log.warning(
            "step %d: the loss is %s; the update was skipped (%d skipped so far)", run.step, loss_value, skipped
        )
        return
    progress.bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{values['lr']:.2e}", tok_s=f"{values['tokens_per_s']:.0f}")
    metrics.write(run.step, values)


class StopSignals:
    """SIGTERM / SIGUSR1 (what schedulers send before killing a job) request a save at the next step
    boundary and a clean exit. With several processes they agree at logged steps (one all-reduce there)."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self) -> None:
        self.name: str | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                if hasattr(signal, name):
                    number = getattr(signal, name)
                    self.previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: Any) -> None:
        self.name = signal.Signals(number).name
        log.warning("%s received: saving a checkpoint at the next step boundary, then exiting", self.name)

    def __exit__(self, *exc: Any) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def requested(self, accelerator: Any, step: int, every: int) -> bool:
        if accelerator.num_processes == 1:
            return self.name is not None
        if step % every:
            return False
        flag = torch.tensor(float(self.name is not None), device=accelerator.device)
        if accelerator.reduce(flag, reduction="sum").item() > 0:
            self.name = self.name or "SIGTERM"
            return True
        return False


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
            kept = [line for line in read_metrics_lines(self.path) if json.loads(line)["step"] <= resumed_step]
            write_durably(self.path, "".join(line + "\n" for line in kept))
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


def read_metrics_lines(path: Path) -> list[str]:
    """The lines of metrics.jsonl; a torn last line (a write cut short by a kill) is dropped with a
    warning, a bad line elsewhere is an error."""
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        try:
            json.loads(line)
        except ValueError:
            if i == len(lines) - 1:
                log.warning("%s: the last line is torn (%r), a write cut short; ignoring it", path, line[:60])
                return lines[:-1]
            raise ValueError(
                f"{path} line {i + 1} is not JSON ({line[:60]!r}); remove that line to resume this run"
            ) from None
    return lines


def _null_context() -> Any:
    import contextlib

    return contextlib.nullcontext()


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


TARGET_KEYS = ("labels", "next_sentence_label", "start_positions", "lm_labels")  # what loss terms average over


def target_count(targets: torch.Tensor) -> torch.Tensor:
    """The targets a loss averages over: entries != IGNORE_INDEX (every entry of float regression labels)."""
    return torch.tensor(targets.numel()) if targets.is_floating_point() else (targets != IGNORE_INDEX).sum()


def global_target_counts(accelerator: Any, micro: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Targets under each target key over all micro-batches and processes: the loss denominators, so a
    step's loss is the mean over every target of the global batch, whatever its split into micro-batches,
    processes and padding. One reduction per step, no host sync."""
    keys = [key for key in TARGET_KEYS if key in micro[0]]
    local = torch.stack([sum(target_count(b[k]).to(accelerator.device) for b in micro).float() for k in keys])
    total = accelerator.reduce(local, reduction="sum") if accelerator.num_processes > 1 else local
    return {k: total[i].clamp(min=1) for i, k in enumerate(keys)}


def normalised_loss(terms: dict[str, LossTerm], counts: dict[str, torch.Tensor]) -> torch.Tensor:
    """This micro-batch's share of the step loss: each term's sum over the global count of its targets."""
    return sum(term.total / counts[term.targets] for term in terms.values())


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

    rows = [json.loads(line) for line in read_metrics_lines(metrics_file)] if metrics_file.exists() else []
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


__all__ = [
    "Task",
    "TrainingStopped",
    "build_optimizer",
    "list_checkpoints",
    "make_accelerator",
    "parameter_groups",
    "prepare_output_dir",
    "train",
]
