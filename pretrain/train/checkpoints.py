"""Checkpoints: our model directory format, and the manager of a run's training checkpoints.

    <output_dir>/checkpoints/
        index.json              the run's lineage: its checkpoints in the order they were written
        step-00000100/
            model.json          {"config": TransformerConfig, "head": ..., "head_kwargs": ..., "id2label": ...}
            model.safetensors   our parameter names, tied weights once (not written by a sharded run)
            state/              model + optimizer, torch.distributed.checkpoint: one file per process
            trainer_state.pt    step, each process's RNG states, batch geometry, schedule, GradScaler
            tokenizer files
            manifest.json       size and sha256 of every file above, written last

A checkpoint is written to `step-N.tmp`, every file fsynced, then renamed and the directory fsynced:
a crash mid-write never leaves a broken checkpoint in the lineage. On resume each candidate is verified
against its manifest, newest first; a damaged one is skipped with a warning. Retention keeps the
newest `keep_last` of the lineage (by when they were written, not by step number): resuming from an
older checkpoint starts a new branch, and the checkpoints of the abandoned branch leave the lineage
(they stay on disk, named in a warning). Everything is loaded with `weights_only=True`, from
safetensors or torch.distributed.checkpoint: nothing arbitrary is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import ConfigError
from ..interop import build_model, head_name, load_hf
from ..model import MultipleChoice, PretrainedModel, SequenceClassifier, TokenClassifier, Transformer, TransformerConfig

log = logging.getLogger(__name__)


def model_meta(model: PretrainedModel | Transformer) -> dict[str, Any]:
    """What it takes to rebuild `model`: its config, head and head arguments."""
    meta: dict[str, Any] = {"config": model.config.to_dict(), "head": head_name(model), "head_kwargs": {}}
    if isinstance(model, SequenceClassifier):
        meta["head_kwargs"] = {"num_labels": model.num_labels, "lm_loss_weight": model.lm_loss_weight}
        if model.symmetric:
            meta["head_kwargs"]["symmetric"] = True
    if isinstance(model, TokenClassifier):
        meta["head_kwargs"] = {"num_labels": model.num_labels}
    if isinstance(model, MultipleChoice):
        meta["head_kwargs"] = {"lm_loss_weight": model.lm_loss_weight}
    if isinstance(model, (SequenceClassifier, TokenClassifier)):
        if getattr(model, "id2label", None):
            meta["id2label"] = {str(k): v for k, v in model.id2label.items()}
    return meta


def tied_keys(model: torch.nn.Module) -> set[str]:
    """Parameter names that alias the word embeddings (stored once, under the embedding's name)."""
    if not model.config.tie_embeddings:
        return set()
    return {k for k in model.state_dict() if k.endswith(("mlm_head.decoder.weight", "lm_head.weight"))}


def save_model_dir(
    model: PretrainedModel | Transformer,
    directory: Path,
    state_dict: dict[str, torch.Tensor] | None = None,
    write_weights: bool = True,
) -> None:
    """`state_dict`: a full one gathered by the caller. `write_weights=False`: model.json only (a
    sharded run keeps its weights in state/)."""
    directory.mkdir(parents=True, exist_ok=True)
    if write_weights:
        state = state_dict if state_dict is not None else model.state_dict()
        skip = tied_keys(model)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in state.items() if k not in skip},
            str(directory / "model.safetensors"),
        )
    (directory / "model.json").write_text(json.dumps(model_meta(model), indent=2), encoding="utf-8")


def load_model_weights(model: torch.nn.Module, path: Path) -> None:
    state = load_file(str(path))
    tied = tied_keys(model)
    for key in tied & set(state):  # a tied weight stored under its alias: it is the word embedding
        state.setdefault("transformer.embeddings.word.weight", state.pop(key))
    result = model.load_state_dict(state, strict=False)
    missing = set(result.missing_keys) - tied
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"{path} does not fit the model: missing {sorted(missing)[:5]}, unexpected {result.unexpected_keys[:5]}; "
            "the checkpoint was written for another model configuration"
        )


