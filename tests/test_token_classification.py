"""Token labelling: conlleval's scores on its edge cases, CoNLL / JSON / hub-layout reading, windows
that predict each word once, exports that load in transformers, and a tiny end-to-end run."""

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from finetune import conlleval
from finetune import token_classification as tc
from finetune.config import FinetuneConfig, FinetuneDataConfig, FinetuneModelConfig
from finetune.run import run_finetune
from pretrain import BertPretraining, CausalLM, load_hf, save_hf
from pretrain.config import TrainConfig
from pretrain.errors import DataError
from pretrain.model import TokenClassifier
from pretrain.tokenizer import train_tokenizer
from pretrain.train.checkpoints import load_model_dir, save_model_dir
from pretrain.train.loop import target_count

FIRST = ["alice", "bob", "carol", "dave"]
LAST = ["smith", "jones", "brown"]
CITIES = ["paris", "rome", "oslo", "lima"]
FILLER = ["the", "cat", "went", "to", "and", "saw", "today", "with", "a", "dog", "in"]


# ----------------------------------------------------------------------------- conlleval


def test_conlleval_iob2_counts_by_hand():
    m = conlleval.evaluate([["B-NP", "I-NP", "O", "B-VP"]], [["B-NP", "I-NP", "O", "B-NP"]])
    assert (m["gold_chunks"], m["predicted_chunks"], m["correct_chunks"]) == (2, 2, 1)
    assert m["precision"] == m["recall"] == m["f1"] == 0.5
    assert m["accuracy"] == 0.75
    assert m["NP_f1"] == pytest.approx(2 / 3) and m["VP_f1"] == 0.0


def test_conlleval_chunk_starting_with_i_is_a_chunk():
    # IOB1 opens a chunk with I- after O: the same chunk as B- in IOB2, so F1 is perfect while
    # one tag differs (token accuracy 2/3), exactly as conlleval scores it
    m = conlleval.evaluate([["I-NP", "I-NP", "O"]], [["B-NP", "I-NP", "O"]])
    assert m["f1"] == 1.0 and m["accuracy"] == pytest.approx(2 / 3)
    # I- after a chunk of another type starts a new chunk; B- separates two chunks of one type (IOB1)
    assert conlleval.chunks(["I-LOC", "I-PER", "O", "I-PER", "B-PER"]) == [
        ("LOC", 0, 1),
        ("PER", 1, 2),
        ("PER", 3, 4),
        ("PER", 4, 5),
    ]
    m = conlleval.evaluate([["I-PER", "I-PER", "B-PER"]], [["I-PER", "I-PER", "I-PER"]])
    assert (m["gold_chunks"], m["predicted_chunks"], m["correct_chunks"]) == (2, 1, 0)


def test_conlleval_type_change_inside_a_chunk_splits_it():
    m = conlleval.evaluate([["B-NP", "I-NP", "I-NP"]], [["B-NP", "I-VP", "I-VP"]])
    assert (m["gold_chunks"], m["predicted_chunks"], m["correct_chunks"]) == (1, 2, 0)
    assert m["f1"] == 0.0
    assert conlleval.chunks(["B-NP", "I-VP", "I-VP"]) == [("NP", 0, 1), ("VP", 1, 3)]


def test_conlleval_sentence_boundary_closes_chunks_and_lines_match():
    gold = [["B-NP", "I-NP"], ["I-NP", "O"]]
    guess = [["B-NP", "I-NP"], ["I-NP", "B-NP"]]
    m = conlleval.evaluate(gold, guess)
    assert (m["gold_chunks"], m["predicted_chunks"], m["correct_chunks"]) == (2, 3, 2)
    lines = "w1 NN B-NP B-NP\nw2 NN I-NP I-NP\n\nw3 NN I-NP I-NP\nw4 NN O B-NP\n".splitlines()
    assert conlleval.evaluate_lines(lines) == m
    with pytest.raises(ValueError, match="line 2: unexpected number of fields"):
        conlleval.evaluate_lines(["a NN B-NP B-NP", "b B-NP B-NP"])


# ----------------------------------------------------------------------------- reading


