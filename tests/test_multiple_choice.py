"""Multiple choice and GPT-paper similarity: the hub layouts (SWAG, HellaSwag, PIQA) read from local
fixtures, our scores equal to the exported Hugging Face model's, bad rows named, and a tiny run that
learns a choice rule."""

import json
import logging
import random
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from finetune import multiple_choice as mc
from finetune.classification import read_rows
from finetune.config import FinetuneConfig, FinetuneDataConfig, FinetuneModelConfig
from finetune.run import run_finetune
from pretrain import BertPretraining, save_hf
from pretrain.config import ConfigError, TrainConfig
from pretrain.data import next_token_labels
from pretrain.errors import DataError
from pretrain.model import MultipleChoice, SequenceClassifier
from pretrain.tokenizer import train_tokenizer
from pretrain.train.checkpoints import load_model_dir, save_model_dir
from pretrain.train.loop import target_count

COLOURS = ["red", "blue", "green", "black", "white", "pink"]
THINGS = ["car", "hat", "cup", "door", "ball", "kite"]

SWAG = {  # the hub's swag "regular" columns
    "video-id": "anetv_1",
    "fold-ind": "5",
    "startphrase": "A man sits on a roof. He",
    "sent1": "A man sits on a roof.",
    "sent2": "He",
    "gold-source": "gold",
    "ending0": "is using wrap to wrap a pair of skis.",
    "ending1": "is ripping level tiles off.",
    "ending2": "is holding a rubik's cube.",
    "ending3": "starts pulling up roofing on a roof.",
    "label": 3,
}
HELLASWAG = {
    "ind": 4,
    "activity_label": "Removing ice from car",
    "ctx_a": "Then, the man writes over the snow covering the window of a car.",
    "ctx_b": "a woman wearing winter clothes",
    "ctx": "Then, the man writes over the snow covering the window of a car. A woman wearing winter clothes",
    "endings": [", the man continues removing the snow.", "smiles.", "laughs.", "walks away."],
    "source_id": "activitynet~v_-1IBHYS3L-Y",
    "split": "train",
    "split_type": "indomain",
    "label": "3",
}
PIQA = {
    "goal": "How do I ready a guinea pig cage?",
    "sol1": "Fill it with jello.",
    "sol2": "Fill it with paper.",
    "label": 1,
}

LAYOUTS = {"swag": SWAG, "hellaswag": HELLASWAG, "piqa": PIQA}  # rows as the hub datasets have them


def preset(name: str) -> FinetuneDataConfig:
    """The conf/finetune/data preset of a hub layout, as the typed config."""
    import yaml

    values = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "conf" / "finetune" / "data" / f"{name}.yaml").read_text()
    )
    from pretrain.config import from_dict

    return from_dict(FinetuneDataConfig, values)


@pytest.fixture(scope="module")
def tokenizer():
    words = [json.dumps(r) for r in (SWAG, HELLASWAG, PIQA)] + [" ".join(COLOURS + THINGS + ["the", "is", "a"])]
    return train_tokenizer(words * 20, "bert", vocab_size=300)


