"""Time budgets, the schedule that follows them, the FLOPs count behind the logged MFU, CUDA-only paths."""

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from test_pretraining import tiny_run

from pretrain.budget import TrainClock, lr_factor
from pretrain.config import ConfigError, TrainConfig
from pretrain.flops import device_peak_flops, forward_flops, training_flops
from pretrain.model import BertPretraining, CausalLM
from pretrain.pretraining import run_pretraining
from pretrain.targets import labelled_positions


def test_schedule_warms_up_then_decays_to_the_floor_at_the_end_of_the_budget():
    assert lr_factor(0, 0.0, 4, "linear", 0.0) == pytest.approx(0.25)
    assert lr_factor(3, 0.01, 4, "linear", 0.0) == pytest.approx(0.99)
    assert lr_factor(50, 0.5, 4, "linear", 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(50, 1.0, 4, "linear", 0.1) == pytest.approx(0.1)
    assert lr_factor(50, 1.0, 4, "cosine", 0.0) == pytest.approx(0.0)
    assert lr_factor(50, 0.5, 4, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_factor(50, 0.7, 4, "constant", 0.0) == 1.0


def test_paused_time_does_not_count_against_the_budget():
    clock = TrainClock(budget_minutes=1.0, elapsed_s=30.0)
    with clock.pause():
        sum(range(100_000))
    assert 30.0 <= clock.elapsed_s < 30.5
    assert 0.5 <= clock.time_fraction() < 0.51 and not clock.spent()


def test_every_process_follows_the_main_process_budget_clock():
    """With train.max_minutes on several processes, each rank's learning rate followed its own clock: DDP
    replicas (and FSDP shards) drifted apart by up to 1.6e-3 in 739 steps, the checkpoint unlike the export.
    The main process's time fraction (and its stop) is what every rank gets."""
    from types import SimpleNamespace

    from pretrain.budget import budget_spent

    sent = {}

    def rank(is_main: bool) -> SimpleNamespace:
        def reduce(tensor, reduction):  # a sum over both ranks: the main one's contribution plus this one's
            sent[is_main] = tensor
            return tensor if is_main else tensor + sent[True]

        return SimpleNamespace(num_processes=2, is_main_process=is_main, device=torch.device("cpu"), reduce=reduce)

    main_spent, main_fraction = budget_spent(TrainClock(1.0, elapsed_s=30.0), rank(True))
    spent, fraction = budget_spent(TrainClock(1.0, elapsed_s=45.0), rank(False))  # its own clock says 0.75
    assert (spent, fraction) == (main_spent, main_fraction) and not spent and 0.5 <= fraction < 0.51
    assert sent[False].tolist() == [0.0, 0.0]
    assert budget_spent(TrainClock(None), rank(False)) == (False, 0.0)


def test_bad_budget_values_are_refused():
    with pytest.raises(ConfigError, match="train.max_minutes must be > 0"):
        TrainConfig(max_minutes=0).validate()
    with pytest.raises(ConfigError, match="train.peak_flops must be > 0"):
        TrainConfig(peak_flops=-1.0).validate()


def _trainer_state(run_dir: Path) -> dict:
    last = sorted((run_dir / "checkpoints").iterdir())[-1]
    return torch.load(last / "trainer_state.pt", weights_only=True)


def test_a_spent_budget_stops_training_and_the_resumed_run_keeps_its_clock(tmp_path):
    """A budget far below max_steps' worth of time ends the run early, with the final evaluation and
    checkpoint; the lr has decayed to zero by then; resuming the spent run trains no further."""
    cfg = tiny_run(tmp_path, max_steps=100_000, max_minutes=0.003, save_every=0, eval_every=0, peak_flops=1e12)
    final = run_pretraining(cfg)
    out = Path(cfg.train.output_dir)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "loss" in r]
    last_step = trained[-1]["step"]
    assert 0 < last_step < 100_000
    assert "mlm_loss" in final and any("eval_mlm_loss" in r for r in rows)
    assert trained[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the decay followed the budget, not the steps
    assert all(r["mfu"] > 0 and r["tokens_per_s"] > 0 for r in trained)
    state = _trainer_state(out)
    assert state["step"] == last_step and state["elapsed_s"] >= 0.003 * 60

    cfg.train.resume = "auto"
    run_pretraining(cfg)
    assert _trainer_state(out)["step"] == last_step


def test_a_budget_that_ends_inside_the_warm_up_is_warned_about(tmp_path, caplog):
    """The run exported a model trained at a learning rate near zero, without a word."""
    cfg = tiny_run(tmp_path, max_steps=100_000, max_minutes=0.00005, warmup_steps=1000, save_every=0, eval_every=0)
    with caplog.at_level(logging.WARNING):
        run_pretraining(cfg)
    assert "inside its warm-up of train.warmup_steps=1000: the learning rate never reached train.lr" in caplog.text


def test_logged_tokens_per_s_counts_the_positions_computed_and_the_real_tokens_apart():
    """tokens_per_s counts every position the model ran (padding included), as scripts/benchmark.py and
    the FLOPs do; real_tokens_per_s the corpus tokens among them; summed over micro-batches of any width."""
    from pretrain.train.metrics import Progress

    progress = Progress(TrainConfig(max_steps=10), step=0, main=False)
    mask = torch.tensor([[1] * 8, [1] * 3 + [0] * 5])
    padded = {"input_ids": torch.zeros(2, 8, dtype=torch.long), "attention_mask": mask}
    full = {"input_ids": torch.zeros(4, 5, dtype=torch.long)}
    progress.count([padded, full], flops=0.0)
    clock = TrainClock(None)
    progress.window_start -= 2.0  # two seconds of training in this window
    values = progress.throughput(clock)
    assert values["tokens_per_s"] == pytest.approx((16 + 20) / 2.0, rel=1e-3)
    assert values["real_tokens_per_s"] == pytest.approx((11 + 20) / 2.0, rel=1e-3)
    assert "mfu" not in values  # no peak known on a CPU without train.peak_flops


def _matmul_flops(counter) -> int:
    """The counter's FLOPs without attention (a fused kernel or, for a causal mask on CPU, bmm's over the
    full square): counted per backend, so the test checks the rest exactly and attention by formula."""
    counts = counter.get_flop_counts()["Global"]
    return sum(v for op, v in counts.items() if "attention" not in str(op) and "bmm" not in str(op))


def test_flops_count_what_the_models_compute():
    from torch.utils.flop_counter import FlopCounterMode

    config = tiny_config(dropout=0.0, attention_dropout=0.0)
    model = BertPretraining(config)
    ids = torch.randint(5, config.vocab_size, (3, 16))
    labels = torch.full_like(ids, -100)
    labels[:, ::4] = ids[:, ::4]
    with FlopCounterMode(display=False) as counter:  # forward and backward together: the chunked MLM loss
        out = model(ids, labels=labels, next_sentence_label=torch.zeros(3, dtype=torch.long))
        out.loss.backward()  # computes its gradients in the forward pass
    attention = config.num_layers * 48 * 4 * config.hidden_size * 16
    # the last block past attention: the 12 predicted rows and the 3 [CLS]
    expected = forward_flops(config, 3, 16, predicted=12, with_pooler=True, last_layer_rows=15) - attention
    # (one chunk: its decoder weight gradient is an mm; FlopCounterMode would miss later chunks' addmm_)
    assert _matmul_flops(counter) == 3 * expected
    assert training_flops(config, 3, 16, 12, True, 15) == 3 * forward_flops(config, 3, 16, 12, True, 15)
    assert forward_flops(config, 3, 16, 12, True, 15) < forward_flops(config, 3, 16, 12, True)

    causal = tiny_config(causal=True)
    with FlopCounterMode(display=False) as counter, torch.no_grad():  # the whole-logits path: forward only
        CausalLM(causal)(ids, labels=ids)
    half_attention = causal.num_layers * 48 * 2 * causal.hidden_size * 16
    assert _matmul_flops(counter) == forward_flops(causal, 3, 16, predicted=48, with_pooler=False) - half_attention


def test_step_flops_count_each_micro_batch_at_its_own_width():
    """Length-grouped micro-batches differ in width and in masked positions: each counts as it is."""
    from pretrain.flops import step_flops

    config = tiny_config()
    model = BertPretraining(config)
    micro = []
    for batch, length in ((2, 8), (3, 16)):
        labels = torch.full((batch, length), -100)
        labels[:, 1] = 7
        micro.append({"input_ids": torch.zeros(batch, length, dtype=torch.long), "labels": labels})
    expected = training_flops(config, 2, 8, 2, True, 4) + training_flops(config, 3, 16, 3, True, 6)
    assert float(step_flops(model, micro)) == expected


def test_peak_flops_come_from_the_override_or_a_known_gpu():
    assert device_peak_flops(torch.device("cpu"), "no") is None
    assert device_peak_flops(torch.device("cpu"), "no", override=2e11) == 2e11


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run_uses_fused_adamw_and_bf16(tmp_path):  # pragma: no cover - CPU CI skips it
    import pretrain.train.loop as trainer

    seen = {}
    real = torch.optim.AdamW

    class Spy(real):
        def __init__(self, *args, **kwargs):
            seen["fused"] = kwargs.get("fused")
            super().__init__(*args, **kwargs)

    trainer.torch.optim.AdamW = Spy
    try:
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        cfg = tiny_run(tmp_path, max_steps=3, save_every=0, eval_every=0)
        cfg.impl.precision = precision
        run_pretraining(cfg)
    finally:
        trainer.torch.optim.AdamW = real
    assert seen["fused"] is True
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)
    assert device_peak_flops(torch.device("cuda"), precision) is None or any("mfu" in r for r in rows)


def test_chunked_lm_loss_matches_the_whole_logits_path():
    """Loss and every gradient equal the plain (tokens x vocab) path, with chunks that split the rows
    unevenly and ignored targets (padding) in between."""
    from pretrain.model import IGNORE_INDEX, chunked_lm_loss_term
    from pretrain.model.losses import ce_term

    hidden = torch.randn(3, 10, 16, requires_grad=True)
    weight = torch.randn(37, 16, requires_grad=True)
    labels = torch.randint(0, 37, (3, 10))
    labels[1, 6:] = IGNORE_INDEX
    total, count, _ = chunked_lm_loss_term(hidden, weight, labels, chunk_elements=37 * 8)  # rows 8, 8, 8, 6
    (total * 0.5).backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)
    expected, expected_count, _ = ce_term((hidden @ weight.t()).reshape(-1, 37), targets)
    (expected * 0.5).backward()
    assert count == expected_count == 3 * 9 - 4
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], hidden.grad)
    torch.testing.assert_close(grads[1], weight.grad)