def read_model_meta(directory: Path) -> dict[str, Any]:
    """A checkpoint's model.json (model_meta's record): its config, head and head arguments."""
    meta_file = directory / "model.json"
    try:
        return json.loads(meta_file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ConfigError(f"{meta_file} is not valid JSON ({e}); the checkpoint is damaged, use another") from None


def load_model_dir(directory: str | Path) -> PretrainedModel | Transformer:
    """A model from one of our checkpoint directories."""
    directory = Path(directory)
    meta_file = directory / "model.json"
    if not meta_file.exists():
        raise FileNotFoundError(f"{directory} is not a checkpoint of ours (no model.json)")
    if (directory / MANIFEST).exists() and (problem := verify(directory, model_only=True)):  # a flipped byte too
        raise ConfigError(f"checkpoint {directory} is damaged: {problem}; use an earlier checkpoint of the run")
    meta = read_model_meta(directory)
    model = build_model(TransformerConfig.from_dict(meta["config"]), meta["head"], **meta["head_kwargs"])
    if meta.get("id2label"):
        model.id2label = {int(k): v for k, v in meta["id2label"].items()}
    if (directory / "model.safetensors").exists():
        load_model_weights(model, directory / "model.safetensors")
    elif (directory / "state" / ".metadata").exists():  # a sharded (FSDP) run's checkpoint
        from .distributed import load_model_state

        load_model_state(model, directory / "state")
    else:
        raise FileNotFoundError(f"{directory} holds no weights (neither model.safetensors nor state/)")
    return model


_WARNED_DAMAGED: set[tuple[str, str]] = set()


def resolve_run_dir(path: Path) -> Path:
    """A run directory (one with checkpoints/) stands for its newest checkpoint whose model files have the
    sizes and hashes its manifest recorded (a truncated or corrupt newer one is skipped, warned); any other path is
    returned as it is. A run's checkpoints/ directory stands for the run."""
    if path.name == "checkpoints" and list_checkpoints(path):
        path = path.parent
    if (path / "checkpoints").is_dir() and not (path / "model.json").exists():
        lineage = list_checkpoints(path / "checkpoints")
        for candidate in reversed(lineage):
            problem = verify(candidate, model_only=True)
            if problem is None or not (candidate / MANIFEST).exists():
                return candidate
            if (str(candidate), problem) not in _WARNED_DAMAGED:  # a start resolves the same path several times
                _WARNED_DAMAGED.add((str(candidate), problem))
                log.warning("checkpoint %s: %s; using the one before it", candidate, problem)
        if lineage:
            raise ConfigError(f"{path}: every checkpoint of the run is damaged (the oldest: {problem})")
    return path


def load_pretrained(src: str | Path, head: str | None = None, **head_kwargs: Any) -> PretrainedModel | Transformer:
    """Weights from our checkpoint (a step directory or a run directory: its latest checkpoint), our
    export, or any Hugging Face BERT / GPT-2 directory or hub name. With `head`, the trunk is kept
    and the head is rebuilt (for fine-tuning)."""
    path = resolve_run_dir(Path(src).expanduser())
    if (path / "model.json").exists():
        model = load_model_dir(path)
        if head is None or head == head_name(model) and not head_kwargs:
            return model
        target = build_model(model.config, head, **head_kwargs)
        trunk = model if isinstance(model, Transformer) else model.transformer
        target_trunk = target if isinstance(target, Transformer) else target.transformer
        missing, _ = target_trunk.load_state_dict(trunk.state_dict(), strict=False)
        if any(not k.startswith("pooler") for k in missing):
            raise RuntimeError(f"could not transfer the trunk: missing {missing}")
        if head == head_name(model):  # a model of this task: its trained head goes on, where its shapes fit
            _keep_trained_head(model, target, path)
        return target
    return load_hf(str(path) if path.exists() else str(src), head=head, **head_kwargs)


def _keep_trained_head(model: PretrainedModel, target: PretrainedModel, path: Path) -> None:
    """The head weights of `model` (not its trunk, not a tied LM head) into `target`, built for the same task
    with other arguments (a fine-tuned token classifier or multiple-choice model fine-tuned further), with its
    label names; a head of other shapes (another number of labels) stays fresh, warned."""
    trained = {k: v for k, v in model.state_dict().items() if not k.startswith(("transformer.", "lm_head."))}
    fresh = target.state_dict()
    if all(k in fresh and fresh[k].shape == v.shape for k, v in trained.items()):
        target.load_state_dict(trained, strict=False)
        if getattr(model, "id2label", None):
            target.id2label = dict(model.id2label)
    else:
        log.warning("%s: its %s head has other shapes than this run's (another number of labels): re-initialised",
                    path, head_name(model))  # fmt: skip


# ----------------------------------------------------------------------------- training checkpoints

_STEP_DIR = re.compile(r"^step-(\d+)$")
INDEX = "index.json"
MANIFEST = "manifest.json"


def step_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step-{step:08d}"


def step_of(checkpoint: Path) -> int:
    return int(_STEP_DIR.match(checkpoint.name).group(1))


def list_checkpoints(checkpoints: Path) -> list[Path]:
    """The run's lineage, oldest first: complete checkpoints in the order they were written (by step
    number for a run without an index)."""
    if not checkpoints.is_dir():
        return []
    names = _read_index(checkpoints)
    if names is None:
        names = sorted((p.name for p in checkpoints.iterdir() if _STEP_DIR.match(p.name)), key=lambda n: int(n[5:]))
    return [checkpoints / n for n in names if _is_complete(checkpoints / n)]


def latest_checkpoint(checkpoints: Path) -> Path | None:
    found = list_checkpoints(checkpoints)
    return found[-1] if found else None


def _is_complete(path: Path) -> bool:
    return (path / "trainer_state.pt").exists() and ((path / MANIFEST).exists() or not (path / "state").exists())


def _read_index(checkpoints: Path) -> list[str] | None:
    index = checkpoints / INDEX
    if not index.exists():
        return None
    try:
        names = json.loads(index.read_text(encoding="utf-8"))["lineage"]
    except (ValueError, KeyError) as e:
        log.warning("%s is unreadable (%s); ordering checkpoints by step number", index, e)
        return None
    return [n for n in names if _STEP_DIR.match(n)]


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_trainer_state(directory: Path) -> dict[str, Any]:
    return torch.load(directory / "trainer_state.pt", map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- durable writes


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, text: str) -> None:
    """Write to a temporary name, fsync, rename over `path`, fsync the directory."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


_HASHED: dict[tuple[str, int, int], str] = {}  # a start resolves a run several times: its files read once


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _HASHED[key] = digest.hexdigest()
    return _HASHED[key]


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path) -> None:
    """fsync every file of the checkpoint, then record its size and hash (the manifest last)."""
    entries = {}
    for path in _files(directory):
        fsync_file(path)
        entries[str(path.relative_to(directory))] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    write_durably(directory / MANIFEST, json.dumps({"files": entries}, indent=1))


def verify(directory: Path, deep: bool = True, model_only: bool = False) -> str | None:
    """None when the checkpoint is intact, else what is wrong with it. `deep=False`: file sizes only
    (a truncated write), not their sha256. `model_only`: only what loading the model reads (model.json
    and model.safetensors, or state/ where there is no safetensors file), not the optimizer's state; with
    `deep`, model.json and model.safetensors are hashed, a sharded state/ (optimizer included) only sized."""
    manifest = directory / MANIFEST
    if not manifest.exists():
        return "no manifest.json (written by an older version, or the write did not finish)"
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError):
        return "manifest.json is unreadable"
    if model_only:
        weights = ("model.safetensors",) if "model.safetensors" in entries else ("state/",)
        entries = {n: e for n, e in entries.items() if n == "model.json" or n.startswith(weights)}
    for name, expected in entries.items():
        path = directory / name
        if not path.exists():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, {expected['size']} were written"
        if deep and not (model_only and name.startswith("state/")) and _sha256(path) != expected["sha256"]:
            return f"{name} is corrupt (its sha256 differs from the one written)"
    return None


# ----------------------------------------------------------------------------- the manager


class CheckpointManager:
    """Saves, verifies, finds and prunes one run's training checkpoints. `save` and the resume are
    collective: every process calls them; the main process alone touches the directory structure."""

    def __init__(self, directory: Path, keep_last: int, is_main: bool, barrier: Callable[[], None]):
        self.directory, self.keep_last, self.is_main, self.barrier = directory, keep_last, is_main, barrier

    def lineage(self) -> list[Path]:
        return list_checkpoints(self.directory)

    def find_intact(self, candidates: list[Path] | None = None) -> tuple[Path | None, list[str]]:
        """The newest checkpoint of the lineage that passes verification, and a line per one skipped."""
        skipped = []
        for path in reversed(candidates if candidates is not None else self.lineage()):
            problem = verify(path) if (path / "state").exists() or (path / MANIFEST).exists() else None
            if problem is None:
                try:
                    read_trainer_state(path)
                except Exception as e:  # a torn pickle: any error means this checkpoint is unusable
                    problem = f"trainer_state.pt does not load ({type(e).__name__}: {e})"
            if problem is None:
                return path, skipped
            skipped.append(f"{path.name}: {problem}")
        return None, skipped

    def accept(self, resumed: Path | None) -> None:
        """Once a resume is accepted: checkpoints written after `resumed` belong to an abandoned branch
        and leave the lineage (they stay on disk). Starting from scratch empties the lineage."""
        if not self.is_main:
            return
        lineage = [p.name for p in self.lineage()]
        keep = lineage[: lineage.index(resumed.name) + 1] if resumed is not None and resumed.name in lineage else []
        dropped = [n for n in lineage if n not in keep]
        if dropped:
            log.warning(
                "resuming from %s: %s no longer belong to this run's lineage (left on disk; never loaded or pruned "
                "by this run, except a same-step checkpoint that it replaces)",
                resumed.name if resumed is not None else "scratch",
                ", ".join(dropped),
            )
        if dropped or not (self.directory / INDEX).exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            write_durably(self.directory / INDEX, json.dumps({"lineage": keep}))
        for unfinished in self.directory.glob("step-*.tmp"):  # a write a kill cut short: never a checkpoint
            log.info("removing %s, a checkpoint write that did not finish", unfinished)
            shutil.rmtree(unfinished, ignore_errors=True)

    def save(
        self,
        step: int,
        write_sharded: Callable[[Path], None],
        write_main: Callable[[Path], None],
    ) -> Path:
        """`write_sharded(dir)` runs on every process (torch.distributed.checkpoint), `write_main(dir)` on
        the main one; then the main process fsyncs, writes the manifest, renames and prunes."""
        final = step_dir(self.directory, step)
        tmp = final.with_name(final.name + ".tmp")
        if self.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        self.barrier()
        write_sharded(tmp / "state")
        self.barrier()
        if self.is_main:
            write_main(tmp)
            write_manifest(tmp)
            lineage = [p.name for p in self.lineage() if p.name != final.name]
            if final.exists():  # the same step written again (a new branch): replace it only now
                old = final.with_name(final.name + ".old")
                shutil.rmtree(old, ignore_errors=True)
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old)
            else:
                tmp.rename(final)
            fsync_dir(self.directory)
            lineage.append(final.name)
            kept, pruned = lineage[-self.keep_last :], lineage[: -self.keep_last]
            write_durably(self.directory / INDEX, json.dumps({"lineage": kept}))
            for name in pruned:
                shutil.rmtree(self.directory / name, ignore_errors=True)
        self.barrier()
        return final
