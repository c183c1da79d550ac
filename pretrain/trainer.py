"""Kept for imports written before the split: the loop lives in `pretrain.train.loop`."""

from .train.loop import *  # noqa: F403
from .train.loop import MetricsLog, Run, make_loader, plot_losses, train_step  # noqa: F401
