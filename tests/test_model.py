"""The core on its own: causality, masking, generation, overfitting, bad input."""

import pytest
import torch
from conftest import tiny_config

from pretrain import BertPretraining, CausalLM, Transformer, TransformerConfig


def padded_batch(vocab=101, batch=3, length=12):
    ids = torch.randint(5, vocab, (batch, length))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 3:] = 0
    return ids, mask


def test_causal_decoder_never_looks_right():
    model = CausalLM(tiny_config(causal=True)).eval()
    ids, _ = padded_batch()
    base = model(ids).logits
    for t in (0, 4, 10):
        changed = ids.clone()
        changed[:, t + 1 :] = torch.randint(5, 101, changed[:, t + 1 :].shape)
        out = model(changed).logits
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
        if t + 1 < ids.size(1):
            assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :])


def test_encoder_is_bidirectional():
    model = Transformer(tiny_config()).eval()
    ids, _ = padded_batch()
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 101
    assert not torch.allclose(model(ids).last_hidden_state[:, 0], model(changed).last_hidden_state[:, 0])


def test_padding_is_invisible_to_real_tokens():
    for causal in (False, True):
        model = Transformer(tiny_config(causal=causal)).eval()
        ids, mask = padded_batch()
        full = model(ids, attention_mask=mask).last_hidden_state
        alone = model(ids[1:2, :8]).last_hidden_state
        torch.testing.assert_close(full[1, :8], alone[0], rtol=0, atol=1e-5)


def test_fully_padded_row_is_finite():
    for causal in (False, True):
        model = Transformer(tiny_config(causal=causal)).eval()
        ids, mask = padded_batch()
        mask[0] = 0
        out = model(ids, attention_mask=mask)
        assert torch.isfinite(out.last_hidden_state).all()


def test_attention_probabilities_match_fast_path():
    for causal in (False, True):
        model = Transformer(tiny_config(causal=causal)).eval()
        ids, mask = padded_batch()
        fast = model(ids, attention_mask=mask)
        slow = model(ids, attention_mask=mask, output_attentions=True)
        torch.testing.assert_close(fast.last_hidden_state, slow.last_hidden_state, rtol=0, atol=1e-5)
        assert len(slow.attentions) == 2 and slow.attentions[0].shape == (3, 4, 12, 12)
        torch.testing.assert_close(slow.attentions[0].sum(-1), torch.ones(3, 4, 12))
        assert slow.attentions[0][2, :, :, 3:].abs().max() < 1e-6  # padding keys get no weight
        if causal:
            assert torch.triu(slow.attentions[1][0], diagonal=1).abs().max() < 1e-6


def test_sinusoidal_positions():
    from pretrain.model import sinusoidal_table

    table = sinusoidal_table(50, 16)
    pos, i = 7, 3
    assert table[pos, 2 * i] == pytest.approx(torch.sin(torch.tensor(pos / 10000 ** (2 * i / 16))).item(), abs=1e-6)
    assert table[pos, 2 * i + 1] == pytest.approx(torch.cos(torch.tensor(pos / 10000 ** (2 * i / 16))).item(), abs=1e-6)
    model = Transformer(tiny_config(position_embedding="sinusoidal"))
    assert not any("position" in n for n, _ in model.named_parameters())