def test_read_conll_skips_docstart_and_names_a_missing_tag(tmp_path):
    f = tmp_path / "ned.train"
    f.write_text("-DOCSTART- -DOCSTART- O\nDe Art O\nAmsterdam N B-LOC\n\nZe Pron O\n")
    sentences = tc.read_conll(str(f))
    assert [s.words for s in sentences] == [["De", "Amsterdam"], ["Ze"]]
    assert sentences[0].tags == ["O", "B-LOC"]
    assert tc.read_conll(str(f), column=1)[0].tags == ["Art", "N"]
    f.write_text("De Art O\nAmsterdam B-LOC\n")
    with pytest.raises(DataError, match=r"ned.train, line 2: 'Amsterdam B-LOC' has 2 fields.*missing or extra"):
        tc.read_conll(str(f))
    f.write_text("De Art O\nAmsterdam N B-LOC\n")  # a column that is not there, or a file of words only
    with pytest.raises(DataError, match=r"conll_column=5 is not a tag column of its 3-field lines \(tag columns 1..2"):
        tc.read_conll(str(f), column=5)
    f.write_text("De\nAmsterdam\n")
    with pytest.raises(DataError, match=r"not a tag column of its 1-field lines \(words only, no tag column\)"):
        tc.read_conll(str(f))


def test_json_rows_and_their_errors(tmp_path, caplog):
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O", "B-X"]}) + "\n")
    cfg = FinetuneDataConfig()
    (s,), names = tc.load_sentences(cfg, str(f), "train")
    assert s.tags == ["O", "B-X"] and names is None
    f.write_text(
        json.dumps({"tokens": ["a"], "tags": ["O"]}) + "\n" + json.dumps({"tokens": ["a", "b"], "tags": ["O"]})
    )
    with pytest.raises(DataError, match=r"train.jsonl, row 2: 2 tokens but 1 tags; a tag is missing"):
        tc.load_sentences(cfg, str(f), "train")
    f.write_text(json.dumps({"tokens": ["a", "b"], "tags": "OO"}) + "\n")  # a string is not a list of tags
    with pytest.raises(DataError, match=r"train.jsonl, row 1: 'tags' is a str, not a list"):
        tc.load_sentences(cfg, str(f), "train")
    rows = [{"tokens": ["a"], "tags": ["O"]}, {"tokens": [], "tags": []}, {"tokens": ["b"], "tags": ["O"]}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))  # an empty row: nothing to tag, now said
    assert [s.words for s in tc.load_sentences(cfg, str(f), "train")[0]] == [["a"], ["b"]]
    assert "train.jsonl: skipped 1 rows with no tokens (rows [2])" in caplog.text


def test_conll2003_hub_layout_takes_label_names_from_features(tmp_path):
    import datasets

    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    rows = {"id": ["0", "1"], "tokens": [["alice", "smith", "went"], ["to", "rome"]], "ner_tags": [[1, 2, 0], [0, 3]]}
    repo = tmp_path / "conll2003-like"
    repo.mkdir()
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(repo / "train.parquet"))
    cfg = FinetuneDataConfig(hub_name=str(repo), tags_column="ner_tags")
    sentences, hub_names = tc.load_sentences(cfg, None, "train")
    assert hub_names == names
    assert sentences[0].tags == ["B-PER", "I-PER", "O"] and sentences[1].tags == ["O", "B-LOC"]
    assert tc.tag_vocabulary(sentences, cfg, hub_names) == names  # the dataset's order, unseen tags too


# ----------------------------------------------------------------------------- windows


def test_windows_predict_every_word_once_on_its_first_subword():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 4) for _ in range(rng.randint(1, 40))]
        budget = rng.randint(4, 16)
        spans, owner = tc.split_windows(lengths, budget)
        assert spans[0][0] == 0 and spans[-1][1] == len(lengths)
        for (s, e), (s2, _) in zip(spans, spans[1:], strict=False):
            assert s < s2 <= e  # progress, and no gap
        for s, e in spans:
            assert e - s == 1 or sum(lengths[s:e]) <= budget
        assert all(spans[k][0] <= w < spans[k][1] for w, k in enumerate(owner))


