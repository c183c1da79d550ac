"""The loss terms the heads return: (summed loss, number of targets), never a mean, so the training
loop can normalise over a whole accumulated batch (see pretrain.train.loop.normalised_loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..targets import IGNORE_INDEX


def _terms_to_loss(terms: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor | None:
    if not terms:
        return None
    return sum(total / count.clamp(min=1) for total, count in terms.values())


def _ce_term(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (labels != IGNORE_INDEX).sum()


def lm_loss_term(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token loss: logits at t predict labels at t + 1. The labels are shifted, not the logits,
    so the (batch x length x vocab) tensor is never copied."""
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return _ce_term(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def chunked_lm_loss_term(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_elements: int = 2**23
) -> tuple[torch.Tensor, torch.Tensor]:
    """lm_loss_term(hidden @ weight.T, labels) without the whole logits: `chunk_elements` logits at a time."""
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)
    rows = max(1, chunk_elements // weight.size(0))
    total = _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.size(-1)), weight, targets, rows)
    return total, (targets != IGNORE_INDEX).sum()


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of (hidden @ weight.T) against targets, `rows` at a time. The gradients
    are computed in the forward pass, chunk by chunk (the loss is a sum, so backward only scales
    them by the incoming gradient): the logits and their gradient exist for one chunk at a time and
    nothing of size vocab is kept for backward. Ignored targets (-100) are masked with arithmetic,
    not boolean indexing, so there is no data-dependent shape and no host sync."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.size(0), rows):
            h, y = hidden[start : start + rows], targets[start : start + rows]
            logits = (h @ weight.t()).float()
            valid = (y != IGNORE_INDEX).float()
            index = y.clamp(min=0)[:, None]
            log_z = logits.logsumexp(dim=-1)
            total += ((log_z - logits.gather(1, index).squeeze(1)) * valid).sum()
            if need_hidden or need_weight:
                grad = logits.sub_(log_z[:, None]).exp_()  # softmax, in place of the logits
                grad.scatter_add_(1, index, -valid[:, None])  # minus the one-hot target
                grad.mul_(valid[:, None])
                grad = grad.to(weight.dtype)
                if need_hidden:
                    grad_hidden[start : start + rows] = grad @ weight
                if need_weight:
                    grad_weight += grad.t() @ h.to(grad.dtype)
        ctx.save_for_backward(
            grad_hidden if need_hidden else None, grad_weight.to(weight.dtype) if need_weight else None
        )
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (
            grad_hidden * grad_total if grad_hidden is not None else None,
            grad_weight * grad_total if grad_weight is not None else None,
            None,
            None,
        )
