"""Corpora as a stream of documents: files, directories and globs of .txt / .jsonl / .json / .parquet
(each optionally .gz), or `datasets` hub names streamed row by row; document boundaries per layout
(blank lines, rows, WikiText headings, sentence rows). Nothing here holds the corpus in memory, and
nothing reads a file twice: a bad UTF-8 byte is reported with its file and offset when it is reached.
"""

from __future__ import annotations

import glob
import gzip
import itertools
import json
import logging
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..config import DataConfig, HubSource
from ..errors import ConfigError, DataError, not_a_file

log = logging.getLogger(__name__)

SAMPLE_CORPUS = Path(__file__).resolve().parent.parent / "sample_data" / "shakespeare.txt"
LINES_PER_PSEUDO_DOCUMENT = 100  # a text without blank lines, or rows of sentences: documents of this many lines
MAX_DOCUMENT_LINES = 10_000  # a longer run of lines is cut: memory stays bounded whatever the file
SUFFIX_FORMATS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
EMPTY_CORPUS = "the corpus is empty: no non-blank document was found in the data; check data.paths"
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
        elif path.exists():
            raise DataError(f"data path {path} is {not_a_file(path)}; give files, directories or globs in data.paths")
        else:
            raise FileNotFoundError(f"data file {path} does not exist; check data.paths")
    seen: dict[Path, Path] = {}
    for f in files:
        if f.stat().st_size == 0:
            raise DataError(f"data file {f} is empty; remove it from data.paths")
        twice = seen.setdefault(f.resolve(), f)
        if twice is not f:  # its documents would be in training and held out at once
            raise DataError(f"data.paths reaches {f} twice ({twice} and {f}); list each file once")
    return files


def file_format(path: Path, default: str) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return SUFFIX_FORMATS.get(suffixes[-1] if suffixes else "", default)


def _open_binary(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb")  # type: ignore[return-value]


def decoded_lines(path: Path) -> Iterator[tuple[str, int]]:
    """(line, its size in bytes), decoded strictly: a bad byte names the file and its offset. Line ends
    are read as text mode reads them ("\r\n" and a lone "\r" end a line, as "\n"), and a UTF-8
    byte-order mark is not text: neither reaches the tokenizer."""
    offset = 0
    gzip_errors = (OSError, EOFError, zlib.error) if path.suffix.lower() == ".gz" else ()  # not gzip, cut short

    def not_gzip(e: Exception) -> DataError:
        return DataError(
            f"data file {path} is not a readable gzip file ({e}); re-compress it, or decompress it and drop the "
            ".gz suffix"
        )

    with _open_binary(path) as f:
        for raw in _read_errors_named(f, gzip_errors, not_gzip):
            if offset == 0 and raw.startswith(b"\x1f\x8b") and path.suffix.lower() != ".gz":  # gzip's magic
                raise DataError(f"data file {path} is gzip-compressed; name it {path.name}.gz, or decompress it")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                where = "of the decompressed text" if path.suffix.lower() == ".gz" else ""
                utf16 = offset == 0 and raw[:2] in (b"\xff\xfe", b"\xfe\xff")
                fix = "iconv -f utf-16 -t utf-8: it is UTF-16" if utf16 else "iconv -f latin1 -t utf-8 for Latin-1 text"
                raise DataError(
                    f"data file {path} is not valid UTF-8 (byte {offset + e.start}{' ' + where if where else ''}); "
                    f"re-encode it (e.g. {fix})"
                ) from None
            if offset == 0:
                line = line.removeprefix("\ufeff")
            offset += len(raw)
            if "\r" not in line:
                yield line, len(raw)
                continue
            # only \n ends a line here (str.splitlines would also split at \f, \x85, \u2028, ...)
            parts = re.findall(r"[^\n]*\n|[^\n]+", line.replace("\r\n", "\n").replace("\r", "\n"))
            share = len(raw) // len(parts)
            for i, part in enumerate(parts):  # the bytes shared out: the sizes add up to the file's
                yield part, share + (len(raw) - share * len(parts) if i == len(parts) - 1 else 0)


def _read_errors_named(
    items: Iterable[Any], errors: tuple[type[Exception], ...], error: Callable[[Exception], Exception]
) -> Iterator[Any]:
    """`items`, with a read failure of one of `errors` (raised while iterating) replaced by `error(e)`."""
    it = iter(items)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except errors as e:
            raise error(e) from None
        yield item


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
    first, blank = next(lines, None), 0
    while first is not None and not first[0].strip():  # blank lines before the first record
        first, blank = next(lines, None), blank + 1
    if first is None:
        return
    start = first[0].strip()
    one_document = start.startswith("[")
    if start.startswith("{"):
        try:  # one JSON-lines row; or {"data": [...]} whole on one line; or the start of a pretty-printed document
            record = json.loads(first[0])
            one_document = isinstance(record, dict) and column not in record and isinstance(record.get("data"), list)
        except json.JSONDecodeError:
            one_document = True
    if one_document:
        rest = "".join(line for line, _ in lines)
        try:
            records = json.loads(first[0] + rest)
        except json.JSONDecodeError as e:
            raise DataError(
                f"data file {path} is neither JSON lines nor one JSON document ({e.msg}, line {e.lineno + blank}); "
                f"a .json / .jsonl file holds one object per line ({{{column!r}: ...}}), or one array of such objects "
                "(or {'data': [...]})"
            ) from None
        records = records.get("data", records) if isinstance(records, dict) else records
        if not isinstance(records, list):
            raise DataError(f"data file {path} is one JSON object without a 'data' list; give its rows as a list")
        for r in records:
            yield _column(r, column, path)
        return
    for number, (line, _) in enumerate(itertools.chain([first], lines), blank + 1):
        if line.strip():
            yield _column(_json_line(line, path, number), column, path)


def _json_line(line: str, path: Path, number: int) -> dict:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"data file {path} line {number} is not valid JSON ({e.msg}); fix or remove it") from None


def _column(record: Any, column: str, path: Path) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{path}: a record is a {type(record).__name__} ({record!r:.40}), not an object with fields")
    if column not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ConfigError(f"{path}: a record has no column {column!r} (it has {keys}); set data.text_column")
    return _text(record[column], path)


def _text(value: Any, where: Any) -> str:
    """A cell as text, the same for every file type: a string as it is, bytes as UTF-8 (a Parquet binary
    column), a number as written, null as nothing; a list or an object is not text (its repr would be trained)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{where}: a text cell holds bytes that are not UTF-8 text; convert the column") from None
    if isinstance(value, (list, tuple, dict)):
        raise DataError(
            f"{where}: a text cell is a {type(value).__name__} ({value!r:.40}), not text; point data.text_column at "
            "a column of strings"
        )
    return str(value)


def parquet_rows(path: Path, column: str) -> Iterator[str]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as e:
        raise DataError(
            f"data file {path} is not a readable Parquet file ({e}); check the file or its suffix"
        ) from None
    if column not in f.schema_arrow.names:
        raise ConfigError(f"{path} has no column {column!r} (columns: {f.schema_arrow.names}); set data.text_column")
    for batch in f.iter_batches(columns=[column], batch_size=2048):
        for value in batch.column(0).to_pylist():
            yield _text(value, path)


def hub_rows(source: HubSource) -> Iterator[str]:
    """A `datasets` name (or a local directory laid out like one), streamed: never downloaded whole."""
    import datasets
    import pyarrow

    try:
        ds = datasets.load_dataset(source.name, source.config, split=source.split, streaming=True)
    except ValueError as e:  # e.g. "Bad split: train. Available splits: [...]"
        raise ConfigError(f"the data {source.name}: {e} (data.hub_split, data.hub_config)") from None

    def unreadable(e: Exception) -> DataError:  # an empty or damaged data file of a local dataset
        return DataError(f"the data {source.name} (split {source.split}) could not be read: {e}")

    for row in _read_errors_named(ds, (pyarrow.ArrowException, OSError), unreadable):
        if source.text_column not in row:
            raise ConfigError(
                f"the data {source.name} has no column {source.text_column!r} (columns: {sorted(row)}); "
                "set data.text_column"
            )
        yield _text(row[source.text_column], f"the data {source.name}")


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
        raise DataError(EMPTY_CORPUS)
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
