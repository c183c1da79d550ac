"""Fine-tuning: metrics, windows and offsets, tiny end-to-end runs, pipeline equality, bad input."""

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from finetune import classification as cls
from finetune import qa
from finetune.config import FinetuneConfig, FinetuneDataConfig, FinetuneModelConfig
from finetune.run import run_finetune
from finetune.squad_metric import f1, normalize_answer, squad_scores
from pretrain import BertPretraining, CausalLM, save_hf
from pretrain.config import ConfigError, TrainConfig
from pretrain.errors import DataError
from pretrain.tokenizer import train_tokenizer
from pretrain.train.checkpoints import save_model_dir

POSITIVE = ["a good film", "great acting and a fine story", "I loved it", "wonderful and warm", "good fun"]
NEGATIVE = ["a bad film", "terrible acting and a dull story", "I hated it", "awful and cold", "bad and boring"]


# ----------------------------------------------------------------------------- metrics


def test_squad_normalisation_and_scores():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert f1("Denver Broncos", "the Denver Broncos team") == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert f1("", "") == 1.0 and f1("x", "") == 0.0
    scores = squad_scores(
        {"q1": "Denver Broncos", "q2": "Panthers", "q3": "nothing"},
        {"q1": ["denver broncos"], "q2": ["Carolina Panthers", "the Panthers"], "q3": ["Levi's Stadium"]},
    )
    assert scores["exact_match"] == pytest.approx(200 / 3)
    assert scores["f1"] == pytest.approx(200 / 3)
    v2 = squad_scores({"a": "", "b": "x y"}, {"a": [], "b": ["x y z"]})
    assert v2["NoAns_exact"] == 100.0 and v2["HasAns_exact"] == 0.0 and v2["HasAns_f1"] == pytest.approx(80.0)
    assert squad_scores({}, {"q": ["a"]})["f1"] == 0.0  # a missing prediction scores 0


