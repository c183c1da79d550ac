"""RoBERTa, ModernBERT and Llama on the same core: parity with random-init `transformers` models both
ways (1e-4 in fp32 at every unpadded position), Llama greedy generation with our KV cache."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig

from pretrain import BertPretraining, CausalLM, load_hf, save_hf

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
@pytest.mark.parametrize(
    "cls_name",
    [
        "LlamaModel",
        "LlamaForCausalLM",
        "LlamaForSequenceClassification",
        "LlamaForTokenClassification",
        "LlamaForQuestionAnswering",
    ],
)
def test_llama_parity_both_ways(cls_name, tied, tmp_path):
    hf = randomise_norms(getattr(transformers, cls_name)(llama_config(tied, num_labels=3))).eval()
    ours = load_hf(hf).eval()
    ids, mask = padded_batch()
    a, b = hf(input_ids=ids, attention_mask=mask), ours(input_ids=ids, attention_mask=mask)
    compare_outputs(a, b, mask, cls_name)
    save_hf(ours, tmp_path)
    back = auto_class(cls_name).from_pretrained(tmp_path).eval()
    assert type(back).__name__ == cls_name
    compare_outputs(a, back(input_ids=ids, attention_mask=mask), mask, cls_name)


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


def compare_outputs(a, b, mask, cls_name):
    """HF's outputs `a` against `b` (ours, or HF's reloaded export) of the same batch; padded positions out."""
    if cls_name.endswith("Model"):
        close(a.last_hidden_state, b.last_hidden_state, mask)
    elif cls_name.endswith("MaskedLM"):
        close(a.logits, b.logits if b.prediction_logits is None else b.prediction_logits, mask)
    elif cls_name.endswith(("SequenceClassification", "MultipleChoice")):
        close(a.logits, b.logits)
    elif cls_name.endswith(("TokenClassification", "CausalLM")):
        close(a.logits, b.logits, mask)
    else:
        close(a.start_logits, b.start_logits, mask)
        close(a.end_logits, b.end_logits, mask)


def compare_encoder(hf, ours, ids, mask, cls_name):
    if cls_name.endswith("MultipleChoice"):  # one question whose choices are the batch's rows
        ids, mask = ids[None], mask[None]
    compare_outputs(hf(input_ids=ids, attention_mask=mask), ours(input_ids=ids, attention_mask=mask), mask, cls_name)


AUTO_BY_SUFFIX = {
    "MaskedLM": transformers.AutoModelForMaskedLM,
    "CausalLM": AutoModelForCausalLM,
    "SequenceClassification": AutoModelForSequenceClassification,
    "QuestionAnswering": transformers.AutoModelForQuestionAnswering,
    "TokenClassification": transformers.AutoModelForTokenClassification,
    "MultipleChoice": transformers.AutoModelForMultipleChoice,
}


def auto_class(cls_name: str):
    return next((auto for suffix, auto in AUTO_BY_SUFFIX.items() if cls_name.endswith("For" + suffix)), AutoModel)


def roundtrip(ours, ids, mask, cls_name, tmp_path):
    """Export ours, reload with the Auto class: the same class and the same outputs."""
    save_hf(ours, tmp_path)
    back = auto_class(cls_name).from_pretrained(tmp_path).eval()
    assert type(back).__name__ == cls_name
    compare_encoder(back, ours, ids, mask, cls_name)


@pytest.mark.parametrize(
    "cls_name",
    [
        "RobertaModel",
        "RobertaForMaskedLM",
        "RobertaForSequenceClassification",
        "RobertaForQuestionAnswering",
        "RobertaForTokenClassification",
        "RobertaForMultipleChoice",
    ],
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
        ("ModernBertForTokenClassification", "cls"),
        ("ModernBertForMultipleChoice", "cls"),
        ("ModernBertForMultipleChoice", "mean"),
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


# ----------------------------------------------------------------------------- presets, CLI, fine-tuning

ROOT = Path(__file__).resolve().parents[1]
CLI_TINY = [
    "model.hidden_size=32",
    "model.ffn_size=64",
    "data.max_length=64",
    "data.vocab_size=800",
    "train.eval_batches=5",
    "train.tensorboard=false",
    "train.plot=false",
    "train.save_every=0",
    "train.lr=3e-3",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset, steps, auto_name, loss_key",
    [
        ("llama-tiny", 80, "AutoModelForCausalLM", "eval_lm_loss"),
        ("roberta-tiny", 30, "AutoModelForMaskedLM", "eval_mlm_loss"),
        ("modernbert-tiny", 30, "AutoModelForMaskedLM", "eval_mlm_loss"),
    ],
)
def test_tiny_preset_pretrains_through_the_cli_and_exports(tmp_path, preset, steps, auto_name, loss_key):
    out = tmp_path / "run"
    positions = 66 if preset.startswith("roberta") else 64  # RoBERTa's positions start past the pad id
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    args = [f"model={preset}", f"model.max_positions={positions}", f"train.max_steps={steps}"]
    args += [f"train.eval_every={steps // 2}", f"train.output_dir={out}", f"data.cache_dir={tmp_path / 'cache'}"]
    result = subprocess.run(
        [sys.executable, "-m", "pretrain", *args, *CLI_TINY], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_unigram_baseline" in r]
    assert evals[-1][loss_key] < evals[0][loss_key], "held-out loss falls"
    if preset.startswith("llama"):  # context already helps: below a unigram model of the corpus
        assert evals[-1][loss_key] < evals[-1]["eval_unigram_baseline"]
    hf, info = getattr(transformers, auto_name).from_pretrained(out / "export", output_loading_info=True)
    expected = {"llama": "LlamaForCausalLM", "roberta": "RobertaForMaskedLM", "modernbert": "ModernBertForMaskedLM"}
    assert type(hf).__name__ == expected[preset.split("-")[0]]
    assert not info["missing_keys"] and not info["unexpected_keys"]


POSITIVE = ["a good film", "great acting and a fine story", "I loved it", "wonderful and warm", "good fun"]
NEGATIVE = ["a bad film", "terrible acting and a dull story", "I hated it", "awful and cold", "bad and boring"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["modernbert", "llama"])
def test_finetune_classification(tmp_path, family):
    from finetune.config import FinetuneConfig, FinetuneDataConfig, FinetuneModelConfig
    from finetune.run import run_finetune
    from pretrain.config import TrainConfig, model_preset
    from pretrain.tokenizer import train_tokenizer

    tokenizer = train_tokenizer((POSITIVE + NEGATIVE) * 20, "gpt" if family == "llama" else "bert", vocab_size=300)
    preset = model_preset(f"{family}-tiny")
    preset.hidden_size, preset.ffn_size, preset.num_layers = 32, 64, 2
    config = preset.transformer_config(tokenizer)
    model = CausalLM(config) if family == "llama" else BertPretraining(config, nsp=False)
    save_hf(model, tmp_path / "init", tokenizer=tokenizer)
    rng = random.Random(0)
    rows = [(rng.choice(POSITIVE), 1) if i % 2 else (rng.choice(NEGATIVE), 0) for i in range(160)]
    for name, part in (("train.tsv", rows[:120]), ("dev.tsv", rows[120:])):
        (tmp_path / name).write_text("sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in part))
    cfg = FinetuneConfig(
        task="classification",
        model=FinetuneModelConfig(init=str(tmp_path / "init")),
        data=FinetuneDataConfig(train=str(tmp_path / "train.tsv"), validation=str(tmp_path / "dev.tsv"), max_length=32),
        train=TrainConfig(
            max_steps=40,
            batch_size=16,
            lr=3e-3,
            warmup_steps=5,
            save_every=0,
            eval_every=0,
            log_every=5,
            output_dir=str(tmp_path / "out"),
            tensorboard=False,
            plot=False,
        ),
    )
    assert run_finetune(cfg)["accuracy"] > 0.9
    arch = {"llama": "LlamaForSequenceClassification", "modernbert": "ModernBertForSequenceClassification"}[family]
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "export")
    assert type(exported).__name__ == arch


def test_modern_switches_have_clear_errors(tmp_path):
    from conftest import tiny_config

    from pretrain.config import ConfigError, DataConfig, ModelConfig, PretrainConfig, model_preset

    with pytest.raises(ValueError, match="num_kv_heads \\(3\\) must divide num_heads \\(4\\)"):
        tiny_config(num_kv_heads=3)
    with pytest.raises(ValueError, match="local_attention must be an even window"):
        tiny_config(local_attention=5)
    with pytest.raises(ValueError, match="cannot export to Hugging Face ModernBertForMaskedLM.*'learned'"):
        save_hf(BertPretraining(tiny_config(norm_placement="pre"), nsp=False), tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="only BERT has a next-sentence head"):  # before any data is prepared
        ModelConfig(family="roberta", nsp=True).validate()
    gpt = PretrainConfig(model=model_preset("gpt-tiny"), data=DataConfig(whole_word_mask=True))
    with pytest.raises(ConfigError, match="data.whole_word_mask=true with model.family=gpt: whole-word masking"):
        gpt.validate()


def test_grouped_query_attention_returns_attention_maps_and_rotary_cache_matches_full_pass():
    from conftest import tiny_config

    model = CausalLM(
        tiny_config(
            causal=True,
            position_embedding="rotary",
            norm="rmsnorm",
            gated_mlp=True,
            activation="silu",
            bias=False,
            num_kv_heads=2,
        )
    ).eval()
    ids = torch.randint(0, 101, (2, 10))
    out = model(ids, output_attentions=True)
    assert out.attentions[0].shape == (2, 4, 10, 10)
    with torch.no_grad():
        cached = model(ids[:, :6], use_cache=True)
        step = model(ids[:, 6:], past_key_values=cached.past_key_values)
        torch.testing.assert_close(step.logits, model(ids).logits[:, 6:], rtol=0, atol=1e-5)
