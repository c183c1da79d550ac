"""A corpus without reading it: its cheap identity (the cache key) and a bounded, seeded sample of it
(what the tokenizer learns from)."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import DataConfig
from .corpus import corpus_files, file_format, hub_sources, iter_documents

SAMPLE_BLOCK = 1 << 16


def corpus_stamp(cfg: DataConfig) -> list[Any]:
    """What identifies the corpus without reading it: per file its path, size, mtime and a hash of
    three 64 KiB blocks (start, middle, end); hub sources by name (and their files when local)."""
    if cfg.format == "hub":
        stamp: list[Any] = []
        for s in hub_sources(cfg):
            local = Path(s.name).expanduser()
            files = sorted(f for f in local.rglob("*") if f.is_file()) if local.is_dir() else []
            stamp.append([s.name, s.config, s.split, s.text_column, s.documents, [_file_stamp(f) for f in files]])
        return stamp
    return [_file_stamp(f) for f in corpus_files(cfg)]


def _file_stamp(path: Path) -> list[Any]:
    st = path.stat()
    h = hashlib.sha256()
    with path.open("rb") as f:
        for at in sorted({0, max(0, st.st_size // 2 - SAMPLE_BLOCK // 2), max(0, st.st_size - SAMPLE_BLOCK)}):
            f.seek(at)
            h.update(f.read(SAMPLE_BLOCK))
    return [str(path.resolve()), st.st_size, st.st_mtime_ns, h.hexdigest()[:16]]


def corpus_bytes(cfg: DataConfig) -> int | None:
    """Total size on disk of a file corpus (None for hub data): the progress bar's total."""
    files = corpus_files(cfg)
    return sum(f.stat().st_size for f in files) if files else None


def sample_texts(cfg: DataConfig, budget_bytes: int, seed: int) -> Iterator[str]:
    """A reproducible sample of about `budget_bytes` of the corpus, to train the tokenizer on.

    Uncompressed text and JSON-lines files are sampled in windows of 1 MiB at seeded offsets spread
    over the whole corpus (no full read); other corpora are streamed and each document kept with
    probability budget / size (hub data: the first `budget_bytes`)."""
    files = corpus_files(cfg)
    total = sum(f.stat().st_size for f in files)
    seekable = files and all(f.suffix.lower() != ".gz" and file_format(f, "text") != "parquet" for f in files)
    if files and total <= budget_bytes:
        yield from (d.text for d in iter_documents(cfg))
        return
    if seekable and cfg.format != "json":
        yield from _window_sample(files, total, budget_bytes, seed)
        return
    rng = random.Random(seed)
    keep = budget_bytes / total if files else 1.0
    taken = 0
    for doc in iter_documents(cfg):
        if rng.random() < keep:
            yield doc.text
            taken += doc.nbytes
            if taken >= budget_bytes:
                return


WINDOW = 1 << 20


def _window_sample(files: list[Path], total: int, budget_bytes: int, seed: int) -> Iterator[str]:
    n_windows = max(1, budget_bytes // WINDOW)
    stride = total / n_windows
    rng = random.Random(seed)
    starts = [int(k * stride + rng.random() * max(0.0, stride - WINDOW)) for k in range(n_windows)]
    bounds, at = [], 0
    for f in files:
        bounds.append((at, at + f.stat().st_size, f))
        at += f.stat().st_size
    for start in starts:
        for lo, hi, f in bounds:
            if lo <= start < hi:
                with f.open("rb") as fh:
                    fh.seek(start - lo)
                    raw = fh.read(min(WINDOW, hi - start))
                text = raw.decode("utf-8", errors="ignore")  # a window cut mid-character; UTF-8 is checked later
                lines = text.split("\n")[1:-1] if start > lo else text.split("\n")[:-1]  # whole lines only
                yield from (line for line in lines if line.strip())
                break


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
