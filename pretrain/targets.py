"""The conventions shared by the data that makes training targets and the models that score them."""

import torch

IGNORE_INDEX = -100  # a target no loss counts (PyTorch's cross_entropy default)


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices (into batch x length, in order) of the entries of `labels` that are targets. The MLM
    collator sends them as `mlm_positions`, computed on the host, so the model need not find them on the
    device (which makes an accelerator wait)."""
    return labels.reshape(-1).ne(IGNORE_INDEX).nonzero().squeeze(1)
