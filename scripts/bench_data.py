"""Data preparation speed and memory, next to plain `tokenizers` batch encoding of the same text.

    python scripts/bench_data.py --mb 50 --model gpt-tiny
    python scripts/bench_data.py --mb 300 --model bert-tiny

Builds an N-MB corpus from the English text in ../shared/data (WikiText-2 and Tiny Shakespeare,
documents reshuffled and repeated), then in the same run:
  1. plain `tokenizers`: a byte-level BPE (gpt) / WordPiece (bert) trained on 20 MB of it, then
     `encode_batch_fast` over (up to 50 MB of) the corpus on all cores: the reference MB/s;
  2. `python -m pretrain model=... data.paths=[corpus] train.max_steps=1` on a fresh cache
     (tokenizer training, preparation, one step, export): MB/s and the peak memory of the whole
     process tree (the sum of the resident sizes of the process and its children, sampled every 0.1 s);
  3. the same command again on the prepared cache: seconds until the first training step starts.
Prints the ratios: a ratio, not an absolute time, is what to compare across machines.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def build_corpus(path: Path, megabytes: float, seed: int = 0) -> None:
    """Documents of the real English text, reshuffled per repetition until the size is reached."""
    docs: list[str] = []
    for f in sorted((SHARED / "wikitext-2").glob("*.txt")):
        article: list[str] = []
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.startswith(" = ") and not line.startswith(" = = ") and article:
                docs.append("\n".join(article))
                article = []
            if line.strip():
                article.append(line.strip())
        if article:
            docs.append("\n".join(article))
    shakespeare = (SHARED / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    docs += [d.strip() for d in shakespeare.split("\n\n") if d.strip()]
    rng = random.Random(seed)
    target = int(megabytes * 1e6)
    written = 0
    with path.open("w", encoding="utf-8") as out:
        while written < target:
            rng.shuffle(docs)
            for d in docs:
                out.write(d + "\n\n")
                written += len(d.encode()) + 2
                if written >= target:
                    break


def plain_tokenizers_mb_per_s(corpus: Path, family: str) -> float:
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    size = corpus.stat().st_size
    if family == "gpt":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=8000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=8000, special_tokens=["[UNK]"])
    with corpus.open(encoding="utf-8") as f:
        sample = f.read(20_000_000).split("\n")
    tok.train_from_iterator(sample, trainer=trainer)
    del sample
    start = time.perf_counter()
    encoded = 0
    with corpus.open(encoding="utf-8") as f:  # the rate over the first 50 MB at most: a rate is what we compare
        while encoded < min(size, 50_000_000) and (lines := f.readlines(8_000_000)):
            tok.encode_batch_fast(lines, add_special_tokens=False)
            encoded += sum(len(line.encode()) for line in lines)
    return encoded / 1e6 / (time.perf_counter() - start)


def tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_pretrain(args: list[str], watch_for: str | None = None) -> tuple[float, int, float | None]:
    """(seconds, peak tree RSS in bytes, seconds until `watch_for` appeared in the output)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pretrain", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak = 0
    seen: list[float] = []
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if watch_for and watch_for in line and not seen:
                seen.append(time.perf_counter() - start)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.1)
    reader.join()
    if proc.returncode:
        sys.exit("the run failed:\n" + "".join(lines[-30:]))
    return time.perf_counter() - start, peak, seen[0] if seen else None


def loading_share(batch_size: int = 32) -> tuple[float, float, float]:
    """BERT-tiny on the shipped sample: (ms to read a batch from the memory map, ms to collate and mask
    it, ms of a training step on it)."""
    import torch

    from pretrain.config import DataConfig, model_preset
    from pretrain.data import MLMCollator, build_pretraining_data, trained_tokenizer
    from pretrain.interop import build_model

    cfg = DataConfig(vocab_size=4000, cache_dir=tempfile.mkdtemp(prefix="bench_loading_"))
    tokenizer = trained_tokenizer(cfg, "bert")
    data = build_pretraining_data(cfg, tokenizer, "bert")
    collate = MLMCollator(tokenizer)
    model = build_model(model_preset("bert-tiny").transformer_config(tokenizer), "pretraining")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = random.Random(0)
    read = mask = step = 0.0
    n = 20
    for k in range(n + 2):
        indices = [rng.randrange(len(data.train)) for _ in range(batch_size)]
        t0 = time.perf_counter()
        examples = [{**data.train[i], "_seed": i} for i in indices]
        t1 = time.perf_counter()
        batch = collate(examples)
        t2 = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        t3 = time.perf_counter()
        if k >= 2:  # warm-up steps excluded
            read, mask, step = read + t1 - t0, mask + t2 - t1, step + t3 - t2
    return 1000 * read / n, 1000 * mask / n, 1000 * step / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=50.0)
    parser.add_argument("--model", default="gpt-tiny")
    parser.add_argument("--workdir", default=None, help="where the corpus, cache and run go (default: a temp dir)")
    parser.add_argument("--loading", action="store_true", help="only: batch loading time against a BERT-tiny step")
    args = parser.parse_args()
    if args.loading:
        read, mask, step = loading_share()
        print(
            f"BERT-tiny, batch 32 x 128: reading from the memory map {read:.2f} ms ({read / step:.1%} of a step), "
            f"collating and masking {mask:.2f} ms ({mask / step:.1%}), training step {step:.1f} ms"
        )
        return
    family = "gpt" if args.model.startswith("gpt") else "bert"
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_data_"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / f"corpus_{args.mb:g}mb.txt"
    if not corpus.exists():
        build_corpus(corpus, args.mb)
    size_mb = corpus.stat().st_size / 1e6
    reference = plain_tokenizers_mb_per_s(corpus, family)
    common = [
        f"model={args.model}",
        f"data.paths=[{corpus}]",
        "train.max_steps=1",
        "train.eval_batches=1",
        f"data.cache_dir={work / 'cache'}",
        "train.tensorboard=false",
        "train.plot=false",
    ]
    seconds, peak, _ = run_pretrain([*common, f"train.output_dir={work / 'run1'}"])
    again, _, first_step = run_pretrain([*common, f"train.output_dir={work / 'run2'}"], watch_for="training:")
    print(f"corpus: {size_mb:.1f} MB, {args.model}, {os.cpu_count()} cores")
    print(f"plain tokenizers encode_batch_fast (all cores): {reference:.2f} MB/s")
    print(
        f"python -m pretrain, fresh cache: {seconds:.1f} s = {size_mb / seconds:.2f} MB/s end to end "
        f"({size_mb / seconds / reference:.2f}x plain encoding), peak RSS of the process tree {peak / 1e9:.2f} GB"
    )
    started = first_step if first_step is not None else float("nan")
    print(f"relaunch on the prepared cache: {again:.1f} s in all, training started after {started:.1f} s")


if __name__ == "__main__":
    main()
