"""Data pipeline: masking, BERT pairs (Google's rules, FULL-SENTENCES), GPT blocks from the shards equal
to naive packing, corpus forms and hub layouts, UTF-8 errors, the cache (cheap check, concurrent preparers)."""

import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.config import ConfigError, DataConfig, HubSource
from pretrain.data import (
    BatchPlan,
    MLMCollator,
    PlannedBatches,
    TokenSplit,
    build_pretraining_data,
    check_text_files,
    document_pairs,
    full_sentences,
    iter_documents,
    load_documents,
    pack_blocks,
    trained_tokenizer,
)
from pretrain.errors import DataError
from pretrain.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CORPUS = [
    "The cat sat on the mat.\nIt was warm there.\nThe dog watched from the door.",
    "Rain fell all day.\nThe river rose slowly.\nBy night the bridge was under water.\nNobody crossed.",
    "A merchant sold apples.\nHe sold pears too.\nHis prices were fair and his apples were sweet.",
    "Winter came early that year.\nSnow covered the hills.\nThe shepherds brought the sheep down.",
] * 5


@pytest.fixture(scope="module")
def bert_tokenizer():
    return train_tokenizer(CORPUS, "bert", vocab_size=300)


@pytest.fixture(scope="module")
def gpt_tokenizer():
    return train_tokenizer(CORPUS, "gpt", vocab_size=300)


def text_corpus(tmp_path, repeat=3, name="c.txt"):
    corpus = tmp_path / name
    corpus.write_text("\n\n".join(CORPUS * repeat) + "\n")
    return corpus


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


def test_mlm_batches_are_padded_to_a_multiple_of_8_within_max_length(bert_tokenizer):
    """Few distinct shapes for length-grouped batches; never past data.max_length; no mask when nothing pads."""
    collator = MLMCollator(bert_tokenizer, max_length=20)

    def example(n):
        return {"input_ids": [2] + [7] * (n - 2) + [3], "_seed": n}

    batch = collator([example(5), example(11)])
    assert batch["input_ids"].shape == (2, 16) and batch["attention_mask"].sum(-1).tolist() == [5, 11]
    assert (batch["input_ids"][:, 11:] == bert_tokenizer.pad_token_id).all()
    assert collator([example(19), example(12)])["input_ids"].shape == (2, 20)  # 24 would pass max_length
    assert "attention_mask" not in collator([example(16), example(16)])
    assert "attention_mask" in collator([example(13), example(13)])  # padded to 16
    assert collator([example(20)])["input_ids"].shape == (1, 20)
    assert MLMCollator(bert_tokenizer)([example(13)])["input_ids"].shape == (1, 13)  # no limit known: no rounding


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


def test_batch_plan_starts_anywhere():
    plan = BatchPlan(103, 10, seed=3)
    assert plan.batches_per_epoch == 10
    seen = [i for k in range(10) for i in plan.batch(k)[1]]
    assert len(set(seen)) == 100  # an epoch visits distinct examples
    assert plan.batch(13) == BatchPlan(103, 10, seed=3).batch(13)  # no state: any step is reachable
    assert plan.batch(3)[1] != plan.batch(13)[1]  # a new epoch reshuffles
    # an optimizer step (micro-batches x accumulation) larger than the data would repeat examples within it
    with pytest.raises(DataError, match=r"only 20 training examples for an optimizer step of 32 \(train.batch_size"):
        BatchPlan(20, 8, seed=0, step_batch_size=32)