def test_chunked_cross_entropy_with_a_bias_and_padded_vocabulary_matches_the_whole_logits():
    """BERT's decoder: a bias over the true vocabulary, weight rows padded past it; several chunks."""
    from pretrain.model.losses import ce_term, linear_ce_term

    hidden = torch.randn(11, 16, requires_grad=True)
    weight = torch.randn(40, 16)  # 37 words padded to 40 rows; the padded rows are zero, as the model keeps them
    weight[37:] = 0
    weight.requires_grad_()
    bias = torch.randn(37, requires_grad=True)
    targets = torch.randint(0, 37, (11,))
    targets[[2, 7]] = -100
    total, count, _ = linear_ce_term(hidden, weight, targets, bias, vocab_size=37, chunk_elements=40 * 3)
    grads = torch.autograd.grad(total, (hidden, weight, bias))
    expected, expected_count, _ = ce_term((hidden @ weight.t())[:, :37] + bias, targets)
    assert count == expected_count == 9
    torch.testing.assert_close(total, expected)
    for got, want in zip(grads, torch.autograd.grad(expected, (hidden, weight, bias)), strict=True):
        torch.testing.assert_close(got, want)


def test_chunked_cross_entropy_without_targets_and_twice_through_one_graph():
    """No rows (a batch with nothing masked): zero gradients, not uninitialised memory. The gradients
    are scaled in place in backward, so a second backward through a retained graph must fail loudly
    rather than scale them twice."""
    from pretrain.model.losses import linear_ce_term

    weight = torch.randn(40, 16, requires_grad=True)
    bias = torch.randn(37, requires_grad=True)
    total, count, _ = linear_ce_term(torch.zeros(0, 16), weight, torch.zeros(0, dtype=torch.long), bias, 37)
    total.backward()
    assert float(total.detach()) == 0 and int(count) == 0
    assert torch.equal(weight.grad, torch.zeros(40, 16)) and torch.equal(bias.grad, torch.zeros(37))

    total, _, _ = linear_ce_term(torch.randn(5, 16), weight, torch.randint(0, 37, (5,)), bias, 37)
    total.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        total.backward()