def test_window_features_label_first_or_all_subwords(bert_tokenizer):
    words = "alice smith went to paris and the cat saw bob jones in rome today".split()
    tags = ["B-PER", "I-PER", "O", "O", "B-LOC", "O", "O", "O", "O", "B-PER", "I-PER", "O", "B-LOC", "O"]
    labels = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]
    sentences = [tc.Sentence(words, tags)]
    cfg = FinetuneDataConfig(max_length=8)
    features = tc.windows(bert_tokenizer, sentences, labels, cfg, causal=False)
    assert len(features) > 2 and all(len(f["input_ids"]) <= 8 for f in features)
    predicted = sorted(w for f in features for _, w in f["word_starts"])
    assert predicted == list(range(len(words)))  # every word once
    for f in features:
        for position, w in f["word_starts"]:
            assert labels[f["labels"][position]] == tags[w]
    # all sub-words: a continued B-X is I-X; the [CLS] / [SEP] positions stay ignored
    pieces = tc.word_pieces(bert_tokenizer, sentences, causal=False)[0]
    cfg = FinetuneDataConfig(max_length=64, label_all_subwords=True)
    (one,) = tc.windows(bert_tokenizer, sentences, labels, cfg, causal=False)
    expected = [-100]
    for p, t in zip(pieces, tags, strict=True):
        expected += [labels.index(t)] + [labels.index(t.replace("B-", "I-"))] * (len(p) - 1)
    assert one["labels"] == expected + [-100]


# ----------------------------------------------------------------------------- heads and export


@pytest.mark.parametrize("causal", [False, True])
def test_token_classifier_export_loads_in_transformers(tmp_path, causal):
    from transformers import AutoModelForTokenClassification

    cfg = tiny_config(causal=causal)
    model = TokenClassifier(cfg, num_labels=5).eval()
    model.id2label = dict(enumerate(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]))
    save_hf(model, tmp_path)
    hf, info = AutoModelForTokenClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert type(hf).__name__ == ("GPT2ForTokenClassification" if causal else "BertForTokenClassification")
    assert hf.config.id2label[1] == "B-PER"
    ids = torch.randint(1, cfg.vocab_size, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        ours, theirs = model(ids, attention_mask=mask).logits, hf.eval()(input_ids=ids, attention_mask=mask).logits
    assert (ours - theirs)[mask.bool()].abs().max() < 1e-5
    again = load_hf(tmp_path).eval()
    assert isinstance(again, TokenClassifier) and again.id2label == model.id2label
    save_model_dir(model, tmp_path / "ours")
    with torch.no_grad():
        assert torch.equal(load_model_dir(tmp_path / "ours").eval()(ids, attention_mask=mask).logits, ours)


def test_token_loss_ignores_unlabelled_positions():
    model = TokenClassifier(tiny_config(), num_labels=3)
    ids = torch.randint(1, 101, (2, 6))
    labels = torch.full((2, 6), -100)
    labels[0, 1], labels[1, 4] = 2, 0
    out = model(ids, labels=labels)
    logits = out.logits.float()
    expected = torch.nn.functional.cross_entropy(torch.stack([logits[0, 1], logits[1, 4]]), torch.tensor([2, 0]))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.loss_terms["tokens"].count == target_count(labels) == 2


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def bert_tokenizer():
    text = [" ".join(FIRST + LAST + CITIES + FILLER)] * 20
    return train_tokenizer(text, "bert", vocab_size=120)


def tagged_sentences(n: int, seed: int) -> list[tc.Sentence]:
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(3, 9)):
            r = rng.random()
            if r < 0.2:
                words += [rng.choice(FIRST), rng.choice(LAST)]
                tags += ["B-PER", "I-PER"]
            elif r < 0.35:
                words.append(rng.choice(CITIES))
                tags.append("B-LOC")
            else:
                words.append(rng.choice(FILLER))
                tags.append("O")
        sentences.append(tc.Sentence(words, tags))
    return sentences


def write_conll(path: Path, sentences: list[tc.Sentence]) -> Path:
    path.write_text(
        "\n".join("".join(f"{w} X {t}\n" for w, t in zip(s.words, s.tags, strict=True)) for s in sentences),
        encoding="utf-8",
    )
    return path


