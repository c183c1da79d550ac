"""Data pipeline: masking statistics, NSP pairs, GPT packing, bad input."""

import random
from pathlib import Path

import pytest
import torch

from pretrain.config import DataConfig
from pretrain.data import (
    BatchPlan,
    MLMCollator,
    bert_pairs_from_document,
    build_pretraining_data,
    check_text_files,
    load_documents,
    pack_blocks,
)
from pretrain.tokenizer import train_tokenizer

CORPUS = [
    "The cat sat on the mat.\nIt was warm there.\nThe dog watched from the door.",
    "Rain fell all day.\nThe river rose slowly.\nBy night the bridge was under water.\nNobody crossed.",
    "A merchant sold apples.\nHe sold pears too.\nHis prices were fair and his apples were sweet.",
    "Winter came early that year.\nSnow covered the hills.\nThe shepherds brought the sheep down.",
] * 5


@pytest.fixture(scope="module")
def bert_tokenizer():
    return train_tokenizer(CORPUS, "bert", vocab_size=300)


def test_masking_statistics(bert_tokenizer):
    collator = MLMCollator(bert_tokenizer, mlm_probability=0.15)
    special = set(bert_tokenizer.all_special_ids)
    rng = random.Random(0)
    eligible = selected = as_mask = as_random = kept = 0
    for b in range(200):
        examples = []
        for i in range(8):
            n = rng.randint(10, 60)
            ids = (
                [bert_tokenizer.cls_token_id]
                + [rng.randint(5, len(bert_tokenizer) - 1) for _ in range(n)]
                + [bert_tokenizer.sep_token_id]
            )
            examples.append({"input_ids": ids, "_seed": b * 8 + i})
        batch = collator(examples)
        original = torch.nn.utils.rnn.pad_sequence(
            [torch.tensor(e["input_ids"]) for e in examples],
            batch_first=True,
            padding_value=bert_tokenizer.pad_token_id,
        )
        chosen = batch["labels"] != -100
        is_special = torch.isin(original, torch.tensor(sorted(special)))
        assert not (chosen & is_special).any(), "special tokens and padding are never masked"
        assert torch.equal(batch["labels"][chosen], original[chosen])
        assert torch.equal(batch["input_ids"][~chosen], original[~chosen])
        eligible += int((~is_special).sum())
        selected += int(chosen.sum())
        as_mask += int((batch["input_ids"][chosen] == bert_tokenizer.mask_token_id).sum())
        kept += int((batch["input_ids"][chosen] == original[chosen]).sum())
    as_random = selected - as_mask - kept
    assert abs(selected / eligible - 0.15) < 0.01
    assert abs(as_mask / selected - 0.8) < 0.02
    # a random replacement can draw the original token (1 in vocab): counted in `kept`
    assert abs(as_random / selected - 0.1) < 0.02
    assert abs(kept / selected - 0.1) < 0.02


def test_masking_is_a_function_of_the_example_seed(bert_tokenizer):
    collator = MLMCollator(bert_tokenizer)
    ex = [{"input_ids": [2] + list(range(5, 100)) + [3], "_seed": 7}]
    assert torch.equal(collator(ex)["input_ids"], collator(ex)["input_ids"])
    assert not torch.equal(collator(ex)["input_ids"], collator([{**ex[0], "_seed": 8}])["input_ids"])


def test_whole_word_masking_masks_all_pieces(bert_tokenizer):
    collator = MLMCollator(bert_tokenizer, mlm_probability=0.3, whole_word_mask=True)
    text = " ".join(["unbelievably", "shepherds", "merchant", "prices"] * 10)
    ids = bert_tokenizer(text)["input_ids"]
    tokens = bert_tokenizer.convert_ids_to_tokens(ids)
    assert any(t.startswith("##") for t in tokens)
    for seed in range(20):
        labels = collator([{"input_ids": ids, "_seed": seed}])["labels"][0]
        chosen = (labels != -100).tolist()
        for i in range(1, len(tokens)):
            if tokens[i].startswith("##"):
                assert chosen[i] == chosen[i - 1], "a word is masked whole or not at all"


def _numbered_docs(n_docs=40, rng=None):
    """Documents whose tokens are all distinct, so every segment can be traced to its source."""
    rng = rng or random.Random(0)
    docs, next_id = [], 10
    for _ in range(n_docs):
        doc = []
        for _ in range(rng.randint(2, 12)):
            length = rng.randint(3, 25)
            doc.append(list(range(next_id, next_id + length)))
            next_id += length
        docs.append(doc)
    return docs


def test_nsp_pairs():
    rng = random.Random(1)
    docs = _numbered_docs(200, rng)
    owner = {t: d for d, doc in enumerate(docs) for s in doc for t in s}
    labels, max_length = [], 64
    for d in range(len(docs)):
        for a, b, is_random in bert_pairs_from_document(docs, d, max_length, 0.1, rng):
            assert len(a) + len(b) + 3 <= max_length
            assert a and b
            labels.append(is_random)
            a_docs, b_docs = {owner[t] for t in a}, {owner[t] for t in b}
            assert a_docs == {d}
            # each segment is a contiguous stretch of its document
            assert a == list(range(a[0], a[0] + len(a)))
            if is_random:
                assert b_docs != {d}
            else:
                assert b_docs == {d} and b == list(range(b[0], b[0] + len(b)))
                assert b[0] > a[-1], "in a true pair B follows A in the source"
    assert len(labels) > 500
    assert abs(sum(labels) / len(labels) - 0.5) < 0.05