@pytest.fixture(scope="module")
def gpt_tokenizer():
    words = [json.dumps(r) for r in (SWAG, HELLASWAG, PIQA)] + [" ".join(COLOURS + THINGS + ["the", "is", "a"])]
    return train_tokenizer(words * 20, "gpt", vocab_size=400)


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_hub_layouts_read_as_their_presets_say(tmp_path, layout):
    row = LAYOUTS[layout]
    repo = tmp_path / layout
    repo.mkdir()
    (repo / "validation.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    cfg = preset(layout)
    cfg.hub_name, cfg.hub_config = str(repo), None  # the local stand-in has one configuration
    (ex, _) = mc.load_examples(cfg, None, "validation")
    if layout == "swag":
        assert (
            ex.context == SWAG["sent1"] and ex.choices[3] == "He starts pulling up roofing on a roof." and ex.label == 3
        )
    elif layout == "hellaswag":
        assert ex.context == HELLASWAG["ctx"] and ex.choices == HELLASWAG["endings"] and ex.label == 3
    else:
        assert ex.choices == [PIQA["sol1"], PIQA["sol2"]] and ex.label == 1


def test_bad_rows_name_file_and_row(tmp_path, caplog):
    cfg = FinetuneDataConfig()
    good = {"context": "c", "choices": ["a", "b"], "label": 1}
    f = tmp_path / "train.jsonl"

    def rows(*extra):
        f.write_text("".join(json.dumps(r) + "\n" for r in (good, *extra)))
        return read_rows(str(f))

    with pytest.raises(DataError, match=r"train.jsonl, row 2: 3 choices where row 1 has 2"):
        mc.examples_from_rows(rows({**good, "choices": ["a", "b", "c"]}), cfg, str(f))
    with pytest.raises(ValueError, match=r"row 2: label 2 is outside the choices \(an index 0..1"):
        mc.examples_from_rows(rows({**good, "label": 2}), cfg, str(f))
    with pytest.raises(ValueError, match=r"row 2: label 'c' is outside the choices"):
        mc.examples_from_rows(rows({**good, "label": "c"}), cfg, str(f))
    assert mc.examples_from_rows(rows({**good, "label": "b"}), cfg, str(f))[1].label == 1  # a choice's text
    with pytest.raises(ValueError, match=r"row 2: no column 'choices'.*data.choices_column"):
        mc.examples_from_rows(rows({"context": "c", "label": 0}), cfg, str(f))
    # null would have been read as the text "None"
    with pytest.raises(DataError, match=r"train.jsonl, row 2: the context is null; fix or drop the row"):
        mc.examples_from_rows(rows({**good, "context": None}), cfg, str(f))
    with pytest.raises(DataError, match=r"train.jsonl, row 2: choice 1 is null"):
        mc.examples_from_rows(rows({**good, "choices": ["a", None]}), cfg, str(f))
    with pytest.raises(DataError, match=r"train.jsonl, row 2: choice 1 is dict \{'a': 1\}, not text"):
        mc.examples_from_rows(rows({**good, "choices": ["a", {"a": 1}]}), cfg, str(f))
    # "2" could be the index 2 or the choice "2" (index 1): refused, not read as either
    numbers = {"context": "1+1=", "choices": ["1", "2", "3"], "label": "2"}
    f.write_text(json.dumps(numbers) + "\n")
    with caplog.at_level(logging.WARNING):  # read as the index, as HellaSwag's "0".."3" are, and said so
        assert mc.examples_from_rows(read_rows(str(f)), cfg, str(f))[0].label == 2
    assert "1 row(s) (the first: row 1) have a label that is a choice's index and also another choice's text" in (
        caplog.text
    )
    f.write_text(json.dumps({**numbers, "label": 1}) + "\n")  # a number is an index
    assert mc.examples_from_rows(read_rows(str(f)), cfg, str(f))[0].label == 1
    # a label given as a choice's text is matched before the question is put in front (SWAG's sent2)
    swag = FinetuneDataConfig(question_column="q")
    text_label = {"context": "c", "q": "He", "choices": ["walks in", "sits"], "label": "walks in"}
    f.write_text(json.dumps(text_label) + "\n")
    assert mc.examples_from_rows(read_rows(str(f)), swag, str(f))[0].label == 0
    with pytest.raises(ConfigError, match="data.symmetric=true needs task=classification with pairs"):
        FinetuneConfig(
            model=FinetuneModelConfig(init="x"), data=FinetuneDataConfig(train="t", symmetric=True)
        ).validate()


# ----------------------------------------------------------------------------- scores equal the export's


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_bert_scores_equal_bert_for_multiple_choice(tmp_path, tokenizer, layout):
    from transformers import AutoModelForMultipleChoice

    row = LAYOUTS[layout]
    cfg = preset(layout)
    examples = mc.examples_from_rows([row, row], cfg, layout)
    model = MultipleChoice(tiny_config(vocab_size=len(tokenizer), max_positions=128)).eval()
    batch = mc.ChoicesCollator(tokenizer.pad_token_id)(mc.features(tokenizer, examples, 64, causal=False))
    save_hf(model, tmp_path, tokenizer=tokenizer)
    hf, info = AutoModelForMultipleChoice.from_pretrained(tmp_path, output_loading_info=True)
    assert type(hf).__name__ == "BertForMultipleChoice" and not info["missing_keys"]
    labels = batch.pop("labels")
    with torch.no_grad():
        ours, theirs = model(**batch, labels=labels), hf.eval()(**batch, labels=labels)
    assert (ours.logits - theirs.logits).abs().max() < 1e-5
    assert ours.loss.item() == pytest.approx(theirs.loss.item(), abs=1e-5)
    save_model_dir(model, tmp_path / "ours")
    with torch.no_grad():
        assert torch.equal(load_model_dir(tmp_path / "ours").eval()(**batch).logits, ours.logits)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_gpt_scores_equal_gpt2_double_heads(tmp_path, gpt_tokenizer, layout):
    from transformers import GPT2DoubleHeadsModel

    row = LAYOUTS[layout]
    examples = mc.examples_from_rows([row], preset(layout), layout)
    cfg = tiny_config(causal=True, vocab_size=len(gpt_tokenizer), max_positions=128)
    model = MultipleChoice(cfg, lm_loss_weight=0.5).eval()
    batch = mc.ChoicesCollator(gpt_tokenizer.pad_token_id)(mc.features(gpt_tokenizer, examples, 64, causal=True))
    save_hf(model, tmp_path)
    hf, info = GPT2DoubleHeadsModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    last = batch["attention_mask"].sum(-1) - 1  # GPT-2 reads the token given as mc_token_ids: the last one
    with torch.no_grad():
        ours = model(batch["input_ids"], batch["attention_mask"]).logits
        theirs = hf.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], mc_token_ids=last)
    assert (ours - theirs.mc_logits).abs().max() < 1e-5