@pytest.mark.slow
def test_tiny_bert_learns_to_tag_and_the_pipeline_agrees(tmp_path, bert_tokenizer):
    init = tmp_path / "init"
    save_model_dir(BertPretraining(tiny_config(vocab_size=len(bert_tokenizer), max_positions=64)), init)
    bert_tokenizer.save_pretrained(str(init))
    train = write_conll(tmp_path / "train.txt", tagged_sentences(300, 0))
    dev = write_conll(tmp_path / "dev.txt", tagged_sentences(40, 1))
    cfg = FinetuneConfig(
        task="token_classification",
        model=FinetuneModelConfig(init=str(init)),
        data=FinetuneDataConfig(train=str(train), validation=str(dev), max_length=16),  # long sentences: windows
        train=TrainConfig(
            max_steps=80, batch_size=16, lr=3e-3, warmup_steps=5, save_every=0, eval_every=40, log_every=20,
            output_dir=str(tmp_path / "out"), tensorboard=False, plot=False,
        ),
        eval_per_epoch=False,
    )  # fmt: skip
    metrics = run_finetune(cfg)
    assert metrics["f1"] > 0.9 and metrics["accuracy"] > 0.9
    out = Path(cfg.train.output_dir)
    assert conlleval.evaluate_lines((out / "predictions.conll").read_text().splitlines()) == metrics
    assert (out / "best" / "model.json").exists()

    from transformers import pipeline

    tag = pipeline("token-classification", model=str(out / "export"), aggregation_strategy="first", device="cpu")
    compared = 0
    for block in (out / "predictions.conll").read_text().strip().split("\n\n"):
        rows = [line.split() for line in block.splitlines()]
        words, predicted = [r[0] for r in rows], [r[-1] for r in rows]
        if len(bert_tokenizer(" ".join(words))["input_ids"]) > cfg.data.max_length:
            continue  # the pipeline does not window: compare sentences that fit in one window
        compared += 1
        starts = [sum(len(w) + 1 for w in words[:i]) for i in range(len(words))]
        ours = [(kind, starts[a], starts[b - 1] + len(words[b - 1])) for kind, a, b in conlleval.chunks(predicted)]
        theirs = [(e["entity_group"], e["start"], e["end"]) for e in tag(" ".join(words))]
        assert theirs == ours
    assert compared >= 10