def test_segment_ids_and_special_tokens(tmp_path, bert_tokenizer):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(CORPUS * 3))
    cfg = DataConfig(format="text", paths=[str(corpus)], max_length=32, cache_dir=str(tmp_path / "cache"))
    data = build_pretraining_data(cfg, bert_tokenizer, "bert", seed=0)
    for ex in data.train:
        ids, seg = ex["input_ids"], ex["token_type_ids"]
        assert len(ids) == len(seg) <= 32
        assert ids[0] == bert_tokenizer.cls_token_id and ids[-1] == bert_tokenizer.sep_token_id
        first_sep = ids.index(bert_tokenizer.sep_token_id)
        assert seg == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)


def test_gpt_packing_keeps_every_token_once_in_order():
    rng = random.Random(0)
    docs = [[rng.randint(0, 50) for _ in range(rng.randint(1, 40))] + [99] for _ in range(50)]
    blocks = pack_blocks(docs, 16)
    flat = [t for d in docs for t in d]
    assert [int(t) for b in blocks for t in b] == flat
    assert all(len(b) == 16 for b in blocks[:-1]) and 0 < len(blocks[-1]) <= 16


def test_gpt_pipeline_packs_the_corpus(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(CORPUS))
    tok = train_tokenizer(CORPUS, "gpt", vocab_size=300)
    cfg = DataConfig(
        format="text", paths=[str(corpus)], max_length=16, validation_fraction=0.0, cache_dir=str(tmp_path / "cache")
    )
    data = build_pretraining_data(cfg, tok, "gpt", seed=0)
    flat = [t for ex in data.train["input_ids"] for t in ex]
    docs = load_documents(cfg)["text"]
    expected = [t for d in docs for t in tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    assert flat == expected


def test_second_run_uses_the_cache(tmp_path, bert_tokenizer, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(CORPUS * 3))
    cfg = DataConfig(format="text", paths=[str(corpus)], max_length=32, cache_dir=str(tmp_path / "cache"))
    first = build_pretraining_data(cfg, bert_tokenizer, "bert", seed=0)
    import pretrain.data as data_module

    monkeypatch.setattr(data_module, "_bert_examples", None)  # would fail if called again
    second = build_pretraining_data(cfg, bert_tokenizer, "bert", seed=0)
    assert second.train["input_ids"] == first.train["input_ids"]


def test_batch_plan_starts_anywhere():
    plan = BatchPlan(103, 10, seed=3)
    assert plan.batches_per_epoch == 10
    seen = [i for k in range(10) for i in plan.batch(k)[1]]
    assert len(set(seen)) == 100  # an epoch visits distinct examples
    assert plan.batch(13) == BatchPlan(103, 10, seed=3).batch(13)  # no state: any step is reachable
    assert plan.batch(3)[1] != plan.batch(13)[1]  # a new epoch reshuffles


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_text_files([tmp_path / "missing.txt"])
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        check_text_files([empty])
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid UTF-8 \\(byte 3\\)"):
        check_text_files([latin])
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n   \n\n")
    with pytest.raises(ValueError, match="corpus is empty"):
        load_documents(DataConfig(format="text", paths=[str(blank)]))
    one = tmp_path / "one.txt"
    one.write_text("Just one document here.\n")
    with pytest.raises(ValueError, match="too few to hold out"):
        build_pretraining_data(
            DataConfig(format="text", paths=[str(one)], cache_dir=str(tmp_path)),
            train_tokenizer(["Just one document"], "bert", 100),
            "bert",
            0,
        )


def test_sample_corpus_ships_with_attribution():
    from pretrain.data import SAMPLE_CORPUS

    assert SAMPLE_CORPUS.stat().st_size > 100_000
    assert "public domain" in (Path(SAMPLE_CORPUS).parent / "ATTRIBUTION.md").read_text()


def test_documents_are_split_on_whitespace_only_lines_and_long_single_documents_are_chunked(tmp_path):
    from pretrain.data import LINES_PER_PSEUDO_DOCUMENT, text_documents

    spaced = tmp_path / "spaced.txt"
    spaced.write_text(" = Title = \n \n First paragraph.\n Still first.\n \t\n Second paragraph.\n")
    one = tmp_path / "one.txt"
    one.write_text("".join(f"line {i}.\n" for i in range(2 * LINES_PER_PSEUDO_DOCUMENT + 5)))
    docs = [d["text"] for d in text_documents([(str(spaced), 0, 0), (str(one), 0, 0)])]
    assert docs[:3] == [" = Title = ", " First paragraph.\n Still first.", " Second paragraph."]
    assert [len(d.split("\n")) for d in docs[3:]] == [LINES_PER_PSEUDO_DOCUMENT, LINES_PER_PSEUDO_DOCUMENT, 5]
