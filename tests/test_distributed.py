"""Many processes on the CPU (gloo), as CI runs them: FSDP2 really sharded (each process holds and writes
half), resumed, matching DDP, resumed under another process count, fine-tuned; two local "nodes"."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_finetune import sentiment_files
from test_pretraining import ROOT, _cli, losses, step_dirs

pytestmark = pytest.mark.slow

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--mixed_precision", "no", "--dynamo_backend", "no"]
FSDP = [*LAUNCH, "--config_file", str(ROOT / "conf/accelerate/fsdp.yaml"), "--num_processes", "2"]
DDP = [*LAUNCH, "--config_file", str(ROOT / "conf/accelerate/cpu_2proc.yaml")]
TINY_GPT = [
    "model=gpt-tiny",
    "model.hidden_size=32",
    "model.ffn_size=64",
    "model.max_positions=64",
    "data.max_length=64",
    "data.vocab_size=800",
    "data.max_documents=100",
    "train.schedule=constant",  # the 20-step run and the 30-step run share their schedule
    "train.warmup_steps=5",
    "train.save_every=10",
    "train.eval_every=10",
    "train.eval_batches=2",
    "train.log_every=1",
    "train.tensorboard=false",
    "train.plot=false",
]


def run_ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """FSDP on 2 processes (batch 4 each) for 20 steps, then the same command to 30; DDP straight to 30."""
    tmp = tmp_path_factory.mktemp("dist")
    common = [*TINY_GPT, f"data.cache_dir={tmp / 'cache'}", "train.batch_size=4"]
    fsdp = [*common, f"train.output_dir={tmp / 'fsdp'}"]
    first = run_ok(_cli([*fsdp, "train.max_steps=20"], cwd=tmp, launcher=FSDP))
    sharded = {p.name: p.stat().st_size for p in (tmp / "fsdp/checkpoints/step-00000020/state").glob("*.distcp")}
    resumed = run_ok(_cli([*fsdp, "train.max_steps=30"], cwd=tmp, launcher=FSDP))
    run_ok(_cli([*common, "train.max_steps=30", f"train.output_dir={tmp / 'ddp'}"], cwd=tmp, launcher=DDP))
    return tmp, first, sharded, resumed


def export_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "export/model.safetensors"))


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str, tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"{what}: largest weight difference {worst:.2e}")  # the figure quoted in the README (pytest -s)
    assert worst < tol, worst


def assert_losses_close(a: dict[int, float], b: dict[int, float], what: str, tol: float = 1e-5) -> None:
    worst = max(abs(a[s] - b[s]) for s in a)
    print(f"{what}: largest loss difference {worst:.2e} over {len(a)} steps")
    assert worst < tol, worst


def test_fsdp_is_sharded_resumes_and_equals_ddp(runs):
    tmp, first, sharded, resumed = runs
    assert "parallelism: FSDP2 over 2 processes, each holds" in first and "(50%)" in first
    assert sorted(sharded) == ["__0_0.distcp", "__1_0.distcp"]  # each process wrote its own shard
    assert not (tmp / "fsdp/checkpoints/step-00000020/model.safetensors").exists()  # no full copy
    assert "resuming from" in resumed and "train.max_steps: 20 -> 30" in resumed
    assert step_dirs(tmp / "fsdp") == ["step-00000020", "step-00000030"]
    fsdp, ddp = losses(tmp / "fsdp"), losses(tmp / "ddp")
    assert fsdp.keys() == ddp.keys() and len(fsdp) == 30
    assert_losses_close(fsdp, ddp, "FSDP 20+10 vs DDP 30")
    assert_close(export_weights(tmp / "fsdp"), export_weights(tmp / "ddp"), "FSDP 20+10 vs DDP 30")  # gathered
    evals = [
        [json.loads(line) for line in (tmp / run / "metrics.jsonl").read_text().splitlines() if "eval_" in line][-1]
        for run in ("fsdp", "ddp")
    ]
    assert abs(evals[0]["eval_lm_loss"] - evals[1]["eval_lm_loss"]) < 1e-5


def test_fsdp_checkpoint_resumes_on_one_process_with_the_same_global_batch(runs):
    tmp = runs[0]
    checkpoint = tmp / "fsdp/checkpoints/step-00000020"
    common = [*TINY_GPT, f"data.cache_dir={tmp / 'cache'}", "train.max_steps=30", f"train.resume={checkpoint}"]
    refused = _cli([*common, "train.batch_size=4", f"train.output_dir={tmp / 'refused'}"], cwd=tmp)
    assert refused.returncode != 0
    assert "train.batch_size=8 train.grad_accum_steps=1 or train.batch_size=4 train.grad_accum_steps=2" in (
        refused.stderr
    )
    run_ok(_cli([*common, "train.batch_size=4", "train.grad_accum_steps=2", f"train.output_dir={tmp / 'one'}"], tmp))
    one, ddp = losses(tmp / "one"), losses(tmp / "ddp")
    assert sorted(one) == list(range(21, 31))
    assert_losses_close(one, ddp, "FSDP 2x4 -> 1x4x2 vs DDP 30")
    assert_close(export_weights(tmp / "one"), export_weights(tmp / "ddp"), "FSDP 2x4 -> 1x4x2 vs DDP 30")


def test_finetuning_under_fsdp_writes_best_and_export(runs, tmp_path):
    tmp = runs[0]
    train_file, dev_file = sentiment_files(tmp_path)
    result = subprocess.run(
        [
            *FSDP,
            "-m",
            "finetune",
            "data=classification_files",
            f"data.train={train_file}",
            f"data.validation={dev_file}",
            "data.text_column=sentence",
            "data.max_length=64",
            f"model.init={tmp / 'fsdp'}",  # a sharded checkpoint: weights only in its state/
            "train.max_steps=12",
            "train.batch_size=8",
            "train.lr=3e-3",
            "train.warmup_steps=2",
            "train.tensorboard=false",
            "train.plot=false",
            f"train.output_dir={tmp_path / 'out'}",
        ],
        cwd=tmp_path,
        env={**_env()},
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = run_ok(result)
    assert "parallelism: FSDP2 over 2 processes" in output
    out = tmp_path / "out"
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["best_step"] in (9, 12)  # evaluated each epoch (9 steps) and at the end

    from transformers import pipeline

    from pretrain.train.checkpoints import load_pretrained

    assert type(load_pretrained(out / "best")).__name__ == "SequenceClassifier"
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    classify = pipeline("text-classification", model=str(out / "export"), device="cpu")
    got = [r["label"] for r in classify([p["text"] for p in predictions])]
    assert got == [p["prediction"] for p in predictions]  # the export is the model that made the predictions


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_local_nodes_train_checkpoint_and_resume(tmp_path):
    """conf/accelerate/multi_node.yaml as two machines of one process each, rendezvous (c10d) on localhost."""

    def nodes(max_steps: int) -> list[str]:
        port = _free_port()
        procs = [
            subprocess.Popen(
                [
                    *LAUNCH,
                    "--config_file",
                    str(ROOT / "conf/accelerate/multi_node.yaml"),
                    "--num_machines",
                    "2",
                    "--num_processes",
                    "2",
                    "--machine_rank",
                    str(rank),
                    "--main_process_ip",
                    "127.0.0.1",
                    "--main_process_port",
                    str(port),
                    "-m",
                    "pretrain",
                    *TINY_GPT,
                    "train.batch_size=4",
                    "train.save_every=2",
                    f"train.max_steps={max_steps}",
                    f"train.output_dir={tmp_path / 'run'}",
                    f"data.cache_dir={tmp_path / 'cache'}",
                ],
                cwd=tmp_path,
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for rank in (0, 1)
        ]
        outputs = [p.communicate(timeout=600)[0] for p in procs]
        for p, output in zip(procs, outputs, strict=True):
            assert p.returncode == 0, output[-4000:]
        return outputs

    first = nodes(4)
    assert "parallelism: DDP over 2 processes" in first[0]
    resumed = nodes(6)
    assert "resuming from" in resumed[0]
    assert step_dirs(tmp_path / "run") == ["step-00000004", "step-00000006"]
    assert sorted(losses(tmp_path / "run")) == list(range(1, 7))
