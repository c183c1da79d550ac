"""The one training loop, shared by pretraining and fine-tuning.

A task hands it a model, an indexable training set, a collator and an evaluation function.
Accelerate owns processes, devices and mixed precision; `distributed` spreads the model (one process,
DDP or FSDP2). The loop owns the step: gradient accumulation with the loss normalised over the whole
global batch (each loss term over its targets, counted once per step: `global_target_counts`),
clipping, non-finite steps skipped, evaluation, checkpoints (`checkpoints`, `resume`) that resume
exactly, the optimizer and schedule (`optim`), logging (`metrics`) and a save-and-exit on SIGTERM /
SIGUSR1 (`signals`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..budget import TrainClock, budget_spent
from ..config import ImplConfig, TrainConfig
from ..data import BatchPlan, PlannedBatches, SeededExamples
from ..flops import device_peak_flops, step_flops
from ..model.losses import LossTerm
from ..targets import IGNORE_INDEX
from . import distributed
from .checkpoints import (
    CheckpointManager,
    read_trainer_state,
    rng_state,
    save_model_dir,
    write_durably,
)
from .host import keep_freed_memory
from .metrics import MetricsLog, Progress, plot_losses
from .optim import (
    apply_optimizer_settings,
    build_optimizer,
    learning_rate,
    log_schedule_change,
    schedule_settings,
    set_learning_rate,
)
from .resume import (
    check_global_batch,
    check_length_grouping,
    check_same_model,
    choose_checkpoint,
    load_checkpoint,
    log_data_change,
    prepare_output_dir,
    unlock_output_dir,
)
from .signals import StopSignals, TrainingStopped, ignore_stop_signals

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
    # epoch -> each training example's length: batches then hold similar lengths (less padding computed)
    lengths: Callable[[int], Any] | None = None
    data_digest: str | None = None  # what the data files hold (recorded in checkpoints; a resume names a change)


def make_accelerator(cfg: TrainConfig, impl: ImplConfig) -> Any:
    """Without a GPU, processes started by torchrun / `accelerate launch --multi_gpu` train on the CPU
    together (gloo); Accelerate only forms that group when told to use the CPU."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=impl.cpu or not torch.cuda.is_available(), mixed_precision=impl.precision)
    if accelerator.device.type == "cpu":
        keep_freed_memory()  # the step's large tensors reuse freed memory instead of page-faulting it in
    agree_on_output_dir(cfg, accelerator)
    return accelerator


def agree_on_output_dir(cfg: TrainConfig, accelerator: Any) -> None:
    """Every process takes the main process's train.output_dir: the default run name is a timestamp,
    which two processes started a second apart would compute differently."""
    (cfg.output_dir,) = distributed.from_main(accelerator, cfg.output_dir)


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
    time_fraction: float = 0.0  # of the budget, as the main process read it at the last step (the schedule's)

    def whole_model(self) -> torch.nn.Module:
        """The model, whole, on every process (collective under FSDP)."""
        return self.full_model.refresh(self.model) if self.full_model is not None else self.unwrapped


def setup_model(task: Task, cfg: TrainConfig, impl: ImplConfig, accelerator: Any) -> Run:
    world = accelerator.num_processes
    parallelism = distributed.resolve_parallelism(impl, world)
    model = task.model
    if impl.compile and parallelism != "fsdp":
        model = torch.compile(model)  # speed only; the first steps pay the compile time
    elif impl.compile and accelerator.is_main_process:  # FSDP2's hooks on each block: not compiled here
        log.warning("impl.compile=true is not applied under FSDP: the sharded model runs eagerly")
    if parallelism == "fsdp":
        full_model = distributed.FullModel(model)
        distributed.apply_fsdp(model, impl.precision)
        optimizer = build_optimizer(model, cfg)
        run = Run(model, model, optimizer, optimizer, parallelism, full_model)
    else:
        optimizer = build_optimizer(model, cfg)
        wrapped, step_optimizer = accelerator.prepare(model, optimizer)
        # task.model, not unwrap_model(wrapped): under impl.compile that would be the compiled wrapper,
        # whose state dict and class are not the model's (saving and export need the model itself)
        run = Run(wrapped, task.model, optimizer, step_optimizer, parallelism)
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
    set_learning_rate(run.optimizer, learning_rate(cfg, run.step, run.time_fraction))
    run.step_optimizer.step()
    run.step_optimizer.zero_grad(set_to_none=True)
    run.skipped += bad
    run.skipped_in_a_row.mul_(bad).add_(bad)
    run.step += 1
    return step_loss, counts


