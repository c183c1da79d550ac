"""Pretraining end to end: configs, the loop, checkpoints that resume exactly, the command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretrain.config import ConfigError, DataConfig, ModelConfig, PretrainConfig, TrainConfig, from_dict
from pretrain.pretraining import run_pretraining

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = dict(hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, max_positions=64)


def tiny_run(tmp_path, family="bert", cache=None, **train):
    model = ModelConfig(family=family, name=f"{family}-test", **TINY_MODEL)
    if family == "gpt":
        model.norm_placement, model.segment_vocab_size, model.activation = "pre", 0, "gelu_tanh"
    data = DataConfig(
        max_length=64, vocab_size=500, max_documents=60, cache_dir=str(cache or tmp_path.parent / "cache")
    )
    settings = dict(
        max_steps=6,
        batch_size=4,
        warmup_steps=2,
        save_every=3,
        eval_every=3,
        eval_batches=2,
        log_every=1,
        output_dir=str(tmp_path / "run"),
        tensorboard=False,
        plot=False,
        export=False,
    )
    settings.update(train)
    return PretrainConfig(model=model, data=data, train=TrainConfig(**settings), seed=0)


def step_dirs(run_dir):
    return sorted(p.name for p in (Path(run_dir) / "checkpoints").iterdir() if p.name.startswith("step-"))


def losses(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def run_killed_at_batch(cfg, n: int, monkeypatch) -> None:
    """Runs `cfg` and kills it (KeyboardInterrupt) when its n-th micro-batch is collated."""
    import pretrain.train as training

    real_train, calls = training.train, {"n": 0}

    def train_then_die(task, *args, **kwargs):
        collate = task.collate

        def dying_collate(examples):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt("killed")
            return collate(examples)

        task.collate = dying_collate
        return real_train(task, *args, **kwargs)

    monkeypatch.setattr("pretrain.pretraining.train", train_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_pretraining(cfg)
    monkeypatch.setattr("pretrain.pretraining.train", real_train)


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, family, monkeypatch):
    full = tiny_run(tmp_path / "full", family)
    run_pretraining(full)

    killed = tiny_run(tmp_path / "killed", family)
    run_killed_at_batch(killed, 5, monkeypatch)  # the 5th micro-batch: step 5, after the step-3 checkpoint
    assert step_dirs(killed.train.output_dir) == ["step-00000003"]

    killed.train.resume = "auto"
    run_pretraining(killed)

    assert losses(killed.train.output_dir) == losses(full.train.output_dir)
    assert len(losses(full.train.output_dir)) == 6
    a = load_file(str(Path(full.train.output_dir) / "checkpoints/step-00000006/model.safetensors"))
    b = load_file(str(Path(killed.train.output_dir) / "checkpoints/step-00000006/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_normalises_per_token(tmp_path):
    """Two micro-batches of 4 equal one batch of 8: the loss is averaged over all labelled tokens."""
    one = tiny_run(tmp_path / "one", batch_size=8, max_steps=3, save_every=0, eval_every=0)
    two = tiny_run(tmp_path / "two", batch_size=4, grad_accum_steps=2, max_steps=3, save_every=0, eval_every=0)
    one.model.dropout = two.model.dropout = one.model.attention_dropout = two.model.attention_dropout = 0.0
    run_pretraining(one)
    run_pretraining(two)
    l1, l2 = losses(one.train.output_dir), losses(two.train.output_dir)
    for step in l1:
        assert abs(l1[step] - l2[step]) < 1e-4, (step, l1[step], l2[step])


def test_resume_refuses_a_changed_length_grouping(tmp_path):
    """Grouping changes which examples make each step: resuming under the other setting is refused before
    any training, naming the key and the value to pass (checkpoints from before grouping read as false)."""
    cfg = tiny_run(tmp_path, max_steps=3, save_every=3, eval_every=0)
    run_pretraining(cfg)
    again = tiny_run(tmp_path, max_steps=6, save_every=3, eval_every=0, resume="auto")
    again.data.group_by_length = False
    with pytest.raises(ConfigError, match=r"trained with data.group_by_length=true, this run has false.*pass data"):
        run_pretraining(again)
    assert step_dirs(cfg.train.output_dir) == ["step-00000003"]


def test_a_finished_run_run_again_trains_nothing_and_reports_its_metrics(tmp_path, caplog):
    cfg = tiny_run(tmp_path, max_steps=3, save_every=3, eval_every=3)
    first = run_pretraining(cfg)
    cfg.train.resume = "auto"
    with caplog.at_level("INFO"):
        again = run_pretraining(cfg)
    assert "nothing left to train: step 3 reached train.max_steps=3" in caplog.text
    assert first and again.keys() == first.keys()
    assert all(abs(again[k] - first[k]) < 1e-6 for k in first)  # the same model, evaluated again
    assert step_dirs(cfg.train.output_dir) == ["step-00000003"] and len(losses(cfg.train.output_dir)) == 3


def test_refuses_to_overwrite_an_existing_run(tmp_path):
    cfg = tiny_run(tmp_path, max_steps=3)
    run_pretraining(cfg)
    before = step_dirs(cfg.train.output_dir)
    with pytest.raises(ConfigError, match="already holds a run; pass train.resume=auto"):
        run_pretraining(tiny_run(tmp_path, max_steps=3, resume=None))
    assert step_dirs(cfg.train.output_dir) == before


def test_checkpoints_keep_the_last_k_and_ignore_partial_writes(tmp_path):
    cfg = tiny_run(tmp_path, max_steps=6, save_every=1, keep_last=2, eval_every=0)
    run_pretraining(cfg)
    checkpoints = Path(cfg.train.output_dir) / "checkpoints"
    assert step_dirs(cfg.train.output_dir) == ["step-00000005", "step-00000006"]
    (checkpoints / "step-00000007.tmp").mkdir()  # a crash mid-write
    from pretrain.train.checkpoints import latest_checkpoint, load_pretrained

    assert latest_checkpoint(checkpoints).name == "step-00000006"
    model = load_pretrained(cfg.train.output_dir)  # a run directory: its latest checkpoint
    assert type(model).__name__ == "BertPretraining"


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown config key train.max_stepz"):
        from_dict(PretrainConfig, {"train": {"max_stepz": 3}})
    with pytest.raises(ConfigError, match="train.batch_size must be an integer"):
        from_dict(PretrainConfig, {"train": {"batch_size": "big"}})
    # nan passes every `<= 0` range check: refused where it is read, for every float key (lists too)
    for section, key, value in [("train", "max_minutes", float("nan")), ("train", "lr", float("inf"))]:
        with pytest.raises(ConfigError, match=f"train.{key} must be a finite number, got {value}"):
            from_dict(PretrainConfig, {section: {key: value}})
    with pytest.raises(ConfigError, match=r"train.adam_betas\[1\] must be a finite number, got nan"):
        from_dict(PretrainConfig, {"train": {"adam_betas": [0.9, float("nan")]}})
    with pytest.raises(ConfigError, match="model.family='t5' is not one of"):
        from_dict(PretrainConfig, {"model": {"family": "t5"}})
    with pytest.raises(ConfigError, match="data.paths"):
        from_dict(PretrainConfig, {"data": {"format": "text"}}).validate()
    cfg = from_dict(PretrainConfig, {"data": {"paths": ["a.jsonl", "b.json"]}})
    cfg.validate()
    assert cfg.data.format == "json"  # data.paths alone selects the files, by type
    with pytest.raises(ConfigError, match="mixes file types"):
        from_dict(PretrainConfig, {"data": {"paths": ["a.txt", "b.parquet"]}}).validate()
    with pytest.raises(ConfigError, match="longer than model.max_positions"):
        from_dict(PretrainConfig, {"data": {"max_length": 512}, "model": {"max_positions": 128}}).validate()


def test_vocabulary_mismatch_is_refused(tmp_path):
    cfg = tiny_run(tmp_path)
    cfg.model.vocab_size = 123
    with pytest.raises(ConfigError, match="does not match the tokenizer's vocabulary"):
        run_pretraining(cfg)


def test_missing_and_bad_files_fail_before_training(tmp_path):
    cfg = tiny_run(tmp_path)
    cfg.data.format, cfg.data.paths = "text", [str(tmp_path / "nope.txt")]
    with pytest.raises(FileNotFoundError, match="nope.txt does not exist"):
        run_pretraining(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def _cli(args, cwd, env_extra=None, launcher=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.update(env_extra or {})
    cmd = (launcher or [sys.executable]) + ["-m", "pretrain", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


CLI_TINY = [
    "model.hidden_size=32",
    "model.ffn_size=64",
    "model.max_positions=64",
    "data.max_length=64",
    "data.vocab_size=800",
    "train.eval_batches=5",
    "train.tensorboard=false",
]
# a run that another setup's run is compared with loss by loss: no dropout, every step logged, nothing saved,
# evaluated on the way or exported
COMPARABLE_RUN = [
    "train.save_every=0",
    "train.eval_every=0",
    "train.log_every=1",
    "model.dropout=0.0",
    "model.attention_dropout=0.0",
    "train.plot=false",
    "train.export=false",
]
# without a GPU, --multi_gpu starts 2 processes (torchrun) that train together on the CPU with gloo;
# `accelerate launch --cpu` starts a single process unless MPI is set up
TWO_PROCESSES = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
TWO_PROCESSES += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["bert-tiny", "gpt-tiny"])
def test_command_end_to_end(tmp_path, preset):
    out = tmp_path / "run"
    result = _cli(
        [
            f"model={preset}",
            "train.max_steps=120",
            "train.lr=3e-3",
            "train.save_every=60",
            "train.eval_every=60",
            f"train.output_dir={out}",
            f"data.cache_dir={tmp_path / 'cache'}",
            *CLI_TINY,
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in rows if "loss" in r]
    assert sum(train_losses[-3:]) / 3 < sum(train_losses[:3]) / 3 - 0.5, "the loss falls"
    evals = [r for r in rows if "eval_unigram_baseline" in r]
    key = "eval_mlm_loss" if preset.startswith("bert") else "eval_lm_loss"
    assert evals[-1][key] < evals[0][key], "held-out loss falls too"
    if preset.startswith("gpt"):  # context already helps: below a unigram model of the corpus
        assert evals[-1][key] < evals[-1]["eval_unigram_baseline"]
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert step_dirs(out) == ["step-00000060", "step-00000120"]

    import transformers

    from pretrain.train.checkpoints import load_pretrained

    auto = transformers.AutoModelForPreTraining if preset.startswith("bert") else transformers.AutoModelForCausalLM
    hf = auto.from_pretrained(out / "export").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "export")
    ours = load_pretrained(out).eval()
    enc = tokenizer(["To be, or not to be: that is the question."], return_tensors="pt")
    if preset.startswith("gpt"):
        enc.pop("token_type_ids", None)
    with torch.no_grad():
        a, b = hf(**enc), ours(**enc)
    theirs = a.prediction_logits if preset.startswith("bert") else a.logits
    mine = b.prediction_logits if preset.startswith("bert") else b.logits
    assert (theirs - mine).abs().max() < 1e-4

    # the stand-alone tools on the same run
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    exported = subprocess.run(
        [sys.executable, str(ROOT / "scripts/export.py"), str(out), str(tmp_path / "again")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert exported.returncode == 0, exported.stderr
    again = auto.from_pretrained(tmp_path / "again").eval()
    with torch.no_grad():
        assert torch.equal(again(**enc).logits if preset.startswith("gpt") else again(**enc).prediction_logits, theirs)
    plotted = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/plot.py"),
            "attention",
            str(out),
            "To be.",
            "-o",
            str(tmp_path / "attn.png"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert plotted.returncode == 0, plotted.stderr
    assert (tmp_path / "attn.png").stat().st_size > 1000
    if preset.startswith("gpt"):
        sampled = subprocess.run(
            [sys.executable, str(ROOT / "scripts/generate.py"), str(out), "To be", "--greedy", "--max-new-tokens", "8"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert sampled.returncode == 0, sampled.stderr
        assert sampled.stdout.startswith("To be") and len(sampled.stdout.strip()) > len("To be")


@pytest.mark.slow
def test_unknown_override_is_a_clear_error(tmp_path):
    result = _cli(["train.max_stepz=3"], cwd=tmp_path)
    assert result.returncode != 0
    assert "max_stepz" in result.stderr


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    common = ["train.max_steps=8", *COMPARABLE_RUN, f"data.cache_dir={tmp_path / 'cache'}", *CLI_TINY]
    single = _cli([*common, "train.batch_size=8", f"train.output_dir={tmp_path / 'one'}"], cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    double = _cli(
        [*common, "train.batch_size=4", f"train.output_dir={tmp_path / 'two'}"], cwd=tmp_path, launcher=TWO_PROCESSES
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) == 8
    for step in one:
        assert abs(one[step] - two[step]) < 1e-4, (step, one[step], two[step])
    evals = [
        [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines() if "eval_" in line][
            -1
        ]
        for run in ("one", "two")
    ]
    assert abs(evals[0]["eval_mlm_loss"] - evals[1]["eval_mlm_loss"]) < 1e-4  # same held-out set, either way
    a = load_file(str(tmp_path / "one/checkpoints/step-00000008/model.safetensors"))
    b = load_file(str(tmp_path / "two/checkpoints/step-00000008/model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


@pytest.mark.slow
def test_killed_process_resumes_exactly(tmp_path):
    """A real SIGKILL mid-run (after a checkpoint, possibly mid-write of the next), then resume=auto."""
    import signal
    import time

    common = [
        "train.max_steps=12",
        "train.save_every=4",
        "train.eval_every=4",
        "train.log_every=1",
        "train.plot=false",
        f"data.cache_dir={tmp_path / 'cache'}",
        *CLI_TINY,
    ]
    full = _cli([*common, f"train.output_dir={tmp_path / 'full'}"], cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pretrain", *common, f"train.output_dir={killed_dir}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (killed_dir / "checkpoints" / "step-00000004").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed_dir / "checkpoints" / "step-00000004" / "trainer_state.pt").exists()
    assert not (killed_dir / "checkpoints" / "step-00000012").exists(), "killed before the end"

    resumed = _cli([*common, f"train.output_dir={killed_dir}", "train.resume=auto"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(killed_dir) == losses(tmp_path / "full") and len(losses(killed_dir)) == 12
    a = load_file(str(tmp_path / "full/checkpoints/step-00000012/model.safetensors"))
    b = load_file(str(killed_dir / "checkpoints/step-00000012/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
