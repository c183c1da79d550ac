"""Training-step speed of our models against Hugging Face's, measured side by side in one run.

    python scripts/benchmark.py                      # BERT-tiny shapes, 30,522 words, batch 16 x 128, fp32
    python scripts/benchmark.py --family gpt --hidden 256 --layers 4 --heads 4
    python scripts/benchmark.py --family llama --heads 4   # also roberta, modernbert (MLM, no NSP)

Both models get the same weights (imported with load_hf) and the same batches; steps alternate
between them so machine noise hits both alike. Prints median step times and the ratio HF / ours
(> 1: we are faster). A ratio, not an absolute time, is what to compare across machines.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def build(args: argparse.Namespace):
    import transformers

    from pretrain import load_hf

    if args.family == "bert":
        config = transformers.BertConfig(
            vocab_size=args.vocab,
            hidden_size=args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            intermediate_size=4 * args.hidden,
            max_position_embeddings=512,
        )
        hf = transformers.BertForPreTraining(config)
    elif args.family == "roberta":
        config = transformers.RobertaConfig(
            vocab_size=args.vocab,
            hidden_size=args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            intermediate_size=4 * args.hidden,
            max_position_embeddings=514,
            type_vocab_size=1,
        )
        hf = transformers.RobertaForMaskedLM(config)
    elif args.family == "modernbert":
        config = transformers.ModernBertConfig(
            vocab_size=args.vocab,
            hidden_size=args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            intermediate_size=3 * args.hidden // 2,
            local_attention=args.length // 2,  # local layers see half the sequence
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            cls_token_id=1,
            sep_token_id=2,
        )
        hf = transformers.ModernBertForMaskedLM(config)
    elif args.family == "llama":
        config = transformers.LlamaConfig(
            vocab_size=args.vocab,
            hidden_size=args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            num_key_value_heads=max(args.heads // 2, 1),  # grouped-query attention
            intermediate_size=8 * args.hidden // 3,
            max_position_embeddings=1024,
        )
        hf = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.GPT2Config(
            vocab_size=args.vocab,
            n_embd=args.hidden,
            n_layer=args.layers,
            n_head=args.heads,
            n_positions=1024,
        )
        hf = transformers.GPT2LMHeadModel(config)
    hf.config._attn_implementation = "sdpa"
    return hf, load_hf(hf)


def batch(args: argparse.Namespace, generator: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, args.vocab, (args.batch, args.length), generator=generator)
    if args.family in ("gpt", "llama"):
        return {"input_ids": ids, "labels": ids}
    labels = torch.full_like(ids, -100)
    chosen = torch.rand(ids.shape, generator=generator) < 0.15
    labels[chosen] = ids[chosen]
    if args.family in ("roberta", "modernbert"):  # masked LM only
        return {"input_ids": ids.masked_fill(chosen, 4), "attention_mask": torch.ones_like(ids), "labels": labels}
    return {
        "input_ids": ids.masked_fill(chosen, 4),
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "labels": labels,
        "next_sentence_label": torch.randint(0, 2, (args.batch,), generator=generator),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["bert", "gpt", "roberta", "modernbert", "llama"], default="bert")
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    hf, ours = build(args)
    models = {"hf": hf.train(), "ours": ours.train()}
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    generator = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {k: [] for k in models}
    for step in range(args.warmup + args.steps):
        b = batch(args, generator)
        for name, model in models.items():
            start = time.perf_counter()
            loss = model(**b).loss
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            if step >= args.warmup:
                times[name].append(time.perf_counter() - start)
    hf_ms, ours_ms = (1000 * statistics.median(times[k]) for k in ("hf", "ours"))
    print(
        f"{args.family}: {args.layers} x {args.hidden}, vocab {args.vocab}, batch {args.batch} x {args.length}, "
        f"{torch.get_num_threads()} threads, {args.steps} steps"
    )
    print(f"  Hugging Face  {hf_ms:8.1f} ms/step")
    print(f"  ours          {ours_ms:8.1f} ms/step")
    print(f"  speed-up (HF / ours): {hf_ms / ours_ms:.2f}x")


if __name__ == "__main__":
    main()