@pytest.mark.parametrize("grouped", [False, True])
def test_an_optimizer_step_trains_on_the_same_examples_however_it_is_split(grouped):
    """An epoch is cut into whole optimizer steps (124 examples, steps of 8: 15 steps, 4 left over), so
    8 x accumulation 1, 2 x 4, 2 processes x 4, 2 processes x 2 x 2 and 1 x 8 give every step the same
    (example, mask seed, epoch) keys in the same order, across epoch boundaries and from any resume step."""
    n, seed, steps = 124, 3, 40  # epochs 0, 1 and 2

    def lengths(epoch):
        return np.random.default_rng(epoch).integers(8, 64, n)

    def step_keys(batch_size, processes, accum, start=0):
        plan = BatchPlan(n, batch_size * processes, seed, lengths=lengths if grouped else None, step_batch_size=8)
        ranks = [iter(PlannedBatches(plan, start * accum, r, processes, seed)) for r in range(processes)]
        return [[key for _ in range(accum) for rank in ranks for key in next(rank)] for _ in range(start, steps)]

    whole = step_keys(8, 1, 1)
    assert [{epoch for _, _, epoch in keys} for keys in whole] == [{s // 15} for s in range(steps)]
    for epoch in range(2):
        assert len({index for keys in whole[epoch * 15 : epoch * 15 + 15] for index, _, _ in keys}) == 120
    for split in [(2, 1, 4), (4, 2, 1), (2, 2, 2), (1, 1, 8)]:
        assert step_keys(*split) == whole, split
        assert step_keys(*split, start=13) == whole[13:], split  # a resume before the epoch boundary


# ----------------------------------------------------------------------------- BERT pairs


def _numbered_docs(n_docs=40, rng=None, sentence_lengths=(3, 25)):
    """Sentence bounds of documents laid back to back in one token array whose token i is i, so every
    segment can be traced to its source document and sentences."""
    rng = rng or random.Random(0)
    docs, at = [], 0
    for _ in range(n_docs):
        bounds = [at]
        for _ in range(rng.randint(2, 12)):
            at += rng.randint(*sentence_lengths)
            bounds.append(at)
        docs.append(bounds)
    return docs


def _owner(docs):
    return lambda t: next(d for d, b in enumerate(docs) if b[0] <= t < b[-1])


def test_nsp_pairs_follow_googles_rules():
    rng = random.Random(1)
    docs = _numbered_docs(200, rng)
    owner = _owner(docs)
    labels, max_length = [], 64
    for d, bounds in enumerate(docs):
        for a0, a1, b0, b1, is_random in document_pairs(bounds, len(docs), d, docs.__getitem__, max_length, 0.1, rng):
            assert 0 < a1 - a0 and 0 < b1 - b0 and (a1 - a0) + (b1 - b0) + 3 <= max_length
            labels.append(is_random)
            assert owner(a0) == owner(a1 - 1) == d  # A: a contiguous stretch of this document
            assert owner(b0) == owner(b1 - 1)
            if is_random:
                assert owner(b0) != d, "a random B comes from another document"
            else:
                assert owner(b0) == d and b0 >= a1, "a true B follows A in the source"
    assert len(labels) > 500
    # half of the chunks of two or more sentences, and every one-sentence chunk, get a random B
    assert 0.5 < sum(labels) / len(labels) < 0.7


def test_a_one_sentence_chunk_always_gets_a_random_b():
    # every sentence is at least the target length: every chunk holds one sentence
    docs = _numbered_docs(50, random.Random(2), sentence_lengths=(70, 90))
    rng = random.Random(0)
    pairs = [p for d, b in enumerate(docs) for p in document_pairs(b, len(docs), d, docs.__getitem__, 64, 0.0, rng)]
    assert len(pairs) > 100 and all(label == 1 for *_, label in pairs)
    owner = _owner(docs)
    assert all(owner(b0) != owner(a0) for a0, _, b0, _, _ in pairs)


def test_unused_sentences_go_back():
    """After a random B the chunk's unused sentences start the next chunk: A segments still cover
    every sentence of a document in order (none skipped)."""
    docs = _numbered_docs(100, random.Random(3))
    rng = random.Random(5)
    for d, bounds in enumerate(docs):
        starts = set(bounds[:-1])
        pairs = document_pairs(bounds, len(docs), d, docs.__getitem__, 512, 0.0, rng)  # long: nothing truncated
        covered = sorted((a0, a1) for a0, a1, *_ in pairs) + sorted((b0, b1) for _, _, b0, b1, r in pairs if not r)
        seen = sorted(covered)
        assert seen[0][0] == bounds[0] and all(s in starts for s, _ in seen)
        assert all(x[1] == y[0] for x, y in zip(seen, seen[1:], strict=False)), "no sentence skipped or reused"


def test_full_sentences_without_nsp(tmp_path, bert_tokenizer):
    cfg = DataConfig(format="text", paths=[str(text_corpus(tmp_path))], max_length=24, cache_dir=str(tmp_path / "c"))
    data = build_pretraining_data(cfg, bert_tokenizer, "bert", nsp=False)
    split = TokenSplit.open(data.tokens_dir / "train")
    sentence_starts = {0, *split.sentence_ends.tolist()}
    rows = list(full_sentences(split, 24))
    assert all(r[2] == r[3] and r[4] == -1 for r in rows), "no B segment"
    for ex in data.train.rows():
        assert "next_sentence_label" not in ex and len(ex["input_ids"]) <= 24
        assert ex["input_ids"][0] == bert_tokenizer.cls_token_id and ex["input_ids"][-1] == bert_tokenizer.sep_token_id
        assert not ex["token_type_ids"].any()
    # whole sentences, contiguous, filling: the next example starts where this one ended
    assert all(r[0] in sentence_starts for r in rows)
    assert all(x[1] == y[0] for x, y in zip(rows, rows[1:], strict=False))
    lengths = [len(ex["input_ids"]) for ex in data.train.rows()]
    assert np.mean(lengths) > 0.7 * 24


def test_pairs_depend_on_data_seed_and_dupe_factor_copies_differ(tmp_path, bert_tokenizer):
    corpus = str(text_corpus(tmp_path, repeat=6))

    def pairs(seed, dupe=1, cache="c"):
        cfg = DataConfig(
            format="text", paths=[corpus], max_length=32, seed=seed, dupe_factor=dupe, cache_dir=str(tmp_path / cache)
        )
        return build_pretraining_data(cfg, bert_tokenizer, "bert").train.pairs.tolist()

    assert pairs(0) == pairs(0, cache="other")  # a fixed data.seed gives the same pairs
    assert pairs(0) != pairs(1)
    two = pairs(0, dupe=2)
    assert two[: len(pairs(0))] == pairs(0) and two[len(pairs(0)) :] != pairs(0)


def test_segment_ids_and_special_tokens(tmp_path, bert_tokenizer):
    cfg = DataConfig(format="text", paths=[str(text_corpus(tmp_path))], max_length=32, cache_dir=str(tmp_path / "c"))
    data = build_pretraining_data(cfg, bert_tokenizer, "bert")
    for ex in data.train.rows():
        ids, seg = ex["input_ids"].tolist(), ex["token_type_ids"].tolist()
        assert len(ids) == len(seg) <= 32
        assert ids[0] == bert_tokenizer.cls_token_id and ids[-1] == bert_tokenizer.sep_token_id
        first_sep = ids.index(bert_tokenizer.sep_token_id)
        assert seg == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)


# ----------------------------------------------------------------------------- GPT blocks and statistics


def test_gpt_blocks_from_the_shards_equal_naive_packing(tmp_path, gpt_tokenizer):
    tok = gpt_tokenizer
    cfg = DataConfig(
        format="text",
        paths=[str(text_corpus(tmp_path, 2))],
        max_length=16,
        validation_fraction=0.0,
        cache_dir=str(tmp_path / "cache"),
    )
    data = build_pretraining_data(cfg, tok, "gpt")
    docs = [d["text"] for d in load_documents(cfg)]
    naive = pack_blocks([tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for d in docs], 16)
    assert len(data.train) == len(naive)
    assert all(np.array_equal(data.train[i]["input_ids"], naive[i]) for i in range(len(naive)))
    assert TokenSplit.open(data.tokens_dir / "train").tokens.dtype == np.uint16
    # a cache damaged after it was written is refused with what to delete (it trained on the remainder before)
    tokens = data.tokens_dir / "train" / "tokens.bin"
    size = tokens.stat().st_size
    tokens.write_bytes(tokens.read_bytes()[: size // 2])
    with pytest.raises(DataError, match=f"tokens.bin has {size // 2} bytes, {size} were written; delete .*tokens/"):
        build_pretraining_data(cfg, tok, "gpt")
    (data.tokens_dir / "meta.json").write_text("{")
    with pytest.raises(DataError, match="meta.json is not valid JSON"):
        build_pretraining_data(cfg, tok, "gpt")
    # the unigram baseline from streamed counts equals the entropy of the token column
    counts = np.bincount(np.concatenate(naive), minlength=len(tok)).astype(float)
    p = counts[counts > 0] / counts.sum()
    assert abs(data.unigram_entropy - float(-(p * np.log(p)).sum())) < 1e-9


def test_held_out_documents_are_disjoint_and_follow_data_seed(tmp_path, gpt_tokenizer):
    corpus = str(text_corpus(tmp_path, 20))

    def split(seed, cache):
        cfg = DataConfig(
            format="text",
            paths=[corpus],
            max_length=16,
            validation_fraction=0.1,
            seed=seed,
            cache_dir=str(tmp_path / cache),
        )
        data = build_pretraining_data(cfg, gpt_tokenizer, "gpt")
        return [TokenSplit.open(data.tokens_dir / n) for n in ("train", "validation")]

    train, val = split(0, "a")
    assert val.num_documents == 40 and train.num_documents == 360
    again = split(0, "b")[1]
    other = split(1, "c")[1]
    assert np.array_equal(again.tokens, val.tokens) and not np.array_equal(other.tokens, val.tokens)


# ----------------------------------------------------------------------------- corpus forms and hub layouts


def test_corpus_forms_give_the_same_documents(tmp_path):
    docs = CORPUS[:4]
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.txt").write_text("\n\n".join(docs[:2]))
    with gzip.open(tmp_path / "dir" / "b.txt.gz", "wt") as f:
        f.write("\n\n".join(docs[2:]))
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    array = tmp_path / "d.json"
    array.write_text(json.dumps([{"body": d} for d in docs]))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": docs}), tmp_path / "d.parquet")

    def texts(**kw):
        return [d.text for d in iter_documents(DataConfig(**kw))]

    assert texts(format="text", paths=[str(tmp_path / "dir")]) == docs
    assert texts(format="text", paths=[str(tmp_path / "dir" / "*.txt*")]) == docs
    assert texts(format="json", paths=[str(jsonl)], text_column="body") == docs
    assert texts(format="json", paths=[str(array)], text_column="body") == docs
    assert texts(format="parquet", paths=[str(tmp_path / "d.parquet")], text_column="body") == docs
    with pytest.raises(ValueError, match="no column 'text'"):
        texts(format="parquet", paths=[str(tmp_path / "d.parquet")])
    # numbers are text as written in every file type (a parquet int column used to fail on .strip(); 0 vanished)
    pq.write_table(pa.table({"n": [7, 0, None]}), tmp_path / "n.parquet")
    (tmp_path / "n.jsonl").write_text('{"n": 7}\n{"n": 0}\n{"n": null}\n')
    for name, fmt in (("n.parquet", "parquet"), ("n.jsonl", "json")):
        assert texts(format=fmt, paths=[str(tmp_path / name)], text_column="n") == ["7", "0"]


def _hub_dir(root, name, rows):
    """A local directory laid out like a hub dataset: data files of rows with a `text` column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo = root / name
    (repo / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": rows}), repo / "data" / "train-00000-of-00001.parquet")
    return str(repo)


WIKITEXT_ROWS = [
    "",
    " = Valkyria Chronicles = \n",
    "",
    " Senjō no Valkyria is a game . It was released in 2011 .\n",
    "",
    " = = Gameplay = = \n",
    "",
    " The game plays in turns .\n",
    "",
    " = Tower Building = \n",
    "",
    " The Tower Building is a building .\n",
    "",
    " = = History = = \n",
    " It was built in 1920 .\n",
]


def test_wikitext_articles_split_at_titles_not_lines(tmp_path):
    repo = _hub_dir(tmp_path, "wikitext", WIKITEXT_ROWS)
    docs = [d.text for d in iter_documents(DataConfig(format="hub", hub_name=repo, documents="wikitext_articles"))]
    assert len(docs) == 2
    assert docs[0].startswith("= Valkyria Chronicles =") and "= = Gameplay = =" in docs[0]
    assert docs[1].startswith("= Tower Building =") and docs[1].endswith("built in 1920 .")


def test_bookcorpus_sentences_and_the_wikipedia_bookcorpus_mix(tmp_path):
    sentences = [f"sentence {i} of the book ." for i in range(250)]
    books = _hub_dir(tmp_path, "bookcorpus", sentences)
    wiki = _hub_dir(tmp_path, "wikipedia", [f"Article {i}.\n\nIts second paragraph." for i in range(5)])
    docs = [d.text for d in iter_documents(DataConfig(format="hub", hub_name=books, documents="sentence_rows"))]
    assert [len(d.split("\n")) for d in docs] == [100, 100, 50]
    mixed = DataConfig(
        format="hub",
        hub_sources=[HubSource(name=wiki, documents="rows"), HubSource(name=books, documents="sentence_rows")],
    )
    docs = [d.text for d in iter_documents(mixed)]
    assert [d[:7] for d in docs] == ["Article", "sentenc", "Article", "sentenc", "Article", "sentenc"] + ["Article"] * 2


def test_presets_compose(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pretrain.config import DataConfig, from_dict

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        for preset in ("sample", "text", "json", "parquet", "wikitext103", "bookcorpus", "wikipedia_bookcorpus"):
            raw = OmegaConf.to_container(compose("pretrain", overrides=[f"data={preset}"]).data)
            cfg = from_dict(DataConfig, raw, "data")
            assert cfg.num_proc is None
    assert [s.documents for s in cfg.hub_sources] == ["rows", "sentence_rows"]


# ----------------------------------------------------------------------------- bad input


def test_bad_files(tmp_path, bert_tokenizer):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_text_files([tmp_path / "missing.txt"])
    pipe = tmp_path / "pipe.txt"
    os.mkfifo(pipe)
    with pytest.raises(DataError, match="pipe.txt is not a regular file \\(a pipe, socket or device\\); give files"):
        check_text_files([pipe])
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        check_text_files([empty])
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n   \n\n")
    with pytest.raises(ValueError, match="corpus is empty"):
        build_pretraining_data(
            DataConfig(format="text", paths=[str(blank)], cache_dir=str(tmp_path)), bert_tokenizer, "bert"
        )
    one = tmp_path / "one.txt"
    one.write_text("Just one document here.\n")
    with pytest.raises(ValueError, match="too few to hold out"):
        build_pretraining_data(
            DataConfig(format="text", paths=[str(one)], cache_dir=str(tmp_path)), bert_tokenizer, "bert"
        )


def test_utf8_error_names_the_file_and_offset_while_streaming(tmp_path, gpt_tokenizer):
    good = "A good line of text.\n\n" * 5000
    latin = tmp_path / "latin.txt"
    latin.write_bytes(good.encode() + "caf\xe9 au lait\n".encode("latin-1"))
    cfg = DataConfig(format="text", paths=[str(latin)], cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match=f"latin.txt is not valid UTF-8 \\(byte {len(good) + 3}\\)"):
        build_pretraining_data(cfg, gpt_tokenizer, "gpt")
    assert not list((tmp_path / "c" / "tokens").glob("*/meta.json")), "nothing half-written is left as a cache"


def test_line_ends_and_byte_order_marks_are_read_as_text_mode_reads_them(tmp_path):
    """Windows (\\r\\n) and old-Mac (\\r) files give the same documents as Unix ones, and a UTF-8 byte-order
    mark is not text (a \\r reached GPT's tokenizer, a \\r-only file was one document); UTF-16 is named."""
    unix = "The cat sat.\nIt was warm.\n\nRain fell.\nThe river rose.\n"
    variants = {
        "unix.txt": unix.encode(),
        "windows.txt": unix.replace("\n", "\r\n").encode(),
        "mac.txt": unix.replace("\n", "\r").encode(),
        "bom.txt": b"\xef\xbb\xbf" + unix.encode(),
    }
    documents = {}
    for name, content in variants.items():
        (tmp_path / name).write_bytes(content)
        documents[name] = [d.text for d in iter_documents(DataConfig(format="text", paths=[str(tmp_path / name)]))]
    assert documents["unix.txt"] == ["The cat sat.\nIt was warm.", "Rain fell.\nThe river rose."]
    assert all(docs == documents["unix.txt"] for docs in documents.values()), documents
    # only \r and \n end lines: a form feed or U+2028 inside a Windows line stays inside it
    (tmp_path / "ff.txt").write_bytes("page one\x0cpage two\u2028end\r\n".encode())
    assert [d.text for d in iter_documents(DataConfig(format="text", paths=[str(tmp_path / "ff.txt")]))] == [
        "page one\x0cpage two\u2028end"
    ]
    (tmp_path / "wide.txt").write_bytes(unix.encode("utf-16"))
    with pytest.raises(DataError, match="wide.txt is not valid UTF-8.*iconv -f utf-16 -t utf-8: it is UTF-16"):
        list(iter_documents(DataConfig(format="text", paths=[str(tmp_path / "wide.txt")])))


# ----------------------------------------------------------------------------- the cache


def test_relaunch_uses_the_cache_and_a_changed_file_is_prepared_again(tmp_path, bert_tokenizer, monkeypatch):
    corpus = text_corpus(tmp_path)
    cfg = DataConfig(format="text", paths=[str(corpus)], max_length=32, cache_dir=str(tmp_path / "cache"))
    first = build_pretraining_data(cfg, bert_tokenizer, "bert")
    import pretrain.data.shards as shards

    real = shards._write_tokens
    monkeypatch.setattr(shards, "_write_tokens", None)  # would fail if called again
    second = build_pretraining_data(cfg, bert_tokenizer, "bert")
    assert second.train.pairs.tolist() == first.train.pairs.tolist()
    corpus.write_text(corpus.read_text().replace("cat", "fox"))
    monkeypatch.setattr(shards, "_write_tokens", real)
    assert build_pretraining_data(cfg, bert_tokenizer, "bert").tokens_dir != first.tokens_dir


def test_two_processes_preparing_the_same_cache_at_once(tmp_path):
    corpus = text_corpus(tmp_path, repeat=200)
    script = (
        "import sys, json; from pretrain.config import DataConfig; from pretrain.data import *;"
        f"cfg = DataConfig(format='text', paths=[{str(corpus)!r}], vocab_size=300, cache_dir={str(tmp_path / 'c')!r});"
        "tok = trained_tokenizer(cfg, 'gpt'); data = build_pretraining_data(cfg, tok, 'gpt');"
        "print(json.dumps([str(data.tokens_dir), int(data.train.tokens.sum()), len(data.train)]))"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    assert sorted(p.name for p in (tmp_path / "c" / "tokens").iterdir()) == sorted(
        [Path(outs[0][0]).name, Path(outs[0][0]).name + ".lock"]
    ), "one complete entry, no temporary left"


def test_the_trained_tokenizer_does_not_depend_on_the_cache_directory(tmp_path):
    """Training is deterministic on a fixed sample (across processes: test_tokenizer_reproducible.py)."""
    corpus = str(text_corpus(tmp_path, 10))
    for family in ("gpt", "bert"):
        made = [
            trained_tokenizer(
                DataConfig(format="text", paths=[corpus], vocab_size=200, cache_dir=str(tmp_path / c)), family
            ).backend_tokenizer.to_str()
            for c in ("one", "two")
        ]
        assert made[0] == made[1]


def test_tokenizer_sample_is_bounded_and_reproducible(tmp_path):
    from pretrain.data.sampling import sample_texts

    big = tmp_path / "big.txt"
    big.write_text("".join(f"line {i} of a long corpus.\n" + ("\n" if i % 7 == 0 else "") for i in range(200_000)))
    cfg = DataConfig(format="text", paths=[str(big)])
    one = list(sample_texts(cfg, 1_000_000, seed=0))
    assert one == list(sample_texts(cfg, 1_000_000, seed=0))
    size = sum(len(t) + 1 for t in one)
    assert 0.5e6 < size <= 1.05e6 < big.stat().st_size
    numbers = [int(t.split()[1]) for t in one]
    assert max(numbers) > 150_000, "the sample spreads over the whole corpus"


@pytest.mark.shared_data
def test_sample_corpus_is_what_its_attribution_says(shared_data):
    """ATTRIBUTION.md: all of tiny Shakespeare, reformatted with no word changed, documents separated
    by blank lines."""
    from pretrain.data import SAMPLE_CORPUS

    attribution = (Path(SAMPLE_CORPUS).parent / "ATTRIBUTION.md").read_text()
    assert "tiny Shakespeare" in attribution and "public domain" in attribution
    ours = Path(SAMPLE_CORPUS).read_text(encoding="utf-8")
    assert ours.split() == (shared_data / "tinyshakespeare" / "input.txt").read_text().split()
    documents = ours.strip("\n").split("\n\n")
    assert len(documents) > 500 and all(d.strip() and "\n\n" not in d for d in documents)


def test_documents_are_split_on_whitespace_only_lines_and_long_single_documents_are_chunked(tmp_path):
    from pretrain.data import LINES_PER_PSEUDO_DOCUMENT

    spaced = tmp_path / "spaced.txt"
    spaced.write_text(" = Title = \n \n First paragraph.\n Still first.\n \t\n Second paragraph.\n")
    one = tmp_path / "one.txt"
    one.write_text("".join(f"line {i}.\n" for i in range(2 * LINES_PER_PSEUDO_DOCUMENT + 5)))
    docs = [d.text for d in iter_documents(DataConfig(format="text", paths=[str(spaced), str(one)]))]
    assert docs[:3] == [" = Title = ", " First paragraph.\n Still first.", " Second paragraph."]
    assert [len(d.split("\n")) for d in docs[3:]] == [LINES_PER_PSEUDO_DOCUMENT, LINES_PER_PSEUDO_DOCUMENT, 5]


def test_nsp_on_single_sentence_documents_is_warned_about(tmp_path, bert_tokenizer, caplog):
    """Documents of one sentence give only random-next pairs: NSP then learns nothing (its accuracy of 1.0
    means nothing), which used to pass without a word."""
    corpus = tmp_path / "one.txt"
    corpus.write_text("\n\n".join(line for doc in CORPUS for line in doc.split("\n")) + "\n")
    cfg = DataConfig(format="text", paths=[str(corpus)], max_length=24, cache_dir=str(tmp_path / "c"))
    with caplog.at_level("WARNING"):
        build_pretraining_data(cfg, bert_tokenizer, "bert", nsp=True)
    assert "100% of the next-sentence pairs are random" in caplog.text and "model.nsp=false" in caplog.text
    caplog.clear()
    cfg = DataConfig(format="text", paths=[str(text_corpus(tmp_path))], max_length=24, cache_dir=str(tmp_path / "c"))
    with caplog.at_level("WARNING"):
        build_pretraining_data(cfg, bert_tokenizer, "bert", nsp=True)
    assert "next-sentence pairs are random" not in caplog.text


def test_local_hub_layout_errors_and_numbers(tmp_path):
    """A dataset directory laid out like the hub's: numbers are text as in local files (an int column
    failed on .strip()); a split it lacks names data.hub_split (was datasets' traceback)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo = tmp_path / "numbers"
    (repo / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": [7, 0, 12]}), repo / "data" / "train-00000-of-00001.parquet")
    docs = [d.text for d in iter_documents(DataConfig(format="hub", hub_name=str(repo), documents="rows"))]
    assert docs == ["7", "0", "12"]
    other = tmp_path / "validation_only"
    (other / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["a b c"]}), other / "data" / "validation-00000-of-00001.parquet")
    with pytest.raises(ConfigError, match=r"validation_only: .*train.*\(data.hub_split, data.hub_config\)"):
        list(iter_documents(DataConfig(format="hub", hub_name=str(other), documents="rows")))


def test_tokenizer_sample_reads_line_ends_as_preparation_does(tmp_path):
    """A lone "\\r" and "\\r\\n" end a line in the sample as they do in decoded_lines: a CR-only corpus
    bigger than the sample gives the same sample as its LF twin, not an empty one."""
    from pretrain.data.sampling import sample_texts

    text = "".join(
        f"line {i} of a corpus with old Mac line ends.\n" + ("\n" if i % 5 == 0 else "") for i in range(60_000)
    )
    lf, cr, crlf = tmp_path / "lf.txt", tmp_path / "cr.txt", tmp_path / "crlf.txt"
    lf.write_bytes(text.encode())
    cr.write_bytes(text.replace("\n", "\r").encode())
    crlf.write_bytes(text.replace("\n", "\r\n").encode())
    lines = set(text.split("\n"))
    samples = {
        f.name: list(sample_texts(DataConfig(format="text", paths=[str(f)]), 1_000_000, seed=0)) for f in (lf, cr, crlf)
    }
    assert samples["cr.txt"] == samples["lf.txt"]
    for sample in samples.values():
        assert 0.5e6 < sum(len(t) + 1 for t in sample) <= 1.05e6
        assert all(t in lines and t.strip() for t in sample), "whole lines, no line end left in them"


def test_tokenizer_sample_of_lines_longer_than_the_window(tmp_path):
    """One-line "books" bigger than the 1 MiB window still give a sample of the requested size: a window
    holding no whole line keeps its text, cut at whitespace so that no partial word is learned."""
    import re

    from pretrain.data.sampling import WINDOW, sample_texts

    books = [tmp_path / f"book{b}.txt" for b in range(3)]
    for b, book in enumerate(books):
        book.write_text(" ".join(f"w{b}{i:07d}" for i in range(150_000)) + "\n")  # 1.5 MB on one line
    sample = list(sample_texts(DataConfig(format="text", paths=[str(b) for b in books]), 3_000_000, seed=0))
    words = " ".join(sample).split()
    assert sum(len(t) for t in sample) > 0.95 * 2 * WINDOW
    assert all(re.fullmatch(r"w[0-2]\d{7}", w) for w in words), "no word cut at a window's edge"
    assert list(sample_texts(DataConfig(format="text", paths=[str(b) for b in books]), 3_000_000, seed=0)) == sample


def test_tokenizer_sample_reads_each_file_by_its_own_format(tmp_path):
    """data=text with .jsonl files among the paths: their rows' text is sampled, never raw JSON."""
    from pretrain.data.sampling import sample_texts

    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(json.dumps({"text": f"row {i} says hello.", "meta": {"source": "web"}}) + "\n" for i in range(40_000))
    )
    prose = tmp_path / "prose.txt"
    prose.write_text("".join(f"prose line {i} of the book.\n" for i in range(60_000)))
    for fmt in ("text", "parquet"):
        sample = list(sample_texts(DataConfig(format=fmt, paths=[str(rows), str(prose)]), 2_500_000, seed=0))
        assert not [t for t in sample if "{" in t or "source" in t]
        assert any(t.startswith("row ") for t in sample) and any(t.startswith("prose ") for t in sample)
        assert 1e6 < sum(len(t) + 1 for t in sample) <= 2.5e6


def test_trained_tokenizer_refuses_an_empty_sample_and_warns_on_a_small_vocabulary(tmp_path, caplog):
    """A tokenizer that learned nothing beyond its special tokens / byte alphabet would train a model on
    [UNK] only: refused. One far below data.vocab_size is warned, with its sizes and the likely causes."""
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\n  \n" * 1000)
    for family in ("bert", "gpt"):
        with pytest.raises(DataError, match="data.tokenizer_sample_mb|data.paths"):
            trained_tokenizer(
                DataConfig(format="text", paths=[str(blank)], vocab_size=2000, cache_dir=str(tmp_path / "c")), family
            )
    unique = tmp_path / "unique.txt"
    unique.write_text("abcdefghij\n")  # no pair of bytes seen twice: byte-level BPE learns no merge
    with pytest.raises(DataError, match=r"learned nothing beyond its byte alphabet .* no piece of text seen twice"):
        trained_tokenizer(
            DataConfig(format="text", paths=[str(unique)], vocab_size=2000, cache_dir=str(tmp_path / "c")), "gpt"
        )
    assert not list((tmp_path / "c" / "tokenizers").glob("*/meta.json")), "nothing cached"
    corpus = str(text_corpus(tmp_path))
    with caplog.at_level("WARNING", logger="pretrain.data.tokenizer_training"):
        tok = trained_tokenizer(
            DataConfig(format="text", paths=[corpus], vocab_size=8000, cache_dir=str(tmp_path / "c")), "bert"
        )
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "data.vocab_size=8000" in warned[0] and str(len(tok)) in warned[0], warned
