"""Sample text from a causal model of ours (a run, a checkpoint or an export) or a Hugging Face GPT-2.

python scripts/generate.py runs/gpt-tiny/<run> "ROMEO:" --max-new-tokens 60 --top-k 40 --temperature 0.8
python scripts/generate.py runs/gpt-tiny/<run> "ROMEO:" --greedy
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
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

    import torch

    from pretrain import CausalLM
    from pretrain.checkpoint import load_pretrained, resolve_run_dir
    from pretrain.tokenizer import load_tokenizer

    src = resolve_run_dir(Path(args.model))
    try:
        model = load_pretrained(src if src.exists() else args.model, head="causal_lm")
    except ValueError as e:
        sys.exit(f"error: {args.model} is not a causal (GPT-style) model: {e}")
    assert isinstance(model, CausalLM)
    tokenizer = load_tokenizer(str(src) if src.exists() else args.model)
    prompt = torch.tensor([tokenizer(args.prompt, add_special_tokens=False)["input_ids"]])
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
    print(tokenizer.decode(tokens[0], skip_special_tokens=True))


if __name__ == "__main__":
    main()
