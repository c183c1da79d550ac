"""Preemption: SIGTERM / SIGUSR1 (and a first Ctrl-C) ask for a checkpoint at the next step boundary and a clean
exit (status 0)."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import torch

log = logging.getLogger(__name__)


class TrainingStopped(SystemExit):
    """SIGTERM / SIGUSR1 arrived: a checkpoint was saved at the step boundary; exit status 0, and the
    same command resumes (train.resume=auto)."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(0)
        self.step, self.signal_name = step, signal_name


class StopSignals:
    """SIGTERM / SIGUSR1 (what schedulers send before killing a job) request a save at the next step
    boundary and a clean exit. With several processes they agree at logged steps (one all-reduce there)."""

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")  # SIGINT: Ctrl-C; a second one stops at once, unsaved

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
        if number == signal.SIGINT and self.name == "SIGINT":
            raise KeyboardInterrupt
        self.name = signal.Signals(number).name
        again = " (Ctrl-C again: stop now, unsaved)" if number == signal.SIGINT else ""
        log.warning("%s received: saving a checkpoint at the next step boundary, then exiting%s", self.name, again)

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


def ignore_stop_signals(worker_id: int) -> None:
    """Data workers leave Ctrl-C / SIGTERM to the main process, which saves at the step boundary (torchrun sends
    them to the whole process group; a worker that died of one ended the run in a DataLoader error, unsaved)."""
    for name in StopSignals.SIGNALS:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
