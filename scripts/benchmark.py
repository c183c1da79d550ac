"""Training-step speed of our models against Hugging Face's, measured side by side in one run.

    python scripts/benchmark.py                      # BERT-tiny shapes, 30,522 words, batch 16 x 128, fp32
    python scripts/benchmark.py --family gpt --hidden 256 --layers 4 --heads 4
    python scripts/benchmark.py --family llama --heads 4   # also roberta, modernbert (MLM, no NSP)

Both models get the same weights (imported with load_hf), the same batches (ours also gets the masked
positions that our MLM collator finds on the host) and torch's fused AdamW (the default of both our
trainer and transformers' Trainer since torch 2.8). Each round runs one
training step of each, the order alternating between rounds, so machine noise hits both alike; the
speed-up is the median over rounds of HF's step time / ours (> 1: we are faster). Peak memory is one
more training step of each after the timed ones: on CUDA the allocator's peak above what was allocated
before the step; on a CPU the peak of the bytes held by tensors that operators created during the step
(activations, gradients, temporaries; weights and optimizer state exist before and are not counted).
A ratio, not an absolute time, is what to compare across machines.
"""

from __future__ import annotations

import argparse
import statistics
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from pretrain.targets import IGNORE_INDEX, labelled_positions


def build(args: argparse.Namespace):
    """The Hugging Face model of the family and ours loaded from it (the same weights). Over 60 lines:
    one flat branch per family, so each reference config reads whole."""
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
            hidden_dropout_prob=args.dropout,
            attention_probs_dropout_prob=args.dropout,
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
            hidden_dropout_prob=args.dropout,
            attention_probs_dropout_prob=args.dropout,
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
            resid_pdrop=args.dropout,
            embd_pdrop=args.dropout,
            attn_pdrop=args.dropout,
        )
        hf = transformers.GPT2LMHeadModel(config)
    hf.config._attn_implementation = "sdpa"
    return hf, load_hf(hf)


def batches(args: argparse.Namespace, generator: torch.Generator, device: torch.device) -> dict[str, dict]:
    """One batch for each model: ours also gets the masked positions our MLM collator sends."""
    hf = {k: v.to(device) for k, v in batch(args, generator).items()}
    ours = dict(hf)
    if args.family not in ("gpt", "llama"):
        ours["mlm_positions"] = labelled_positions(hf["labels"].cpu()).to(device)
    return {"hf": hf, "ours": ours}


def batch(args: argparse.Namespace, generator: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, args.vocab, (args.batch, args.length), generator=generator)
    if args.family in ("gpt", "llama"):
        return {"input_ids": ids, "labels": ids}
    labels = torch.full_like(ids, IGNORE_INDEX)
    chosen = torch.rand(ids.shape, generator=generator) < 0.15
    labels[chosen] = ids[chosen]
    # full-length rows and no attention_mask, as our collators give an unpadded batch (both models get it)
    if args.family in ("roberta", "modernbert"):  # masked LM only
        return {"input_ids": ids.masked_fill(chosen, 4), "labels": labels}
    return {
        "input_ids": ids.masked_fill(chosen, 4),
        "token_type_ids": torch.zeros_like(ids),
        "labels": labels,
        "next_sentence_label": torch.randint(0, 2, (args.batch,), generator=generator),
    }


class TensorMemory(TorchDispatchMode):
    """Bytes held by the storages that operators create while the mode is on: live now and at the peak.
    A storage counts once (views share it) and stops counting when Python frees it."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.storages: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or key in self.storages:
                continue
            self.storages.add(key)
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, size)
        return out

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self.storages.discard(key)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, b: dict[str, torch.Tensor]) -> None:
    loss = model(**b).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def peak_step_memory(model, optimizer, b: dict[str, torch.Tensor], device: torch.device) -> int:
    """Peak bytes one training step adds above what exists before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        train_step(model, optimizer, b)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with TensorMemory() as memory:
        train_step(model, optimizer, b)
    return memory.peak


def main(argv: list[str] | None = None) -> dict[str, float]:
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
    parser.add_argument("--dropout", type=float, default=0.0, help="0: as our presets pretrain")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    for name in ("vocab", "hidden", "layers", "heads", "batch", "length", "steps"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be > 0, got {getattr(args, name)}")
    if args.warmup < 0 or not 0 <= args.dropout < 1:
        parser.error("--warmup must be >= 0 and --dropout in [0, 1)")
    if args.hidden % args.heads:
        parser.error(f"--heads {args.heads} must divide --hidden {args.hidden}")
    positions = 512 if args.family in ("bert", "roberta") else 1024
    if args.length > positions:
        parser.error(f"--length {args.length} is longer than the {args.family} models' {positions} positions")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device here; use --device cpu")

    torch.manual_seed(0)
    device = torch.device(args.device)
    hf, ours = build(args)
    models = {"hf": hf.to(device).train(), "ours": ours.to(device).train()}
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True) for k, m in models.items()}
    generator = torch.Generator().manual_seed(0)
    first = batches(args, generator, device)
    with torch.no_grad():  # the same weights: the same loss on the same batch, or the comparison is void
        first_loss = {name: float(model.eval()(**first[name]).loss) for name, model in models.items()}
    models = {name: model.train() for name, model in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for step in range(args.warmup + args.steps):
        b = batches(args, generator, device)
        order = list(models) if step % 2 == 0 else list(reversed(models))
        for name in order:
            start = time.perf_counter()
            train_step(models[name], optimizers[name], b[name])
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= args.warmup:
                times[name].append(time.perf_counter() - start)
    b = batches(args, generator, device)
    peak = {name: peak_step_memory(models[name], optimizers[name], b[name], device) for name in models}
    hf_ms, ours_ms = (1000 * statistics.median(times[k]) for k in ("hf", "ours"))
    speedup = statistics.median(h / o for h, o in zip(times["hf"], times["ours"], strict=True))
    tokens = args.batch * args.length
    print(
        f"{args.family}: {args.layers} x {args.hidden}, vocab {args.vocab}, batch {args.batch} x {args.length}, "
        f"dropout {args.dropout}, {device.type}, {torch.get_num_threads()} threads, {args.steps} rounds"
    )
    for label, name, ms in (("Hugging Face", "hf", hf_ms), ("ours", "ours", ours_ms)):
        print(
            f"  {label:12}  {ms:8.1f} ms/step  {tokens / ms * 1000:8.0f} tokens/s  peak {peak[name] / 2**20:7.1f} MiB"
        )
    print(f"  loss on the first batch: HF {first_loss['hf']:.6f}, ours {first_loss['ours']:.6f}")
    print(f"  speed-up (HF / ours): {speedup:.2f}x (median over rounds of the per-round ratio)")
    print(f"  peak memory (ours / HF): {peak['ours'] / peak['hf']:.2f}x")
    return {
        "hf_ms": hf_ms,
        "ours_ms": ours_ms,
        "speedup": speedup,
        "memory_ratio": peak["ours"] / peak["hf"],
        "hf_loss": first_loss["hf"],
        "ours_loss": first_loss["ours"],
        "rounds": len(times["hf"]),
    }


if __name__ == "__main__":
    main()
