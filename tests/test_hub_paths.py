"""The hub-loading code paths (a `datasets` name, a model / tokenizer name), run on local
directories: `datasets.load_dataset` and `from_pretrained` take a directory where a user with
internet gives a hub name. Nothing here reaches a hub."""

import json

import torch
from conftest import tiny_config

from finetune import qa
from finetune.classification import load_split
from finetune.config import FinetuneDataConfig
from pretrain import BertPretraining, load_hf, save_hf
from pretrain.config import DataConfig
from pretrain.data import load_documents
from pretrain.tokenizer import load_tokenizer, train_tokenizer


def test_pretraining_documents_from_a_dataset_name(tmp_path):
    repo = tmp_path / "my-corpus"
    repo.mkdir()
    rows = [{"text": f"Document {i}. It has two sentences."} for i in range(5)] + [{"text": "  "}]
    (repo / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs = load_documents(DataConfig(format="hub", hub_name=str(repo), hub_split="train"))
    assert len(docs) == 5 and docs[0]["text"].startswith("Document 0")


def test_classification_and_squad_splits_from_a_dataset_name(tmp_path):
    repo = tmp_path / "glue-like"
    repo.mkdir()
    (repo / "train.csv").write_text("sentence,label\ngood,1\nbad,0\n")
    (repo / "validation.csv").write_text("sentence,label\nfine,1\n")
    cfg = FinetuneDataConfig(hub_name=str(repo))
    assert [r["label"] for r in load_split(cfg, None, "train")] == [1, 0]
    assert load_split(cfg, None, "validation")[0]["sentence"] == "fine"

    squad = tmp_path / "squad-like"
    squad.mkdir()
    row = {
        "id": "q1",
        "title": "t",
        "context": "the cat sat in paris",
        "question": "where?",
        "answers": {"text": ["paris"], "answer_start": [15]},
    }
    (squad / "validation.jsonl").write_text(json.dumps(row) + "\n")
    (ex,) = qa.squad_from_hub(str(squad), None, "validation")
    assert ex.answers == ["paris"] and ex.context[ex.answer_starts[0] :].startswith("paris")


def test_model_and_tokenizer_by_name(tmp_path):
    tokenizer = train_tokenizer(["a b c d e f g"] * 10, "bert", 50)
    model = BertPretraining(tiny_config(vocab_size=len(tokenizer))).eval()
    save_hf(model, tmp_path / "org-model", tokenizer=tokenizer)
    again = load_hf(str(tmp_path / "org-model")).eval()
    ids = torch.tensor([tokenizer("a b c")["input_ids"]])
    assert torch.equal(again(ids).prediction_logits, model(ids).prediction_logits)
    assert load_tokenizer(str(tmp_path / "org-model"))("a b c")["input_ids"] == ids[0].tolist()
