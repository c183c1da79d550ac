"""What a run reports: the progress bar and throughput (tokens/s, MFU), metrics.jsonl / TensorBoard /
W&B, and the loss curve."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..budget import TrainClock
from ..config import TrainConfig
from ..errors import ConfigError, DataError
from ..flops import throughput
from .checkpoints import write_durably

log = logging.getLogger(__name__)


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
        self.tokens: Any = 0  # positions the model computed, padding included (what the FLOPs count)
        self.real_tokens: Any = 0  # of which not padding
        self.flops: Any = 0.0
        self.window_start, self.window_paused = time.perf_counter(), 0.0

    def count(self, micro: list[dict[str, torch.Tensor]], flops: Any) -> None:
        for batch in micro:  # a tensor sum, read only when logging: no device sync per micro-batch
            positions = batch["input_ids"].numel()
            self.tokens += positions
            self.real_tokens += batch["attention_mask"].sum() if "attention_mask" in batch else positions
        self.flops += flops

    def throughput(self, clock: TrainClock, accelerator: Any = None) -> dict[str, float]:
        """Read and reset at each logged step; summed over the processes (collective when there are several:
        length-grouped batches give processes and micro-batches different widths, so no one stands for all)."""
        seconds = time.perf_counter() - self.window_start - (clock.paused_s - self.window_paused)
        counts = [self.tokens, self.real_tokens, self.flops]
        if accelerator is not None and accelerator.num_processes > 1:
            local = torch.tensor([float(c) for c in counts], dtype=torch.float64, device=accelerator.device)
            counts = accelerator.reduce(local, reduction="sum").tolist()
        values = throughput(*counts, seconds, self.peak_flops)
        self.tokens, self.real_tokens, self.flops = 0, 0, 0.0
        self.window_start, self.window_paused = time.perf_counter(), clock.paused_s
        return values


def check_wandb(cfg: TrainConfig) -> None:
    """train.wandb_project needs wandb installed: checked when a run starts, before its data are prepared
    (not in TrainConfig.validate: `python -m pretrain.prepare` takes the same overrides and logs nothing)."""
    import importlib.util

    if cfg.wandb_project and importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            f"train.wandb_project={cfg.wandb_project} needs the wandb package: pip install wandb, or remove "
            "train.wandb_project (metrics.jsonl and TensorBoard are always written)"
        )


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
        with self.path.open("a", encoding="utf-8") as f:
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
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        try:
            json.loads(line)
        except ValueError:
            if i == len(lines) - 1:
                log.warning("%s: the last line is torn (%r), a write cut short; ignoring it", path, line[:60])
                return lines[:-1]
            raise DataError(
                f"{path} line {i + 1} is not JSON ({line[:60]!r}); remove that line to resume this run"
            ) from None
    return lines


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
