"""Hugging Face activation names <-> ours, shared by the family adapters."""

from __future__ import annotations

from ..errors import ConfigError

ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}  # every one of ours
ACT_FROM_HF = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


def activation_from_hf(name: str) -> str:
    if name not in ACT_FROM_HF:
        raise ConfigError(f"unsupported activation {name!r}; supported: {sorted(ACT_FROM_HF)}")
    return ACT_FROM_HF[name]
