"""Where a run starts: its output directory, the checkpoint it resumes (verified, falling back past damaged
ones), and the checks that make a resumed run continue the same one (the global batch)."""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import TrainConfig
from ..errors import ConfigError
from ..model import TransformerConfig
from . import distributed
from .checkpoints import (
    CheckpointManager,
    latest_checkpoint,
    load_model_weights,
    model_meta,
    read_model_meta,
    read_trainer_state,
    resolve_run_dir,
    set_rng_state,
)

if TYPE_CHECKING:
    from .loop import Run

log = logging.getLogger(__name__)


def prepare_output_dir(cfg: TrainConfig, accelerator: Any = None) -> Path | None:
    """The checkpoint to resume from, before any work (the resume itself verifies it and may fall back
    to an older one). Refuses to write into a directory that already holds a run when
    train.resume=null, so no earlier checkpoint is ever overwritten by accident. The main process takes
    the directory's lock; its refusal reaches every process (another node's would end in a gloo error)."""
    out = Path(cfg.output_dir)
    checkpoints = out / "checkpoints"
    if cfg.resume is None and ((out / "metrics.jsonl").exists() or latest_checkpoint(checkpoints)):
        raise ConfigError(
            f"train.output_dir={out} already holds a run; pass train.resume=auto to continue it, "
            "or choose another train.output_dir / train.run_name"
        )
    refusal = None
    if accelerator is None or accelerator.is_main_process:
        try:
            lock_output_dir(out)
        except ConfigError as e:
            refusal = str(e)
    (refusal,) = distributed.from_main(accelerator, refusal)
    if refusal is not None:
        raise ConfigError(refusal)
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        return latest_checkpoint(checkpoints)
    path = resolve_run_dir(Path(cfg.resume))
    if not (path / "trainer_state.pt").exists():
        raise FileNotFoundError(f"train.resume={cfg.resume}: no checkpoint there (no trainer_state.pt)")
    return path


LOCK = ".lock"


def lock_output_dir(out: Path) -> None:
    """One run at a time in a directory: two would interleave their checkpoints and metrics. The run's
    main process creates out/.lock (its host and pid), removed when training ends or the process exits. A lock
    of a process of this host that is gone (killed) is taken over; one another host wrote cannot be checked
    (a job resumed on another node after a hard kill leaves one): taken over, warned."""
    lock, me = out / LOCK, f"{socket.gethostname()} {os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    try:  # created atomically: of two runs starting together, one gets it
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        try:
            host, pid = lock.read_text(encoding="utf-8").split()
            int(pid)
        except (OSError, ValueError):  # empty: another run is creating it this moment
            host, pid = socket.gethostname(), "-1"
        if f"{host} {pid}" != me:
            if host == socket.gethostname() and (pid == "-1" or _alive(int(pid))):
                who = "one starting now" if pid == "-1" else f"process {pid}"
                raise ConfigError(
                    f"train.output_dir={out} is in use by another run ({who}); wait for it to finish or "
                    f"choose another train.output_dir (if no run is using it, remove {lock})"
                ) from None
            if host != socket.gethostname():
                log.warning("%s was written by a run on host %s (pid %s): taking it over; if that run is "
                            "still going, stop one of the two", lock, host or "?", pid)  # fmt: skip
    lock.write_text(me, encoding="utf-8")
    atexit.register(unlock_output_dir, out)


def _alive(pid: int) -> bool:
    if pid <= 0:  # os.kill(0) would signal our own process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def unlock_output_dir(out: Path) -> None:
    """Removes out/.lock if this process wrote it (at the end of training, and at exit)."""
    try:
        if (out / LOCK).read_text(encoding="utf-8") == f"{socket.gethostname()} {os.getpid()}":
            (out / LOCK).unlink()
    except OSError:
        pass


