"""Decoding for the causal LM: greedy or sampled (temperature, top-k, top-p), with the KV cache."""

from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Greedy (default) or sampled continuation of an unpadded batch of prompts by a causal `model`.

    With the KV cache each step feeds only the newest token, so n new tokens cost O(n)
    forward positions. Finished rows (after `eos_token_id`) are padded with it."""
    if input_ids.size(1) + max_new_tokens > model.config.max_positions:
        raise ValueError(
            f"prompt ({input_ids.size(1)}) + max_new_tokens ({max_new_tokens}) exceeds the position table "
            f"({model.config.max_positions}); shorten the prompt or ask for fewer tokens"
        )
    was_training = model.training
    model.eval()
    tokens, cache = input_ids, None
    finished = torch.zeros(input_ids.size(0), dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        step_input = tokens[:, -1:] if cache is not None else tokens
        out = model(step_input, past_key_values=cache, use_cache=use_cache)
        cache = out.past_key_values if use_cache else None
        logits = out.logits[:, -1, :].float()
        next_token = _pick_next_token(logits, do_sample, temperature, top_k, top_p, generator)
        if eos_token_id is not None:
            next_token = next_token.masked_fill(finished, eos_token_id)
            finished |= next_token == eos_token_id
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        if eos_token_id is not None and bool(finished.all()):
            break
    model.train(was_training)
    return tokens


def _pick_next_token(logits, do_sample, temperature, top_k, top_p, generator) -> torch.Tensor:
    if not do_sample or temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()  # shifted to a max of 0 first: a tiny temperature then gives -inf, never inf - inf
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)