def test_training_forward_of_the_causal_lm_equals_the_evaluation_forward():
    model = CausalLM(tiny_config(causal=True, dropout=0.0, attention_dropout=0.0))
    ids = torch.randint(0, 101, (2, 12))
    train_loss = model(ids, labels=ids).loss
    train_loss.backward()
    with torch.no_grad():
        out = model(ids, labels=ids)
    assert out.logits is not None
    torch.testing.assert_close(train_loss.detach(), out.loss, rtol=1e-5, atol=1e-6)


class HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the operators that make the host wait for the device: reading a value (.item(), bool(),
    int() all end in _local_scalar_dense) and data-dependent shapes (nonzero, masked_select, boolean
    indexing). On a CPU they cost nothing, on an accelerator each is a synchronisation."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        aten = torch.ops.aten
        syncing = func in (aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default)
        if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
            syncing = any(i is not None and i.dtype == torch.bool for i in args[1])
        if syncing:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


def _count_host_reads(run) -> list[str]:
    real_tolist = torch.Tensor.tolist
    with HostReads() as mode:
        torch.Tensor.tolist = lambda t: mode.reads.append("tolist") or real_tolist(t)
        try:
            run()
        finally:
            torch.Tensor.tolist = real_tolist
    return mode.reads


@pytest.mark.parametrize("padded", [False, True])
def test_training_forward_never_reads_tensor_values_on_the_host(padded):
    """The trunk of both families and GPT's whole training step (loss included) decide everything from
    shapes: no attention_mask.all(), no id range checks, no boolean indexing. Padded or not. BERT's
    whole step too, given the labelled positions as the MLM collator sends them (found on the host)."""
    ids = torch.randint(5, 101, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    extra = {"attention_mask": mask} if padded else {}
    gpt = CausalLM(tiny_config(causal=True))
    assert _count_host_reads(lambda: gpt(ids, labels=ids, **extra).loss.backward()) == []
    bert = BertPretraining(tiny_config())
    segments = torch.zeros_like(ids)
    assert _count_host_reads(lambda: bert.transformer(ids, token_type_ids=segments, **extra)) == []
    labels = torch.full_like(ids, -100)
    labels[:, ::3] = ids[:, ::3]

    def bert_step(**positions):
        nsp = labels[:, 0] % 2
        bert(ids, token_type_ids=segments, labels=labels, next_sentence_label=nsp, **extra, **positions).loss.backward()

    positions = labelled_positions(labels)  # the collator's work, on the host
    assert _count_host_reads(lambda: bert_step(mlm_positions=positions)) == []
    # without them the model finds the labelled positions itself: one data-dependent shape
    assert _count_host_reads(bert_step) == ["aten.nonzero.default"]
    assert _count_host_reads(lambda: bert.eval().transformer(ids, **extra)) != []  # outside training: id checks


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_forward_does_not_synchronise():  # pragma: no cover - CPU CI skips it
    ids = torch.randint(5, 101, (3, 12), device="cuda")
    gpt = CausalLM(tiny_config(causal=True)).cuda()
    bert = BertPretraining(tiny_config()).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gpt(ids, labels=ids).loss.backward()
        bert.transformer(ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids))
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.slow  # torch.compile takes ~20 s on 2 cores
def test_a_compiled_run_saves_and_exports_the_model_itself(tmp_path):
    """impl.compile=true changes speed, not what is saved: the checkpoint and the export are the plain
    model's (no torch.compile wrapper in the class or the state-dict names) and load back."""
    from pretrain.interop import load_hf
    from pretrain.train.checkpoints import load_pretrained

    cfg = tiny_run(tmp_path, max_steps=2, save_every=2, eval_every=2, export=True)
    cfg.impl.compile = True
    run_pretraining(cfg)
    out = Path(cfg.train.output_dir)
    saved = load_pretrained(str(out))  # the run directory: its latest checkpoint
    exported = load_hf(str(out / "export"), head="pretraining")
    assert type(saved).__name__ == "BertPretraining"
    for name, value in saved.state_dict().items():
        assert "_orig_mod" not in name
        torch.testing.assert_close(exported.state_dict()[name], value)


FREE_AND_MEASURE = """
import sys, torch
from pretrain.train.host import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def resident_kb():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1])
block = torch.ones(64 * 2**20 // 4)  # 64 MB, above glibc's largest mmap threshold
before = resident_kb()
del block
print(before - resident_kb())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux")
def test_on_a_cpu_freed_blocks_stay_in_the_process_for_the_next_step():
    """By default glibc gives a freed 64 MB block back to the system (the next step page-faults it in
    again); after keep_freed_memory() (what make_accelerator does on a CPU) the process keeps it."""
    import subprocess
    import sys

    def released_kb(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", FREE_AND_MEASURE, mode], capture_output=True, text=True, check=True)
        return int(run.stdout.split()[-1])

    assert released_kb("default") > 50 * 1024
    assert released_kb("keep") < 8 * 1024
