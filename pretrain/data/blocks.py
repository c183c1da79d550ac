"""GPT examples: blocks of the flat token array, by index arithmetic (nothing stored per block)."""

from __future__ import annotations

from typing import Any

import numpy as np


class PackedBlocks:
    """Block i is tokens[i * L : (i + 1) * L]: documents (each ending in end-of-text) back to back,
    every token exactly once and in order; only the last block may be shorter."""

    def __init__(self, tokens: np.ndarray, block_size: int):
        self.tokens, self.block_size = tokens, block_size

    def __len__(self) -> int:
        return -(-len(self.tokens) // self.block_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        start = index * self.block_size
        return {"input_ids": np.array(self.tokens[start : start + self.block_size], dtype=np.int64)}


def pack_blocks(token_lists: list[list[int]], block_size: int) -> list[np.ndarray]:
    """The naive reference: documents concatenated, then cut (tests compare the shards against it)."""
    flat = np.concatenate([np.asarray(t, np.int64) for t in token_lists]) if token_lists else np.zeros(0, np.int64)
    return [flat[i : i + block_size] for i in range(0, len(flat), block_size)]
