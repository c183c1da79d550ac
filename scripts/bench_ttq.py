"""Time to quality: our default recipe against a Hugging Face model on the same corpus, in one sitting.

    python scripts/bench_ttq.py --corpus corpus.txt                         # BERT: HF 4 x 256, 1,000 steps
    python scripts/bench_ttq.py --family gpt --corpus corpus.txt            # GPT: HF GPT-2 2 x 128, 300 steps

1. The corpus goes through our data pipeline once (tokenizer trained on it, held-out documents, examples),
   cached in --work, so both models see the same tokens and are judged on the same held-out examples.
2. The reference: Hugging Face's `BertForMaskedLM` (`GPT2LMHeadModel` for --family gpt) trained for
   --hf-steps x --batch x --length with AdamW, lr --hf-lr, linear warm-up (10%) and decay; its wall time T.
3. Ours: `python -m pretrain model=<preset> ... train.max_minutes=--fraction x T`, the default recipe as a user
   runs it (a subprocess: its own start-up is part of the time it is given nothing for).
4. Both exports are judged with `transformers` alone: held-out MLM loss with fixed masks (LM loss for GPT),
   and its margin below the unigram baseline. Time to reach the reference's final loss comes from our run's
   evaluation log (every --eval-every steps, same held-out examples and masks; training seconds).

Prints one table; --json writes the figures. A benchmark, not a test: compare the margins, not the seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from pretrain.targets import IGNORE_INDEX

ROOT = Path(__file__).resolve().parents[1]


def build_data(args: argparse.Namespace):
    from pretrain.config import DataConfig, ModelConfig, PretrainConfig, TrainConfig
    from pretrain.data import build_pretraining_data
    from pretrain.pretraining import get_tokenizer

    class _One:  # a one-process stand-in for the Accelerator the tokenizer helper synchronises with
        main_process_first = staticmethod(contextlib.nullcontext)

    data_cfg = DataConfig(name="ttq", format="text", paths=[str(args.corpus)], cache_dir=str(args.work / "cache"))
    data_cfg.vocab_size, data_cfg.max_length = args.vocab, args.length
    cfg = PretrainConfig(
        model=ModelConfig(family=args.family), data=data_cfg, train=TrainConfig(output_dir=str(args.work / "data"))
    )
    tokenizer = get_tokenizer(cfg, args.work / "data", True, _One(), None)
    # NSP pairs as our bert-tiny preset prepares them, so both sides share the cached examples
    data = build_pretraining_data(cfg.data, tokenizer, args.family, nsp=True)
    return tokenizer, data


def collator(args: argparse.Namespace, tokenizer):
    from pretrain.data import CausalCollator, MLMCollator

    return MLMCollator(tokenizer, 0.15, max_length=args.length) if args.family == "bert" else CausalCollator(tokenizer)


def hf_model(args: argparse.Namespace, tokenizer):
    import transformers

    torch.manual_seed(args.seed)
    if args.family == "bert":
        config = transformers.BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=args.hf_hidden,
            num_hidden_layers=args.hf_layers,
            num_attention_heads=args.hf_hidden // 64,
            intermediate_size=4 * args.hf_hidden,
            max_position_embeddings=max(512, args.length),
            pad_token_id=tokenizer.pad_token_id,
        )
        model = transformers.BertForMaskedLM(config)
    else:
        config = transformers.GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=args.hf_hidden,
            n_layer=args.hf_layers,
            n_head=max(1, args.hf_hidden // 64),
            n_positions=max(1024, args.length),
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        model = transformers.GPT2LMHeadModel(config)
    model.config._attn_implementation = "sdpa"
    return model


def hf_batch(batch: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    keep = ("input_ids", "attention_mask", "token_type_ids", "labels") if family == "bert" else ("input_ids", "labels")
    out = {k: v for k, v in batch.items() if k in keep}
    if family == "gpt" and "attention_mask" in batch:
        out["labels"] = out["labels"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    return out


def train_reference(args: argparse.Namespace, tokenizer, data) -> float:
    """Trains the Hugging Face model; returns its wall-clock training seconds and saves it to --work/hf."""
    from pretrain.data import SeededExamples, example_seed

    model = hf_model(args, tokenizer).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.hf_lr, weight_decay=0.01)
    warmup = max(1, args.hf_steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (args.hf_steps - s) / max(1, args.hf_steps - warmup)))
    )
    collate, examples = collator(args, tokenizer), SeededExamples(data.train)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(args.seed)).tolist()
    start = time.perf_counter()
    for step in range(args.hf_steps):
        ids = [order[(step * args.batch + j) % len(order)] for j in range(args.batch)]
        batch = collate([examples[(i, example_seed(args.seed, step, i))] for i in ids])
        loss = model(**hf_batch(batch, args.family)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    model.save_pretrained(args.work / "hf")
    return seconds


def run_ours(args: argparse.Namespace, minutes: float) -> Path:
    out = args.work / "ours"
    command = [
        sys.executable,
        "-m",
        "pretrain",
        f"model={args.preset}",
        "data=text",
        f"data.paths=[{args.corpus}]",
        f"data.vocab_size={args.vocab}",
        f"data.max_length={args.length}",
        f"data.cache_dir={args.work / 'cache'}",
        f"train.output_dir={out}",
        f"train.max_minutes={minutes:.4f}",
        "train.max_steps=1000000",
        f"train.eval_every={args.eval_every}",
        "train.save_every=0",
        "train.plot=false",
        "train.tensorboard=false",
        f"seed={args.seed}",
    ]
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return out


@torch.no_grad()
def judge(args: argparse.Namespace, export: Path, tokenizer, data) -> float:
    """Held-out loss of an exported model, loaded with transformers alone: per predicted token."""
    import transformers

    from pretrain.data import SeededExamples, example_seed

    cls = transformers.AutoModelForMaskedLM if args.family == "bert" else transformers.AutoModelForCausalLM
    model = cls.from_pretrained(export).eval()
    collate, examples = collator(args, tokenizer), SeededExamples(data.validation)
    n = min(len(data.validation), args.eval_examples)
    total, count = 0.0, 0
    for k in range(0, n, args.batch):
        rows = [examples[(i, example_seed(args.seed, 10**6, i))] for i in range(k, min(n, k + args.batch))]
        batch = hf_batch(collate(rows), args.family)  # the masks our evaluation uses
        logits = model(**{key: v for key, v in batch.items() if key != "labels"}).logits
        labels = batch["labels"]
        if args.family == "gpt":
            logits, labels = logits[:, :-1], labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        total += loss.item()
        count += int((labels != IGNORE_INDEX).sum())
    return total / count


def time_to_reach(run: Path, target: float, key: str) -> float | None:
    """Training seconds at our first evaluation at or below the target loss (None: never reached)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    for row in rows:
        if key in row and row[key] <= target:
            return row.get("train_seconds")
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["bert", "gpt"], default="bert")
    parser.add_argument("--corpus", type=Path, required=True, help="a text file (blank line between documents)")
    parser.add_argument("--work", type=Path, default=Path("runs/ttq"))
    parser.add_argument("--preset", default=None, help="our model preset (default bert-tiny / gpt-tiny)")
    parser.add_argument("--hf-layers", type=int, default=None, help="default 4 (BERT) / 2 (GPT-2)")
    parser.add_argument("--hf-hidden", type=int, default=None, help="default 256 (BERT) / 128 (GPT-2)")
    parser.add_argument("--hf-steps", type=int, default=None, help="default 1000 (BERT) / 300 (GPT-2)")
    parser.add_argument("--hf-lr", type=float, default=1e-3)
    parser.add_argument("--fraction", type=float, default=None, help="our budget / HF's time (1/3 BERT, 1/2 GPT)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--eval-examples", type=int, default=640)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    bert = args.family == "bert"
    args.preset = args.preset or ("bert-tiny" if bert else "gpt-tiny")
    args.hf_layers = args.hf_layers or (4 if bert else 2)
    args.hf_hidden = args.hf_hidden or (256 if bert else 128)
    args.hf_steps = args.hf_steps or (1000 if bert else 300)
    args.fraction = args.fraction or (1 / 3 if bert else 1 / 2)
    args.work = args.work.resolve()
    args.corpus = args.corpus.resolve()
    if args.work.exists() and (not args.work.is_dir() or any(args.work.iterdir())):
        parser.error(f"--work {args.work} is not an empty directory; pick a new one")
    if not args.corpus.is_file():
        parser.error(f"--corpus {args.corpus} is not a file; give one text file (blank lines between documents)")
    for name in ("batch", "length", "vocab", "eval_every", "eval_examples"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    bert = args.family == "bert"
    tokenizer, data = build_data(args)
    hf_seconds = train_reference(args, tokenizer, data)
    ours = run_ours(args, args.fraction * hf_seconds / 60)
    hf_loss = judge(args, args.work / "hf", tokenizer, data)
    our_loss = judge(args, ours / "export", tokenizer, data)
    key = "eval_mlm_loss" if bert else "eval_lm_loss"
    unigram = data.unigram_entropy
    result = {
        "family": args.family,
        "corpus": str(args.corpus),
        "unigram": unigram,
        "hf": {"steps": args.hf_steps, "seconds": hf_seconds, "loss": hf_loss, "margin": unigram - hf_loss},
        "ours": {
            "preset": args.preset,
            "budget_seconds": args.fraction * hf_seconds,
            "loss": our_loss,
            "margin": unigram - our_loss,
            "seconds_to_hf_loss": time_to_reach(ours, hf_loss, key),
        },
    }
    print(f"\ntime to quality on {args.corpus.name} ({args.family}; unigram baseline {unigram:.3f} nats)")
    print(
        f"  HF {args.hf_layers} x {args.hf_hidden}, {args.hf_steps} steps: {hf_seconds:7.1f} s, held-out loss "
        f"{hf_loss:.3f}, {unigram - hf_loss:+.3f} below unigram"
    )
    reach = result["ours"]["seconds_to_hf_loss"]
    print(
        f"  ours ({args.preset}), budget {args.fraction * hf_seconds:7.1f} s: held-out loss {our_loss:.3f}, "
        f"{unigram - our_loss:+.3f} below unigram; reached HF's final loss after "
        f"{'never' if reach is None else f'{reach:.0f} s'}"
    )
    ratio = (unigram - our_loss) / (unigram - hf_loss) if unigram != hf_loss else math.nan
    print(f"  margin ratio (ours / HF): {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    from pretrain.hydra_utils import report_and_exit

    try:
        main()
    except Exception as e:  # noqa: BLE001 - user errors on one line (status 2), bugs with their traceback
        report_and_exit(e)
