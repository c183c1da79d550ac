"""Exact match and F1 as the official SQuAD evaluation scripts compute them (v1.1, and v2.0's
HasAns / NoAns split): normalise (lower-case, drop punctuation, articles and extra whitespace),
compare, and take the maximum over the gold answers."""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str, version: str = "2.0") -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if version == "2.0" and (not pred_tokens or not gold_tokens):  # v2: an empty answer matches only an empty gold
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(
    predictions: Mapping[str, str], golds: Mapping[str, Sequence[str]], version: str = "2.0"
) -> dict[str, float]:
    """`golds[id]` lists the gold answers; an empty list means unanswerable (the gold is "").

    `version` picks the official script's rules: "1.1" scores against every gold answer as given
    (F1 is 0 when either side normalises to nothing); "2.0" drops gold answers that normalise to
    the empty string (none left: unanswerable) and an empty prediction scores 1 only against an
    empty gold. Returns exact_match and f1 in percent over every gold id (a missing prediction
    scores 0), and for v2 data also HasAns_* / NoAns_* and their counts."""
    if version not in ("1.1", "2.0"):
        raise ValueError(f"SQuAD version must be '1.1' or '2.0', got {version!r}")
    em, f, has, no = {}, {}, [], []
    for qid, answers in golds.items():
        if version == "2.0":
            answers = [a for a in answers if normalize_answer(a)] or [""]
        elif not answers:
            raise ValueError(f"question {qid} has no gold answer: SQuAD v1.1 has none unanswerable; use version='2.0'")
        prediction = predictions.get(qid, None)
        if prediction is None:
            em[qid] = f[qid] = 0.0
        else:
            em[qid] = max(exact_match(prediction, a) for a in answers)
            f[qid] = max(f1(prediction, a, version) for a in answers)
        (has if answers != [""] or version == "1.1" else no).append(qid)
    total = max(1, len(golds))
    result = {"exact_match": 100.0 * sum(em.values()) / total, "f1": 100.0 * sum(f.values()) / total}
    if no:
        for name, ids in (("HasAns", has), ("NoAns", no)):
            if ids:
                result[f"{name}_exact"] = 100.0 * sum(em[i] for i in ids) / len(ids)
                result[f"{name}_f1"] = 100.0 * sum(f[i] for i in ids) / len(ids)
            result[f"{name}_total"] = float(len(ids))
    return result
