"""Export a checkpoint of ours to a Hugging Face directory that `AutoModel*.from_pretrained` loads.

python scripts/export.py runs/bert-tiny/<run>               out/   # a run: its latest checkpoint
python scripts/export.py runs/.../checkpoints/step-00000300 out/   # one checkpoint
pretrain-export <checkpoint> <out>                                  # the same, installed
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def resolve_checkpoint(path: Path) -> Path:
    """A step-* checkpoint directory, or a run directory's latest checkpoint; exits with a clear message."""
    from pretrain.checkpoint import resolve_run_dir

    if not path.exists():
        sys.exit(f"error: {path} does not exist")
    path = resolve_run_dir(path)
    if not (path / "model.json").exists():
        sys.exit(f"error: {path} is not a checkpoint of ours (no model.json); pass a step-* or a run directory")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint directory of ours, or a run directory (its latest checkpoint)")
    parser.add_argument("out_dir", help="where to write config.json, model.safetensors and the tokenizer")
    parser.add_argument("--head", default=None, help="export another head than the checkpoint's (e.g. base)")
    args = parser.parse_args(argv)

    from pretrain import save_hf
    from pretrain.checkpoint import load_pretrained
    from pretrain.tokenizer import load_tokenizer

    src = resolve_checkpoint(Path(args.checkpoint))
    try:
        model = load_pretrained(src, head=args.head)
        tokenizer = load_tokenizer(str(src)) if (src / "tokenizer_config.json").exists() else None
        out = save_hf(model, args.out_dir, tokenizer=tokenizer)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"exported {src} -> {out}" + ("" if tokenizer else " (no tokenizer in the checkpoint)"))


if __name__ == "__main__":
    main()