def working_batches(global_batch: int, world: int) -> str:
    """The (train.batch_size, train.grad_accum_steps) pairs that give `global_batch` on `world` processes."""
    if global_batch % world:
        return f"none with {world} processes; use a process count that divides {global_batch}"
    per_process = global_batch // world
    pairs = [(per_process // a, a) for a in range(1, per_process + 1) if per_process % a == 0][:4]
    return " or ".join(f"train.batch_size={b} train.grad_accum_steps={a}" for b, a in pairs)


def check_global_batch(path: Path, state: dict[str, Any], cfg: TrainConfig, world: int) -> None:
    saved = state["world_size"] * state["batch_size"] * state["grad_accum_steps"]
    ours = world * cfg.batch_size * cfg.grad_accum_steps
    if saved != ours:
        raise ConfigError(
            f"cannot resume {path}: it was trained with a global batch of {saved} ({state['world_size']} processes x "
            f"train.batch_size={state['batch_size']} x train.grad_accum_steps={state['grad_accum_steps']}), this run "
            f"has {ours} ({world} x {cfg.batch_size} x {cfg.grad_accum_steps}); keep the global batch: "
            f"{working_batches(saved, world)}"
        )


def check_same_model(path: Path, model: Any) -> None:
    """The checkpoint holds this run's model: the same head and the same structure (dropout and the
    initialisation scale may change on a resume; nothing that changes a weight's shape or meaning may)."""
    if not (path / "model.json").exists():  # written before model.json existed: the weights' shapes still decide
        return
    saved, ours = read_model_meta(path), model_meta(model)
    free = {"dropout", "attention_dropout", "init_std", "pad_vocab_multiple"}  # the padded size is compared
    diffs = [f"head {saved['head']!r} vs {ours['head']!r}"] if saved["head"] != ours["head"] else []
    for name in ("num_labels", "symmetric"):
        if saved["head_kwargs"].get(name) != ours["head_kwargs"].get(name):
            diffs.append(f"{name} {saved['head_kwargs'].get(name)} vs {ours['head_kwargs'].get(name)}")
    labels = [saved.get("id2label"), ours.get("id2label")]
    if all(labels) and labels[0] != labels[1]:  # the classifier's rows mean these labels, in this order
        names = [[lab[k] for k in sorted(lab, key=int)] for lab in labels]
        diffs.append(f"labels {names[0]} vs {names[1]}")
    saved_structure = TransformerConfig.from_dict(saved["config"])
    if saved_structure.padded_vocab_size != model.config.padded_vocab_size:
        diffs.append(f"embedding rows {saved_structure.padded_vocab_size} vs {model.config.padded_vocab_size}")
    saved_config = saved_structure.to_dict()
    for name, value in ours["config"].items():
        if name not in free and saved_config.get(name) != value:
            diffs.append(f"{name} {saved_config.get(name)!r} vs {value!r}")
    if diffs:
        raise ConfigError(
            f"cannot resume {path}: it holds another model than this run builds ({'; '.join(diffs[:4])}: the "
            "checkpoint's first); resume with the checkpoint's model and task, or choose another train.output_dir"
        )


def check_resumable_model(candidate: Path, model: Any, cfg: TrainConfig, world: int) -> None:
    """check_same_model and check_global_batch on the checkpoint a resume will most likely take, early (before
    the data are prepared). One whose files do not read is left to the resume itself, which may fall back."""
    try:
        read_model_meta(candidate)
    except (OSError, ConfigError):
        return
    check_same_model(candidate, model)
    try:
        state = read_trainer_state(candidate)
    except Exception:  # noqa: BLE001 - a torn pickle: the resume names it and falls back
        return
    check_global_batch(candidate, state, cfg, world)


def log_data_change(run_config_file: Path, run_config: dict[str, Any], step: int) -> list[str]:
    """Names the data settings (and seed) that differ from the run's config.json: a resume may change
    them, but a run that silently continues on other data is a mistake more often than a plan."""
    try:
        saved = json.loads(run_config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    before, after = saved.get("data") or {}, run_config.get("data") or {}
    speed_only = {"num_proc", "cache_dir"}
    changed = [
        f"data.{k}: {before[k]!r} -> {after[k]!r}"
        for k in sorted(after.keys() & before.keys())  # a key added since the run started is not a change
        if k not in speed_only and before[k] != after[k]
    ]
    if saved.get("seed") != run_config.get("seed"):
        changed.append(f"seed: {saved.get('seed')} -> {run_config.get('seed')}")
    if changed:
        log.warning(
            "the data changed since the run started (%s); it trains on the new data from step %d",
            ", ".join(changed),
            step,
        )
    return changed


def check_length_grouping(path: Path, state: dict[str, Any], grouped: bool) -> None:
    """Length grouping changes which examples make each step: resuming under the other setting would
    train some examples of the epoch twice and others never."""
    saved = state.get("length_grouped", False)  # checkpoints from before grouping existed read in order
    if saved != grouped:
        was, now = str(saved).lower(), str(grouped).lower()
        raise ConfigError(
            f"cannot resume {path}: it was trained with data.group_by_length={was}, this run has {now}; "
            f"the data order would change mid-epoch: pass data.group_by_length={was}"
        )


def choose_checkpoint(
    manager: CheckpointManager, candidate: Path | None, cfg: TrainConfig, accelerator: Any
) -> Path | None:
    """The main process verifies (newest first with resume=auto, falling back past damaged checkpoints
    with a warning) and tells the others. A run whose every checkpoint is damaged is refused: starting from
    scratch would write over them (and prune them), and a damaged file may still hold what someone needs."""
    chosen: Path | None = None
    problem: str | None = None
    if accelerator.is_main_process and candidate is not None:
        if cfg.resume == "auto":
            chosen, skipped = manager.find_intact()
            if chosen is None and skipped:
                problem = (
                    f"every checkpoint in {manager.directory} is damaged ({'; '.join(skipped[:3])}); move them "
                    "away to start this run from scratch, or pass train.resume=<a checkpoint> / another "
                    "train.output_dir"
                )
        else:
            chosen, skipped = manager.find_intact([candidate])
            if chosen is None:
                problem = f"train.resume={cfg.resume}: {skipped[0]}; pass another checkpoint"
        if problem is None:
            for line in skipped:
                log.warning("checkpoint %s; falling back to the previous one", line)
            if chosen is None:
                log.warning("no checkpoint of this run's lineage in %s; starting from scratch", manager.directory)
    chosen, problem = distributed.from_main(accelerator, chosen, problem)  # the refusal too: every process stops
    if problem is not None:
        raise ConfigError(problem)
    return chosen


def load_checkpoint(path: Path, state: dict[str, Any], run: Run, accelerator: Any) -> None:
    """Model, optimizer (resharded to this run), GradScaler and RNG states."""
    if (path / "state").exists():
        distributed.load_training_state(run.model, run.optimizer, path / "state")
    else:  # written before checkpoints were sharded: full weights + an optimizer state dict
        load_model_weights(run.unwrapped, path / "model.safetensors")
        run.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler") and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    if len(state["rng"]) == accelerator.num_processes:
        set_rng_state(state["rng"][accelerator.process_index])
    elif accelerator.is_main_process:  # same global batch, other process count: same data order, other dropout
        log.warning(
            "resuming with %d processes instead of %d: dropout draws differ",
            accelerator.num_processes,
            len(state["rng"]),
        )
