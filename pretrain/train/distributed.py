"""How the model is spread over processes, applied from outside the model (as torchtitan does).

- one process: the model as it is;
- DDP: Accelerate wraps the model; every process holds all of it;
- FSDP2: `fully_shard` on each Transformer `Block`, then on the root (embeddings and heads): each
  process holds 1/N of every parameter, gradient and optimizer state, on CPU (gloo) as on GPU (NCCL).

Accelerate 1.15 turns an FSDP config into plain DDP when told to use the CPU, so FSDP is applied here,
asked for by `accelerate launch --config_file conf/accelerate/fsdp.yaml` (it sets ACCELERATE_USE_FSDP)
or by `impl.parallelism=fsdp`.

Training state (model and optimizer) is saved with `torch.distributed.checkpoint` in every mode: each
process writes its own shard, and a checkpoint loads under another sharding or process count.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..config import ImplConfig
from ..errors import ConfigError

log = logging.getLogger(__name__)


def from_main(accelerator: Any, *values: Any) -> tuple[Any, ...]:
    """The main process's `values` on every process (one broadcast; a single process keeps its own). A decision
    the main process alone can make (a lock, a verified checkpoint, a refusal) reaches the others this way, so
    none goes on alone or waits at a collective the main one never joins."""
    if accelerator is None or accelerator.num_processes == 1:
        return values
    from accelerate.utils import broadcast_object_list

    return tuple(broadcast_object_list(list(values)))


def resolve_parallelism(cfg: ImplConfig, world_size: int) -> str:
    """'single', 'ddp' or 'fsdp'."""
    requested = cfg.parallelism
    if requested == "auto":
        requested = "fsdp" if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true") else "ddp"
    if world_size == 1:
        if requested == "fsdp":
            log.info("one process: nothing to shard, FSDP is not applied")
        return "single"
    if requested == "fsdp" and cfg.precision == "fp16":
        raise ConfigError(
            "impl.precision=fp16 is not supported with FSDP (it needs a sharded gradient scaler); "
            "use impl.precision=bf16 or no"
        )
    return requested


def apply_fsdp(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """Shards each Transformer Block, then the root, in place (the module keeps its class and names)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from ..model import Block

    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if precision == "bf16"
        else MixedPrecisionPolicy()
    )
    # a Block returns its (key, value) cache as views; nothing modifies them in place, so FSDP2's warning
    # about in-place ops on views does not apply
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def local_parameter_count(model: torch.nn.Module) -> tuple[int, int]:
    """(elements this process holds, elements of the whole model)."""
    local = total = 0
    for p in model.parameters():
        local += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
        total += p.numel()
    return local, total


def describe(parallelism: str, model: torch.nn.Module, world_size: int) -> str:
    local, total = local_parameter_count(model)
    if parallelism == "fsdp":
        return (
            f"parallelism: FSDP2 over {world_size} processes, each holds {local:,} of {total:,} parameter elements "
            f"({local / total:.0%})"
        )
    if parallelism == "ddp":
        return f"parallelism: DDP over {world_size} processes, each holds the whole model ({total:,} elements)"
    return f"parallelism: one process ({total:,} parameter elements)"


def set_gradient_sync(model: torch.nn.Module, enabled: bool) -> None:
    """FSDP2: skip the reduce-scatter on all but the last micro-batch of a step."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(enabled)


def total_grad_norm(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """Clips (when max_norm > 0) and returns the global gradient norm as a plain tensor on the device,
    without a host sync; with FSDP2 the norm is reduced over the shards."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else float("inf"))
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


# ----------------------------------------------------------------------------- state


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def save_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Collective: every process writes its shard (replicated tensors once) and fsyncs it."""
    import torch.distributed.checkpoint as dcp

    with _single_process_quiet():
        dcp.save(_state(model, optimizer), storage_writer=dcp.FileSystemWriter(str(directory), sync_files=True))


def load_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Collective: loads model and optimizer, resharded to this run's processes and sharding."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _state(model, optimizer)
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(directory))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def load_model_state(model: torch.nn.Module, directory: Path) -> None:
    """The model part of a training state, in one process (e.g. an FSDP checkpoint for fine-tuning)."""
    import torch.distributed.checkpoint as dcp

    state = {"model": model.state_dict()}
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(directory))
    model.load_state_dict(state["model"])


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """Without a process group torch.distributed.checkpoint warns that it assumes one process: it is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Collective under FSDP: every process gets the whole (unsharded) model state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


class FullModel:
    """An unsharded copy of a sharded model for evaluation, the best-model copy and the export: the
    task's evaluation code then runs unchanged (no collective per forward, any number of batches per
    process). It costs one full model per process, without gradients or optimizer state."""

    def __init__(self, model: torch.nn.Module):
        self.replica = copy.deepcopy(model)  # before sharding: same class, names and tied weights
        self.replica.requires_grad_(False)

    def refresh(self, sharded: torch.nn.Module) -> torch.nn.Module:
        self.replica.load_state_dict(full_state_dict(sharded))
        self.replica.train(sharded.training)
        return self.replica
