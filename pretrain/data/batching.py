"""Which examples make global batch k, for any k, with no iteration: resuming is index arithmetic."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from ..errors import DataError


def example_seed(seed: int, epoch: int, index: int) -> int:
    """Masking of an example depends only on (seed, epoch, index): exact resume, and the same masks
    whether a global batch runs in one process or several."""
    return (seed * 1_000_003 + epoch * 2_147_483_647 + index) % (1 << 62)


BATCHES_PER_LENGTH_GROUP = 50  # as Hugging Face's LengthGroupedSampler: sorted within 50 batches, not the epoch


def group_by_length(order: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """`order` (a permutation) with each run of BATCHES_PER_LENGTH_GROUP batches sorted by example length,
    cut into batches and those batches shuffled: a batch holds examples of similar length, so the collator
    pads it little, while which examples share a group stays random. The incomplete tail is left as it is."""
    out = order.copy()
    usable = len(order) // batch_size * batch_size
    size = batch_size * BATCHES_PER_LENGTH_GROUP
    for start in range(0, usable, size):
        group = order[start : min(start + size, usable)]
        batches = group[np.argsort(lengths[group], kind="stable")].reshape(-1, batch_size)
        out[start : start + len(group)] = batches[rng.permutation(len(batches))].reshape(-1)
    return out


class BatchPlan:
    """Which examples make up global batch k (a micro-batch over all processes), for any k, with no
    iteration: epoch e is a permutation seeded by (seed, e). Resuming at step k is index arithmetic, not a
    replay of the data. The epoch is cut into whole optimizer steps (`step_batch_size`: the global batch
    times gradient accumulation; the tail that fills no step is dropped), and with `lengths` (epoch -> each
    example's length) the permutation is grouped by length (group_by_length) in the same units: a step
    never spans two epochs, and what it trains on does not depend on how it is split into micro-batches
    or processes."""

    def __init__(
        self,
        num_examples: int,
        global_batch_size: int,
        seed: int,
        shuffle: bool = True,
        lengths: Callable[[int], np.ndarray] | None = None,
        step_batch_size: int | None = None,
    ):
        step_batch_size = step_batch_size or global_batch_size
        if step_batch_size % global_batch_size:
            raise ValueError(
                f"an optimizer step of {step_batch_size} is not whole global batches of {global_batch_size}"
            )
        if num_examples < step_batch_size:  # an optimizer step sees each example once at most
            raise DataError(
                f"only {num_examples} training examples for an optimizer step of {step_batch_size} (train.batch_size"
                " x processes x train.grad_accum_steps); use more data or a smaller train.batch_size / grad_accum_steps"
            )
        self.num_examples, self.global_batch_size, self.seed, self.shuffle = (
            num_examples,
            global_batch_size,
            seed,
            shuffle,
        )
        self.lengths = lengths
        self.step_batch_size = step_batch_size
        # in global batches (k counts them), but whole optimizer steps: accumulation moves no epoch boundary
        steps_per_epoch = num_examples // step_batch_size
        self.batches_per_epoch = steps_per_epoch * (step_batch_size // global_batch_size)

    def batch(self, k: int) -> tuple[int, list[int]]:
        epoch, position = divmod(k, self.batches_per_epoch)
        order = self._order(epoch)
        return epoch, order[position * self.global_batch_size : (position + 1) * self.global_batch_size].tolist()

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_examples)
        cached = getattr(self, "_cached", None)
        if cached is None or cached[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            if self.lengths is not None:
                rng = np.random.default_rng([self.seed, epoch, 1])
                order = group_by_length(order, self.lengths(epoch), self.step_batch_size, rng)
            self._cached = (epoch, order)
        return self._cached[1]


class PlannedBatches(torch.utils.data.Sampler):
    """Yields this process's share of global batches start, start+1, ... as (index, seed, epoch) keys."""

    def __init__(self, plan: BatchPlan, start: int, rank: int, world_size: int, seed: int):
        self.plan, self.start, self.rank, self.world_size, self.seed = plan, start, rank, world_size, seed

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        k = self.start
        per_process = self.plan.global_batch_size // self.world_size
        while True:
            epoch, indices = self.plan.batch(k)
            mine = indices[self.rank * per_process : (self.rank + 1) * per_process]
            yield [(i, example_seed(self.seed, epoch, i), epoch) for i in mine]
            k += 1


class SeededExamples(torch.utils.data.Dataset):
    """Looks up (index, seed[, epoch]) keys and passes the seed on to the collator. A dataset whose
    examples are re-drawn each epoch (BERT pairs) has `for_epoch(e)`: the examples of epoch e, of the
    same length; the others serve every epoch alike."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, ...]) -> dict[str, Any]:
        index, seed, *epoch = key
        examples = self.dataset.for_epoch(epoch[0]) if epoch and hasattr(self.dataset, "for_epoch") else self.dataset
        return {**examples[int(index)], "_seed": seed}
