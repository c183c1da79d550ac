"""Parity with Hugging Face models, both ways, to 1e-5 in fp32."""

import json
import logging

import pytest
import torch
import transformers
from conftest import tiny_config
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    BertConfig,
    GPT2Config,
)

from pretrain import BertPretraining, CausalLM, SequenceClassifier, SpanQA, Transformer, load_hf, save_hf

ATOL = 1e-5
BERT = dict(
    vocab_size=101,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=64,
    type_vocab_size=2,
)
GPT2 = dict(
    vocab_size=101, n_embd=32, n_layer=2, n_head=4, n_positions=64, n_inner=48, bos_token_id=100, eos_token_id=100
)


def batch(length=12):
    ids = torch.randint(5, 101, (3, length))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 4:] = 0
    segments = torch.zeros_like(ids)
    segments[:, 6:] = 1
    return ids, mask, segments


def close(a, b, mask=None):
    if mask is not None:
        a, b = a[mask.bool()], b[mask.bool()]
    assert (a - b).abs().max().item() < ATOL


def mlm_labels(ids, mask):
    labels = torch.full_like(ids, -100)
    labels[:, 1::3] = ids[:, 1::3]
    return labels.masked_fill(mask == 0, -100)


@pytest.mark.parametrize("cls_name", ["BertForPreTraining", "BertForMaskedLM", "BertModel"])
def test_bert_import_parity(cls_name):
    hf = getattr(transformers, cls_name)(BertConfig(**BERT)).eval()
    ours = load_hf(hf).eval()
    ids, mask, seg = batch()
    a = hf(input_ids=ids, attention_mask=mask, token_type_ids=seg)
    b = ours(input_ids=ids, attention_mask=mask, token_type_ids=seg)
    if cls_name == "BertModel":
        assert isinstance(ours, Transformer)
        close(a.last_hidden_state, b.last_hidden_state, mask)
        close(a.pooler_output, b.pooler_output)
        return
    logits_name = "prediction_logits" if cls_name == "BertForPreTraining" else "logits"
    close(getattr(a, logits_name), b.prediction_logits, mask)
    labels = mlm_labels(ids, mask)
    kwargs = dict(input_ids=ids, attention_mask=mask, token_type_ids=seg, labels=labels)
    if cls_name == "BertForPreTraining":
        close(a.seq_relationship_logits, b.seq_relationship_logits)
        kwargs["next_sentence_label"] = torch.tensor([0, 1, 1])
    assert abs(hf(**kwargs).loss.item() - ours(**kwargs).loss.item()) < ATOL