def check_skipped_steps(run: Run, cfg: TrainConfig, untrained_refused: bool = False) -> int:
    """Host read of the non-finite step counters (when logging or saving): stops the run after
    train.max_bad_steps skipped steps in a row, before anything is saved; `untrained_refused`: also
    when none of the run's steps was applied (its final save and export would be the untrained start)."""
    total, in_a_row = (int(v) for v in torch.stack([run.skipped, run.skipped_in_a_row]).tolist())
    if untrained_refused and 0 < run.step <= in_a_row:
        raise FloatingPointError(
            f"every step of the run ({run.step}) had a non-finite loss or gradient: nothing was trained, so nothing "
            "is saved. Check the data's targets and the model settings, lower train.lr, or use impl.precision=no"
        )
    if in_a_row >= cfg.max_bad_steps:
        raise FloatingPointError(
            f"{in_a_row} steps in a row up to step {run.step} had a non-finite loss or gradient (train.max_bad_steps="
            f"{cfg.max_bad_steps}); their updates were skipped and no checkpoint was written. Lower train.lr, use "
            "impl.precision=bf16 or no, and resume from the last checkpoint"
        )
    return total


# ----------------------------------------------------------------------------- the loop


def train(
    task: Task,
    cfg: TrainConfig,
    seed: int,
    run_config: dict | None = None,
    accelerator: Any = None,
    impl: ImplConfig | None = None,
) -> dict:
    """Runs `task` up to cfg.max_steps optimizer steps (or train.max_minutes). Returns the final
    evaluation metrics; raises TrainingStopped (exit status 0) after saving when SIGTERM / SIGUSR1 arrives."""
    impl = impl or ImplConfig()
    accelerator = accelerator or make_accelerator(cfg, impl)
    run, manager = start_run(task, cfg, impl, accelerator, run_config)
    batches = iter(make_loader(task, cfg, seed, run.step, accelerator, impl.num_workers))
    out = Path(cfg.output_dir)
    # resuming (even from nothing: killed before its first checkpoint) drops what was logged past `step`
    metrics = MetricsLog(
        out, cfg, accelerator.is_main_process, run.step if cfg.resume is not None else None, run_config or {}
    )
    peak = device_peak_flops(accelerator.device, impl.precision, cfg.peak_flops)
    progress = Progress(cfg, run.step, accelerator.is_main_process, peak)
    last_eval: dict[str, float] = {}
    run.model.train()
    run.clock.restart()  # building and preparing is not training time
    spent, run.time_fraction = budget_spent(run.clock, accelerator)
    done = run.step >= cfg.max_steps or spent
    with StopSignals() as stop:
        try:
            if done:  # a finished run's command run again: nothing to train, but its final metrics are wanted
                if accelerator.is_main_process:
                    limit = f"train.max_steps={cfg.max_steps}" if run.step >= cfg.max_steps else "the time budget"
                    log.info("nothing left to train: step %d reached %s; evaluating the final model", run.step, limit)
                last_eval = evaluate(task, run, accelerator, metrics, progress, record=False)
            while not done:
                micro = [_to_device(next(batches), accelerator.device) for _ in range(cfg.grad_accum_steps)]
                step_loss, counts = train_step(run, micro, cfg, accelerator)
                progress.count(micro, step_flops(run.unwrapped, micro))
                step = run.step
                spent, run.time_fraction = budget_spent(run.clock, accelerator)
                done = step >= cfg.max_steps or spent
                if step % cfg.log_every == 0 or done:
                    log_step(run, cfg, accelerator, step_loss, progress, metrics)
                progress.bar.update(1)
                if (cfg.eval_every and step % cfg.eval_every == 0) or done:
                    with run.clock.pause():
                        last_eval = evaluate(task, run, accelerator, metrics, progress)
                stopping = stop.requested(accelerator, step, cfg.log_every)
                if (cfg.save_every and step % cfg.save_every == 0) or done or stopping:
                    with run.clock.pause():
                        save(manager, run, cfg, task, accelerator, final=done and not stopping)
                if stopping:
                    if accelerator.is_main_process:
                        log.warning("%s: checkpoint saved at step %d; run the same command to resume", stop.name, step)
                    raise TrainingStopped(step, stop.name)
        finally:
            progress.bar.close()
            metrics.close()
    if run.step < min(cfg.max_steps, cfg.warmup_steps) and accelerator.is_main_process:  # stopped by the budget
        log.warning(
            "the time budget (train.max_minutes=%s) ended the run at step %d, inside its warm-up of "
            "train.warmup_steps=%d: the learning rate never reached train.lr, so the model is barely trained; "
            "raise train.max_minutes or lower train.warmup_steps",
            cfg.max_minutes,
            run.step,
            cfg.warmup_steps,
        )
    finish_run(task, run, cfg, accelerator)
    unlock_output_dir(out)
    return last_eval


