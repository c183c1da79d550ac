"""Sample text from a causal model of ours (a run, a checkpoint or an export) or a Hugging Face GPT-2.

python scripts/generate.py runs/gpt-tiny/<run> "ROMEO:" --max-new-tokens 60 --top-k 40 --temperature 0.8
python scripts/generate.py runs/gpt-tiny/<run> "ROMEO:" --greedy
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any


def fail(message: str) -> None:
    """A bad argument: one line on stderr, exit status 2 (as argparse does)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, every value checked (argparse's exit status 2 and message on a bad one)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a run or checkpoint directory of ours, an export, or a HF GPT-2 directory")
    parser.add_argument("prompt")
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not (args.temperature > 0 and math.isfinite(args.temperature)):
        parser.error(f"--temperature must be > 0 (1: as trained; --greedy for argmax), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        parser.error(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        parser.error(f"--top-p must be in (0, 1] (1 keeps every token), got {args.top_p}")
    if not args.prompt:
        parser.error("the prompt is empty; give some text to continue")
    return args


def load(model_path: str) -> tuple[Any, Any]:
    """(causal LM, its tokenizer) from a run, checkpoint or export of ours, or a HF GPT-2 directory;
    a model that cannot generate (BERT-style, a fine-tuned classifier) fails with the reason."""
    from pretrain import CausalLM
    from pretrain.errors import ConfigError, check_source
    from pretrain.model import SequenceClassifier, SpanQA
    from pretrain.tokenizer import load_tokenizer
    from pretrain.tokenizer_identity import saved_tokenizer_dir
    from pretrain.train.checkpoints import load_pretrained, resolve_run_dir

    try:
        check_source("model", model_path, "run, checkpoint or model directory")
    except ConfigError as e:
        fail(f"{e}")
    src = resolve_run_dir(Path(model_path).expanduser())
    try:
        found = load_pretrained(src if src.exists() else model_path)
    except (ValueError, OSError) as e:
        fail(f"cannot load {model_path}: {e}")
    if not found.config.causal:
        fail(f"{model_path} is a BERT-style (bidirectional) model; generation needs a GPT-style (causal) model")
    if isinstance(found, (SequenceClassifier, SpanQA)):
        fail(f"{model_path} is a fine-tuned classifier without a language-model head; use a pretrained GPT")
    model = found if isinstance(found, CausalLM) else load_pretrained(src if src.exists() else model_path, "causal_lm")
    tokenizer_dir = saved_tokenizer_dir(str(src)) if src.exists() else None
    if src.exists() and tokenizer_dir is None:
        fail(f"{model_path} has no tokenizer saved with it; export the run or point at its run directory")
    return model, load_tokenizer(str(tokenizer_dir) if tokenizer_dir else model_path)


def generate(model: Any, tokenizer: Any, args: argparse.Namespace) -> str:
    """The prompt and its continuation, decoded."""
    import torch

    ids = tokenizer(args.prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        fail("the prompt gives no tokens; give some text to continue")
    if len(ids) + args.max_new_tokens > model.config.max_positions:
        fail(
            f"the prompt ({len(ids)} tokens) + --max-new-tokens {args.max_new_tokens} exceeds the model's "
            f"{model.config.max_positions} positions; shorten the prompt or lower --max-new-tokens"
        )
    prompt = torch.tensor([ids])
    tokens = model.eval().generate(
        prompt,
        args.max_new_tokens,
        do_sample=not args.greedy,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        eos_token_id=tokenizer.eos_token_id,
        generator=torch.Generator().manual_seed(args.seed),
    )
    return tokenizer.decode(tokens[0], skip_special_tokens=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model, tokenizer = load(args.model)
    print(generate(model, tokenizer, args))


if __name__ == "__main__":
    main()