def test_mlm_head_runs_only_on_labelled_positions():
    model = BertPretraining(tiny_config()).eval()
    ids, mask = padded_batch()
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 5], labels[2, 1] = 7, 8, 9
    with torch.no_grad():  # training computes the loss chunk by chunk and returns no logits
        out = model(ids, attention_mask=mask, labels=labels)
        full = model(ids, attention_mask=mask).prediction_logits
    assert out.prediction_logits.shape == (3, 101)
    expected = torch.nn.functional.cross_entropy(full.reshape(-1, 101), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


VARIANTS = [{}, {"norm_placement": "pre"}, {"position_embedding": "rotary", "local_attention": 4}]


@pytest.mark.parametrize("config", VARIANTS)
def test_sparse_prediction_gives_the_full_computations_loss_and_gradients(config):
    """With labels, only the labelled rows (and each [CLS], for the pooler) go past the last block's
    attention. The loss and every gradient equal the whole computation's: MLM cross-entropy over the
    logits of every position plus NSP, post-LN and pre-LN, local and rotary layers, positions given (as
    the collator sends them) or found from the labels."""
    from pretrain.targets import labelled_positions

    torch.manual_seed(0)
    model = BertPretraining(tiny_config(dropout=0.0, attention_dropout=0.0, **config))
    ids, mask = padded_batch()
    labels = torch.full_like(ids, -100)
    labels[0, [2, 9]], labels[1, 5], labels[2, 1] = ids[0, [2, 9]], 8, 9
    nsp = torch.tensor([0, 1, 1])
    params = [p for p in model.parameters() if p.requires_grad]

    full = model(ids, attention_mask=mask, next_sentence_label=nsp)  # no labels: every position predicted
    mlm = torch.nn.functional.cross_entropy(full.prediction_logits.reshape(-1, 101), labels.reshape(-1))
    expected = torch.autograd.grad(mlm + full.loss, params)
    for positions in (labelled_positions(labels), None):
        out = model(ids, attention_mask=mask, labels=labels, next_sentence_label=nsp, mlm_positions=positions)
        assert out.prediction_logits is None  # the decoder ran a chunk at a time
        torch.testing.assert_close(out.loss, mlm + full.loss)
        for got, want in zip(torch.autograd.grad(out.loss, params), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_tiny_model_overfits_one_batch(causal):
    torch.manual_seed(0)
    cfg = tiny_config(causal=causal, dropout=0.0, attention_dropout=0.0)
    model = CausalLM(cfg) if causal else BertPretraining(cfg)
    ids = torch.randint(5, 101, (4, 16))
    if causal:
        batch = dict(input_ids=ids, labels=ids)
    else:
        labels = torch.full_like(ids, -100)
        labels[:, ::4] = ids[:, ::4]
        masked = ids.masked_fill(labels != -100, 4)
        batch = dict(input_ids=masked, labels=labels, next_sentence_label=torch.tensor([0, 1, 0, 1]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_generation_with_cache_equals_without():
    model = CausalLM(tiny_config(causal=True)).eval()
    prompt = torch.randint(5, 101, (2, 5))
    with_cache = model.generate(prompt, max_new_tokens=20, use_cache=True)
    without = model.generate(prompt, max_new_tokens=20, use_cache=False)
    assert with_cache.shape == (2, 25)
    assert torch.equal(with_cache, without)


def test_generation_sampling_options_and_stop_token():
    model = CausalLM(tiny_config(causal=True)).eval()
    prompt = torch.randint(5, 101, (2, 3))
    g = torch.Generator().manual_seed(0)
    out = model.generate(prompt, 10, do_sample=True, temperature=0.8, top_k=5, top_p=0.9, generator=g)
    assert out.shape == (2, 13) and torch.equal(out[:, :3], prompt)
    greedy = model.generate(prompt, 10)
    stop = int(greedy[0, 4])
    first = 3 + (greedy[0, 3:] == stop).nonzero()[0].item()
    stopped = model.generate(prompt[:1], 10, eos_token_id=stop)
    assert stopped.shape[1] == first + 1 and stopped[0, -1] == stop
    assert torch.equal(stopped[0], greedy[0, : first + 1])
    # top_k=1 sampling is greedy, and so is a vanishing temperature (its logits overflowed to NaN before)
    assert torch.equal(model.generate(prompt, 10, do_sample=True, top_k=1, generator=g), greedy)
    assert torch.equal(model.generate(prompt, 10, do_sample=True, temperature=1e-45, generator=g), greedy)


def test_kv_cache_step_costs_one_position():
    model = CausalLM(tiny_config(causal=True)).eval()
    prompt = torch.randint(5, 101, (1, 4))
    out = model(prompt, use_cache=True)
    step = model(torch.tensor([[9]]), past_key_values=out.past_key_values, use_cache=True)
    assert step.logits.shape == (1, 1, 101)
    full = model(torch.cat([prompt, torch.tensor([[9]])], 1)).logits[:, -1]
    torch.testing.assert_close(step.logits[:, -1], full, rtol=0, atol=1e-5)


def test_bad_inputs_have_clear_errors():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        TransformerConfig(vocab_size=10, hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="position_embedding"):
        TransformerConfig(vocab_size=10, hidden_size=32, num_heads=4, position_embedding="alibi")
    with pytest.raises(ValueError, match="unknown keys"):
        TransformerConfig.from_dict({"vocab_size": 10, "hidden": 3})
    for bad in ({"rope_theta": -1.0}, {"rope_theta": 0}, {"local_rope_theta": float("nan")}):  # NaN losses before
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be a positive number"):
            tiny_config(position_embedding="rotary", **bad)
    model = Transformer(tiny_config()).eval()  # value checks run outside training (a training forward never syncs)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[1, 2, 101]]))
    with pytest.raises(ValueError, match="longer than the position table"):
        model(torch.ones(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="token_type_ids"):
        model(torch.ones(1, 4, dtype=torch.long), token_type_ids=torch.full((1, 4), 2))
    with pytest.raises(ValueError, match="position table"):
        CausalLM(tiny_config(causal=True)).generate(torch.ones(1, 60, dtype=torch.long), 10)


def _unpadded_twin(model, vocab=101):
    """The same weights in a model built with pad_vocab_multiple=1 (vocab rows only)."""
    import dataclasses

    twin = type(model)(dataclasses.replace(model.config, pad_vocab_multiple=1))
    rows = model.config.padded_vocab_size
    state = {k: (v[:vocab] if v.size(0) == rows else v) for k, v in model.state_dict().items()}
    twin.load_state_dict(state)
    return twin


@pytest.mark.parametrize("causal", [False, True])
def test_padded_vocabulary_is_invisible(causal):
    """101 words are stored as 128 rows; with garbage in the padded rows (so any leak would show) logits,
    loss and every gradient equal those of the unpadded model, and generation never emits a padded id."""
    config = tiny_config(causal=causal, dropout=0.0, attention_dropout=0.0)
    model = CausalLM(config) if causal else BertPretraining(config)
    word = model.transformer.embeddings.word.weight
    assert config.padded_vocab_size == 128 and word.shape == (128, 32)
    assert word[101:].abs().max() == 0  # padded rows start at zero (and get no gradient)
    twin = _unpadded_twin(model)
    with torch.no_grad():
        word[101:] = 50.0
    ids, mask = padded_batch()
    labels = ids.masked_fill(mask == 0, -100)
    if not causal:
        labels[:, ::2] = -100
    outputs = []
    for m in (model, twin):
        m(ids, attention_mask=mask, labels=labels).loss.backward()  # the training path (chunked for GPT)
        with torch.no_grad():
            outputs.append(m(ids, attention_mask=mask, labels=labels))
    ours, theirs = outputs
    name = "logits" if causal else "prediction_logits"
    assert getattr(ours, name).shape[-1] == 101
    torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(word.grad[:101], twin.transformer.embeddings.word.weight.grad, rtol=0, atol=1e-6)
    assert word.grad[101:].abs().max() == 0
    if causal:
        prompt = torch.randint(5, 101, (4, 3))
        for options in ({}, {"do_sample": True, "temperature": 5.0}):
            out = model.generate(prompt, 20, generator=torch.Generator().manual_seed(0), **options)
            assert out.max() < 101


def test_checkpoints_saved_before_vocabulary_padding_load_unpadded():
    old = tiny_config().to_dict()
    del old["pad_vocab_multiple"]
    assert TransformerConfig.from_dict(old).padded_vocab_size == 101
    assert TransformerConfig.from_dict(tiny_config().to_dict()).padded_vocab_size == 128
    with pytest.raises(ValueError, match="pad_vocab_multiple must be an integer >= 1"):
        tiny_config(pad_vocab_multiple=0)


def test_padded_vocabulary_exports_at_its_true_size(tmp_path):
    from transformers import AutoModelForCausalLM

    from pretrain import load_hf, save_hf

    model = CausalLM(tiny_config(causal=True)).eval()
    save_hf(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert hf.config.vocab_size == 101 and hf.transformer.wte.weight.shape == (101, 32)
    ids, mask = padded_batch()
    with torch.no_grad():
        theirs, ours = hf(input_ids=ids).logits, model(ids).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    back = load_hf(tmp_path)
    assert back.transformer.embeddings.word.weight.shape == (128, 32)
    torch.testing.assert_close(back.state_dict()["lm_head.weight"], model.state_dict()["lm_head.weight"])


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_a_bf16_autocast_training_step_matches_fp32(family):
    """impl.precision=bf16 (autocast; fp32 weights): the chunked loss gets bf16 rows and an fp32 weight. It
    used to fail for BERT at its weight gradient (mixed dtypes in one matmul); the result must track fp32."""
    torch.manual_seed(0)
    model = BertPretraining(tiny_config()) if family == "bert" else CausalLM(tiny_config(causal=True))
    ids = torch.randint(5, 100, (4, 32))
    labels = ids.clone()
    kwargs = {"labels": labels}
    if family == "bert":
        labels[:, 1::3] = -100
        kwargs["next_sentence_label"] = torch.tensor([0, 1, 1, 0])
    grads = {}
    for precision in ("fp32", "bf16"):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(ids, **kwargs).loss
        loss.backward()
        flat = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        grads[precision] = (loss.item(), flat)
    assert grads["bf16"][0] == pytest.approx(grads["fp32"][0], abs=0.05)
    assert torch.isfinite(grads["bf16"][1]).all()
    # bf16 rounding at initialisation (tiny gradients) moves the direction: ~0.9 here, as much as a plain
    # autocast head and cross-entropy does; a wrong or missing term would be far below
    assert torch.nn.functional.cosine_similarity(grads["bf16"][1], grads["fp32"][1], dim=0) > 0.8
