"""Kept for imports written before the split: checkpoints live in `pretrain.train.checkpoints`."""

from .train.checkpoints import *  # noqa: F403
from .train.checkpoints import (  # noqa: F401
    load_model_dir,
    load_model_weights,
    load_pretrained,
    model_meta,
    read_trainer_state,
    resolve_run_dir,
    save_model_dir,
    step_dir,
    tied_keys,
)