@pytest.mark.parametrize("causal", [False, True])
def test_symmetric_similarity_adds_both_orders(tmp_path, causal):
    """GPT-paper similarity: our logits are the exported single-order classifier's logits of (a, b)
    plus those of (b, a), minus the classifier bias once (GPT-2's score layer has none)."""
    from transformers import AutoModelForSequenceClassification

    cfg = tiny_config(causal=causal)
    model = SequenceClassifier(cfg, num_labels=1, symmetric=True).eval()
    ab = torch.randint(1, cfg.vocab_size, (3, 9))
    ba = torch.randint(1, cfg.vocab_size, (3, 9))
    with torch.no_grad():
        ours = model(torch.stack([ab, ba], dim=1)).logits
        swapped = model(torch.stack([ba, ab], dim=1)).logits
    assert torch.allclose(ours, swapped, atol=1e-6)  # no order: the point of it
    save_hf(model, tmp_path)
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    bias = 0.0 if causal else model.classifier.bias
    with torch.no_grad():
        expected = hf(input_ids=ab).logits + hf(input_ids=ba).logits - bias
    assert (ours - expected).abs().max() < 1e-5
    save_model_dir(model, tmp_path / "ours")
    again = load_model_dir(tmp_path / "ours").eval()
    assert again.symmetric
    with torch.no_grad():
        assert torch.equal(again(torch.stack([ab, ba], dim=1)).logits, ours)


# ----------------------------------------------------------------------------- end to end


