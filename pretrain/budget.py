"""Time budgets (`train.max_minutes`) and the learning-rate schedule they drive.

Cramming (Geiping & Goldstein, 2022) ties the schedule to the budget: the learning rate decays with
the elapsed fraction of the wall-clock budget, so a run given 3 minutes anneals fully in 3 minutes
whatever its step speed. Here the progress of a run is the larger of its step fraction
(step / max_steps) and its time fraction (training seconds / budget), so `train.max_steps` stays an
upper bound and a run without a budget keeps the plain step schedule.

Only training time counts: evaluation and checkpoint writing are excluded (`TrainClock.pause`), so a
budget means the same thing whatever `train.eval_every` is. The elapsed seconds are stored in the
checkpoint and a resumed run continues the budget where the killed one stopped.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from typing import Any


def lr_factor(
    step: int,
    progress: float,
    warmup_steps: int,
    schedule: str,
    min_lr_ratio: float,
) -> float:
    """The multiplier of the peak learning rate after `step` optimizer steps, at `progress` in [0, 1]
    of the run: a linear warm-up over the first `warmup_steps` steps (steps, not seconds: warm-up is
    about the optimizer's statistics) times a linear or cosine decay to `min_lr_ratio` at progress 1."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "constant":
        return warm
    p = min(1.0, max(0.0, progress))
    decay = 1.0 - p if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
    return warm * (min_lr_ratio + (1.0 - min_lr_ratio) * decay)


class TrainClock:
    """Seconds spent training (evaluation and checkpoints excluded), carried across resumes."""

    def __init__(self, budget_minutes: float | None, elapsed_s: float = 0.0):
        self.budget_s = None if budget_minutes is None else 60.0 * budget_minutes
        self.elapsed_before = elapsed_s  # from the checkpoint we resumed
        self.restart()

    def restart(self) -> None:
        """Start counting now (the time before the loop, building and preparing, is not training)."""
        self.started = time.perf_counter()
        self.paused_s = 0.0

    @property
    def elapsed_s(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started - self.paused_s

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Time spent in this block (evaluation, checkpointing) does not count against the budget."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - start

    def time_fraction(self) -> float:
        return 0.0 if self.budget_s is None else min(1.0, self.elapsed_s / self.budget_s)

    def spent(self) -> bool:
        return self.budget_s is not None and self.elapsed_s >= self.budget_s


def progress_fn(max_steps: int, clock: TrainClock) -> Callable[[int], float]:
    """The run's progress after `step` steps: its step fraction or its time fraction, whichever is larger."""

    def progress(step: int) -> float:
        return min(1.0, max(step / max_steps, clock.time_fraction()))

    return progress


def budget_spent(clock: TrainClock, accelerator: Any) -> tuple[bool, float]:
    """Whether the time budget is spent, and the time fraction the next step's learning rate follows. With
    several processes the main process decides both and the others follow (one tiny collective per step,
    only for budgeted multi-process runs): all stop at the same step and every replica or shard gets the
    same learning rate (each rank's own clock would drift the replicas apart)."""
    if clock.budget_s is None:
        return False, 0.0
    if accelerator.num_processes == 1:
        return clock.spent(), clock.time_fraction()
    import torch

    main = accelerator.is_main_process
    mine = [float(clock.spent()), clock.time_fraction()] if main else [0.0, 0.0]
    spent, fraction = accelerator.reduce(torch.tensor(mine, device=accelerator.device), reduction="sum").tolist()
    return spent > 0, fraction
