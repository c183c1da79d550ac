"""The loss terms the heads return: a sum over targets and their number, never a mean, so the training
loop can normalise over a whole accumulated batch (pretrain.train.loop.normalised_loss). The chunked LM
cross-entropy lives here too."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..targets import IGNORE_INDEX


class LossTerm(NamedTuple):
    """One loss of a model's output: summed over its targets, their number, and the batch key that holds
    the targets (entries != IGNORE_INDEX; every entry of float regression labels). The training loop
    counts that key over all micro-batches and processes and divides by it."""

    total: torch.Tensor
    count: torch.Tensor
    targets: str

    def mean(self) -> torch.Tensor:
        return self.total / self.count.clamp(min=1)


def mean_loss(terms: dict[str, LossTerm]) -> torch.Tensor | None:
    """The batch's own loss, the sum of the per-term means (what `out.loss` reports)."""
    return sum(term.mean() for term in terms.values()) if terms else None


def ce_term(logits: torch.Tensor, labels: torch.Tensor, targets: str = "labels") -> LossTerm:
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return LossTerm(total, (labels != IGNORE_INDEX).sum(), targets)


def lm_loss_term(logits: torch.Tensor, labels: torch.Tensor, targets: str = "labels") -> LossTerm:
    """Next-token loss: logits at t predict labels at t + 1. The labels are shifted, not the logits,
    so the (batch x length x vocab) tensor is never copied. (The collators put IGNORE_INDEX at each
    row's first label, which nothing predicts, so counting the batch key counts these targets.)"""
    shifted = F.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)
    return ce_term(logits.reshape(-1, logits.size(-1)), shifted.reshape(-1), targets)


def linear_ce_term(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    vocab_size: int | None = None,
    chunk_elements: int = 2**25,
) -> LossTerm:
    """ce_term(hidden @ weight.T + bias, targets) for (N, hidden) rows without the whole (N x vocab)
    logits: equal chunks of about `chunk_elements` logits (at most one row of logits more; 2**25: 128 MB of
    fp32 logits, a few chunks for GPT-2's vocabulary). `weight` may have padded rows past `vocab_size`
    (config.padded_vocab_size): their logits are masked out, so the loss is the true vocabulary's; `bias`, if
    any, has the true vocabulary's size."""
    # equal chunks: a short last chunk would run a small, inefficient matmul
    chunks = -(-hidden.size(0) * weight.size(0) // chunk_elements)
    rows = max(1, -(-hidden.size(0) // max(chunks, 1)))
    vocab_size = weight.size(0) if vocab_size is None else vocab_size
    total = _LinearCrossEntropy.apply(hidden, weight, bias, targets, rows, vocab_size)
    return LossTerm(total, (targets != IGNORE_INDEX).sum(), "labels")


def chunked_lm_loss_term(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_elements: int = 2**25,
    vocab_size: int | None = None,
) -> LossTerm:
    """lm_loss_term(hidden @ weight.T, labels) through linear_ce_term: the logits exist a chunk at a time."""
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)
    flat = hidden.reshape(-1, hidden.size(-1))
    return linear_ce_term(flat, weight, shifted, vocab_size=vocab_size, chunk_elements=chunk_elements)


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of (hidden @ weight.T + bias) against targets, `rows` at a time. The gradients
    are computed in the forward pass, chunk by chunk (the loss is a sum, so backward only scales
    them by the incoming gradient): the logits and their gradient exist for one chunk at a time and
    nothing of size vocab is kept for backward. The softmax is built in place of the logits (max,
    subtract, exp, sum: four passes, no copy). Ignored targets (-100) are masked with arithmetic,
    not boolean indexing, so there is no data-dependent shape and no host sync."""

    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        rows: int,
        vocab_size: int,
    ) -> torch.Tensor:
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_bias = bias is not None and ctx.needs_input_grad[2]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        # fp32: the first chunk writes it, the others accumulate (no zero-fill pass over vocab x hidden)
        written = weight.dtype == torch.float32 and hidden.size(0) > 0
        new_grad_weight = torch.empty_like if written else torch.zeros_like
        grad_weight = new_grad_weight(weight, dtype=torch.float32) if need_weight else None
        grad_bias = None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.size(0), rows):
            h, y = hidden[start : start + rows], targets[start : start + rows]
            logits = (h @ weight.t()).float()
            if bias is not None:
                logits[:, :vocab_size] += bias
            if vocab_size < logits.size(1):  # padded vocabulary rows: never predicted, no gradient
                logits[:, vocab_size:] = float("-inf")
            valid = (y != IGNORE_INDEX).float()
            index = y.clamp(min=0)[:, None]
            target_logit = logits.gather(1, index).squeeze(1)
            top = logits.amax(dim=-1, keepdim=True)
            probs = logits.sub_(top).exp_()  # exp(logits - max), in place of the logits
            norm = probs.sum(dim=-1)
            total += ((norm.log() + top.squeeze(1) - target_logit) * valid).sum()
            if need_hidden or need_weight or need_bias:
                grad = probs.mul_((valid / norm)[:, None])  # softmax; rows of ignored targets become 0
                grad.scatter_add_(1, index, -valid[:, None])  # minus the one-hot target
                if need_bias:
                    chunk_bias = grad[:, :vocab_size].sum(dim=0)
                    grad_bias = chunk_bias if grad_bias is None else grad_bias.add_(chunk_bias)
                grad = grad.to(weight.dtype)
                if need_hidden:
                    grad_hidden[start : start + rows] = grad @ weight
                h = h.to(grad.dtype)  # under autocast the rows are bf16 and the weight fp32
                if need_weight and not written:  # half precision: products accumulate in the fp32 zeros
                    grad_weight += grad.t() @ h
                elif need_weight and start == 0:
                    torch.mm(grad.t(), h, out=grad_weight)
                elif need_weight:
                    grad_weight.addmm_(grad.t(), h)  # accumulates without a (vocab x hidden) temporary
        ctx.save_for_backward(
            grad_hidden if need_hidden else None,
            grad_weight.to(weight.dtype) if need_weight else None,
            (torch.zeros_like(bias) if grad_bias is None else grad_bias.to(bias.dtype)) if need_bias else None,
        )
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        # scaled in place: no second (vocab x hidden) buffer. Eagerly, a second backward through the same
        # graph (retain_graph) then fails autograd's own check that saved tensors were not modified in place
        # (under torch.compile the saved gradients are functional copies and a second backward is right).
        grads = [g.mul_(grad_total) if g is not None else None for g in ctx.saved_tensors]
        return (*grads, None, None, None)
