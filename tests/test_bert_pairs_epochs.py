"""BERT sentence pairs are re-drawn each epoch: new pairings, the same for the same data.seed, Google's
rules in every epoch, every epoch the size the batch plan expects, and resume exact across epochs."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_data import CORPUS, text_corpus
from test_pretraining import run_killed_at_batch

from pretrain.config import DataConfig, ModelConfig, PretrainConfig, TrainConfig
from pretrain.data import BatchPlan, PlannedBatches, SeededExamples, build_pretraining_data, trained_tokenizer
from pretrain.data.bert_pairs import SpreadRows, prepare_pairs


@pytest.fixture(scope="module")
def bert_tokenizer():
    from pretrain.tokenizer import train_tokenizer

    return train_tokenizer(CORPUS, "bert", vocab_size=300)


def bert_data(tmp_path, tokenizer, cache="c", **data):
    settings = dict(format="text", paths=[str(text_corpus(tmp_path, repeat=6))], max_length=32)
    cfg = DataConfig(**{**settings, **data}, cache_dir=str(tmp_path / cache))
    return cfg, build_pretraining_data(cfg, tokenizer, "bert")


def raw_pairs(cfg, data, epoch):
    """Epoch `epoch`'s pairing as drawn (before it is spread to the plan's epoch size)."""
    return np.fromfile(prepare_pairs(cfg, data.tokens_dir, "train", True, epoch) / "pairs.bin", np.int64).reshape(-1, 5)


def test_each_epoch_draws_new_pairs_and_the_same_seed_draws_the_same(tmp_path, bert_tokenizer):
    cfg, data = bert_data(tmp_path, bert_tokenizer)
    epochs = [data.train.for_epoch(e).pairs.tolist() for e in range(3)]
    assert all(len(e) == len(data.train) for e in epochs), "every epoch has the plan's size"
    assert epochs[0] == data.train.pairs.tolist()
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]
    # not only new random B's: new targets, chunks and trims (A segments differ too)
    assert {tuple(p[:2]) for p in epochs[0]} != {tuple(p[:2]) for p in epochs[1]}

    _, again = bert_data(tmp_path, bert_tokenizer, cache="elsewhere")  # a fresh cache: built again
    assert [again.train.for_epoch(e).pairs.tolist() for e in range(3)] == epochs
    _, other_seed = bert_data(tmp_path, bert_tokenizer, cache="c", seed=1)
    assert other_seed.train.for_epoch(1).pairs.tolist() != epochs[1]
    # the held-out pairs do not change: evaluations compare across epochs
    assert data.validation.for_epoch(1) is data.validation


def test_googles_rules_hold_in_every_epoch(tmp_path, bert_tokenizer):
    cfg, data = bert_data(tmp_path, bert_tokenizer)
    doc_ends = np.asarray(data.train.doc_ends)
    sentence_starts = {0, *np.asarray(data.train.split.sentence_ends).tolist()}

    def owner(t):
        return int(np.searchsorted(doc_ends, t, "right"))

    for epoch in range(4):
        pairs = raw_pairs(cfg, data, epoch)
        randoms = 0
        for a0, a1, b0, b1, label in pairs.tolist():
            assert 0 < a1 - a0 and 0 < b1 - b0 and (a1 - a0) + (b1 - b0) + 3 <= cfg.max_length
            assert owner(a0) == owner(a1 - 1) and owner(b0) == owner(b1 - 1)
            if label:
                randoms += 1
                assert owner(b0) != owner(a0), "a random B comes from another document"
            else:
                assert owner(b0) == owner(a0) and b0 >= a1, "a true B follows A in its document"
        assert 0.3 < randoms / len(pairs) < 0.8
        # untrimmed A segments start at sentence starts (trimming moves a start by at most a few tokens)
        assert np.mean([a0 in sentence_starts for a0 in pairs[:, 0].tolist()]) > 0.7
        examples = data.train.for_epoch(epoch)
        for i in range(len(examples)):
            ids = examples[i]["input_ids"]
            assert ids[0] == bert_tokenizer.cls_token_id and ids[-1] == bert_tokenizer.sep_token_id
            assert len(ids) <= cfg.max_length


def test_an_epoch_of_another_size_is_spread_to_the_plans_size(tmp_path, bert_tokenizer):
    cfg, data = bert_data(tmp_path, bert_tokenizer)
    sizes = [len(raw_pairs(cfg, data, e)) for e in range(6)]
    assert len(set(sizes)) > 1, "the draw changes the number of pairs (this corpus shows it)"
    for epoch, size in enumerate(sizes):
        raw = [tuple(p) for p in raw_pairs(cfg, data, epoch).tolist()]
        seen = [tuple(p) for p in data.train.for_epoch(epoch).pairs.tolist()]
        assert len(seen) == sizes[0] and set(seen) <= set(raw)
        if size >= sizes[0]:
            assert len(set(seen)) == sizes[0], "a larger draw: distinct pairs, the surplus dropped evenly"
        else:
            assert set(seen) == set(raw), "a smaller draw: every pair, a few twice"
    rows = np.arange(10 * 5).reshape(10, 5)
    assert [r[0] for r in SpreadRows(rows, 4).tolist()] == [0, 10, 25, 35]  # evenly spread, not the head
    assert [r[0] for r in SpreadRows(rows, 13).tolist()] == [i * 10 // 13 * 5 for i in range(13)]


def test_planned_batches_read_each_epochs_pairs(tmp_path, bert_tokenizer):
    _, data = bert_data(tmp_path, bert_tokenizer)
    plan = BatchPlan(len(data.train), 16, seed=0)
    batches = iter(PlannedBatches(plan, start=0, rank=0, world_size=1, seed=0))
    examples = SeededExamples(data.train)
    for k in range(plan.batches_per_epoch * 2 + 1):
        keys = next(batches)
        epoch = k // plan.batches_per_epoch
        assert all(key[2] == epoch for key in keys)
        for index, seed, _ in keys[:2]:
            got = examples[(index, seed, epoch)]
            want = data.train.for_epoch(epoch)[index]
            assert np.array_equal(got["input_ids"], want["input_ids"]) and got["_seed"] == seed
    # keys without an epoch (evaluation) read epoch 0
    assert np.array_equal(examples[(3, 0)]["input_ids"], data.train[3]["input_ids"])


@pytest.mark.slow
def test_resume_across_an_epoch_boundary_is_exact(tmp_path, monkeypatch):
    """4 batches an epoch: a run killed at step 5 (epoch 1) resumes from the step-3 checkpoint (epoch 0)
    in a fresh data cache, crosses into epoch 1 again and matches the uninterrupted run."""
    from test_pretraining import TINY_MODEL, losses, step_dirs

    from pretrain.pretraining import run_pretraining

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(CORPUS) + "\n")

    def config(name):
        data = DataConfig(
            format="text", paths=[str(corpus)], max_length=64, vocab_size=300, cache_dir=str(tmp_path / f"cache-{name}")
        )
        train = TrainConfig(
            max_steps=6,
            batch_size=8,
            warmup_steps=2,
            save_every=3,
            eval_every=3,
            eval_batches=1,
            log_every=1,
            output_dir=str(tmp_path / name),
            tensorboard=False,
            plot=False,
            export=False,
        )
        model = ModelConfig(family="bert", name="bert-test", **TINY_MODEL)
        return PretrainConfig(model=model, data=data, train=train, seed=0)

    full = config("full")
    run_pretraining(full)
    tokenizer = trained_tokenizer(full.data, "bert")
    train = build_pretraining_data(full.data, tokenizer, "bert").train
    assert BatchPlan(len(train), 8, 0).batches_per_epoch == 4, "the corpus gives steps 5 and 6 to epoch 1"
    epoch_dirs = [json.loads(p.read_text()) for p in (tmp_path / "cache-full" / "bert_pairs").glob("*/meta.json")]
    assert {m["epoch"] for m in epoch_dirs} == {0, 1}, "epoch 1 trained on its own pairing"

    killed = config("killed")
    run_killed_at_batch(killed, 5, monkeypatch)  # step 5, in epoch 1, after the step-3 checkpoint
    assert step_dirs(killed.train.output_dir) == ["step-00000003"]

    killed.train.resume = "auto"
    run_pretraining(killed)
    assert len(losses(full.train.output_dir)) == 6
    assert losses(killed.train.output_dir) == losses(full.train.output_dir)
    assert Path(tmp_path / "killed" / "checkpoints" / "step-00000006").is_dir()


@pytest.mark.slow
def test_two_processes_cross_an_epoch_like_one(tmp_path):
    """Two processes (gloo on the CPU) reach epoch 1 together: one builds its pairing under the cache lock,
    both read it, and the losses equal a single process's."""
    from test_pretraining import CLI_TINY, COMPARABLE_RUN, TWO_PROCESSES, _cli, losses

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(CORPUS) + "\n")
    common = [
        "model=bert-tiny",
        "train.max_steps=6",
        *COMPARABLE_RUN,
        "data.format=text",
        f"data.paths=[{corpus}]",
        f"data.cache_dir={tmp_path / 'cache'}",
        *CLI_TINY,
        "data.vocab_size=300",
    ]
    single = _cli([*common, "train.batch_size=8", f"train.output_dir={tmp_path / 'one'}"], cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    shutil.rmtree(tmp_path / "cache" / "bert_pairs")  # the two processes build epoch 0 and 1 again, together
    double = _cli(
        [*common, "train.batch_size=4", f"train.output_dir={tmp_path / 'two'}"], cwd=tmp_path, launcher=TWO_PROCESSES
    )
    assert double.returncode == 0, double.stderr[-3000:]
    metas = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "bert_pairs").glob("*/meta.json")]
    assert sorted(m["epoch"] for m in metas) == [0, 0, 1], "train epochs 0 and 1, validation; nothing twice"
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) == 6
    for step in one:
        assert abs(one[step] - two[step]) < 1e-4, (step, one[step], two[step])