def start_run(
    task: Task, cfg: TrainConfig, impl: ImplConfig, accelerator: Any, run_config: dict | None
) -> tuple[Run, CheckpointManager]:
    """The model set up on the processes and, when a checkpoint is found (and verified), resumed from it."""
    out = Path(cfg.output_dir)
    candidate = prepare_output_dir(cfg, accelerator)
    accelerator.wait_for_everyone()
    main, world = accelerator.is_main_process, accelerator.num_processes
    run = setup_model(task, cfg, impl, accelerator)
    manager = CheckpointManager(out / "checkpoints", cfg.keep_last, main, accelerator.wait_for_everyone)
    resumed = choose_checkpoint(manager, candidate, cfg, accelerator)
    state = read_trainer_state(resumed) if resumed is not None else None
    run.clock = TrainClock(cfg.max_minutes)
    if state is not None:
        check_same_model(resumed, run.unwrapped)
        check_global_batch(resumed, state, cfg, world)
        check_length_grouping(resumed, state, task.lengths is not None)
        load_checkpoint(resumed, state, run, accelerator)
        optimizer_changes = apply_optimizer_settings(run.optimizer, cfg)
        run.step = state["step"]
        run.skipped += state.get("skipped_steps", 0)
        run.clock = TrainClock(cfg.max_minutes, state.get("elapsed_s", 0.0))
        if main:
            log.info("resuming from %s (step %d)", resumed, run.step)
            log_schedule_change(state.get("schedule"), cfg, run.step)
            if cfg.grad_accum_steps > 1 and state.get("batch_plan") is None:
                log.warning("%s was written by a version whose epochs were cut into global batches, not optimizer "
                            "steps: with gradient accumulation, the examples after its first epoch boundary are not "
                            "the ones it would have trained on", resumed.name)  # fmt: skip
            if task.data_digest and state.get("data_digest") not in (None, task.data_digest):
                log.warning("the data files changed since the checkpoint (sizes or contents): they were prepared "
                            "again, and the run trains on the new data from step %d", run.step)  # fmt: skip
            if optimizer_changes:
                log.warning("the optimizer settings changed since the checkpoint (%s); they apply from step %d on",
                            ", ".join(optimizer_changes), run.step)  # fmt: skip
            if run_config is not None:
                log_data_change(out / "config.json", run_config, run.step)
    manager.accept(resumed)  # the resume is accepted: now the run's files may change
    if main and run_config is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_durably(out / "config.json", json.dumps(run_config, indent=2))
    return run, manager


