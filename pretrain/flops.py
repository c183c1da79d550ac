"""Model FLOPs and model FLOPs utilisation (MFU) for the training log.

The count follows what the model really computes (PaLM's MFU convention, matmuls only: layer norms,
activations and softmax are left out; a multiply-add is 2 FLOPs; backward = 2 x forward):

- per token and layer: the Q/K/V and output projections (8 h^2), the MLP (4 h f), and attention
  scores and values (4 h T for a bidirectional encoder, half that for a causal decoder, which only
  looks back);
- the heads where they run: the GPT LM head (2 h V) at every position; the BERT MLM head (2 h^2 +
  2 h V) only at the predicted (masked) positions, as `BertPretraining` computes it; the pooler and
  NSP head once per sequence. V is the padded vocabulary (config.padded_vocab_size), as computed;
- `BertPretraining` also runs its last block past attention (output projection 2 h^2, MLP 4 h f) only
  at the predicted positions and each [CLS] (`last_layer_rows`).

MFU divides the achieved model FLOPs per second by the device's peak. Peaks are dense (no sparsity)
tensor-core figures from the vendors' data sheets; `train.peak_flops` overrides the table (and is
how a CPU gets an MFU: there is no table entry for CPUs, so without it only tokens/s is logged).
"""

from __future__ import annotations

from typing import Any

from .targets import IGNORE_INDEX

# (bf16 / fp16 tensor, fp32 without TF32) peak FLOP/s, dense, by a substring of the device name
PEAK_FLOPS: dict[str, tuple[float, float]] = {
    "H200": (989e12, 67e12),
    "H100 PCIe": (756e12, 51e12),
    "H100": (989e12, 67e12),  # SXM / NVL
    "GH200": (989e12, 67e12),
    "A100": (312e12, 19.5e12),
    "A800": (312e12, 19.5e12),
    "L40S": (362e12, 91.6e12),
    "L4": (121e12, 30.3e12),
    "A10G": (70e12, 31.2e12),
    "A10": (125e12, 31.2e12),
    "RTX 4090": (165e12, 82.6e12),
    "RTX 3090": (71e12, 35.6e12),
    "V100": (125e12, 15.7e12),
    "T4": (65e12, 8.1e12),
}


def forward_flops(
    config: Any, batch: int, length: int, predicted: Any, with_pooler: bool, last_layer_rows: Any = None
) -> float:
    """Forward FLOPs of one (batch x length) micro-batch whose vocabulary head runs at `predicted`
    positions (all of them for a causal LM) and whose last block runs past attention at `last_layer_rows`
    (None: every position)."""
    h, f, layers = config.hidden_size, config.ffn_size, config.num_layers
    v = getattr(config, "padded_vocab_size", config.vocab_size)  # the head's matmul runs over the padded rows
    tokens = batch * length
    attention = 4 * h * length * (0.5 if config.causal else 1.0)
    after_attention = 2 * h * h + 4 * h * f  # output projection and MLP
    last_rows = tokens if last_layer_rows is None else last_layer_rows
    trunk = tokens * layers * (6 * h * h + attention) + (tokens * (layers - 1) + last_rows) * after_attention
    head_per_position = 2 * h * v + (0 if config.causal else 2 * h * h)  # MLM: dense transform + decoder
    pooler = batch * (2 * h * h + 2 * h * 2) if with_pooler else 0
    return float(trunk + predicted * head_per_position + pooler)


def training_flops(
    config: Any, batch: int, length: int, predicted: Any, with_pooler: bool, last_layer_rows: Any = None
) -> float:
    """Forward + backward (twice the forward: gradients of activations and of weights)."""
    return 3.0 * forward_flops(config, batch, length, predicted, with_pooler, last_layer_rows)


def device_peak_flops(device: Any, precision: str, override: float | None = None) -> float | None:
    """The peak FLOP/s to divide by: `override` when given, else the table's entry for this GPU
    (bf16 / fp16 peak under mixed precision, fp32 otherwise); None for a CPU or an unknown GPU."""
    if override:
        return float(override)
    import torch

    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, (half, single) in PEAK_FLOPS.items():  # ordered: "H100 PCIe" before "H100"
        if key in name:
            return half if precision in ("bf16", "fp16") else single
    return None


def throughput(tokens: Any, real_tokens: Any, flops: Any, seconds: float, peak: float | None) -> dict[str, float]:
    """The training log's speed figures: `tokens_per_s`, the positions the model computed (padding included:
    what the FLOPs count and what scripts/benchmark.py reports), `real_tokens_per_s`, the corpus tokens among
    them, and MFU when the device's peak is known. The counts may be device tensors accumulated over the
    window: read here, once per log line."""
    if seconds <= 0:
        return {"tokens_per_s": 0.0, "real_tokens_per_s": 0.0, **({"mfu": 0.0} if peak else {})}
    values = {"tokens_per_s": float(tokens) / seconds, "real_tokens_per_s": float(real_tokens) / seconds}
    if peak:
        values["mfu"] = float(flops) / seconds / peak
    return values


def step_flops(model: Any, micro: list[dict[str, Any]]) -> Any:
    """Model FLOPs of this process's micro-batches of one optimizer step, each at its own shape. The MLM
    head runs at the labelled positions only: their count is a device tensor, so this stays free of host
    syncs (the log sums the processes' figures)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "ffn_size") or micro[0]["input_ids"].dim() != 2:
        return 0.0  # not one of our models, or a (batch, choices, length) input: not counted
    with_pooler = getattr(model.transformer, "pooler", None) is not None
    total: Any = 0.0
    for b in micro:
        batch, length = b["input_ids"].shape
        last_layer_rows = None
        if hasattr(model, "mlm_head") and "labels" in b:
            predicted = (b["labels"] != IGNORE_INDEX).sum()  # the masked positions
            last_layer_rows = predicted + (batch if with_pooler else 0)
        else:
            predicted = batch * length if hasattr(model, "lm_head") else 0  # a classifier has no vocabulary head
        total = total + training_flops(config, batch, length, predicted, with_pooler, last_layer_rows)
    return total
