"""Our checkpoint format, written atomically.

    <output_dir>/checkpoints/step-00000100/
        model.safetensors   our parameter names (tied weights stored once)
        model.json          {"config": TransformerConfig, "head": ..., "head_kwargs": ..., "id2label": ...}
        trainer_state.pt    step, data position, optimizer, scheduler, each process's RNG states
        tokenizer files

Everything is loaded with `weights_only=True` or from safetensors: nothing arbitrary is unpickled.
A checkpoint is written to `step-N.tmp` and renamed when complete, so a crash mid-write never
leaves a broken latest checkpoint; `latest_checkpoint` ignores `.tmp` directories.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .interop import build_model, head_name, load_hf
from .model import MultipleChoice, PretrainedModel, SequenceClassifier, TokenClassifier, Transformer, TransformerConfig

_STEP_DIR = re.compile(r"^step-(\d+)$")


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
    model: PretrainedModel | Transformer, directory: Path, state_dict: dict[str, torch.Tensor] | None = None
) -> None:
    """`state_dict`: a full one gathered by the caller (FSDP / DeepSpeed shard the model's own)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = state_dict if state_dict is not None else model.state_dict()
    skip = tied_keys(model)
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in state.items() if k not in skip},
        str(directory / "model.safetensors"),
    )
    (directory / "model.json").write_text(json.dumps(model_meta(model), indent=2))


def load_model_weights(model: torch.nn.Module, path: Path) -> None:
    state = load_file(str(path))
    tied = tied_keys(model)
    for key in tied & set(state):  # a tied weight stored under its alias: it is the word embedding
        state.setdefault("transformer.embeddings.word.weight", state.pop(key))
    result = model.load_state_dict(state, strict=False)
    missing = set(result.missing_keys) - tied
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{path} does not fit the model: missing {sorted(missing)[:5]}, unexpected {result.unexpected_keys[:5]}; "
            "the checkpoint was written for another model configuration"
        )


def load_model_dir(directory: str | Path) -> PretrainedModel | Transformer:
    """A model from one of our checkpoint directories."""
    directory = Path(directory)
    meta_file = directory / "model.json"
    if not meta_file.exists():
        raise FileNotFoundError(f"{directory} is not a checkpoint of ours (no model.json)")
    meta = json.loads(meta_file.read_text())
    model = build_model(TransformerConfig.from_dict(meta["config"]), meta["head"], **meta["head_kwargs"])
    if meta.get("id2label"):
        model.id2label = {int(k): v for k, v in meta["id2label"].items()}
    load_model_weights(model, directory / "model.safetensors")
    return model


def resolve_run_dir(path: Path) -> Path:
    """A run directory (one with checkpoints/) stands for its latest checkpoint; any other path is
    returned as it is."""
    if (path / "checkpoints").is_dir() and not (path / "model.json").exists():
        return latest_checkpoint(path / "checkpoints") or path
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
        return target
    return load_hf(str(path) if path.exists() else str(src), head=head, **head_kwargs)


# ----------------------------------------------------------------------------- training checkpoints


def step_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step-{step:08d}"


def list_checkpoints(checkpoints: Path) -> list[Path]:
    if not checkpoints.is_dir():
        return []
    found = [p for p in checkpoints.iterdir() if _STEP_DIR.match(p.name) and (p / "trainer_state.pt").exists()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(checkpoints: Path) -> Path | None:
    found = list_checkpoints(checkpoints)
    return found[-1] if found else None


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


def write_checkpoint(
    checkpoints: Path,
    step: int,
    model: PretrainedModel | Transformer,
    trainer_state: dict[str, Any],
    tokenizer: Any,
    keep_last: int,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write step `step` atomically (main process), then drop all but the newest `keep_last`."""
    final = step_dir(checkpoints, step)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model_dir(model, tmp, state_dict)
    torch.save(trainer_state, tmp / "trainer_state.pt")
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if final.exists():  # the same step written again (a resumed run): replace it only now
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(checkpoints)[:-keep_last]:
        shutil.rmtree(old)
    return final


def read_trainer_state(directory: Path) -> dict[str, Any]:
    return torch.load(directory / "trainer_state.pt", map_location="cpu", weights_only=True)
