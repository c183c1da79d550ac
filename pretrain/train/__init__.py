"""Training: the loop (`loop`), checkpoints (`checkpoints`), how the model is spread over processes
(`distributed`) and the learning-rate schedule (`schedule`)."""

from .checkpoints import CheckpointManager, latest_checkpoint, list_checkpoints, load_pretrained
from .loop import Task, TrainingStopped, make_accelerator, prepare_output_dir, train

__all__ = [
    "CheckpointManager",
    "Task",
    "TrainingStopped",
    "latest_checkpoint",
    "list_checkpoints",
    "load_pretrained",
    "make_accelerator",
    "prepare_output_dir",
    "train",
]
