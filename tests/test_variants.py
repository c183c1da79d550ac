"""RoBERTa, ModernBERT and Llama on the same core: parity with random-init `transformers` models both
ways (1e-4 in fp32 at every unpadded position), Llama greedy generation with our KV cache."""

import pytest
import torch
import transformers
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig

from pretrain import CausalLM, load_hf, save_hf

ATOL = 1e-4
PAD = 0


def padded_batch(vocab=101, length=12):
    """Right-padded rows of different lengths; padding uses PAD (HF finds the last real token by it)."""
    ids = torch.randint(3, vocab, (3, length))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    return ids.masked_fill(mask == 0, PAD), mask


def close(a, b, mask=None):
    if mask is not None:
        a, b = a[mask.bool()], b[mask.bool()]
    assert a.shape == b.shape
    assert (a - b).abs().max().item() < ATOL


def llama_config(tied=False, **overrides):
    values = dict(
        vocab_size=101,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    )
    values.update(overrides)
    return LlamaConfig(**values)


def randomise_norms(model):
    """Random-init norms are all ones; perturb them so a wrong mapping cannot hide."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("cls_name", ["LlamaModel", "LlamaForCausalLM", "LlamaForSequenceClassification"])
def test_llama_parity_both_ways(cls_name, tied, tmp_path):
    hf = randomise_norms(getattr(transformers, cls_name)(llama_config(tied, num_labels=3))).eval()
    ours = load_hf(hf).eval()
    ids, mask = padded_batch()
    a, b = hf(input_ids=ids, attention_mask=mask), ours(input_ids=ids, attention_mask=mask)
    if cls_name == "LlamaModel":
        close(a.last_hidden_state, b.last_hidden_state, mask)
    else:
        close(a.logits, b.logits, mask if cls_name == "LlamaForCausalLM" else None)
    save_hf(ours, tmp_path)
    auto = {"LlamaModel": AutoModel, "LlamaForCausalLM": AutoModelForCausalLM}
    back = auto.get(cls_name, AutoModelForSequenceClassification).from_pretrained(tmp_path).eval()
    assert type(back).__name__ == cls_name
    c = back(input_ids=ids, attention_mask=mask)
    if cls_name == "LlamaModel":
        close(a.last_hidden_state, c.last_hidden_state, mask)
    else:
        close(a.logits, c.logits, mask if cls_name == "LlamaForCausalLM" else None)


def test_llama_greedy_generation_matches_hf_with_a_kv_cache_of_kv_heads():
    hf = randomise_norms(transformers.LlamaForCausalLM(llama_config(eos_token_id=None))).eval()
    ours = load_hf(hf)
    assert isinstance(ours, CausalLM)
    prompt = torch.randint(3, 101, (2, 5))
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False)
    assert torch.equal(ours.generate(prompt, max_new_tokens=20), expected)
    out = ours(prompt, use_cache=True)
    k, v = out.past_key_values[0]
    assert k.shape == v.shape == (2, 2, 5, 8)  # (batch, kv heads, length, head dim)


ROBERTA = dict(
    vocab_size=101,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=66,
    type_vocab_size=1,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    num_labels=3,
)


def compare_encoder(hf, ours, ids, mask, cls_name):
    a, b = hf(input_ids=ids, attention_mask=mask), ours(input_ids=ids, attention_mask=mask)
    if cls_name.endswith("Model"):
        close(a.last_hidden_state, b.last_hidden_state, mask)
    elif cls_name.endswith("MaskedLM"):
        close(a.logits, b.prediction_logits, mask)
    elif cls_name.endswith("SequenceClassification"):
        close(a.logits, b.logits)
    else:
        close(a.start_logits, b.start_logits, mask)
        close(a.end_logits, b.end_logits, mask)


AUTO_BY_SUFFIX = {
    "MaskedLM": transformers.AutoModelForMaskedLM,
    "SequenceClassification": AutoModelForSequenceClassification,
    "QuestionAnswering": transformers.AutoModelForQuestionAnswering,
}


def roundtrip(ours, ids, mask, cls_name, tmp_path):
    """Export ours, reload with the Auto class: the same class and the same outputs."""
    save_hf(ours, tmp_path)
    auto = next((auto for suffix, auto in AUTO_BY_SUFFIX.items() if cls_name.endswith("For" + suffix)), AutoModel)
    back = auto.from_pretrained(tmp_path).eval()
    assert type(back).__name__ == cls_name
    compare_encoder(back, ours, ids, mask, cls_name)


@pytest.mark.parametrize(
    "cls_name",
    ["RobertaModel", "RobertaForMaskedLM", "RobertaForSequenceClassification", "RobertaForQuestionAnswering"],
)
def test_roberta_parity_both_ways(cls_name, tmp_path):
    config = transformers.RobertaConfig(**{**ROBERTA, "num_labels": 2 if "Question" in cls_name else 3})
    hf = randomise_norms(getattr(transformers, cls_name)(config)).eval()
    ours = load_hf(hf).eval()
    ids, mask = padded_batch()
    ids = ids.masked_fill(mask == 0, 1).clamp(min=2).masked_fill(mask == 0, 1)  # RoBERTa pads with id 1
    compare_encoder(hf, ours, ids, mask, cls_name)
    roundtrip(ours, ids, mask, cls_name, tmp_path)


MODERNBERT = dict(
    vocab_size=101,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=64,
    local_attention=4,  # each token sees 2 on each side: shorter than the sequence
    global_attn_every_n_layers=2,
    global_rope_theta=1000.0,
    local_rope_theta=100.0,
    pad_token_id=PAD,
    bos_token_id=1,
    eos_token_id=2,
    cls_token_id=1,
    sep_token_id=2,
)


@pytest.mark.parametrize(
    "cls_name, pooling",
    [
        ("ModernBertModel", "cls"),
        ("ModernBertForMaskedLM", "cls"),
        ("ModernBertForSequenceClassification", "cls"),
        ("ModernBertForSequenceClassification", "mean"),
        ("ModernBertForQuestionAnswering", "cls"),
    ],
)
def test_modernbert_parity_both_ways(cls_name, pooling, tmp_path):
    labels = 2 if "Question" in cls_name else 3
    config = transformers.ModernBertConfig(**MODERNBERT, num_labels=labels, classifier_pooling=pooling)
    hf = randomise_norms(getattr(transformers, cls_name)(config)).eval()
    ours = load_hf(hf).eval()
    trunk = getattr(ours, "transformer", ours)
    assert [block.local for block in trunk.blocks] == [False, True, False, True]
    ids, mask = padded_batch()
    compare_encoder(hf, ours, ids, mask, cls_name)
    roundtrip(ours, ids, mask, cls_name, tmp_path)
