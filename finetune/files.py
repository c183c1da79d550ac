"""Rows of a data file: a GLUE .tsv, a .csv, or .json / .jsonl objects, every line checked; the error
names the file, the line and the fix. Classification, token classification and multiple choice read
their files through it."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from pretrain.errors import ConfigError, DataError


def read_rows(path: str, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of a GLUE .tsv, a .csv, or a .json / .jsonl file, as dicts."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"data file {file} does not exist; check data.train / data.validation")
    suffix = file.suffix.lower()
    text = read_utf8(file)
    if not text.strip():
        raise DataError(f"{file} is empty; check data.train / data.validation")
    if suffix in (".json", ".jsonl"):
        try:
            rows = json.loads(text)
            rows = rows["data"] if isinstance(rows, dict) and "data" in rows else rows
            rows = [rows] if isinstance(rows, dict) else rows  # a .jsonl file of one line
        except json.JSONDecodeError:
            rows = []
            for number, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{file}, line {number}: not valid JSON ({e.msg}); a .json file holds one list of objects, "
                        "a .jsonl file one object per line"
                    ) from None
        if not isinstance(rows, list):
            raise DataError(f"{file}: expected a list of objects (or one object per line), got {type(rows).__name__}")
        for number, row in enumerate(rows, start=1):
            if not isinstance(row, dict):
                raise DataError(f"{file}, row {number}: expected an object with named fields, got {row!r:.60}")
        return rows
    if suffix not in (".tsv", ".csv", ".txt"):
        raise ConfigError(f"{file}: unknown file type {suffix!r}; use .tsv, .csv, .json or .jsonl")
    if suffix == ".csv":  # strict: a stray quote is an error, not a field that swallows the next lines
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    else:  # GLUE TSVs contain bare quotes: no quoting
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    lines = []  # (the line a row ends on, its fields); blank lines are skipped but counted
    try:
        for row in reader:
            if row:
                lines.append((reader.line_num, row))
    except csv.Error as e:
        raise DataError(
            f"{file}, line {reader.line_num}: {e}; fix the quoting (a field that contains quotes, commas or line "
            'breaks is quoted whole, its quotes doubled: "say ""hi"", then go")'
        ) from None
    if columns is None and len(lines) < 2:
        raise DataError(f"{file} has a header line but no rows; check data.train / data.validation")
    if columns is None:
        header, lines = lines[0][1], lines[1:]
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise DataError(
                f"{file}: the header repeats the column(s) {repeated}; rename them (columns are read by name)"
            )
    else:
        header = columns
    has_header = columns is None or (lines and lines[0][1] == list(columns))  # the names data.columns gives: no row
    if columns is not None and has_header:
        lines = lines[1:]
    rows = []
    for number, values in lines:
        if len(values) != len(header):
            raise DataError(
                f"{file}, line {number}: {len(values)} fields where the header has {len(header)}"
                + ("" if columns is None else " (data.columns)")
                + "; fix the line (a .tsv separates fields by tabs)"
            )
        rows.append(dict(zip(header, values, strict=True)))
    return rows


def hub_split(name: str, config: str | None, split: str) -> Any:
    """One split of a `datasets` hub dataset (needs internet, or the datasets cache)."""
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split)
    except ConnectionError as e:  # offline or unreachable, and not cached
        raise ConfigError(
            f"data.hub_name={name}: the {split} split cannot be fetched ({e}); give local files instead: "
            "data.train=<file> data.validation=<file>"
        ) from None


def read_utf8(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8-sig")  # utf-8-sig: MRPC files start with a BOM
    except UnicodeDecodeError as e:
        data = file.read_bytes()
        bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # e.start counts from after it
        line = data[: bom + e.start].count(b"\n") + 1
        raise DataError(f"{file}, line {line}: not UTF-8 text ({e.reason}); convert the file to UTF-8") from None