@pytest.mark.slow
def test_tiny_gpt_tags_from_a_json_lines_file(tmp_path):
    tokenizer = train_tokenizer([" ".join(FIRST + LAST + CITIES + FILLER)] * 20, "gpt", vocab_size=300)
    init = tmp_path / "gpt"
    cfg = tiny_config(causal=True, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    save_hf(CausalLM(cfg), init, tokenizer=tokenizer)
    for name, n, seed in (("train.jsonl", 300, 0), ("dev.jsonl", 40, 1)):
        rows = [{"tokens": s.words, "tags": s.tags} for s in tagged_sentences(n, seed)]
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = FinetuneConfig(
        task="token_classification",
        model=FinetuneModelConfig(init=str(init)),
        data=FinetuneDataConfig(
            train=str(tmp_path / "train.jsonl"), validation=str(tmp_path / "dev.jsonl"), max_length=32
        ),
        train=TrainConfig(
            max_steps=80, batch_size=16, lr=3e-3, warmup_steps=5, save_every=0, eval_every=0, log_every=20,
            output_dir=str(tmp_path / "out"), tensorboard=False, plot=False,
        ),
    )  # fmt: skip
    # a causal model sees only the left context: a first name is B-PER, a surname after it I-PER. It
    # plateaus near F1 0.8 here (0.80-0.81 with different initial draws; 0.67 after one epoch)
    assert run_finetune(run)["f1"] > 0.75
    from transformers import AutoModelForTokenClassification

    hf = AutoModelForTokenClassification.from_pretrained(tmp_path / "out" / "export")
    assert type(hf).__name__ == "GPT2ForTokenClassification"


@pytest.mark.slow
def test_conll_files_read_as_published(shared_data):
    train = tc.read_conll(str(shared_data / "conll2000/train.txt"))
    test = tc.read_conll(str(shared_data / "conll2000/test.txt"))
    assert (len(train), sum(len(s.words) for s in train)) == (8936, 211727)
    assert (len(test), sum(len(s.words) for s in test)) == (2012, 47377)
    ned = tc.read_conll(str(shared_data / "conll2002/ned.testa"))
    # SOURCES.md counts 37,761 token lines, 74 of them -DOCSTART- (skipped: not words)
    assert len(ned) == 2895 and sum(len(s.words) for s in ned) == 37761 - 74
    esp = tc.read_conll(str(shared_data / "conll2002/esp.testb"))
    assert {t[2:] for s in esp for t in s.tags if t != "O"} == {"PER", "LOC", "ORG", "MISC"}
    gold = [s.tags for s in test]
    assert conlleval.evaluate(gold, gold)["f1"] == 1.0


def test_token_classification_resumes_exactly(tmp_path, bert_tokenizer, monkeypatch):
    """The shared loop's checkpoints serve the new task: killed after step 3, resumed, equal to uninterrupted."""
    from safetensors.torch import load_file

    import finetune.run as run_module

    init = tmp_path / "init"
    save_model_dir(BertPretraining(tiny_config(vocab_size=len(bert_tokenizer), max_positions=64)), init)
    bert_tokenizer.save_pretrained(str(init))
    train = write_conll(tmp_path / "train.txt", tagged_sentences(40, 0))
    dev = write_conll(tmp_path / "dev.txt", tagged_sentences(8, 1))

    def config(name):
        return FinetuneConfig(
            task="token_classification",
            model=FinetuneModelConfig(init=str(init)),
            data=FinetuneDataConfig(train=str(train), validation=str(dev), max_length=32),
            train=TrainConfig(
                max_steps=6, batch_size=4, lr=1e-3, warmup_steps=1, save_every=3, eval_every=0, log_every=1,
                output_dir=str(tmp_path / name), tensorboard=False, plot=False, export=False,
            ),
            eval_per_epoch=False,
        )  # fmt: skip

    full = config("full")
    run_finetune(full)
    killed = config("killed")
    real_train, calls = run_module.train, {"n": 0}

    def train_then_die(task, *args, **kwargs):
        collate = task.collate

        def dying_collate(examples):
            calls["n"] += 1
            if calls["n"] == 5:  # step 5, after the step-3 checkpoint
                raise KeyboardInterrupt("killed")
            return collate(examples)

        task.collate = dying_collate
        return real_train(task, *args, **kwargs)

    monkeypatch.setattr(run_module, "train", train_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(killed)
    monkeypatch.setattr(run_module, "train", real_train)
    killed.train.resume = "auto"
    run_finetune(killed)
    a = load_file(str(tmp_path / "full/checkpoints/step-00000006/model.safetensors"))
    b = load_file(str(tmp_path / "killed/checkpoints/step-00000006/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_predictions_file_keeps_three_fields_for_words_with_spaces_or_none():
    """JSON words may hold spaces ("New York") or be empty: predictions.conll stays readable by conlleval."""
    sentences = [tc.Sentence(["New York", "", "is"], ["B-LOC", "O", "O"])]
    text = tc.conll_text(sentences, [["B-LOC", "O", "B-LOC"]])
    assert text.splitlines() == ["New_York B-LOC B-LOC", "_ O O", "is O B-LOC"]
    assert conlleval.evaluate_lines(text.splitlines()) == conlleval.evaluate(
        [["B-LOC", "O", "O"]], [["B-LOC", "O", "B-LOC"]]
    )


def test_a_tag_outside_data_label_names_blames_the_list():
    sentences = [tc.Sentence(["a"], ["B-NP"]), tc.Sentence(["b"], ["B-VP"])]
    with pytest.raises(DataError, match=r"train.txt has tags \['B-VP'\] that data.label_names does not list"):
        tc.check_tags(sentences, ["B-NP", "I-NP"], "train.txt", named=True)
    with pytest.raises(DataError, match=r"dev.txt has tags \['B-VP'\] that the training data does not have"):
        tc.check_tags(sentences, ["B-NP"], "dev.txt")