@pytest.mark.parametrize("cls_name", ["GPT2LMHeadModel", "GPT2Model"])
def test_gpt2_import_parity(cls_name):
    hf = getattr(transformers, cls_name)(GPT2Config(**GPT2)).eval()
    ours = load_hf(hf).eval()
    assert isinstance(ours, CausalLM if cls_name == "GPT2LMHeadModel" else Transformer)
    ids, mask, _ = batch()
    a = hf(input_ids=ids, attention_mask=mask)
    b = ours(input_ids=ids, attention_mask=mask)
    if cls_name == "GPT2Model":
        close(a.last_hidden_state, b.last_hidden_state, mask)
        return
    close(a.logits, b.logits, mask)
    labels = ids.masked_fill(mask == 0, -100)
    assert (
        abs(
            hf(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
            - ours(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
        )
        < ATOL
    )


def test_gpt2_greedy_generation_matches_hf():
    hf = transformers.GPT2LMHeadModel(GPT2Config(**GPT2)).eval()
    ours = load_hf(hf).eval()
    prompt = torch.randint(5, 100, (1, 6))
    theirs = hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=15,
        do_sample=False,
        min_new_tokens=15,
        pad_token_id=100,
    )
    assert torch.equal(ours.generate(prompt, max_new_tokens=15), theirs)


EXPORTS = [
    (lambda: BertPretraining(tiny_config()), AutoModelForPreTraining, "BertForPreTraining"),
    (lambda: BertPretraining(tiny_config(), nsp=False), AutoModelForMaskedLM, "BertForMaskedLM"),
    (lambda: Transformer(tiny_config()), AutoModel, "BertModel"),
    (lambda: Transformer(tiny_config(segment_vocab_size=0)), AutoModel, "BertModel"),
    # untied, HF's decoder adds a bias of its own (decoder.bias), not the head's `bias`
    (lambda: BertPretraining(tiny_config(tie_embeddings=False), nsp=False), AutoModelForMaskedLM, "BertForMaskedLM"),
    (
        lambda: BertPretraining(
            tiny_config(tie_embeddings=False, positions_skip_padding=True, pad_token_id=1, segment_vocab_size=1),
            nsp=False,
        ),
        AutoModelForMaskedLM,
        "RobertaForMaskedLM",
    ),
    (lambda: CausalLM(tiny_config(causal=True)), AutoModelForCausalLM, "GPT2LMHeadModel"),
    (lambda: Transformer(tiny_config(causal=True)), AutoModel, "GPT2Model"),
]


@pytest.mark.parametrize("build,auto_cls,arch", EXPORTS, ids=[e[2] + str(i) for i, e in enumerate(EXPORTS)])
def test_export_round_trip(build, auto_cls, arch, tmp_path):
    ours = build().eval()
    for p in ours.parameters():  # non-trivial biases and LayerNorms, so nothing passes by being zero
        torch.nn.init.normal_(p, std=0.1) if p.dim() == 1 else None
    save_hf(ours, tmp_path)
    hf, info = auto_cls.from_pretrained(tmp_path, output_loading_info=True)
    hf.eval()
    assert type(hf).__name__ == arch
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids, mask, seg = batch()
    kwargs = dict(input_ids=ids, attention_mask=mask)
    if not ours.config.causal and ours.config.segment_vocab_size > 1:
        kwargs["token_type_ids"] = seg
    a, b = hf(**kwargs), ours(**kwargs)
    if arch.startswith(("BertFor", "RobertaFor")):
        close(
            getattr(a, "prediction_logits", None) if arch == "BertForPreTraining" else a.logits,
            b.prediction_logits,
            mask,
        )
    elif arch == "GPT2LMHeadModel":
        close(a.logits, b.logits, mask)
    else:
        close(a.last_hidden_state, b.last_hidden_state, mask)
    back = load_hf(tmp_path).eval()  # ours -> HF directory -> ours
    assert type(back) is type(ours)
    back_state = back.state_dict()
    for name, p in ours.state_dict().items():
        assert torch.equal(p, back_state[name]), name
    extra = set(back_state) - set(ours.state_dict())  # a segment-less BERT comes back with one zero row
    assert all(back_state[k].abs().max() == 0 for k in extra), extra
    close(back(**kwargs).last_hidden_state, b.last_hidden_state, mask)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_untied_masked_lm_import_reads_the_decoders_own_bias(family, tmp_path):
    """Untied, HF's MLM head adds decoder.bias and never reads its `bias`: they differ here."""
    if family == "bert":
        hf = transformers.BertForMaskedLM(BertConfig(**BERT, tie_word_embeddings=False))
    else:
        config = transformers.RobertaConfig(**{**BERT, "type_vocab_size": 1}, tie_word_embeddings=False)
        hf = transformers.RobertaForMaskedLM(config)
    head = hf.cls.predictions if family == "bert" else hf.lm_head
    torch.nn.init.normal_(head.decoder.bias)
    torch.nn.init.normal_(head.bias)
    hf.eval()
    ours = load_hf(hf).eval()
    ids, mask, _ = batch()
    close(hf(input_ids=ids, attention_mask=mask).logits, ours(ids, mask).prediction_logits, mask)
    # a checkpoint with the decoder's bias alone (the head's unused `bias` not saved) loads the same
    hf.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["cls.predictions.bias" if family == "bert" else "lm_head.bias"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    close(hf(input_ids=ids, attention_mask=mask).logits, load_hf(tmp_path).eval()(ids, mask).prediction_logits, mask)


def test_finetuning_heads_export_and_reload(tmp_path):
    for model, auto in [
        (SequenceClassifier(tiny_config(), num_labels=3), transformers.AutoModelForSequenceClassification),
        (
            SequenceClassifier(tiny_config(causal=True, pad_token_id=0), num_labels=2),
            transformers.AutoModelForSequenceClassification,
        ),
        (SpanQA(tiny_config()), transformers.AutoModelForQuestionAnswering),
    ]:
        model.eval()
        out = tmp_path / type(model).__name__ / str(model.config.causal)
        save_hf(model, out)
        hf, info = auto.from_pretrained(out, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        ids, mask, _ = batch()
        ids[mask == 0] = 0  # GPT-2's head finds the last token through pad_token_id
        a, b = hf.eval()(input_ids=ids, attention_mask=mask), model(input_ids=ids, attention_mask=mask)
        if isinstance(model, SpanQA):
            close(a.start_logits, b.start_logits, mask)
            close(a.end_logits, b.end_logits, mask)
        else:
            close(a.logits, b.logits)
        back = load_hf(out).eval()
        assert type(back) is type(model)
        close(back(input_ids=ids, attention_mask=mask).last_hidden_state, b.last_hidden_state, mask)


def test_load_from_directory_safetensors_and_bin(tmp_path):
    hf = transformers.BertForPreTraining(BertConfig(**BERT)).eval()
    hf.save_pretrained(tmp_path / "st")
    ids, mask, seg = batch()
    expected = hf(input_ids=ids, attention_mask=mask).prediction_logits
    close(load_hf(tmp_path / "st").eval()(ids, mask).prediction_logits, expected, mask)
    # an old-style .bin checkpoint with gamma/beta LayerNorm names, loaded with weights_only=True
    legacy = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in hf.state_dict().items()
    }
    (tmp_path / "bin").mkdir()
    torch.save(legacy, tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    close(load_hf(tmp_path / "bin").eval()(ids, mask).prediction_logits, expected, mask)


def test_missing_pretraining_head_is_an_error_and_finetuning_head_is_reported(tmp_path, caplog):
    transformers.BertModel(BertConfig(**BERT)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="lacks the head"):
        load_hf(tmp_path, head="pretraining")
    with caplog.at_level(logging.WARNING):
        model = load_hf(tmp_path, head="classification", num_labels=2)
    assert isinstance(model, SequenceClassifier)
    assert "newly initialised" in caplog.text and "classifier.weight" in caplog.text


LLAMA_SWITCHES = dict(position_embedding="rotary", norm="rmsnorm", gated_mlp=True, bias=False, tie_embeddings=False)


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "silu"])
@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_every_activation_exports_and_imports(family, activation, tmp_path):
    if family == "bert":
        ours, auto = BertPretraining(tiny_config(activation=activation), nsp=False), AutoModelForMaskedLM
    else:
        switches = LLAMA_SWITCHES if family == "llama" else {}
        ours, auto = CausalLM(tiny_config(causal=True, activation=activation, **switches)), AutoModelForCausalLM
    ours.eval()
    save_hf(ours, tmp_path)
    hf = auto.from_pretrained(tmp_path).eval()
    assert hf.config.model_type == family
    ids, mask, _ = batch()
    logits = "prediction_logits" if family == "bert" else "logits"
    close(hf(input_ids=ids, attention_mask=mask).logits, getattr(ours(ids, mask), logits), mask)
    assert load_hf(tmp_path).config.activation == activation


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_causal_classifier_without_a_mask_reads_the_last_token_that_is_not_padding(family):
    """Right-padded rows and no attention_mask: HF's GPT-2 / Llama classifiers read the rightmost token
    that is not pad_token_id (reading the last position would read a pad)."""
    if family == "gpt2":
        hf = transformers.GPT2ForSequenceClassification(GPT2Config(**GPT2, pad_token_id=0, num_labels=3))
    else:
        config = transformers.LlamaConfig(
            vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64, pad_token_id=0, num_labels=3,
        )  # fmt: skip
        hf = transformers.LlamaForSequenceClassification(config)
    hf.eval()
    ours = load_hf(hf).eval()
    ids, mask, _ = batch()
    ids = ids.masked_fill(mask == 0, 0)
    close(hf(input_ids=ids).logits, ours(ids).logits)
    close(ours(ids).logits, ours(ids, mask).logits)


def test_unsupported_inputs(tmp_path):
    with pytest.raises(ValueError, match="unsupported architecture"):
        load_hf(
            transformers.DistilBertModel(
                transformers.DistilBertConfig(vocab_size=50, dim=32, n_layers=1, n_heads=4, hidden_dim=37)
            )
        )
    with pytest.raises(ValueError, match="cannot export.*position_embedding='sinusoidal'"):
        save_hf(BertPretraining(tiny_config(position_embedding="sinusoidal")), tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="cannot export.*post"):
        save_hf(CausalLM(tiny_config(causal=True, norm_placement="post")), tmp_path / "y")
    # switches the HF architecture lacks are named, not dropped (the export would load with other logits)
    refused = [
        (CausalLM(tiny_config(causal=True, embedding_norm=True)), "GPT2LMHeadModel.*embedding_norm=True"),
        (CausalLM(tiny_config(causal=True, positions_skip_padding=True)), "GPT2LMHeadModel.*positions_skip_padding"),
        (BertPretraining(tiny_config(embedding_norm=False)), "BertForPreTraining.*embedding_norm=False"),
        (CausalLM(tiny_config(causal=True, positions_skip_padding=True, **LLAMA_SWITCHES)), "Llama.*positions_skip"),
    ]
    for model, message in refused:
        with pytest.raises(ValueError, match=f"cannot export to Hugging Face {message}"):
            save_hf(model, tmp_path / "z")
        assert not (tmp_path / "z").exists()
    # a BERT made pre-LN exports as ModernBERT, which has no NSP class: the message says why it is ModernBERT
    with pytest.raises(ValueError, match=r"'pretraining' head .* exports as modernbert for its norm_placement='pre'"):
        save_hf(BertPretraining(tiny_config(norm_placement="pre")), tmp_path / "z")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_hf(tmp_path / "does-not-exist")


def test_damaged_or_foreign_checkpoints_are_named(tmp_path, caplog):
    """A Hugging Face directory that does not match its config is refused by name (an embedding with fewer
    rows than vocab_size used to be completed with random rows, silently); another task's head is fresh."""
    import json

    from safetensors.torch import load_file, save_file

    from pretrain.errors import ConfigError

    good = tmp_path / "good"
    save_hf(CausalLM(tiny_config(causal=True)), good)

    def variant(name, config=None, weights=None, truncate=False):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(config) if config is not None else (good / "config.json").read_text())
        state = load_file(str(good / "model.safetensors"))
        save_file(weights(state) if weights else state, str(d / "model.safetensors"))
        if truncate:
            (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:50])
        return d

    def cut(state):
        return {**state, "transformer.wte.weight": state["transformer.wte.weight"][:10].contiguous()}

    config = json.loads((good / "config.json").read_text())
    with pytest.raises(ConfigError, match=r"weights of another shape.*embeddings.word.weight \(10, 32\)"):
        load_hf(variant("cut", weights=cut))
    with pytest.raises(ConfigError, match="config.json lacks 'n_embd'"):
        load_hf(variant("nokey", config={k: v for k, v in config.items() if k != "n_embd"}))
    with pytest.raises(ConfigError, match="holds a JSON list, not a config object"):
        load_hf(variant("list", config=[1, 2]))
    with pytest.raises(ConfigError, match="its weights do not load.*the checkpoint is damaged"):
        load_hf(variant("short", truncate=True))
    mc = tmp_path / "mc"  # a multiple-choice head (one score) read as a 3-label classifier: a fresh head
    transformers.BertForMultipleChoice(BertConfig(**BERT)).save_pretrained(mc)
    with caplog.at_level(logging.WARNING):
        model = load_hf(mc, head="classification", num_labels=3)
    assert model.classifier.weight.shape[0] == 3 and "classifier.weight has shape (1, 32)" in caplog.text


