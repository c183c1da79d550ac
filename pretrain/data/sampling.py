"""A corpus without reading it: its cheap identity (the cache key) and a bounded, seeded sample of it
(what the tokenizer learns from)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import DataConfig
from .corpus import corpus_files, file_documents, file_format, hub_sources, iter_documents

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


def corpus_digest(cfg: DataConfig) -> str | None:
    """What a file corpus holds, whatever its files' paths and times: their sizes and sampled blocks (as
    corpus_stamp reads them); None for hub data."""
    if cfg.format == "hub":
        return None
    content = [(size, blocks) for _, size, _, blocks in map(_file_stamp, corpus_files(cfg))]
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:16]


_BLOCK_HASHES: dict[tuple[str, int, int], str] = {}  # a start stamps the corpus 3 times: its blocks read once


def _file_stamp(path: Path) -> list[Any]:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _BLOCK_HASHES:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for at in sorted({0, max(0, st.st_size // 2 - SAMPLE_BLOCK // 2), max(0, st.st_size - SAMPLE_BLOCK)}):
                f.seek(at)
                h.update(f.read(SAMPLE_BLOCK))
        _BLOCK_HASHES[key] = h.hexdigest()[:16]
    return [*key, _BLOCK_HASHES[key]]


def corpus_bytes(cfg: DataConfig) -> int | None:
    """Total size on disk of a file corpus (None for hub data): the progress bar's total."""
    files = corpus_files(cfg)
    return sum(f.stat().st_size for f in files) if files else None


def sample_texts(cfg: DataConfig, budget_bytes: int, seed: int) -> Iterator[str]:
    """A reproducible sample of about `budget_bytes` of the corpus, to train the tokenizer on.

    Each file is sampled by its own format (file_format, as preparation reads it): uncompressed text files
    in windows of 1 MiB at seeded offsets spread over them (no full read); JSON, Parquet and compressed
    files are streamed and each document kept with probability budget / size (hub data: the first
    `budget_bytes`)."""
    files = corpus_files(cfg)
    total = sum(f.stat().st_size for f in files)
    if files and total <= budget_bytes:
        yield from (d.text for d in iter_documents(cfg))
        return
    default = "text" if cfg.format in ("sample", "text") else cfg.format
    windowed = [f for f in files if f.suffix.lower() != ".gz" and file_format(f, default) == "text"]
    streamed = [f for f in files if f not in windowed]
    windowed_bytes = sum(f.stat().st_size for f in windowed)
    if windowed:
        yield from _window_sample(windowed, windowed_bytes, budget_bytes * windowed_bytes / total, seed)
        if not streamed:
            return
    rng = random.Random(seed)
    keep = budget_bytes / total if files else 1.0
    stream_budget = budget_bytes - budget_bytes * windowed_bytes / total if files else budget_bytes
    docs = (d for f in streamed for d in file_documents(f, cfg) if d.text.strip()) if windowed else iter_documents(cfg)
    taken = 0
    for doc in docs:
        if rng.random() < keep:
            yield doc.text
            taken += doc.nbytes
            if taken >= stream_budget:
                return


WINDOW = 1 << 20
_LINE_END = re.compile(r"\r\n|\r|\n")  # as decoded_lines (text mode) reads them


def _window_sample(files: list[Path], total: int, budget_bytes: float, seed: int) -> Iterator[str]:
    # the nearest to the budget (2 MB is two windows, not one), but no more than fit apart: windows would overlap
    n_windows = max(1, min(round(budget_bytes / WINDOW), total // WINDOW))
    stride = total / n_windows
    rng = random.Random(seed)
    starts = [int(k * stride + rng.random() * max(0.0, stride - WINDOW)) for k in range(n_windows)]
    bounds, at = [], 0
    for f in files:
        bounds.append((at, at + f.stat().st_size, f))
        at += f.stat().st_size
    for start in starts:  # a window over the files end to end: one that crosses a file's end goes on in the next
        for lo, hi, f in bounds:
            if start < hi and lo < start + WINDOW:
                at = max(start, lo)
                yield from _window_texts(f, at - lo, min(hi, start + WINDOW) - at, hi - lo)


def _window_texts(path: Path, offset: int, length: int, size: int) -> Iterator[str]:
    """The non-blank whole lines of the `length` bytes at `offset` of a text file of `size` bytes, line
    ends read as preparation reads them ("\r\n", a lone "\r", "\n"). A window that holds no whole line
    (lines longer than the window) keeps its text, cut at whitespace at both ends: a partial line is still
    text of the corpus, a partial word is not."""
    first = max(0, offset - 1)  # the bytes either side tell whether the window starts / ends at a line end
    with path.open("rb") as fh:
        fh.seek(first)
        raw = fh.read(offset + length + 1 - first)
    text = raw.decode("utf-8", errors="ignore")  # a window cut mid-character; UTF-8 is checked later
    if offset == 0:
        text = text.removeprefix("\ufeff")  # a byte-order mark is not text (decoded_lines drops it too)
    at_end = offset + length >= size
    pieces = _LINE_END.split(text)
    lines = pieces[(1 if offset else 0) : (None if at_end else -1)]  # the pieces at a cut edge are partial
    if any(line.strip() for line in lines):
        yield from (line for line in lines if line.strip())
        return
    if offset:
        text = text[re.match(r"\S*", text).end() :]  # type: ignore[union-attr]
    if not at_end:
        text = text[: re.search(r"\S*\Z", text).start()]  # type: ignore[union-attr]
    yield from (line for line in _LINE_END.split(text) if line.strip())


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
