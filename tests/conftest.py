import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tiny_config(causal: bool = False, **overrides):
    from pretrain import TransformerConfig

    base = dict(vocab_size=101, hidden_size=32, num_layers=2, num_heads=4, ffn_size=48, max_positions=64)
    if causal:
        base.update(
            causal=True, norm_placement="pre", activation="gelu_tanh", segment_vocab_size=0, layer_norm_eps=1e-5
        )
    base.update(overrides)
    return TransformerConfig(**base)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA
