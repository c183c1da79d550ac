"""The checkpoint manager's faults, each reproduced: lineage retention, damaged checkpoints, non-finite
steps, refused resumes, torn logs, a changed schedule, and SIGTERM (save at the step boundary, exit)."""

import json
import logging
import os
import shutil
import signal
from pathlib import Path
from unittest.mock import patch

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file
from test_data import CORPUS
from test_pretraining import losses, step_dirs, tiny_run

from pretrain.config import ConfigError, DataConfig
from pretrain.pretraining import run_pretraining
from pretrain.train import TrainingStopped
from pretrain.train import loop as training_loop
from pretrain.train.checkpoints import CheckpointManager, latest_checkpoint, list_checkpoints, read_trainer_state


def fake_manager(directory: Path, keep_last: int = 2) -> CheckpointManager:
    return CheckpointManager(directory, keep_last, is_main=True, barrier=lambda: None)


def fake_save(manager: CheckpointManager, step: int) -> Path:
    def write_sharded(d: Path) -> None:
        d.mkdir()
        (d / "__0_0.distcp").write_bytes(os.urandom(64))

    def write_main(d: Path) -> None:
        torch.save({"step": step}, d / "trainer_state.pt")

    return manager.save(step, write_sharded, write_main)


def test_retention_follows_the_lineage_not_the_step_number(tmp_path):
    manager = fake_manager(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        fake_save(manager, step)
    assert [p.name for p in manager.lineage()] == ["step-00000002", "step-00000003"]
    assert not (tmp_path / "step-00000001").exists()
    manager.accept(tmp_path / "step-00000002")  # resumed from step 2: step 3 is an abandoned branch
    fake_save(manager, 3)  # the new branch's step 3 replaces the stale one
    fake_save(manager, 4)
    assert [p.name for p in manager.lineage()] == ["step-00000003", "step-00000004"]
    manager.accept(tmp_path / "step-00000003")  # again, from 3: step 4 leaves the lineage, stays on disk
    assert latest_checkpoint(tmp_path).name == "step-00000003" and (tmp_path / "step-00000004").exists()
    fake_save(manager, 5)
    # keep_last counts this lineage only: the stale, newer-numbered step 4 is neither kept nor loaded
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003", "step-00000005"]


def test_damaged_checkpoints_fall_back_to_the_previous_intact_one(tmp_path):
    manager = fake_manager(tmp_path, keep_last=4)
    for step in (1, 2, 3, 4):
        fake_save(manager, step)
    (tmp_path / "step-00000004" / "state" / "__0_0.distcp").write_bytes(os.urandom(64))  # same size, other bytes
    (tmp_path / "step-00000003" / "trainer_state.pt").write_bytes(b"torn")  # another size
    (tmp_path / "step-00000005.tmp").mkdir()  # a crash mid-write: never in the lineage
    chosen, skipped = manager.find_intact()
    assert chosen.name == "step-00000002"
    assert skipped == [
        "step-00000004: state/__0_0.distcp is corrupt (its sha256 differs from the one written)",
        "step-00000003: trainer_state.pt has 4 bytes, " + skipped[1].split(", ")[1],
    ]
    manager.accept(chosen)  # the resume accepted: the cut-short write goes (it stayed on disk forever)
    assert not (tmp_path / "step-00000005.tmp").exists() and (tmp_path / "step-00000004").exists()
    (tmp_path / "index.json").write_text('{"lineage": ["step-0000')  # a torn index: step order instead
    assert latest_checkpoint(tmp_path).name == "step-00000004"


@pytest.mark.slow  # tiny in-process training runs
def test_damaged_latest_checkpoint_resumes_from_the_previous_one(tmp_path, caplog):
    """Corrupt step 6 and tear the last line of metrics.jsonl: resume=auto warns twice, restarts from
    step 3 and ends equal to the first run (fp32, same seed)."""
    cfg = tiny_run(tmp_path)
    run_pretraining(cfg)
    out = Path(cfg.train.output_dir)
    first = losses(out)
    weights = load_file(str(out / "checkpoints/step-00000006/model.safetensors"))
    shard = next((out / "checkpoints/step-00000006/state").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-10])
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 7, "lo')  # killed mid-write
    with caplog.at_level(logging.WARNING):
        run_pretraining(cfg)
    assert "step-00000006: state/__0_0.distcp has" in caplog.text and "falling back" in caplog.text
    assert "the last line is torn" in caplog.text
    assert losses(out) == first
    again = load_file(str(out / "checkpoints/step-00000006/model.safetensors"))
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    # every checkpoint damaged: refused, the files left as they were (it started from scratch and wrote over them)
    for step in ("00000003", "00000006"):
        shard = next((out / f"checkpoints/step-{step}/state").glob("*.distcp"))
        shard.write_bytes(shard.read_bytes()[:-10])
    before = {f: f.read_bytes() for f in (out / "checkpoints").rglob("*") if f.is_file()}
    with pytest.raises(ConfigError, match=r"every checkpoint in .*checkpoints is damaged \(step-00000006: state"):
        run_pretraining(cfg)
    assert {f: f.read_bytes() for f in (out / "checkpoints").rglob("*") if f.is_file()} == before


