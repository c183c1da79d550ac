"""Training: one loop for pretraining and fine-tuning.

    loop.py         Task, train(), one step (the loss normalised over the global batch), evaluation, saving
    resume.py       the output directory and the checkpoint a run continues from
    checkpoints.py  the checkpoint manager (atomic, verified, retention) and model directories
    distributed.py  one process, DDP or FSDP2; sharded training state through torch.distributed.checkpoint
    optim.py        AdamW and the learning-rate schedule (a pure function of step and settings)
    metrics.py      progress, throughput and MFU, metrics.jsonl / TensorBoard / W&B, the loss curve
    signals.py      SIGTERM / SIGUSR1: save at the step boundary and exit 0
    host.py         the CPU's memory allocator: freed blocks reused, not page-faulted in again

It takes the model through the Task it is given (and the LossTerm its forward returns) and the data only
for the batch plan."""

from .checkpoints import CheckpointManager, latest_checkpoint, list_checkpoints, load_pretrained
from .loop import Task, make_accelerator, train
from .resume import prepare_output_dir
from .signals import TrainingStopped

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
