"""A checkpoint's tokenizer travels with it: find the one saved with a model, and compare two
tokenizers by content (vocabulary, special tokens, lower-casing), not by size; a model fed another
tokenizer's ids of the same size would run and learn nonsense without a word."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .train.checkpoints import resolve_run_dir


def saved_tokenizer_dir(init: str) -> Path | None:
    """The tokenizer directory saved with `init` (a checkpoint, a run directory: its tokenizer/ or its
    latest checkpoint, an export, a Hugging Face directory); None when there is none or `init` is not
    a local path."""
    path = Path(init).expanduser()
    if not path.exists():
        return None
    for candidate in (path, path / "tokenizer", resolve_run_dir(path), path / "export"):
        if (candidate / "tokenizer_config.json").exists() or (candidate / "tokenizer.json").exists():
            return candidate
    return None


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what decides the ids a text gets: the vocabulary, the special tokens and
    lower-casing."""
    content = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": sorted((k, str(v)) for k, v in tokenizer.special_tokens_map.items()),
        "lowercase": bool(getattr(tokenizer, "do_lower_case", False)),
    }
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:16]


def same_tokenizer(a: Any, b: Any) -> bool:
    return tokenizer_fingerprint(a) == tokenizer_fingerprint(b)
