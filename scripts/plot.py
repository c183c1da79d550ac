"""Plots beside the runs.

python scripts/plot.py losses runs/bert-tiny/A runs/bert-tiny/B -o losses.png   # compare runs' loss curves
python scripts/plot.py attention runs/bert-tiny/A "To be, or not to be" -o attn.png --layer 0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def plot_losses(runs: list[str], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in runs:
        metrics = Path(run) / "metrics.jsonl"
        if not metrics.exists():
            raise SystemExit(f"error: {metrics} does not exist; pass run directories")
        rows = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines()]
        train = [r for r in rows if "loss" in r]
        line = ax.plot([r["step"] for r in train], [r["loss"] for r in train], label=f"{Path(run).name} train")[0]
        key = next((k for r in rows for k in r if k.startswith("eval_") and k.endswith("loss")), None)
        if key:
            ev = [r for r in rows if key in r]
            ax.plot([r["step"] for r in ev], [r[key] for r in ev], "o--", color=line.get_color(), label=f"{key}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def plot_attention(checkpoint: str, text: str, out: str, layer: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from pretrain.tokenizer import load_tokenizer
    from pretrain.train.checkpoints import load_pretrained
    from scripts.export import resolve_checkpoint

    src = resolve_checkpoint(Path(checkpoint))
    model = load_pretrained(src).eval()
    tokenizer = load_tokenizer(str(src))
    enc = tokenizer(text, return_tensors="pt")
    kwargs = {"input_ids": enc["input_ids"]}
    if "token_type_ids" in enc and not model.config.causal:
        kwargs["token_type_ids"] = enc["token_type_ids"]
    trunk = getattr(model, "transformer", model)
    with torch.no_grad():
        maps = trunk(**kwargs, output_attentions=True).attentions[layer][0]  # (heads, query, key)
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    heads = maps.size(0)
    fig, axes = plt.subplots(1, heads, figsize=(3.2 * heads, 3.4), squeeze=False)
    for h, ax in enumerate(axes[0]):
        ax.imshow(maps[h].numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"layer {layer}, head {h}", fontsize=9)
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=6)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    losses = sub.add_parser("losses", help="training / evaluation loss of one or more runs")
    losses.add_argument("runs", nargs="+")
    losses.add_argument("-o", "--out", default="losses.png")
    attention = sub.add_parser("attention", help="attention probabilities of every head of one layer")
    attention.add_argument("checkpoint", help="a checkpoint or run directory of ours")
    attention.add_argument("text")
    attention.add_argument("--layer", type=int, default=0)
    attention.add_argument("-o", "--out", default="attention.png")
    args = parser.parse_args(argv)
    if args.what == "losses":
        plot_losses(args.runs, args.out)
    else:
        plot_attention(args.checkpoint, args.text, args.out, args.layer)


if __name__ == "__main__":
    main()
