"""Corpora as a stream of documents: files, directories and globs of .txt / .jsonl / .json / .parquet
(each optionally .gz), or `datasets` hub names streamed row by row; document boundaries per layout
(blank lines, rows, WikiText headings, sentence rows). Nothing here holds the corpus in memory, and
nothing reads a file twice: a bad UTF-8 byte is reported with its file and offset when it is reached.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import itertools
import json
import logging
import os
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..config import DataConfig, HubSource
from ..errors import ConfigError

log = logging.getLogger(__name__)

SAMPLE_CORPUS = Path(__file__).resolve().parent.parent / "sample_data" / "shakespeare.txt"
LINES_PER_PSEUDO_DOCUMENT = 100  # a text without blank lines, or rows of sentences: documents of this many lines
MAX_DOCUMENT_LINES = 10_000  # a longer run of lines is cut: memory stays bounded whatever the file
SUFFIX_FORMATS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_WIKITEXT_TITLE = re.compile(r"\s*= [^=].* =\s*")  # ` = Title = `; sections are ` = = Section = = `


@dataclass
class Document:
    text: str
    nbytes: int  # UTF-8 size, for progress in MB/s


# ----------------------------------------------------------------------------- files


def resolve_files(paths: Iterable[str]) -> list[Path]:
    """Files, directories (every file below, sorted) and globs, in the order given."""
    files: list[Path] = []
    for p in paths:
        path = Path(p).expanduser()
        if any(c in str(p) for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True) if Path(m).is_file())
            if not matches:
                raise FileNotFoundError(f"data.paths pattern {p} matches no file; check data.paths")
            files.extend(matches)
        elif path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"data directory {path} holds no file; check data.paths")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"data file {path} does not exist; check data.paths")
    for f in files:
        if f.stat().st_size == 0:
            raise ValueError(f"data file {f} is empty; remove it from data.paths")
    return files


def file_format(path: Path, default: str) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return SUFFIX_FORMATS.get(suffixes[-1] if suffixes else "", default)


def _open_binary(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb")  # type: ignore[return-value]


def decoded_lines(path: Path) -> Iterator[tuple[str, int]]:
    """(line, its size in bytes), decoded strictly: a bad byte names the file and its offset."""
    offset = 0
    with _open_binary(path) as f:
        for raw in f:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                where = "of the decompressed text" if path.suffix.lower() == ".gz" else ""
                raise ValueError(
                    f"data file {path} is not valid UTF-8 (byte {offset + e.start}{' ' + where if where else ''}); "
                    "re-encode it, e.g. iconv -f latin1 -t utf-8"
                ) from None
            offset += len(raw)
            yield line, len(raw)


def check_text_files(paths: Iterable[str | Path]) -> list[Path]:
    """Missing or empty files fail at once (UTF-8 is checked while streaming, not here)."""
    return resolve_files([str(p) for p in paths])


# ----------------------------------------------------------------------------- documents per layout


def blank_line_documents(lines: Iterable[tuple[str, int]], name: str = "") -> Iterator[Document]:
    """Runs of lines between blank (or whitespace-only) lines. A file whose first run is all of it and
    longer than LINES_PER_PSEUDO_DOCUMENT lines (no blank line at all) is cut into pseudo-documents of
    that many lines, so it still has documents to pair and to hold out; any run is cut at
    MAX_DOCUMENT_LINES, which keeps memory bounded."""
    paragraph: list[str] = []
    nbytes = 0
    first, chunked = True, False

    def start_chunking() -> None:
        nonlocal chunked
        chunked = True
        log.warning(
            "%s has no blank line between documents: every %d lines are taken as one document",
            name,
            LINES_PER_PSEUDO_DOCUMENT,
        )

    def emit(lines_: list[str], size: int) -> Iterator[Document]:
        if chunked:
            for i in range(0, len(lines_), LINES_PER_PSEUDO_DOCUMENT):
                part = lines_[i : i + LINES_PER_PSEUDO_DOCUMENT]
                yield Document("\n".join(part), size * len(part) // max(1, len(lines_)))
        else:
            yield Document("\n".join(lines_), size)

    for line, size in lines:
        if line.strip():
            paragraph.append(line.rstrip("\n"))
            nbytes += size
            if len(paragraph) >= MAX_DOCUMENT_LINES:
                if first:
                    start_chunking()
                yield from emit(paragraph, nbytes)
                paragraph, nbytes = [], 0
        else:
            nbytes += size
            if paragraph:
                yield from emit(paragraph, nbytes)
                paragraph, nbytes, first = [], 0, False
    if paragraph:
        if first and not chunked and len(paragraph) > LINES_PER_PSEUDO_DOCUMENT:
            start_chunking()
        yield from emit(paragraph, nbytes)


def wikitext_articles(rows: Iterable[str]) -> Iterator[Document]:
    """WikiText as the hub has it, one line per row: an article starts at a ` = Title = ` line (not at
    ` = = Section = = `); its paragraphs are its lines."""
    lines: list[str] = []
    nbytes = 0
    for row in rows:
        if _WIKITEXT_TITLE.fullmatch(row) and lines:
            yield Document("\n".join(lines), nbytes)
            lines, nbytes = [], 0
        nbytes += len(row.encode("utf-8"))
        if row.strip():
            lines.append(row.strip())
    if lines:
        yield Document("\n".join(lines), nbytes)


def sentence_row_documents(rows: Iterable[str]) -> Iterator[Document]:
    """BookCorpus as the hub has it: one sentence per row and no book boundaries; consecutive
    sentences are grouped into documents of LINES_PER_PSEUDO_DOCUMENT."""
    lines: list[str] = []
    nbytes = 0
    for row in rows:
        if row.strip():
            lines.append(row.strip())
            nbytes += len(row.encode("utf-8")) + 1
        if len(lines) == LINES_PER_PSEUDO_DOCUMENT:
            yield Document("\n".join(lines), nbytes)
            lines, nbytes = [], 0
    if lines:
        yield Document("\n".join(lines), nbytes)


def row_documents(rows: Iterable[str]) -> Iterator[Document]:
    for row in rows:
        if row and row.strip():
            yield Document(row, len(row.encode("utf-8")))


def by_layout(rows: Iterable[str], layout: str) -> Iterator[Document]:
    if layout == "wikitext_articles":
        return wikitext_articles(rows)
    if layout == "sentence_rows":
        return sentence_row_documents(rows)
    if layout == "blank_lines":
        return blank_line_documents((r if r.endswith("\n") else r + "\n", len(r.encode("utf-8"))) for r in rows)
    return row_documents(rows)


# ----------------------------------------------------------------------------- rows of structured files


def json_rows(path: Path, column: str) -> Iterator[str]:
    """JSON lines (streamed), or one JSON array / {"data": [...]} (loaded: such files are small)."""
    lines = decoded_lines(path)
    first = next(lines, None)
    if first is None:
        return
    if first[0].lstrip().startswith("["):
        rest = "".join(line for line, _ in lines)
        records = json.loads(first[0] + rest)
        records = records.get("data", records) if isinstance(records, dict) else records
        for r in records:
            yield _column(r, column, path)
        return
    for number, (line, _) in enumerate(itertools.chain([first], lines), 1):
        if line.strip():
            yield _column(_json_line(line, path, number), column, path)


def _json_line(line: str, path: Path, number: int) -> dict:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"data file {path} line {number} is not valid JSON ({e.msg}); fix or remove it") from None


def _column(record: Any, column: str, path: Path) -> str:
    if not isinstance(record, dict) or column not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ConfigError(f"{path}: a record has no column {column!r} (it has {keys}); set data.text_column")
    value = record[column]
    return value if isinstance(value, str) else ("" if value is None else str(value))


def parquet_rows(path: Path, column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    if column not in f.schema_arrow.names:
        raise ConfigError(f"{path} has no column {column!r} (columns: {f.schema_arrow.names}); set data.text_column")
    for batch in f.iter_batches(columns=[column], batch_size=2048):
        for value in batch.column(0).to_pylist():
            yield value or ""


def hub_rows(source: HubSource) -> Iterator[str]:
    """A `datasets` name (or a local directory laid out like one), streamed: never downloaded whole."""
    import datasets

    ds = datasets.load_dataset(source.name, source.config, split=source.split, streaming=True)
    for row in ds:
        if source.text_column not in row:
            raise ConfigError(
                f"the data {source.name} has no column {source.text_column!r} (columns: {sorted(row)}); "
                "set data.text_column"
            )
        yield row[source.text_column] or ""


# ----------------------------------------------------------------------------- the corpus


def hub_sources(cfg: DataConfig) -> list[HubSource]:
    if cfg.hub_sources:
        return cfg.hub_sources
    layout = cfg.documents if cfg.documents != "auto" else "rows"
    return [HubSource(cfg.hub_name or "", cfg.hub_config, cfg.hub_split, cfg.text_column, layout)]


def corpus_files(cfg: DataConfig) -> list[Path]:
    if cfg.format == "sample":
        return [SAMPLE_CORPUS]
    if cfg.format == "hub":
        return []
    return resolve_files(cfg.paths)


def file_documents(path: Path, cfg: DataConfig) -> Iterator[Document]:
    fmt = file_format(path, "text" if cfg.format in ("sample", "text") else cfg.format)
    if fmt == "text":
        if cfg.documents in ("auto", "blank_lines"):
            return blank_line_documents(decoded_lines(path), str(path))
        return by_layout((line for line, _ in decoded_lines(path)), cfg.documents)
    rows = json_rows(path, cfg.text_column) if fmt == "json" else parquet_rows(path, cfg.text_column)
    return by_layout(rows, "rows" if cfg.documents == "auto" else cfg.documents)


def iter_documents(cfg: DataConfig) -> Iterator[Document]:
    """Every non-blank document of the corpus, in a fixed order, streamed."""
    if cfg.format == "hub":
        streams = [by_layout(hub_rows(s), s.documents) for s in hub_sources(cfg)]
        docs: Iterator[Document] = interleave(streams)
    else:
        docs = (d for f in corpus_files(cfg) for d in file_documents(f, cfg))
    n = 0
    for doc in docs:
        if doc.text.strip():
            yield doc
            n += 1
            if cfg.max_documents and n >= cfg.max_documents:
                return


def interleave(streams: list[Iterator[Document]]) -> Iterator[Document]:
    """One document from each stream in turn until all are exhausted (Wikipedia, BookCorpus, ...)."""
    live = list(streams)
    while live:
        for s in list(live):
            doc = next(s, None)
            if doc is None:
                live.remove(s)
            else:
                yield doc


def load_documents(cfg: DataConfig) -> list[dict[str, str]]:
    """All documents as rows {"text": ...}: for small corpora and tests; training streams them."""
    docs = [{"text": d.text} for d in iter_documents(cfg)]
    if not docs:
        raise ValueError("the corpus is empty: no non-blank document was found in the data; check data.paths")
    return docs


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(document: str) -> list[str]:
    """Lines, each further split after sentence punctuation (a line may be a paragraph)."""
    out = []
    for line in document.split("\n"):
        line = line.strip()
        if line:
            out.extend(s for s in _SENTENCE_END.split(line) if s)
    return out


# ----------------------------------------------------------------------------- cheap identity and sample


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
