"""Export a checkpoint of ours to a Hugging Face directory that `AutoModel*.from_pretrained` loads.

python scripts/export.py runs/bert-tiny/<run>               out/   # a run: its latest checkpoint
python scripts/export.py runs/.../checkpoints/step-00000300 out/   # one checkpoint
pretrain-export <checkpoint> <out>                                  # the same, installed
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def fail(message: str) -> None:
    """A bad argument: one line on stderr, exit status 2 (as argparse does)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def resolve_checkpoint(path: Path) -> Path:
    """A step-* checkpoint directory, or a run directory's latest checkpoint; exits with a clear message."""
    from pretrain.train.checkpoints import resolve_run_dir

    if not path.exists():
        fail(f"{path} does not exist")
    path = resolve_run_dir(path)
    if not (path / "model.json").exists():
        fail(f"{path} is not a checkpoint of ours (no model.json); pass a step-* or a run directory")
    return path


def check_head(own: str, head: str | None, causal: bool) -> None:
    """A head the checkpoint has (its own), or the bare trunk (base): any other would be exported with
    randomly initialised weights."""
    from pretrain.interop import HEADS

    if head is None or head in (own, "base"):
        return
    if head not in HEADS:
        fail(f"--head {head} is not a head; choose one of {list(HEADS)}")
    family = "GPT (causal)" if causal else "BERT"
    fail(
        f"the checkpoint is a {family} model with a {own!r} head; --head {head} would export an untrained, "
        f"randomly initialised head. Export its own head (no --head) or --head base, or train that head "
        "with python -m finetune"
    )


def _run_owned(path: Path) -> bool:
    """A run's checkpoints/ or tokenizer/ directory (a step-* checkpoint is inside the former): the run rewrites
    and prunes them."""
    from pretrain.train.checkpoints import list_checkpoints

    if path.name == "checkpoints":
        return bool(list_checkpoints(path))
    return path.name == "tokenizer" and bool(list_checkpoints(path.parent / "checkpoints"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint directory of ours, or a run directory (its latest checkpoint)")
    parser.add_argument("out_dir", help="where to write config.json, model.safetensors and the tokenizer")
    parser.add_argument("--head", default=None, help="export another head than the checkpoint's (e.g. base)")
    args = parser.parse_args(argv)

    from pretrain.errors import PretrainError

    if not args.out_dir.strip():
        fail("out_dir is empty; give the directory to write the export to")
    try:
        export(Path(args.checkpoint).expanduser(), Path(args.out_dir).expanduser(), args.head)
    except PretrainError as e:  # a damaged checkpoint, an unwritable directory
        fail(str(e))


def export(checkpoint: Path, out_dir: Path, head: str | None) -> None:
    from pretrain import save_hf
    from pretrain.errors import check_output_dir
    from pretrain.tokenizer import load_tokenizer
    from pretrain.train.checkpoints import load_pretrained, read_model_meta

    src = resolve_checkpoint(checkpoint)
    meta = read_model_meta(src)
    check_head(meta["head"], head, bool(meta["config"].get("causal")))
    inside = next((p for p in (out_dir.resolve(), *out_dir.resolve().parents) if _run_owned(p)), None)
    if inside is not None:  # a later save or pruning of the run would overwrite or delete the export
        fail(f"{out_dir} is inside {inside}, which the run manages; export to a directory outside it")
    if (out_dir / "config.json").exists() or (out_dir / "model.safetensors").exists():
        fail(f"{out_dir} already holds a model; choose another output directory or remove it first")
    check_output_dir("out_dir", out_dir)
    model = load_pretrained(src, head=head)
    tokenizer = load_tokenizer(str(src)) if (src / "tokenizer_config.json").exists() else None
    try:
        out = save_hf(model, out_dir, tokenizer=tokenizer)
    except ValueError as e:  # the Hugging Face architecture cannot express this model
        fail(str(e))
    print(f"exported {src} -> {out}" + ("" if tokenizer else " (no tokenizer in the checkpoint)"))


if __name__ == "__main__":
    main()
