"""`python -m pretrain.prepare` prepares what `python -m pretrain` then uses as it is."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.config import DataConfig, ModelConfig, PretrainConfig, TrainConfig
from pretrain.pretraining import run_pretraining

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_prepare_once_then_train_without_preparing(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    overrides = ["model=gpt-tiny", f"data.cache_dir={cache}", "data.vocab_size=400", "data.max_documents=300"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pretrain.prepare", *overrides, f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "prepared:" in done.stdout + done.stderr
    import pretrain.data.shards as shards
    import pretrain.data.tokenizer_training as tokenizer_training

    monkeypatch.setattr(shards, "_write_tokens", None)  # training must not prepare again
    monkeypatch.setattr(tokenizer_training, "train_tokenizer", None)
    model = ModelConfig(
        family="gpt",
        name="gpt-tiny",
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        ffn_size=64,
        max_positions=128,
        norm_placement="pre",
        segment_vocab_size=0,
        activation="gelu_tanh",
    )
    data = DataConfig(cache_dir=str(cache), vocab_size=400, max_documents=300)
    train = TrainConfig(
        max_steps=2,
        batch_size=4,
        warmup_steps=1,
        eval_batches=1,
        output_dir=str(tmp_path / "run"),
        tensorboard=False,
        plot=False,
        export=False,
    )
    metrics = run_pretraining(PretrainConfig(model=model, data=data, train=train))
    assert metrics["lm_loss"] > 0