@pytest.mark.slow  # a tiny in-process training run
def test_export_and_init_skip_a_truncated_checkpoint(tmp_path, caplog, capsys):
    """A run whose newest checkpoint was cut short: its directory stands for the previous intact one
    (warned), the damaged step itself is refused by name; they used to fail inside safetensors."""
    from pretrain.train.checkpoints import load_pretrained, resolve_run_dir
    from scripts import export

    cfg = tiny_run(tmp_path)
    run_pretraining(cfg)
    out = Path(cfg.train.output_dir)
    damaged = out / "checkpoints/step-00000006/model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        export.main([str(out), str(tmp_path / "exported")])
    assert "step-00000006: model.safetensors has 100 bytes" in caplog.text
    load_pretrained(out)  # a start resolves the run again (model.init: its tokenizer, then its weights)
    assert resolve_run_dir(out / "checkpoints") == out / "checkpoints/step-00000003"  # its checkpoints/: the run
    assert caplog.text.count("using the one before it") == 1  # warned once per process
    assert "checkpoints/step-00000003 ->" in capsys.readouterr().out
    assert (tmp_path / "exported/model.safetensors").exists()
    with pytest.raises(ConfigError, match="step-00000006 is damaged: model.safetensors has 100 bytes"):
        load_pretrained(out / "checkpoints/step-00000006")
    with pytest.raises(SystemExit, match="2"):
        export.main([str(out / "checkpoints/step-00000006"), str(tmp_path / "again")])
    assert "is damaged" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        export.main([str(out), ""])
    assert "out_dir is empty" in capsys.readouterr().err
    for inside in ("checkpoints/step-00000003/hf", "tokenizer"):  # a later save or pruning would clobber it
        with pytest.raises(SystemExit, match="2"):
            export.main([str(out), str(out / inside)])
        assert "which the run manages; export to a directory outside it" in capsys.readouterr().err
    # the optimizer's state is not the model's: a checkpoint copied without state/ still loads
    shutil.rmtree(out / "checkpoints/step-00000003/state")
    assert load_pretrained(out) is not None
    # a flipped byte (same size) was exported and loaded silently; resume refused it
    weights = out / "checkpoints/step-00000003/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"step-00000003 is damaged: model.safetensors is corrupt \(its sha256"):
        load_pretrained(out / "checkpoints/step-00000003")
    with pytest.raises(ConfigError, match=r"every checkpoint of the run is damaged \(the oldest: model.safetensors is"):
        resolve_run_dir(out)


@pytest.mark.slow  # tiny in-process training runs
def test_refused_resume_names_working_values_and_leaves_the_run_alone(tmp_path, monkeypatch):
    cfg = tiny_run(tmp_path, max_steps=3)
    run_pretraining(cfg)
    out = Path(cfg.train.output_dir)
    config_before = (out / "config.json").read_text()
    other = tiny_run(tmp_path, max_steps=6, batch_size=2)
    with pytest.raises(ConfigError) as refused:
        run_pretraining(other)
    assert "global batch of 4 (1 processes x train.batch_size=4 x train.grad_accum_steps=1)" in str(refused.value)
    assert "train.batch_size=4 train.grad_accum_steps=1 or train.batch_size=2 train.grad_accum_steps=2" in str(
        refused.value
    )
    assert (out / "config.json").read_text() == config_before
    assert step_dirs(out) == ["step-00000003"]
    # another model (here a wider one; another family or task alike) is named, not a tensor-size error, and
    # before the data are prepared (hours on a large corpus)
    import pretrain.pretraining

    def no_data(*args, **kwargs):
        raise AssertionError("the data were prepared before the model was checked")

    monkeypatch.setattr(pretrain.pretraining, "build_pretraining_data", no_data)
    wider = tiny_run(tmp_path, max_steps=6)
    wider.model.hidden_size, wider.model.ffn_size = 64, 128
    with pytest.raises(ConfigError, match=r"it holds another model than this run builds \(hidden_size 32 vs 64; "):
        run_pretraining(wider)
    assert step_dirs(out) == ["step-00000003"]
    with pytest.raises(ConfigError, match=r"global batch of 4"):  # so is another global batch (it was refused late)
        run_pretraining(other)


@pytest.mark.slow  # three tiny in-process training runs
def test_another_split_of_the_step_trains_alike_across_epochs_and_resumes(tmp_path):
    """Steps of 12 on 32 BERT examples: 2 steps an epoch (new pairs, new length groups each epoch). 4 x
    accumulation 3 trains on what 12 x 1 does, step for step across two epoch boundaries, and a 12 x 1
    checkpoint of step 2 resumes as 4 x 3 (cutting the epoch into micro-batches put step 3 in two epochs)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(CORPUS) + "\n")

    def config(name, batch_size, grad_accum_steps, max_steps=6):
        cfg = tiny_run(tmp_path / name, max_steps=max_steps, save_every=2, eval_every=0, batch_size=batch_size)
        cfg.train.grad_accum_steps = grad_accum_steps
        cfg.model.dropout = cfg.model.attention_dropout = 0.0
        cfg.data = DataConfig(
            format="text", paths=[str(corpus)], max_length=64, vocab_size=300, cache_dir=str(tmp_path / "cache")
        )
        return cfg

    run_pretraining(config("whole", 12, 1))
    run_pretraining(config("split", 4, 3))
    run_pretraining(config("resumed", 12, 1, max_steps=2))
    run_pretraining(config("resumed", 4, 3))  # resume=auto: the 12 x 1 step-2 checkpoint, as 4 x 3
    epochs = [json.loads(p.read_text())["epoch"] for p in (tmp_path / "cache" / "bert_pairs").glob("*/meta.json")]
    assert sorted(epochs) == [0, 0, 1, 2], "train epochs 0, 1 and 2, and validation"
    whole = losses(tmp_path / "whole" / "run")
    assert len(whole) == 6
    for name in ("split", "resumed"):
        other = losses(tmp_path / name / "run")
        assert other.keys() == whole.keys()
        for step in whole:
            assert abs(other[step] - whole[step]) < 1e-5, (name, step, other[step], whole[step])


@pytest.mark.slow  # tiny in-process training runs
def test_changed_learning_rate_applies_from_the_resume_step(tmp_path, caplog):
    cfg = tiny_run(tmp_path, max_steps=4, save_every=2, eval_every=0, schedule="constant")
    run_pretraining(cfg)
    resumed = tiny_run(tmp_path, max_steps=6, save_every=2, eval_every=0, schedule="constant", lr=5e-4)
    resumed.train.weight_decay, resumed.train.adam_betas, resumed.train.adam_eps = 0.5, [0.5, 0.6], 0.1
    applied = []
    real = training_loop.apply_optimizer_settings

    def recording(optimizer, train_cfg):
        changes = real(optimizer, train_cfg)
        applied.extend(optimizer.param_groups)
        return changes

    with caplog.at_level(logging.WARNING), patch.object(training_loop, "apply_optimizer_settings", recording):
        run_pretraining(resumed)
    assert "train.lr: 0.001 -> 0.0005" in caplog.text and "train.max_steps: 4 -> 6" in caplog.text
    # weight decay, betas and eps were the checkpoint's (restored with the optimizer state), recorded as changed
    assert (
        "train.weight_decay: 0.01 -> 0.5, train.adam_betas: (0.9, 0.999) -> (0.5, 0.6), train.adam_eps:" in caplog.text
    )
    assert [(g["weight_decay"], g["betas"], g["eps"]) for g in applied] == [
        (0.5, (0.5, 0.6), 0.1),
        (0.0, (0.5, 0.6), 0.1),
    ]
    rows = [json.loads(line) for line in (Path(cfg.train.output_dir) / "metrics.jsonl").read_text().splitlines()]
    lr = {r["step"]: r["lr"] for r in rows if "lr" in r}
    assert lr[4] == pytest.approx(1e-3) and lr[5] == lr[6] == pytest.approx(5e-4)
    assert read_trainer_state(Path(cfg.train.output_dir) / "checkpoints/step-00000006")["schedule"]["lr"] == 5e-4


def poison(monkeypatch, bad_calls):
    """Forward calls (micro-batches, 1-based) in `bad_calls` return a NaN loss."""
    import pretrain.train as training

    real_train = training.train

    def train_with_nan(task, *args, **kwargs):
        forward, calls = task.model.forward, {"n": 0}

        def nan_forward(*a, **k):
            out = forward(*a, **k)
            if task.model.training:
                calls["n"] += 1
                if calls["n"] in bad_calls:
                    out.loss_terms = {n: t._replace(total=t.total * float("nan")) for n, t in out.loss_terms.items()}
            return out

        task.model.forward = nan_forward
        return real_train(task, *args, **kwargs)

    monkeypatch.setattr("pretrain.pretraining.train", train_with_nan)


@pytest.mark.slow  # tiny in-process training runs
def test_non_finite_steps_are_skipped_counted_and_stop_the_run(tmp_path, monkeypatch):
    poison(monkeypatch, {2})
    cfg = tiny_run(tmp_path / "one", max_steps=3, save_every=3, eval_every=0)
    run_pretraining(cfg)
    rows = [json.loads(line) for line in (Path(cfg.train.output_dir) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in rows] == [1, 3] and rows[-1]["skipped_steps"] == 1  # step 2: skipped, not logged
    state = read_trainer_state(Path(cfg.train.output_dir) / "checkpoints/step-00000003")
    assert state["skipped_steps"] == 1
    weights = load_file(str(Path(cfg.train.output_dir) / "checkpoints/step-00000003/model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())

    poison(monkeypatch, set(range(4, 100)))  # from step 4 on, every step
    cfg = tiny_run(tmp_path / "two", max_steps=8, save_every=3, eval_every=0, max_bad_steps=2, log_every=4)
    with pytest.raises(FloatingPointError, match="steps in a row up to step 6 had a non-finite loss"):
        run_pretraining(cfg)
    assert step_dirs(cfg.train.output_dir) == ["step-00000003"]  # step 6 was never saved

    poison(monkeypatch, set(range(1, 100)))  # every step, fewer than max_bad_steps: nothing trained, nothing saved
    cfg = tiny_run(tmp_path / "three", max_steps=3, save_every=3, eval_every=0, export=True)
    with pytest.raises(FloatingPointError, match=r"every step of the run \(3\) had a non-finite loss"):
        run_pretraining(cfg)
    assert not (Path(cfg.train.output_dir) / "export").exists()
    assert not list((Path(cfg.train.output_dir) / "checkpoints").glob("step-*"))


@pytest.mark.slow  # tiny in-process training runs
def test_sigterm_saves_at_the_step_boundary_and_the_same_command_resumes(tmp_path, monkeypatch):
    full = tiny_run(tmp_path / "full", eval_every=0)
    run_pretraining(full)

    import pretrain.train as training

    real_train = training.train

    def train_then_sigterm(task, *args, **kwargs):
        collate, calls = task.collate, {"n": 0}

        def collate_then_signal(examples):
            calls["n"] += 1
            if calls["n"] == 5:  # while building step 5's batch: the scheduler's warning arrives
                os.kill(os.getpid(), signal.SIGTERM)
            return collate(examples)

        task.collate = collate_then_signal
        return real_train(task, *args, **kwargs)

    cfg = tiny_run(tmp_path / "preempted", eval_every=0)
    handler_before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr("pretrain.pretraining.train", train_then_sigterm)
    with pytest.raises(TrainingStopped) as stopped:
        run_pretraining(cfg)
    assert stopped.value.code == 0 and stopped.value.step == 5
    assert step_dirs(cfg.train.output_dir) == ["step-00000003", "step-00000005"]
    assert signal.getsignal(signal.SIGTERM) == handler_before  # our handler is removed again

    monkeypatch.setattr("pretrain.pretraining.train", real_train)
    run_pretraining(cfg)  # the same command: resume=auto is the default
    assert losses(cfg.train.output_dir) == losses(full.train.output_dir)
    a = load_file(str(Path(full.train.output_dir) / "checkpoints/step-00000006/model.safetensors"))
    b = load_file(str(Path(cfg.train.output_dir) / "checkpoints/step-00000006/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_first_ctrl_c_asks_for_a_checkpoint_and_a_second_stops_at_once():
    """Ctrl-C was a KeyboardInterrupt traceback and saved nothing; now the first behaves as SIGTERM."""
    from pretrain.train.signals import StopSignals

    handler_before = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) == handler_before
    # data workers ignore them (torchrun signals the whole group: a worker killed by one was a DataLoader error)
    from pretrain.train.signals import ignore_stop_signals

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        ignore_stop_signals(0)
        assert all(signal.getsignal(s) == signal.SIG_IGN for s in before)
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def test_parallelism_and_working_batch_sizes(monkeypatch):
    from pretrain.config import ImplConfig
    from pretrain.train.distributed import resolve_parallelism
    from pretrain.train.resume import working_batches

    assert working_batches(32, 2) == (
        "train.batch_size=16 train.grad_accum_steps=1 or train.batch_size=8 train.grad_accum_steps=2 or "
        "train.batch_size=4 train.grad_accum_steps=4 or train.batch_size=2 train.grad_accum_steps=8"
    )
    assert working_batches(32, 3) == "none with 3 processes; use a process count that divides 32"
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert resolve_parallelism(ImplConfig(), 2) == "ddp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --config_file fsdp.yaml` sets
    assert resolve_parallelism(ImplConfig(), 2) == "fsdp"
    assert resolve_parallelism(ImplConfig(), 1) == "single"
    with pytest.raises(ConfigError, match="impl.precision=fp16 is not supported with FSDP"):
        resolve_parallelism(ImplConfig(precision="fp16"), 2)


def test_a_resume_on_other_data_is_named(tmp_path, caplog):
    """A resumed run may change its data, but not silently (a fine-tuning run resumed on another
    dataset used to continue with no word); speed-only knobs are not a change."""
    from pretrain.train.resume import log_data_change

    saved = {"data": {"train": "sst2.tsv", "max_length": 64, "num_proc": 2}, "seed": 0}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    same = {"data": {**saved["data"], "num_proc": 8}, "seed": 0}
    assert log_data_change(tmp_path / "config.json", same, 6) == []
    other = {"data": {**saved["data"], "train": "imdb.tsv"}, "seed": 1}
    with caplog.at_level(logging.WARNING):
        changed = log_data_change(tmp_path / "config.json", other, 6)
    assert changed == ["data.train: 'sst2.tsv' -> 'imdb.tsv'", "seed: 0 -> 1"]
    assert "the data changed since the run started" in caplog.text and "from step 6" in caplog.text


def test_resuming_a_classifier_with_its_labels_in_another_order_is_refused(tmp_path):
    """The checkpoint's classifier rows mean its labels in its order: resuming it with the same number of
    labels in another order (or other names) would train each row towards another class."""
    from pretrain.model import SequenceClassifier
    from pretrain.train.checkpoints import save_model_dir
    from pretrain.train.resume import check_same_model

    saved = SequenceClassifier(tiny_config(), num_labels=2)
    saved.id2label = {0: "neg", 1: "pos"}
    save_model_dir(saved, tmp_path)
    same = SequenceClassifier(tiny_config(), num_labels=2)
    same.id2label = {0: "neg", 1: "pos"}
    check_same_model(tmp_path, same)
    swapped = SequenceClassifier(tiny_config(), num_labels=2)
    swapped.id2label = {0: "pos", 1: "neg"}
    with pytest.raises(
        ConfigError, match=r"another model than this run builds \(labels \['neg', 'pos'\] vs \['pos', 'neg'\]"
    ):
        check_same_model(tmp_path, swapped)


def test_fine_tuning_a_fine_tuned_model_further_keeps_its_trained_head(tmp_path, caplog):
    """model.init = a token classifier or multiple-choice model of ours, for the same task: its classifier
    and label names go on (the head was rebuilt fresh, silently, whenever head arguments were given)."""
    from pretrain.model import MultipleChoice, TokenClassifier
    from pretrain.train.checkpoints import load_pretrained, save_model_dir

    tagger = TokenClassifier(tiny_config(), num_labels=3)
    tagger.id2label = {0: "O", 1: "B-NP", 2: "I-NP"}
    save_model_dir(tagger, tmp_path / "tagger")
    again = load_pretrained(tmp_path / "tagger", head="token_classification", num_labels=3)
    assert torch.equal(again.classifier.weight, tagger.classifier.weight) and again.id2label == tagger.id2label
    with caplog.at_level(logging.WARNING):
        wider = load_pretrained(tmp_path / "tagger", head="token_classification", num_labels=4)
    assert wider.classifier.weight.shape == (4, 32) and "(another number of labels): re-initialised" in caplog.text
    chooser = MultipleChoice(tiny_config(causal=True))
    save_model_dir(chooser, tmp_path / "chooser")
    again = load_pretrained(tmp_path / "chooser", head="multiple_choice", lm_loss_weight=0.5)
    assert torch.equal(again.classifier.weight, chooser.classifier.weight) and again.lm_loss_weight == 0.5


@pytest.mark.slow  # two tiny in-process training runs
def test_model_init_keeps_its_structure_and_names_the_settings_it_overrides(tmp_path, caplog):
    """model.* sizes that differ from model.init's model were ignored without a word, and the run's
    config.json recorded them as if they had been used."""
    first = tiny_run(tmp_path / "a", max_steps=2, save_every=2, eval_every=0)
    run_pretraining(first)
    second = tiny_run(tmp_path / "b", max_steps=2, save_every=2, eval_every=0)
    second.model.init, second.model.hidden_size = str(Path(first.train.output_dir)), 64
    with caplog.at_level(logging.WARNING):
        run_pretraining(second)
    assert "keeps its own structure; these model.* settings are not used: hidden_size=64 (the model's: 32)" in (
        caplog.text
    )
    recorded = json.loads((Path(second.train.output_dir) / "config.json").read_text())
    assert recorded["model"]["hidden_size"] == 32


@pytest.mark.slow  # a tiny in-process training run
def test_a_directory_in_use_by_a_live_run_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path):
    """Two runs started into one output_dir interleaved their checkpoints and metrics."""
    import socket
    import subprocess

    from pretrain.train.resume import prepare_output_dir

    cfg = tiny_run(tmp_path, max_steps=2, save_every=2, eval_every=0)
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True)
    other = subprocess.Popen(["sleep", "60"])
    try:
        (out / ".lock").write_text(f"{socket.gethostname()} {other.pid}")
        with pytest.raises(ConfigError, match=rf"is in use by another run \(process {other.pid}\)"):
            run_pretraining(cfg)
    finally:
        other.kill()
        other.wait()
    (out / ".lock").write_text("")  # created, not yet written: another run starting this moment
    with pytest.raises(ConfigError, match=r"is in use by another run \(one starting now\)"):
        run_pretraining(cfg)
    (out / ".lock").write_text(f"{socket.gethostname()} {other.pid}")
    run_pretraining(cfg)  # the same lock, its process gone: taken over
    assert not (out / ".lock").exists()  # released when the run ends
    cfg.train.resume = "auto"
    prepare_output_dir(cfg.train)
    assert (out / ".lock").read_text() == f"{socket.gethostname()} {os.getpid()}"
    # another process (another node's) gets the main process's refusal, not a gloo error at its next collective
    from types import SimpleNamespace

    import accelerate.utils

    other_rank = SimpleNamespace(is_main_process=False, num_processes=2)
    sent = []
    with patch.object(accelerate.utils, "broadcast_object_list", lambda xs: sent.append(xs) or ["in use (main)"]):
        with pytest.raises(ConfigError, match=r"^in use \(main\)$"):
            prepare_output_dir(cfg.train, other_rank)
    assert sent == [[None]]  # it took no lock of its own


@pytest.mark.slow  # tiny in-process training runs
def test_a_resume_on_changed_data_files_is_named(tmp_path, caplog):
    """Text appended to the corpus file: the data were prepared again (another held-out split, other
    examples) and the resumed run went on without a word; touching the file (same content) is no change."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(CORPUS * 4), encoding="utf-8")
    cfg = tiny_run(tmp_path, max_steps=3, save_every=3, eval_every=0)
    cfg.data.format, cfg.data.paths, cfg.data.max_documents = "text", [str(corpus)], None
    run_pretraining(cfg)
    os.utime(corpus)  # the same bytes, a new time
    cfg.train.max_steps = 4
    with caplog.at_level(logging.WARNING):
        run_pretraining(cfg)
    assert "the data files changed" not in caplog.text
    corpus.write_text("\n\n".join(CORPUS * 4 + ["A new document was added.\nIt has two sentences."]), encoding="utf-8")
    cfg.train.max_steps = 5
    with caplog.at_level(logging.WARNING):
        run_pretraining(cfg)
    assert "the data files changed since the checkpoint (sizes or contents)" in caplog.text
    assert "the run trains on the new data from step 4" in caplog.text


@pytest.mark.slow  # tiny in-process training runs
def test_a_checkpoint_of_the_earlier_batch_plan_is_named_on_a_resume_with_accumulation(tmp_path, caplog):
    """Epochs are now cut into whole optimizer steps: with accumulation, a checkpoint written when they were cut
    into global batches resumes onto other examples after its first epoch boundary; said, not silent."""
    from pretrain.train.checkpoints import write_manifest

    cfg = tiny_run(tmp_path, max_steps=2, save_every=2, eval_every=0, batch_size=2, grad_accum_steps=2)
    run_pretraining(cfg)
    step = Path(cfg.train.output_dir) / "checkpoints/step-00000002"
    state = torch.load(step / "trainer_state.pt", weights_only=False)
    assert state.pop("batch_plan") == 2
    torch.save(state, step / "trainer_state.pt")
    write_manifest(step)  # as the earlier version wrote it
    cfg.train.max_steps = 3
    with caplog.at_level(logging.WARNING):
        run_pretraining(cfg)
    assert "step-00000002 was written by a version whose epochs were cut into global batches" in caplog.text