def test_classification_metrics_by_hand():
    pred, gold = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1])
    m = cls.classification_metrics(pred, gold, 2)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # tp=2, fp=1, fn=1
    # MCC = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2*1 - 1*1) / sqrt(3*3*2*2)
    assert m["mcc"] == pytest.approx(1 / 6)
    assert cls.classification_metrics(np.array([0, 1, 2]), np.array([0, 1, 2]), 3)["mcc"] == pytest.approx(1.0)
    # macro F1 over the classes that occur: class 2 in neither counted 0 (0.667); class 2 only predicted counts
    three = cls.classification_metrics(np.array([0, 1, 1, 0]), np.array([0, 1, 1, 0]), 3)
    assert three["f1"] == pytest.approx(1.0) and three["mcc"] == pytest.approx(1.0)
    only_predicted = cls.classification_metrics(np.array([0, 1, 2]), np.array([0, 1, 1]), 3)
    assert only_predicted["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    r = cls.regression_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.0]))
    assert r["spearman"] == pytest.approx(0.8)
    assert r["pearson"] == pytest.approx(0.8)


@pytest.mark.slow
def test_squad_dev_gold_answers_score_100(shared_data):
    examples = qa.read_squad(str(shared_data / "squad/dev-v1.1.json"))
    assert len(examples) == 10570
    golds = {ex.id: ex.answers for ex in examples}
    scores = squad_scores({ex.id: ex.answers[0] for ex in examples}, golds)
    assert scores["exact_match"] == 100.0 and scores["f1"] == 100.0


# ----------------------------------------------------------------------------- windows


def test_every_gold_answer_in_a_window_is_recoverable(bert_tokenizer):
    rng = random.Random(0)
    words = " ".join(POSITIVE + NEGATIVE).split()
    examples = []
    for i in range(30):
        context = " ".join(rng.choice(words) for _ in range(rng.randint(20, 120)))
        start_word = rng.randrange(0, len(context.split()) - 3)
        answer = " ".join(context.split()[start_word : start_word + rng.randint(1, 3)])
        start = len(" ".join(context.split()[:start_word])) + (1 if start_word else 0)
        assert context[start : start + len(answer)] == answer
        examples.append(qa.QAExample(str(i), "t", "what is said?", context, [answer], [start]))
    cfg = FinetuneDataConfig(max_length=48, doc_stride=16, max_query_length=8)
    train_features = qa.windows(bert_tokenizer, examples, cfg, training=True)
    eval_features = qa.windows(bert_tokenizer, examples, cfg, training=False)
    assert len(train_features) == len(eval_features) > len(examples)  # long contexts give several windows
    recovered = set()
    for tf, ef in zip(train_features, eval_features, strict=True):
        ex = examples[ef["example_index"]]
        assert len(tf["input_ids"]) <= 48
        if tf["start_positions"] == 0:
            continue
        s, e = ef["offsets"][tf["start_positions"]], ef["offsets"][tf["end_positions"]]
        assert ex.context[s[0] : e[1]] == ex.answers[0]  # character for character
        recovered.add(ex.id)
    # an answer whose tokens all lie inside some window's context part is recovered by that window
    for ex in examples:
        spans = [ef for ef in eval_features if examples[ef["example_index"]] is ex]
        fits = any(
            min(o[0] for o in f["offsets"] if o) <= ex.answer_starts[0]
            and max(o[1] for o in f["offsets"] if o) >= ex.answer_starts[0] + len(ex.answers[0])
            for f in spans
        )
        assert fits == (ex.id in recovered)


def test_best_answer_search_across_windows():
    ex = qa.QAExample("q", "t", "q?", "alpha beta gamma delta", ["gamma"], [11])
    offsets = [None, None, (0, 5), (6, 10), (11, 16), (17, 22), None]
    features = [{"example_index": 0, "offsets": offsets}]
    start = np.array([5.0, 0, 0, 0, 3.0, 0, 9.0])  # position 6 is not context: never chosen
    end = np.array([5.0, 0, 0, 0, 3.0, 1.0, 9.0])
    cfg = FinetuneDataConfig(n_best=5, max_answer_length=3)
    assert qa.best_answers([ex], features, [start], [end], cfg) == {"q": "gamma"}
    cfg.version_2 = True  # the null score (10) beats the best span (6)
    assert qa.best_answers([ex], features, [start], [end], cfg) == {"q": ""}


def test_answers_of_decomposed_text_keep_their_last_accent(tmp_path):
    """An accent-stripping tokenizer's offsets end before a word's trailing combining mark (NFD text): the
    answer lost it, and even a perfect model scored EM 0."""
    context = "le Re\u0301sume\u0301 du jour"
    tokenizer = train_tokenizer([context, "le jour du resume"] * 20, "bert", vocab_size=200)
    squad = {
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {
                        "context": context,
                        "qas": [
                            {
                                "id": "q",
                                "question": "quoi?",
                                "answers": [{"text": "Re\u0301sume\u0301", "answer_start": 3}],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    (tmp_path / "nfd.json").write_text(json.dumps(squad), encoding="utf-8")
    examples = qa.read_squad(str(tmp_path / "nfd.json"))
    cfg = FinetuneDataConfig(max_length=32, doc_stride=8, max_query_length=8)
    features = qa.windows(tokenizer, examples, cfg, training=False)
    words = [i for i, o in enumerate(features[0]["offsets"]) if o is not None and context[o[0]] == "R"]
    start = np.zeros(len(features[0]["offsets"]))
    start[words[0]] = 10.0
    last = max(i for i, o in enumerate(features[0]["offsets"]) if o is not None and o[1] <= 10)
    end = np.zeros_like(start)
    end[last] = 10.0
    assert qa.best_answers(examples, features, [start], [end], cfg) == {"q": "Re\u0301sume\u0301"}


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def bert_tokenizer():
    text = POSITIVE + NEGATIVE + ["what is said? who went where? the cat sat on the mat in paris"]
    return train_tokenizer(text * 20, "bert", vocab_size=200)


@pytest.fixture(scope="module")
def tiny_bert_checkpoint(tmp_path_factory, bert_tokenizer):
    directory = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = BertPretraining(tiny_config(vocab_size=len(bert_tokenizer), max_positions=128))
    save_model_dir(model, directory)
    bert_tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def tiny_gpt_export(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt")
    tokenizer = train_tokenizer((POSITIVE + NEGATIVE) * 20, "gpt", vocab_size=300)
    torch.manual_seed(0)
    cfg = tiny_config(causal=True, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    save_hf(CausalLM(cfg), directory, tokenizer=tokenizer)
    return directory


def sentiment_files(tmp_path, n=200, extra_val_label=None):
    rng = random.Random(0)
    rows = [(rng.choice(POSITIVE), 1) if i % 2 else (rng.choice(NEGATIVE), 0) for i in range(n)]
    for name, part in (("train.tsv", rows[: n * 3 // 4]), ("dev.tsv", rows[n * 3 // 4 :])):
        lines = ["sentence\tlabel"] + [f"{s}\t{label}" for s, label in part]
        if name == "dev.tsv" and extra_val_label is not None:
            lines.append(f"good\t{extra_val_label}")
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    return tmp_path / "train.tsv", tmp_path / "dev.tsv"


def finetune_config(tmp_path, init, train_file, dev_file, task="classification", **data):
    return FinetuneConfig(
        task=task,
        model=FinetuneModelConfig(init=str(init)),
        data=FinetuneDataConfig(train=str(train_file), validation=str(dev_file), max_length=64, **data),
        train=TrainConfig(
            max_steps=60,
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


def test_bert_classification_end_to_end_and_pipeline(tmp_path, tiny_bert_checkpoint):
    train_file, dev_file = sentiment_files(tmp_path)
    cfg = finetune_config(tmp_path, tiny_bert_checkpoint, train_file, dev_file)
    metrics = run_finetune(cfg)
    out = Path(cfg.train.output_dir)
    assert metrics["accuracy"] > 0.9
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == metrics["accuracy"]
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 50 and (out / "best" / "model.json").exists()

    from transformers import pipeline

    classify = pipeline("text-classification", model=str(out / "export"), device="cpu")
    got = [r["label"] for r in classify([p["text"] for p in predictions])]
    assert got == [p["prediction"] for p in predictions]


def test_gpt_classification_with_auxiliary_lm_loss_and_pipeline(tmp_path, tiny_gpt_export):
    train_file, dev_file = sentiment_files(tmp_path)
    cfg = finetune_config(tmp_path, tiny_gpt_export, train_file, dev_file)
    cfg.model.lm_loss_weight = 0.5
    metrics = run_finetune(cfg)
    assert metrics["accuracy"] > 0.9
    out = Path(cfg.train.output_dir)
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(out / "export"), device="cpu")
    assert [r["label"] for r in classify([p["text"] for p in predictions])] == [p["prediction"] for p in predictions]


@pytest.mark.parametrize("bos", [False, True], ids=["gpt2_tokenizer", "bos_adding_tokenizer"])
def test_causal_export_tokenizer_encodes_as_our_finetuning(tmp_path, bos):
    """A GPT's exported tokenizer encodes a text and a pair as our fine-tuning does: a pair as `a <eos> b`
    (its tok(a, b) gave `a b`), both between the special tokens the tokenizer puts around one text (BOS for
    a Llama-style tokenizer, which our fine-tuning left out); so transformers' tok -> model gives our logits."""
    import transformers

    from finetune import multiple_choice as mc
    from pretrain import SequenceClassifier

    tokenizer = train_tokenizer((POSITIVE + NEGATIVE) * 20, "gpt", vocab_size=300)
    if bos:  # Llama-style: the post-processor puts <s> in front of each text
        tokenizer.add_special_tokens({"bos_token": "<s>"})
        tokenizer.add_bos_token = True
        assert tokenizer("good")["input_ids"][0] == tokenizer.bos_token_id
    config = tiny_config(causal=True, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    model = SequenceClassifier(config, num_labels=2).eval()
    save_hf(model, tmp_path, tokenizer=tokenizer)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    first, second = POSITIVE, NEGATIVE
    rows = [{"s1": a, "s2": b} for a, b in zip(first, second, strict=True)]
    for pair in (None, "s2"):
        d = FinetuneDataConfig(text_column="s1", text_pair_column=pair, max_length=64)
        ours = cls.encode_texts(tokenizer, rows, d, causal=True)["input_ids"]
        enc = hf_tokenizer(first, second if pair else None)
        assert ours == enc["input_ids"] and "token_type_ids" not in enc
        assert all((x[0] == tokenizer.bos_token_id) == bos for x in ours)
        assert all((tokenizer.eos_token_id in x) == bool(pair) for x in ours)
        for ids in ours:  # one at a time: no padding
            ids = torch.tensor([ids])
            assert (model(input_ids=ids).logits - hf_model(input_ids=ids).logits).abs().max().item() < 1e-5
    # multiple choice and GPT-paper similarity (data.symmetric) encode their pairs the same way
    choices = mc.encode_pairs(tokenizer, first, second, 64, causal=True)
    assert [c["input_ids"] for c in choices] == hf_tokenizer(first, second)["input_ids"]
    # too long: cut as the export's tokenizer cuts with truncation=True (longest_first, from the left); the whole
    # `a <eos> b` cut from the left lost the first text and the <eos> (a different input than HF's)
    long = [" ".join([t] * 6) for t in first]
    from finetune.common import causal_inputs

    for a, b in ((long, second), (second, long), (long, long)):
        for length in (7, 12, 20, 33):
            cut = hf_tokenizer(a, b, truncation=True, max_length=length)["input_ids"]
            assert causal_inputs(tokenizer, a, b, length) == cut, (length, a[0][:20], b[0][:20])
            assert all(tokenizer.eos_token_id in x for x in cut)
        assert causal_inputs(tokenizer, a, None, 9) == hf_tokenizer(a, truncation=True, max_length=9)["input_ids"]
    # token classification too: the words' pieces after the tokenizer's own BOS, which it left out
    from finetune import token_classification as tc

    sentences = [tc.Sentence(text.split(), ["O"] * len(text.split())) for text in first]
    tagged = tc.windows(tokenizer, sentences, ["O"], FinetuneDataConfig(max_length=64), causal=True)
    pieces = tc.word_pieces(tokenizer, sentences, True)
    bos_ids = [tokenizer.bos_token_id] if bos else []
    assert [f["input_ids"] for f in tagged] == [bos_ids + [i for word in p for i in word] for p in pieces]


def pair_files(tmp_path, n=40):
    """An RTE-like pair task: the label says whether both sentences have the same sentiment."""
    rng = random.Random(0)
    rows = []
    for _ in range(n):
        a, b = rng.choice(POSITIVE + NEGATIVE), rng.choice(POSITIVE + NEGATIVE)
        rows.append((a, b, int((a in POSITIVE) == (b in POSITIVE))))
    for name, part in (("train.tsv", rows[: n * 3 // 4]), ("dev.tsv", rows[n * 3 // 4 :])):
        lines = ["sentence1\tsentence2\tlabel"] + [f"{a}\t{b}\t{y}" for a, b, y in part]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    return rows, tmp_path / "train.tsv", tmp_path / "dev.tsv"


@pytest.mark.parametrize("source", ["our_roberta_export", "hf_roberta"])
def test_one_token_type_roberta_on_a_pair_task(tmp_path, bert_tokenizer, source):
    """A RoBERTa with one token-type row (our roberta preset's export, or a Hugging Face RoBERTa,
    type_vocab_size=1) next to a BERT tokenizer, whose pairs give the second text type 1: fine-tuning
    trains (it was an IndexError in the segment embedding), the export's tokenizer returns no
    token_type_ids, and transformers' tok(a, b) -> model(**enc) gives the logits of our encoding."""
    import transformers

    from pretrain.config import model_preset

    init = tmp_path / "init"
    if source == "our_roberta_export":
        preset = model_preset("roberta-tiny")
        preset.hidden_size, preset.ffn_size, preset.num_heads, preset.max_positions = 32, 64, 2, 66
        save_hf(BertPretraining(preset.transformer_config(bert_tokenizer), nsp=False), init, tokenizer=bert_tokenizer)
    else:
        config = transformers.RobertaConfig(
            vocab_size=len(bert_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=66, type_vocab_size=1, pad_token_id=0,
        )  # fmt: skip
        hf = transformers.RobertaForMaskedLM(config)
        torch.nn.init.normal_(hf.roberta.embeddings.token_type_embeddings.weight)  # a real, non-zero row
        hf.save_pretrained(init)
        bert_tokenizer.save_pretrained(init)  # a BERT tokenizer: it returns token_type_ids
    rows, train_file, dev_file = pair_files(tmp_path)
    cfg = finetune_config(tmp_path, init, train_file, dev_file, text_column="sentence1", text_pair_column="sentence2")
    cfg.data.max_length, cfg.train.max_steps = 32, 3
    run_finetune(cfg)

    export = Path(cfg.train.output_dir) / "export"
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(export).eval()
    first, second = [a for a, _, _ in rows[:4]], [b for _, b, _ in rows[:4]]
    enc = hf_tokenizer(first, second, padding=True, return_tensors="pt")
    assert "token_type_ids" not in enc
    theirs = hf_model(**enc).logits
    # ours: what our fine-tuning feeds (the BERT tokenizer's encoding, type 1 included), into the export reloaded
    from finetune.common import padded_inputs
    from pretrain import load_hf

    d = FinetuneDataConfig(text_column="s1", text_pair_column="s2", max_length=32)
    pairs = [{"s1": a, "s2": b} for a, b in zip(first, second, strict=True)]
    features = cls.encode_texts(bert_tokenizer, pairs, d, causal=False)
    assert any(1 in types for types in features["token_type_ids"])
    examples = [{k: v[i] for k, v in features.items()} for i in range(len(pairs))]
    batch = padded_inputs(examples, bert_tokenizer.pad_token_id)
    assert torch.equal(batch["input_ids"], enc["input_ids"])
    ours = load_hf(export).eval()(**batch).logits
    assert (ours - theirs).abs().max().item() < 1e-5


def test_regression_end_to_end(tmp_path, tiny_bert_checkpoint):
    rng = random.Random(0)
    rows = [
        (rng.choice(POSITIVE), 4.0 + rng.random()) if i % 2 else (rng.choice(NEGATIVE), rng.random())
        for i in range(160)
    ]
    for name, part in (("train.csv", rows[:120]), ("dev.csv", rows[120:])):
        (tmp_path / name).write_text("sentence,score\n" + "".join(f"{s},{y:.3f}\n" for s, y in part))
    cfg = finetune_config(
        tmp_path,
        tiny_bert_checkpoint,
        tmp_path / "train.csv",
        tmp_path / "dev.csv",
        label_column="score",
        regression=True,
    )
    cfg.train.max_steps = 150
    cfg.train.eval_every = 50  # set by hand: it wins over eval_per_epoch (which evaluated every 7 steps)
    metrics = run_finetune(cfg)
    assert metrics["pearson"] > 0.9 and metrics["spearman"] > 0.5
    rows = [json.loads(line) for line in (Path(cfg.train.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval_pearson" in r] == [50, 100, 150]
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(Path(cfg.train.output_dir) / "export").problem_type == "regression"


def squad_file(path, n_articles=6, bad_starts=0, impossible=0):
    rng = random.Random(1)
    cities = ["paris", "rome", "oslo", "lima", "cairo", "delhi", "tokyo", "quito"]
    data = []
    for a in range(n_articles):
        paragraphs = []
        for p in range(5):
            city = rng.choice(cities)
            context = f"the cat sat on the mat in {city} . the dog went where it liked ."
            start = context.index(city)
            qas = [
                {
                    "id": f"{a}-{p}",
                    "question": "where did the cat sit?",
                    "answers": [{"text": city, "answer_start": start}],
                }
            ]
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": f"article {a}", "paragraphs": paragraphs})
    for k in range(bad_starts):
        data[0]["paragraphs"][k]["qas"][0]["answers"][0]["answer_start"] += 1
    for k in range(impossible):  # SQuAD 2.0: unanswerable questions have no answers
        qa_item = data[k % n_articles]["paragraphs"][k // n_articles]["qas"][0]
        qa_item.update(question="what did the fish buy?", answers=[], is_impossible=True)
    Path(path).write_text(json.dumps({"version": "1.1", "data": data}), encoding="utf-8")
    return path


def test_span_qa_end_to_end_and_pipeline(tmp_path, tiny_bert_checkpoint):
    train_file = squad_file(tmp_path / "train.json", n_articles=12, bad_starts=2)
    dev_file = squad_file(tmp_path / "dev.json", n_articles=2)
    cfg = finetune_config(
        tmp_path, tiny_bert_checkpoint, train_file, dev_file, task="qa", doc_stride=16, max_query_length=16
    )
    cfg.train.max_steps = 80
    metrics = run_finetune(cfg)
    assert metrics["skipped_training_examples"] == 2
    assert metrics["f1"] > 90 and metrics["exact_match"] > 90
    out = Path(cfg.train.output_dir)
    answers = json.loads((out / "predictions.json").read_text())
    assert len(answers) == 10

    # transformers 5 removed pipeline("question-answering"); the exported BertForQuestionAnswering,
    # loaded by AutoModelForQuestionAnswering, must give the same logits and so the same answers
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    hf = AutoModelForQuestionAnswering.from_pretrained(out / "export").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "export")
    examples = qa.read_squad(str(dev_file))
    features = qa.windows(tokenizer, examples, cfg.data, training=False)
    batch = qa.QACollator(tokenizer.pad_token_id)(features)
    with torch.no_grad():
        logits = hf(**batch)
    n = batch["attention_mask"].sum(-1)
    starts = [logits.start_logits[i, : n[i]].numpy() for i in range(len(features))]
    ends = [logits.end_logits[i, : n[i]].numpy() for i in range(len(features))]
    assert qa.best_answers(examples, features, starts, ends, cfg.data) == answers


def test_squad_v2_unanswerable_questions(tmp_path, tiny_bert_checkpoint):
    train_file = squad_file(tmp_path / "train.json", n_articles=12, impossible=20)
    dev_file = squad_file(tmp_path / "dev.json", n_articles=2, impossible=4)
    cfg = finetune_config(
        tmp_path, tiny_bert_checkpoint, train_file, dev_file, task="qa", doc_stride=16, max_query_length=16
    )
    with pytest.raises(ConfigError, match="data.version_2=true"):
        run_finetune(cfg)
    cfg.data.version_2 = True
    cfg.train.max_steps = 100
    cfg.train.output_dir = str(tmp_path / "v2")
    metrics = run_finetune(cfg)
    assert metrics["NoAns_total"] == 4 and metrics["HasAns_total"] == 6
    assert metrics["NoAns_exact"] > 50 and metrics["HasAns_f1"] > 50  # it learns to abstain, and to answer


# ----------------------------------------------------------------------------- bad input


def test_missing_label_column_and_unseen_labels(tmp_path, tiny_bert_checkpoint):
    train_file, dev_file = sentiment_files(tmp_path)
    cfg = finetune_config(tmp_path, tiny_bert_checkpoint, train_file, dev_file, label_column="sentiment")
    with pytest.raises(ConfigError, match="no column 'sentiment'.*data.label_column"):
        run_finetune(cfg)
    train_file, dev_file = sentiment_files(tmp_path, extra_val_label=7)
    cfg = finetune_config(tmp_path, tiny_bert_checkpoint, train_file, dev_file)
    with pytest.raises(ValueError, match=r"labels \['7'\] that the training data does not have"):
        run_finetune(cfg)


def test_a_single_class_is_refused_not_read_as_regression(tmp_path, tiny_bert_checkpoint):
    """num_labels=1 means regression in the model: one class in the data used to train one silently."""
    train_file, dev_file = sentiment_files(tmp_path)
    one_class = [line for line in train_file.read_text().splitlines() if not line.endswith("\t0")]
    train_file.write_text("\n".join(one_class) + "\n")
    cfg = finetune_config(tmp_path, tiny_bert_checkpoint, train_file, dev_file)
    with pytest.raises(DataError, match=r"train.tsv: every training label is '1'; classification needs at least two"):
        run_finetune(cfg)


def test_a_trained_head_follows_this_runs_label_order(caplog):
    """A classifier from model.init whose labels are named in another order has its rows permuted (it
    used to keep them, so every prediction was flipped); other names re-initialise it; indices and
    Hugging Face's placeholder names keep it as it is."""
    from finetune.common import head_matches_labels
    from pretrain.model import SequenceClassifier

    model = SequenceClassifier(tiny_config(), num_labels=3)
    head = model.classifier
    weight, bias = head.weight.detach().clone(), head.bias.detach().clone()
    model.id2label = {0: "neg", 1: "neu", 2: "pos"}
    assert head_matches_labels(model, head, ["neg", "neu", "pos"], "ckpt")
    assert torch.equal(head.weight, weight)
    with caplog.at_level("INFO", logger="finetune.common"):
        assert head_matches_labels(model, head, ["pos", "neg", "neu"], "ckpt")
    assert "reordered" in caplog.text
    assert torch.equal(head.weight, weight[[2, 0, 1]]) and torch.equal(head.bias, bias[[2, 0, 1]])
    x = torch.randn(4, 32)
    model.id2label = {0: "pos", 1: "neg", 2: "neu"}
    assert head_matches_labels(model, head, ["neg", "neu", "pos"], "ckpt")  # and back: the same scores per name
    assert torch.allclose(head(x), x @ weight.t() + bias)
    assert not head_matches_labels(model, head, ["a", "b", "c"], "ckpt")
    for names, labels in (
        ({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, ["x", "y", "z"]),
        (model.id2label, ["0", "1", "2"]),
    ):
        model.id2label = names
        assert head_matches_labels(model, head, labels, "ckpt") and torch.allclose(head(x), x @ weight.t() + bias)


def test_file_rows_headers_and_labels(tmp_path):
    """A header that data.columns names is not a row (it became a class "label"); a repeated header
    column and a NaN label are refused; labels outside data.label_names say so."""
    from finetune.files import read_rows

    f = tmp_path / "rte.tsv"
    f.write_text("sentence\tlabel\na b\tyes\nc d\tno\n")
    assert read_rows(str(f), ["sentence", "label"]) == read_rows(str(f))
    f.write_text("sentence\tlabel\na b\tyes\nc d\n")
    with pytest.raises(DataError, match=r"rte.tsv, line 3: 1 fields where the header has 2"):  # the file's lines
        read_rows(str(f), ["sentence", "label"])
    f.write_text("text\ttext\tlabel\na\tb\tyes\n")
    with pytest.raises(DataError, match=r"rte.tsv: the header repeats the column\(s\) \['text'\]; rename them"):
        read_rows(str(f))
    d = FinetuneDataConfig(text_column="sentence")
    with pytest.raises(DataError, match=r"row 2: the label 'label' is NaN"):
        cls.check_columns([{"sentence": "a", "label": 1}, {"sentence": "b", "label": float("nan")}], d, "train.json")
    d = FinetuneDataConfig(label_names=["neg", "pos"])
    with pytest.raises(DataError, match=r"train.json has labels \['meh'\] that data.label_names does not list"):
        cls.encode_labels([{"label": "meh"}], d, ["neg", "pos"], "train.json")
    # one class however it is written: '0 ' and '0' in a TSV, 1 and 1.0 in JSON (they were two classes)
    rows = [{"label": "0 "}, {"label": "0"}, {"label": 1}, {"label": 1.0}, {"label": " 1"}]
    d = FinetuneDataConfig()
    assert cls.label_vocabulary(rows, d) == ["0", "1"]
    assert cls.encode_labels(rows, d, ["0", "1"], "train.json") == [0, 0, 1, 1, 1]
    # a header whose names are not data.columns' was an example, its label a class of its own
    header = [{"sentence": "text", "label": "label"}, {"sentence": "a", "label": "1"}, {"sentence": "b", "label": 0}]
    with pytest.raises(DataError, match=r"dev.tsv, row 1: the label 'label' among numeric labels looks like a header"):
        cls.check_columns(header, FinetuneDataConfig(columns=["sentence", "label"], text_column="sentence"), "dev.tsv")
    cls.check_columns(header[:1], FinetuneDataConfig(text_column="sentence"), "one.tsv")  # one text label: a class
    # scores without data.regression were one class per distinct value (a 64-class STS-B), silently
    scores = [{"label": "3.8"}, {"label": "0"}, {"label": 5}]
    with pytest.raises(ConfigError, match=r"data.label_column='label' holds numbers such as 3.8, not class names"):
        cls.label_vocabulary(scores, d)
    assert cls.label_vocabulary(scores, FinetuneDataConfig(label_names=["0", "3.8", "5"])) == ["0", "3.8", "5"]
    assert cls.label_vocabulary([{"label": "-1"}, {"label": "nan"}, {"label": "1"}], d) == ["-1", "1", "nan"]
    assert cls.label_vocabulary([{"label": "+1"}, {"label": "-1"}], d) == ["+1", "-1"]  # SVM-light classes
    assert cls.label_vocabulary([{"label": "0.0"}, {"label": "1.0"}], d) == ["0.0", "1.0"]  # pandas' float columns
    with pytest.raises(DataError, match=r"row 1: the regression target is True, not a number"):
        cls.check_columns([{"sentence": "a", "label": True}], FinetuneDataConfig(regression=True), "train.json")
    # a stray quote in a CSV is named (it swallowed the next lines into one example); line numbers count blanks
    f = tmp_path / "quote.csv"
    f.write_text('text,label\n"bad start,0\ngood,1\nend" x,1\nfine,0\n')
    with pytest.raises(DataError, match=r"quote.csv, line 4: ',' expected after '\"'; fix the quoting"):
        read_rows(str(f))
    f = tmp_path / "blank_lines.tsv"
    f.write_text("sentence\tlabel\nok\t0\n\n\nbad\t1\textra\n")
    with pytest.raises(DataError, match=r"blank_lines.tsv, line 5: 3 fields where the header has 2"):
        read_rows(str(f))


def test_holdout_that_leaves_nothing_to_train_on_is_refused():
    from finetune.common import holdout

    train, val = holdout(list(range(10)), 0.2, seed=0)
    assert len(train) == 8 and len(val) == 2
    with pytest.raises(DataError, match=r"holdout_fraction=0.5: the training data has 1 example\(s\); holding out 1"):
        holdout([0], 0.5, seed=0)
    with pytest.raises(DataError, match=r"has 1 group\(s\) \(SQuAD articles\).*leaves none to train on"):
        holdout(["a", "b"], 0.2, seed=0, group=lambda x: "")


def test_squad_evaluation_set_checked_before_training():
    """Scores are keyed by question id and v1.1 scoring has no unanswerable question: both used to
    surface after training (a shrunken evaluation; a traceback at the first evaluation)."""
    ok = qa.QAExample("q1", "t", "where?", "in paris", ["paris"], [3])
    qa.check_evaluation_set([ok], "dev.json", version_2=False)
    with pytest.raises(DataError, match="dev.json: the question id 'q1' appears more than once"):
        qa.check_evaluation_set([ok, ok], "dev.json", version_2=False)
    unanswerable = qa.QAExample("q2", "t", "why?", "in paris", [], [])
    with pytest.raises(ConfigError, match=r"dev.json: question 'q2' has no answer.*data.version_2=true"):
        qa.check_evaluation_set([ok, unanswerable], "dev.json", version_2=False)
    qa.check_evaluation_set([ok, unanswerable], "dev.json", version_2=True)


def test_a_resumed_run_keeps_its_best_model_until_beaten(tmp_path, caplog):
    """best/ survives a resume: a later, worse evaluation does not replace it (it used to: the best so far
    was forgotten on resume); a better one does. An unreadable record is replaced, with a warning."""
    from finetune.run import BestModel

    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "metrics.json").write_text(json.dumps({"step": 5, "accuracy": 0.9}))
    best = BestModel(tmp_path, "accuracy", tokenizer=None, is_main=False)
    assert (best.best, best.step) == (0.9, 5)
    best(8, {"accuracy": 0.85}, model=None)
    assert (best.best, best.step) == (0.9, 5)
    best(9, {"accuracy": 0.95}, model=None)
    assert (best.best, best.step) == (0.95, 9)

    for unreadable in ("{not json", "[0.9]", "null"):
        (tmp_path / "best" / "metrics.json").write_text(unreadable)
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert BestModel(tmp_path, "accuracy", tokenizer=None, is_main=False).best is None
        assert "metrics.json is unreadable" in caplog.text


def test_finetune_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="model.init is required"):
        FinetuneConfig(data=FinetuneDataConfig(train="x.tsv")).validate()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cls.read_rows(str(tmp_path / "missing.tsv"))
    # settings that contradict each other are refused, not one of them ignored
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\na\t0\n")
    model = FinetuneModelConfig(init=str(tmp_path))
    conflicts = [
        (dict(data=FinetuneDataConfig(paths=[str(train)], train=str(train))), "data.paths and data.train"),
        (dict(data=FinetuneDataConfig(train=str(train), validation=str(train), holdout_fraction=0.5)), "nothing would"),
        (dict(task="qa", model=FinetuneModelConfig(init=str(tmp_path), lm_loss_weight=0.5)), "not task=qa"),
    ]
    for fields, message in conflicts:
        with pytest.raises(ConfigError, match=message):
            FinetuneConfig(**{"model": model, "data": FinetuneDataConfig(train=str(train)), **fields}).validate()
    from finetune.common import check_aux_lm_loss
    from pretrain.model import SequenceClassifier

    bert = SequenceClassifier(tiny_config(), num_labels=2)
    config = FinetuneConfig(model=FinetuneModelConfig(init="bert-run", lm_loss_weight=0.5))
    with pytest.raises(ConfigError, match=r"model.lm_loss_weight=0.5: .* model.init=bert-run is bidirectional"):
        check_aux_lm_loss(config, bert)
    pipe = tmp_path / "pipe.tsv"
    os.mkfifo(pipe)
    with pytest.raises(ConfigError, match=r"data.train=.*pipe.tsv: not a regular file \(a pipe, socket or device\)"):
        config = FinetuneConfig(model=FinetuneModelConfig(init=str(tmp_path)), data=FinetuneDataConfig(train=str(pipe)))
        config.validate()
    with pytest.raises(ValueError, match="not SQuAD JSON"):
        bad = tmp_path / "bad.json"
        bad.write_text("[1, 2]")
        qa.read_squad(str(bad))


@pytest.mark.slow
def test_glue_files_read(shared_data):
    sst = cls.read_rows(str(shared_data / "glue/SST-2/dev.tsv"))
    assert len(sst) == 872 and set(sst[0]) == {"sentence", "label"}
    cola = cls.read_rows(str(shared_data / "glue/CoLA/dev.tsv"), ["source", "label", "original_label", "sentence"])
    assert len(cola) == 1043
    mrpc = cls.read_rows(str(shared_data / "glue/MRPC/dev.tsv"))
    assert len(mrpc) == 408 and "Quality" in mrpc[0]  # the BOM is gone
    rte = cls.read_rows(str(shared_data / "glue/RTE/dev.tsv"))
    assert {r["label"] for r in rte} == {"entailment", "not_entailment"}


@pytest.mark.slow
def test_mrpc_train_is_built_as_glue_builds_it(shared_data):
    mrpc = shared_data / "glue/MRPC"
    rows = cls.read_rows(str(mrpc / "msr_paraphrase_train.txt"))
    train = cls.exclude_rows(rows, str(mrpc / "dev_ids.tsv"), ["#1 ID", "#2 ID"])
    assert len(train) == 3668  # SOURCES.md: 2,474 paraphrases / 1,194 not
    assert sum(r["Quality"] == "1" for r in train) == 2474
    with pytest.raises(ConfigError, match="id_columns"):
        cls.exclude_rows(rows, str(mrpc / "dev_ids.tsv"), None)


def test_a_model_too_short_for_data_max_length_is_refused_before_the_data_are_read(
    tmp_path, tiny_bert_checkpoint, tiny_gpt_export, monkeypatch
):
    """Read from model.init's config file (our model.json or an HF config.json), before any file is tokenised."""
    import finetune.run

    def no_data(*args, **kwargs):
        raise AssertionError("the data were read before the model's size was checked")

    monkeypatch.setitem(finetune.run.TASKS, "classification", no_data)
    train_file, dev_file = sentiment_files(tmp_path)
    for init, positions in ((tiny_bert_checkpoint, 128), (tiny_gpt_export, 64)):
        cfg = finetune_config(tmp_path / "out", init, train_file, dev_file)
        cfg.data.max_length = 256
        with pytest.raises(ConfigError, match=rf"data.max_length=256 needs 256 positions, but .* has {positions};"):
            run_finetune(cfg)