def test_save_hf_names_stale_tokenizer_files_and_a_file_target(tmp_path, caplog):
    """A model saved without a tokenizer over another export would be loaded with that export's
    tokenizer (a GPT decoding through a BERT vocabulary, silently): said; a file is not a directory."""
    from pretrain.errors import ConfigError

    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    with caplog.at_level(logging.WARNING):
        save_hf(CausalLM(tiny_config(causal=True)), tmp_path)
    assert "keeps tokenizer files written before (vocab.txt)" in caplog.text
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        save_hf(CausalLM(tiny_config(causal=True)), tmp_path / "file")


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2"])
def test_exported_tokenizer_truncates_to_the_models_positions(family, tmp_path):
    """The written tokenizer's model_max_length is what the position table can take (RoBERTa's starts after
    the padding id): a pipeline's truncation=True then fits, where 1e30 let 600 tokens through to the table."""
    from pretrain.tokenizer import train_tokenizer

    texts = ["good film", "bad film", "a good story", "a dull story"] * 20
    tokenizer = train_tokenizer(texts, "gpt" if family == "gpt2" else "bert", vocab_size=120)
    overrides = {"roberta": dict(positions_skip_padding=True, pad_token_id=1, segment_vocab_size=1)}.get(family, {})
    if family == "gpt2":
        overrides = dict(causal=True, pad_token_id=tokenizer.pad_token_id)
    config = tiny_config(vocab_size=len(tokenizer), **overrides)
    save_hf(SequenceClassifier(config, num_labels=2).eval(), tmp_path, tokenizer=tokenizer)
    usable = {"bert": 64, "roberta": 62, "gpt2": 64}[family]  # RoBERTa: positions from pad_token_id + 1 = 2
    exported = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert exported.model_max_length == usable
    # a tokenizer saved after a call with truncation (a checkpoint's, mid-fine-tuning) kept that call's settings
    tokenizer("good film story " * 3, truncation=True, max_length=4, stride=1)
    save_hf(SequenceClassifier(config, num_labels=2).eval(), tmp_path / "again", tokenizer=tokenizer)
    reloaded = transformers.AutoTokenizer.from_pretrained(tmp_path / "again")
    save_hf(SequenceClassifier(config, num_labels=2).eval(), tmp_path / "again", tokenizer=reloaded)
    settings = json.loads((tmp_path / "again" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert not {"max_length", "stride", "truncation_strategy"} & set(settings)
    backend = json.loads((tmp_path / "again" / "tokenizer.json").read_text(encoding="utf-8"))
    assert backend["truncation"] is None and backend["padding"] is None
    ids = exported("good " * 100 + "dull", truncation=True)["input_ids"]
    last = exported("dull", add_special_tokens=False)["input_ids"][-1]
    if family == "gpt2":  # a causal classifier reads the last token: truncation keeps the end, as fine-tuning does
        assert len(ids) == usable and ids[-1] == last
    assert tokenizer.model_max_length > 10**20  # the caller's tokenizer (training goes on with it) is unchanged
    classify = transformers.pipeline("text-classification", model=str(tmp_path), device="cpu")
    assert classify("good " * 300, truncation=True)[0]["label"] in ("LABEL_0", "LABEL_1")
