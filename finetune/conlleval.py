"""Chunk / entity scores exactly as the CoNLL shared tasks' `conlleval` perl script computes them.

A chunk is found by the script's own start / end rules (`start_of_chunk`, `end_of_chunk` below), so
IOB1 (`I-` opens a chunk after `O` or after another type), IOB2 (`B-` opens every chunk), IOE and
the bracket tags all work without being told which scheme a file uses. A guessed chunk is correct
when it starts and ends where the gold chunk does, with the same type. Sentence boundaries (blank
lines) close every chunk. Precision, recall and F1 are micro-averaged over chunks; accuracy is over
tokens (a tag is right when prefix and type both match).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

BOUNDARY = "-X-"  # the script's sentence-boundary word


def split_tag(tag: str) -> tuple[str, str]:
    """'B-NP' -> ('B', 'NP'); 'O' -> ('O', ''); as the script's /^([^-]*)-(.*)$/."""
    prefix, dash, kind = tag.partition("-")
    return (prefix, kind) if dash else (tag, "")


def end_of_chunk(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    """A chunk ended between the previous word and this one."""
    pair = (prev_tag, tag)
    if pair in {("B", "B"), ("B", "O"), ("I", "B"), ("I", "O"), ("E", "E"), ("E", "I"), ("E", "O")}:
        return True
    if prev_tag not in ("O", ".") and prev_type != kind:
        return True
    return prev_tag in ("]", "[")  # bracket chunks have length 1


def start_of_chunk(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    """A chunk started between the previous word and this one."""
    pair = (prev_tag, tag)
    if pair in {("B", "B"), ("I", "B"), ("O", "B"), ("O", "I"), ("E", "E"), ("E", "I"), ("O", "E")}:
        return True
    if tag not in ("O", ".") and prev_type != kind:
        return True
    return tag in ("[", "]")


@dataclass
class ChunkCounts:
    correct_chunks: Counter = field(default_factory=Counter)  # by type
    found_correct: Counter = field(default_factory=Counter)  # gold chunks by type
    found_guessed: Counter = field(default_factory=Counter)  # predicted chunks by type
    correct_tags: int = 0
    tokens: int = 0


def count_chunks(rows: Iterable[tuple[str, str, str] | None]) -> ChunkCounts:
    """The script's main loop. `rows`: (word, gold tag, guessed tag) per token; None for a sentence
    boundary (a blank line)."""
    counts = ChunkCounts()
    in_correct = False
    last_correct, last_correct_type, last_guessed, last_guessed_type = "O", "", "O", ""
    for row in rows:
        word, gold, guess = row if row is not None else (BOUNDARY, "O", "O")
        correct, correct_type = split_tag(gold)
        guessed, guessed_type = split_tag(guess)
        if word == BOUNDARY:
            guessed = "O"  # sentence breaks are always outside chunks
        gold_end = end_of_chunk(last_correct, correct, last_correct_type, correct_type)
        guess_end = end_of_chunk(last_guessed, guessed, last_guessed_type, guessed_type)
        if in_correct:
            if gold_end and guess_end and last_guessed_type == last_correct_type:
                in_correct = False
                counts.correct_chunks[last_correct_type] += 1
            elif gold_end != guess_end or guessed_type != correct_type:
                in_correct = False
        gold_start = start_of_chunk(last_correct, correct, last_correct_type, correct_type)
        guess_start = start_of_chunk(last_guessed, guessed, last_guessed_type, guessed_type)
        if gold_start and guess_start and guessed_type == correct_type:
            in_correct = True
        if gold_start:
            counts.found_correct[correct_type] += 1
        if guess_start:
            counts.found_guessed[guessed_type] += 1
        if word != BOUNDARY:
            counts.correct_tags += correct == guessed and guessed_type == correct_type
            counts.tokens += 1
        last_guessed, last_correct, last_guessed_type, last_correct_type = guessed, correct, guessed_type, correct_type
    if in_correct:  # the file ended inside a correct chunk
        counts.correct_chunks[last_correct_type] += 1
    return counts


def _prf(correct: int, guessed: int, gold: int) -> tuple[float, float, float]:
    precision = correct / guessed if guessed else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def scores(counts: ChunkCounts) -> dict[str, float]:
    """precision, recall, f1 (fractions, not the script's percentages), accuracy, and per type
    `<TYPE>_f1`; plus the raw counts the script prints."""
    total = sum(counts.correct_chunks.values())
    p, r, f1 = _prf(total, sum(counts.found_guessed.values()), sum(counts.found_correct.values()))
    out = {
        "precision": p,
        "recall": r,
        "f1": f1,
        "accuracy": counts.correct_tags / counts.tokens if counts.tokens else 0.0,
        "tokens": float(counts.tokens),
        "gold_chunks": float(sum(counts.found_correct.values())),
        "predicted_chunks": float(sum(counts.found_guessed.values())),
        "correct_chunks": float(total),
    }
    for kind in sorted(set(counts.found_correct) | set(counts.found_guessed)):
        if kind:  # the script skips the empty type
            kind_counts = counts.correct_chunks[kind], counts.found_guessed[kind], counts.found_correct[kind]
            out[f"{kind}_f1"] = _prf(*kind_counts)[2]
    return out


def evaluate(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
    """Scores of predicted tag sequences against gold ones, one sequence per sentence."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted ones")
    rows: list[tuple[str, str, str] | None] = []
    for i, (g, p) in enumerate(zip(gold, predicted, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted ones")
        rows += [("w", a, b) for a, b in zip(g, p, strict=True)] + [None]
    return scores(count_chunks(rows))


def evaluate_lines(lines: Iterable[str]) -> dict[str, float]:
    """Scores of the script's own input: `word ... gold guess` per line, blank lines between sentences."""
    rows: list[tuple[str, str, str] | None] = []
    n_fields = None
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            rows.append(None)
            continue
        if len(fields) < 3 and fields[0] != BOUNDARY:
            raise ValueError(f"line {number}: expected `word ... gold guess`, got {line.strip()!r}")
        if n_fields is None:
            n_fields = len(fields)
        elif len(fields) != n_fields:
            raise ValueError(f"line {number}: unexpected number of fields: {len(fields)} ({n_fields})")
        rows.append((fields[0], fields[-2], fields[-1]))
    return scores(count_chunks(rows))


def chunks(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word + 1) of every chunk of one sentence, found by the script's rules."""
    found: list[tuple[str, int, int]] = []
    start, last_tag, last_type = None, "O", ""
    for i, tag in enumerate([*tags, "O"]):  # the sentence boundary closes the last chunk
        prefix, kind = split_tag(tag)
        if start is not None and end_of_chunk(last_tag, prefix, last_type, kind):
            found.append((last_type, start, i))
            start = None
        if i < len(tags) and start_of_chunk(last_tag, prefix, last_type, kind):
            start = i
        last_tag, last_type = prefix, kind
    return found