def finish_run(task: Task, run: Run, cfg: TrainConfig, accelerator: Any) -> None:
    """The trained model, whole, back in the task; the loss curve and the export on the main process."""
    whole = run.whole_model()
    task.model = whole
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
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


def make_loader(
    task: Task, cfg: TrainConfig, seed: int, step: int, accelerator: Any, num_workers: int = 0
) -> torch.utils.data.DataLoader:
    """This process's micro-batches from optimizer step `step` on: the data position is index
    arithmetic on the global batch plan, so it does not depend on how the batch is split."""
    world = accelerator.num_processes
    plan = BatchPlan(
        len(task.train_data),
        cfg.batch_size * world,
        seed,
        lengths=task.lengths,
        step_batch_size=cfg.batch_size
        * world
        * cfg.grad_accum_steps,  # epochs (and length groups) of whole optimizer steps
    )
    sampler = PlannedBatches(
        plan, start=step * cfg.grad_accum_steps, rank=accelerator.process_index, world_size=world, seed=seed
    )
    return torch.utils.data.DataLoader(
        SeededExamples(task.train_data),
        batch_sampler=sampler,
        collate_fn=task.collate,
        num_workers=num_workers,
        generator=torch.Generator(),  # never draws from the global RNG
        worker_init_fn=ignore_stop_signals if num_workers else None,
    )


def save(
    manager: CheckpointManager, run: Run, cfg: TrainConfig, task: Task, accelerator: Any, final: bool = False
) -> Path:
    """Collective. Refuses (raises) when the run is in a streak of non-finite steps, or, at its end,
    when none of its steps was applied (fp16's loss scaler skips its first steps by design: not then)."""
    skipped = check_skipped_steps(run, cfg, untrained_refused=final and accelerator.scaler is None)
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
            "length_grouped": task.lengths is not None,
            "parallelism": run.parallelism,
            "schedule": schedule_settings(cfg),
            "skipped_steps": skipped,
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "elapsed_s": run.clock.elapsed_s,
            "data_digest": task.data_digest,
            "batch_plan": 2,  # epochs of whole optimizer steps (BatchPlan); 1, unwritten: of global batches
        }
        torch.save(trainer_state, directory / "trainer_state.pt")
        if task.tokenizer is not None:
            task.tokenizer.save_pretrained(str(directory))

    path = manager.save(run.step, lambda d: distributed.save_training_state(run.model, run.optimizer, d), write_main)
    if accelerator.is_main_process:
        log.info("checkpoint: %s", path)
    return path


def evaluate(
    task: Task, run: Run, accelerator: Any, metrics: MetricsLog, progress: Progress, record: bool = True
) -> dict[str, float]:
    """The task's evaluation of the current model; `record=False` (a step already evaluated and logged) leaves
    metrics.jsonl and the task's on_evaluate (its best model) alone."""
    model = run.whole_model()  # FSDP: gathered, so the task's evaluation runs unchanged
    run.model.eval()
    model.eval()
    with torch.no_grad():
        result = task.evaluate(model, accelerator)
    run.model.train()
    model.train()
    if record:
        metrics.write(run.step, {**{f"eval_{k}": v for k, v in result.items()}, "train_seconds": run.clock.elapsed_s})
    if record and task.on_evaluate is not None:
        task.on_evaluate(run.step, result, model)
    if accelerator.is_main_process:
        progress.bar.write(f"step {run.step}: " + ", ".join(f"{k}={v:.4f}" for k, v in result.items()))
    return result


def log_step(
    run: Run, cfg: TrainConfig, accelerator: Any, step_loss: torch.Tensor, progress: Progress, metrics: MetricsLog
) -> None:
    loss_value = accelerator.reduce(step_loss, reduction="sum").item()
    skipped = check_skipped_steps(run, cfg)
    values = {
        "loss": loss_value,
        "lr": learning_rate(cfg, run.step - 1, run.time_fraction),
        **progress.throughput(run.clock, accelerator),
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
