"""The optimizer (AdamW, no decay on biases and norms) and the learning-rate schedule, a pure function of
the step and the settings.

No scheduler object holds state, so a run resumed with another `train.lr`, `train.schedule` or
`train.warmup_steps` follows the new settings from its resume step (the change is logged), and a
schedule that follows elapsed time instead of steps only has to change `learning_rate`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from .. import budget
from ..config import TrainConfig

log = logging.getLogger(__name__)

# the settings that shape the schedule; saved with each checkpoint to report a change on resume
SCHEDULE_KEYS = ("lr", "schedule", "warmup_steps", "max_steps", "min_lr_ratio", "max_minutes")


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Multiplier of train.lr for optimizer step `step` (0-based): linear warmup, then decay."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    decay = 1.0 - progress if cfg.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay


def learning_rate(cfg: TrainConfig, step: int, time_fraction: float = 0.0) -> float:
    """With a time budget (`train.max_minutes`) the decay follows the run's progress: its step or its
    time fraction, whichever is further along (pretrain.budget); without one, the step schedule."""
    if cfg.max_minutes is None:
        return cfg.lr * lr_factor(cfg, step)
    progress = min(1.0, max(step / cfg.max_steps, time_fraction))
    return cfg.lr * budget.lr_factor(step, progress, cfg.warmup_steps, cfg.schedule, cfg.min_lr_ratio)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def schedule_settings(cfg: TrainConfig) -> dict[str, Any]:
    return {key: getattr(cfg, key) for key in SCHEDULE_KEYS}


def log_schedule_change(saved: dict[str, Any] | None, cfg: TrainConfig, step: int) -> list[str]:
    """Names the schedule settings that differ from the checkpoint's; they apply from `step` on."""
    if not saved:
        return []
    changed = [f"train.{k}: {saved[k]} -> {getattr(cfg, k)}" for k in SCHEDULE_KEYS if saved.get(k) != getattr(cfg, k)]
    if changed:
        log.warning(
            "the schedule changed since the checkpoint (%s); it applies from step %d on (lr now %.3g)",
            ", ".join(changed),
            step,
            learning_rate(cfg, step),
        )
    return changed


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and embeddings; not biases or LayerNorm weights (every 1-d parameter)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def apply_optimizer_settings(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> list[str]:
    """After a resume the parameter groups hold the checkpoint's weight decay, betas and eps (loading the
    optimizer state restores them): this run's values replace them. Returns the changes, for the log."""
    names = {"weight_decay": "train.weight_decay", "betas": "train.adam_betas", "eps": "train.adam_eps"}
    changed: dict[str, str] = {}
    for index, group in enumerate(optimizer.param_groups):  # parameter_groups: decayed first, then the rest
        decay = cfg.weight_decay if index == 0 else 0.0
        for key, value in {"weight_decay": decay, "betas": tuple(cfg.adam_betas), "eps": cfg.adam_eps}.items():
            if (tuple(group[key]) if key == "betas" else group[key]) != value:
                changed.setdefault(key, f"{names[key]}: {group[key]} -> {value}")
                group[key] = value
    return list(changed.values())


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