def test_length_grouped_batches_pad_little_and_keep_each_epoch_a_permutation(tmp_path, bert_tokenizer):
    """data.group_by_length: each run of 50 batches sorted by example length, then the batches shuffled.
    The lengths are the examples' own (epoch 0 and a re-drawn epoch), an epoch holds the same examples as
    without grouping, the plan is a pure function of its seed (resume), and far less padding is computed."""
    from pretrain.data.batching import BATCHES_PER_LENGTH_GROUP

    _, data = bert_data(tmp_path, bert_tokenizer, short_seq_prob=0.5)  # many short examples
    for epoch in (0, 1):
        view = data.train.for_epoch(epoch)
        assert data.train.epoch_lengths(epoch).tolist() == [len(view[i]["input_ids"]) for i in range(len(view))]

    batch = 4
    plain = BatchPlan(len(data.train), batch, seed=3)
    grouped = BatchPlan(len(data.train), batch, seed=3, lengths=data.train.epoch_lengths)
    assert plain.batches_per_epoch == grouped.batches_per_epoch > BATCHES_PER_LENGTH_GROUP

    def epoch_batches(plan, epoch):
        return [plan.batch(epoch * plan.batches_per_epoch + k)[1] for k in range(plan.batches_per_epoch)]

    def padding(plan, epoch):
        lengths = data.train.epoch_lengths(epoch)
        return sum(batch * lengths[b].max() - lengths[b].sum() for b in epoch_batches(plan, epoch))

    for epoch in (0, 1):
        ours = epoch_batches(grouped, epoch)
        assert sorted(sum(ours, [])) == sorted(sum(epoch_batches(plain, epoch), []))
        assert padding(grouped, epoch) < 0.2 * padding(plain, epoch)
        longest = [data.train.epoch_lengths(epoch)[b].max() for b in ours[:BATCHES_PER_LENGTH_GROUP]]
        assert longest != sorted(longest) and longest != sorted(longest, reverse=True)  # batches shuffled
    again = BatchPlan(len(data.train), batch, seed=3, lengths=data.train.epoch_lengths)
    assert epoch_batches(again, 1) == epoch_batches(grouped, 1)
    assert epoch_batches(BatchPlan(len(data.train), batch, 4, lengths=data.train.epoch_lengths), 1) != ours
