"""Collators: pad a batch of examples and mask it (BERT) or label it (GPT). Masks depend only on each
example's seed, so a resumed run, or one over more processes, masks exactly as the original."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..targets import IGNORE_INDEX, labelled_positions


def pad_to_tensor(sequences: Sequence[Sequence[int]], value: int, width: int | None = None) -> torch.Tensor:
    """(batch, width) right-padded with `value`; width defaults to the longest sequence."""
    length = width or max(len(s) for s in sequences)
    out = torch.full((len(sequences), length), value, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def padding_mask(sequences: Sequence[Sequence[int]], width: int | None = None) -> torch.Tensor:
    """The attention mask of pad_to_tensor(sequences, ..., width): 1 at real tokens, 0 at the right padding."""
    lengths = torch.tensor([len(s) for s in sequences])
    return (torch.arange(width or int(lengths.max()))[None, :] < lengths[:, None]).long()


def padded_width(sequences: Sequence[Sequence[int]], multiple: int, limit: int | None) -> int:
    """The longest sequence rounded up to a multiple of `multiple` but not past `limit` (no rounding
    without a limit: the model's position table may end right after the longest sequence)."""
    longest = max(len(s) for s in sequences)
    return max(longest, min(-(-longest // multiple) * multiple, limit or longest))


class MLMCollator:
    """Pads a batch and masks it: `mlm_probability` of the non-special tokens (whole words with
    `whole_word_mask`); of those 80% become [MASK], 10% a random token, 10% stay. Labels are -100
    elsewhere. Each example is masked with its own generator (seed from `_seed`).

    Given `max_length`, batches are padded to a multiple of 8 positions (not past it): length-grouped batches
    would otherwise come in every length, and each new shape costs the CPU's oneDNN kernels a cached
    primitive (the default run's peak memory grew by 0.18 GB) and accelerators their aligned tiles."""

    PAD_MULTIPLE = 8

    def __init__(
        self,
        tokenizer: Any,
        mlm_probability: float = 0.15,
        whole_word_mask: bool = False,
        max_length: int | None = None,
    ):
        self.max_length = max_length
        self.pad_id, self.mask_id = tokenizer.pad_token_id, tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        self.mlm_probability = mlm_probability
        self.special = torch.zeros(self.vocab_size, dtype=torch.bool)
        self.special[list(tokenizer.all_special_ids)] = True
        self.continuation = None
        if whole_word_mask:
            tokens = tokenizer.convert_ids_to_tokens(list(range(self.vocab_size)))
            self.continuation = torch.tensor([t.startswith("##") for t in tokens])

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences = [e["input_ids"] for e in examples]
        width = padded_width(sequences, self.PAD_MULTIPLE, self.max_length)
        input_ids = pad_to_tensor(sequences, self.pad_id, width)
        batch = {"input_ids": input_ids}
        if any(len(s) < width for s in sequences):  # no mask without padding: the model never checks
            batch["attention_mask"] = padding_mask(sequences, width)
        if "token_type_ids" in examples[0]:
            batch["token_type_ids"] = pad_to_tensor([e["token_type_ids"] for e in examples], 0, width)
        if "next_sentence_label" in examples[0]:
            batch["next_sentence_label"] = torch.tensor([e["next_sentence_label"] for e in examples])
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            ids, row_labels = self.mask(input_ids[row, :n], torch.Generator().manual_seed(example.get("_seed", row)))
            input_ids[row, :n], labels[row, :n] = ids, row_labels
        batch["labels"] = labels
        batch["mlm_positions"] = labelled_positions(labels)  # found here, on the host: the device never waits
        return batch

    def mask(self, ids: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        eligible = ~self.special[ids]
        draw = torch.rand(ids.shape, generator=generator)
        if self.continuation is None:
            selected = eligible & (draw < self.mlm_probability)
        else:  # choose words, then take all their pieces; a word is a start piece and its ## pieces
            starts = eligible & ~self.continuation[ids]
            word = torch.cumsum(starts.long(), 0) - 1
            chosen_word = (draw < self.mlm_probability) & starts
            selected = (
                eligible & (word >= 0) & chosen_word[starts][word.clamp(min=0)] if starts.any() else eligible & False
            )
        labels = torch.where(selected, ids, IGNORE_INDEX)
        how = torch.rand(ids.shape, generator=generator)
        random_tokens = torch.randint(self.vocab_size, ids.shape, generator=generator)
        ids = torch.where(selected & (how < 0.8), self.mask_id, ids)
        ids = torch.where(selected & (how >= 0.8) & (how < 0.9), random_tokens, ids)
        return ids, labels


def padding_id(tokenizer: Any) -> int:
    """The id that pads a batch: the tokenizer's pad token, or EOS for GPT-2-style tokenizers that have none."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def next_token_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Targets of a next-token loss: the tokens themselves, IGNORE_INDEX on padding and at each row's
    first position (nothing predicts it), so counting the labels != IGNORE_INDEX counts the targets."""
    labels = input_ids.clone() if attention_mask is None else input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    labels[..., 0] = IGNORE_INDEX
    return labels


class CausalCollator:
    """Stacks packed blocks; labels are the inputs (the loss shifts them). Pads only a short tail block."""

    def __init__(self, tokenizer: Any):
        self.pad_id = padding_id(tokenizer)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [e["input_ids"] for e in examples]
        input_ids = pad_to_tensor(seqs, self.pad_id)
        batch = {"input_ids": input_ids}
        if len({len(s) for s in seqs}) > 1:
            batch["attention_mask"] = padding_mask(seqs)
        batch["labels"] = next_token_labels(input_ids, batch.get("attention_mask"))
        return batch