def colour_rows(n: int, seed: int) -> list[dict]:
    """The rule: of three choices, the right one is the colour (the others are things)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        choices = rng.sample(THINGS, 2)
        label = rng.randrange(3)
        choices.insert(label, rng.choice(COLOURS))
        rows.append({"context": f"the {rng.choice(THINGS)} is", "choices": choices, "label": label})
    return rows


def choice_config(tmp_path, init, **data):
    for name, n, seed in (("train.jsonl", 400, 0), ("dev.jsonl", 60, 1)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in colour_rows(n, seed)))
    return FinetuneConfig(
        task="multiple_choice",
        model=FinetuneModelConfig(init=str(init)),
        data=FinetuneDataConfig(train=str(tmp_path / "train.jsonl"), validation=str(tmp_path / "dev.jsonl"),
                                max_length=16, **data),
        train=TrainConfig(
            max_steps=120, batch_size=16, lr=3e-3, warmup_steps=10, save_every=0, eval_every=0, log_every=20,
            output_dir=str(tmp_path / "out"), tensorboard=False, plot=False,
        ),
    )  # fmt: skip


@pytest.mark.slow
def test_tiny_bert_learns_a_choice_rule(tmp_path, tokenizer):
    init = tmp_path / "init"
    save_model_dir(BertPretraining(tiny_config(vocab_size=len(tokenizer), max_positions=64)), init)
    tokenizer.save_pretrained(str(init))
    cfg = choice_config(tmp_path, init)
    metrics = run_finetune(cfg)
    assert metrics["accuracy"] > 0.9  # chance is 1/3
    out = Path(cfg.train.output_dir)
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 60 and (out / "best" / "model.json").exists()
    from transformers import AutoModelForMultipleChoice

    hf = AutoModelForMultipleChoice.from_pretrained(out / "export").eval()
    examples = mc.examples_from_rows(colour_rows(60, 1), cfg.data, "dev")
    batch = mc.ChoicesCollator(tokenizer.pad_token_id)(mc.features(tokenizer, examples, 16, causal=False))
    batch.pop("labels")
    with torch.no_grad():
        assert hf(**batch).logits.argmax(-1).tolist() == [p["prediction"] for p in predictions]


@pytest.mark.slow
def test_symmetric_pairs_end_to_end(tmp_path, tokenizer):
    """data.symmetric=true through the fine-tuning loop: features of both orders, a learnt pair label, and
    a best model that reloads as symmetric."""
    init = tmp_path / "init"
    save_model_dir(BertPretraining(tiny_config(vocab_size=len(tokenizer), max_positions=64)), init)
    tokenizer.save_pretrained(str(init))
    rng = random.Random(0)
    rows = []
    for _ in range(240):  # 1 when either side names a colour: a relation with no order
        a, b = (rng.choice(COLOURS if rng.random() < 0.3 else THINGS) for _ in range(2))
        rows.append(f"the {a}\tthe {b}\t{int(a in COLOURS or b in COLOURS)}")
    for name, part in (("train.tsv", rows[:200]), ("dev.tsv", rows[200:])):
        (tmp_path / name).write_text("a\tb\tlabel\n" + "\n".join(part) + "\n")
    cfg = choice_config(tmp_path, init, text_column="a", text_pair_column="b", symmetric=True)
    cfg.task, cfg.data.train, cfg.data.validation = (
        "classification",
        str(tmp_path / "train.tsv"),
        str(tmp_path / "dev.tsv"),
    )
    metrics = run_finetune(cfg)
    assert metrics["accuracy"] > 0.9
    best = load_model_dir(Path(cfg.train.output_dir) / "best")
    assert isinstance(best, SequenceClassifier) and best.symmetric


def test_gpt_auxiliary_lm_loss_covers_every_choice_and_its_count_matches():
    model = MultipleChoice(tiny_config(causal=True), lm_loss_weight=0.5)
    ids = torch.randint(1, 101, (2, 3, 7))
    mask = torch.ones_like(ids)
    mask[0, 1, 5:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([2, 0])}
    batch["lm_labels"] = next_token_labels(ids, mask)
    out = model(**batch)
    assert set(out.loss_terms) == {"choice", "lm_aux"}
    # the loop's denominators (counted from the batch) equal what the model scored
    assert out.loss_terms["lm_aux"].count == target_count(batch["lm_labels"]) == 2 * 3 * 6 - 2
    assert out.loss_terms["choice"].count == target_count(batch["labels"]) == 2
    assert "lm_aux" not in model(**{k: v for k, v in batch.items() if k != "lm_labels"}).loss_terms
