"""Bad inputs through the real commands: each is a clear error (exit status 2, one line, no traceback,
the key or file and the fix named) raised before any work, or is handled correctly. Plus the
fine-tuning correctness cases of the same review (re-heading, left padding, pad token, SQuAD rules)."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from finetune import classification as cls
from finetune.squad_metric import squad_scores
from pretrain.interop import build_model, hf_config_dict
from pretrain.model import SequenceClassifier
from pretrain.tokenizer import train_tokenizer
from pretrain.train.checkpoints import load_pretrained, save_model_dir

ROOT = Path(__file__).resolve().parents[1]
TEXT = ["the cat sat on the mat", "a dog ran in the park", "good film", "bad film", "what is said? who went?"] * 30


def run(args, cwd, module=None):
    """A command as a user runs it; returns (exit status, stderr)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PRETRAIN_TRACEBACK", None)
    cmd = [sys.executable, "-m", module, *args] if module else [sys.executable, *args]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return result.returncode, result.stderr


def assert_user_error(status, stderr, *words):
    assert status == 2, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    for word in words:
        assert word in stderr, f"{word!r} not in: {stderr[-1500:]}"


def checkpoint(directory: Path, family: str, head: str, vocab: int = 0, text: list[str] = TEXT, **head_kwargs) -> Path:
    tokenizer = train_tokenizer(text, family, vocab_size=vocab or (120 if family == "bert" else 300))
    config = tiny_config(causal=family == "gpt", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    save_model_dir(build_model(config, head, **head_kwargs), directory)
    tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "bert": checkpoint(root / "bert", "bert", "pretraining"),
        # another corpus: another vocabulary (the same corpus gives the same one, whatever vocab_size asks)
        "bert_other": checkpoint(root / "bert_other", "bert", "pretraining", text=[t.upper() + " zebra" for t in TEXT]),
        "gpt": checkpoint(root / "gpt", "gpt", "causal_lm"),
    }


# ----------------------------------------------------------------------------- python -m pretrain


@pytest.mark.parametrize(
    "override, words",
    [
        ("data.validation_fraction=-0.5", ["data.validation_fraction=-0.5", "[0, 1)"]),
        ("data.vocab_size=5", ["data.vocab_size=5", "raise it"]),
        ("train.warmup_steps=-3", ["train.warmup_steps=-3", ">= 0"]),
        ("train.adam_betas=[0.9,1.5]", ["train.adam_betas[1]"]),
        ("model.num_heads=3", ["model.hidden_size", "num_heads"]),
        ("model.dropout=1.5", ["model.dropout=1.5"]),
        ("model.position_embedding=sinusoidal", ["position_embedding='sinusoidal'", "train.export=false"]),
        ("model.init=runs/no/such/run", ["model.init=runs/no/such/run", "tried the local path"]),
        ("data.tokenizer=./my-tokenizer", ["data.tokenizer=./my-tokenizer", "tried the local path"]),
        ("data.cache_dir=/proc/no-cache", ["data.cache_dir=/proc/no-cache is not writable"]),
        ("train.lrr=1", ["lrr"]),  # hydra's own error: status 2 too
        ("model=bert-huge", ["bert-huge"]),
    ],
)
@pytest.mark.slow  # a process start per case
def test_pretrain_config_errors(tmp_path, override, words):
    status, stderr = run([override, f"train.output_dir={tmp_path / 'out'}"], tmp_path, "pretrain")
    assert_user_error(status, stderr, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing written: not hydra's runs/, not the output"


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("empty.txt", b"", ["empty.txt is empty", "remove it from data.paths"]),
        ("blank.txt", b"\n  \n\t\n", ["the corpus is empty", "check data.paths"]),
        ("latin.txt", "caf\u00e9 au lait\n".encode("latin-1"), ["latin.txt is not valid UTF-8", "iconv"]),
        ("rows.jsonl", b'{"text": "a cat"}\n{"text": \n', ["rows.jsonl line 2 is not valid JSON", "fix or remove it"]),
        ("lists.jsonl", b'["a", "b"]\n["c"]\n', ["lists.jsonl is neither JSON lines nor", "one object per line"]),
        ("text.txt.gz", b"not gzip at all\n", ["text.txt.gz is not a readable gzip file", "re-compress it"]),
        ("rows.parquet", b"PAR1 not parquet", ["rows.parquet is not a readable Parquet file"]),
    ],
)
@pytest.mark.slow  # a process start per case
def test_pretrain_corpus_errors(tmp_path, name, content, words):
    """Corpus errors found while reading the data are user errors too (they were tracebacks)."""
    (tmp_path / name).write_bytes(content)
    args = ["data=text", f"data.paths=[{tmp_path / name}]", "train.max_steps=1", f"train.output_dir={tmp_path / 'o'}"]
    assert_user_error(*run(args, tmp_path, "pretrain"), *words)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is real on a GPU")
@pytest.mark.slow  # a process start per case
def test_pretrain_fp16_on_cpu_is_refused(tmp_path):
    status, stderr = run(["impl.precision=fp16", f"train.output_dir={tmp_path / 'o'}"], tmp_path, "pretrain")
    assert_user_error(status, stderr, "impl.precision=fp16", "needs a GPU", "impl.precision=no")
    # the key's former place still works (test_config: with a warning naming the new key)
    status, stderr = run(["train.precision=fp16", f"train.output_dir={tmp_path / 'o'}"], tmp_path, "pretrain")
    assert_user_error(status, stderr, "impl.precision=fp16", "needs a GPU")


@pytest.mark.slow  # a process start per case
def test_pretrain_unwritable_output_dir(tmp_path):
    (tmp_path / "a_file").write_text("x")
    status, stderr = run([f"train.output_dir={tmp_path / 'a_file' / 'run'}"], tmp_path, "pretrain")
    assert_user_error(status, stderr, "train.output_dir", "cannot be created")


@pytest.mark.slow  # a process start per case
def test_pretrain_init_with_another_tokenizer_is_refused(tmp_path, ckpts):
    args = [f"model.init={ckpts['bert']}", f"data.tokenizer={ckpts['bert_other']}", f"train.output_dir={tmp_path}/o"]
    status, stderr = run(args, tmp_path, "pretrain")
    assert_user_error(status, stderr, f"data.tokenizer={ckpts['bert_other']}", f"model.init={ckpts['bert']}")


def test_init_reuses_its_own_tokenizer(tmp_path, ckpts):
    from pretrain.config import PretrainConfig
    from pretrain.pretraining import check_run_inputs

    cfg = PretrainConfig()
    cfg.model.init, cfg.train.output_dir = str(ckpts["bert"]), str(tmp_path / "o")
    check_run_inputs(cfg)
    assert cfg.data.tokenizer == str(ckpts["bert"]), "the checkpoint's tokenizer, not a new one"


@pytest.mark.slow  # a process start per case
def test_internal_errors_keep_their_traceback(tmp_path):
    code = "from pretrain.hydra_utils import clear_errors; clear_errors(lambda raw: {{}}['x'])(None)"
    status, stderr = run(["-c", code.replace("{{}}", "{}")], tmp_path)
    assert status == 1 and "Traceback" in stderr and "KeyError" in stderr
    code = "from pretrain.hydra_utils import clear_errors; from pretrain.errors import DataError\n"
    code += "def job(raw): raise DataError('f.tsv, row 3: bad')\nclear_errors(job)(None)"
    assert_user_error(*run(["-c", code], tmp_path), "error: f.tsv, row 3: bad")


# ----------------------------------------------------------------------------- python -m finetune


def finetune(tmp_path, ckpt, train_file, *extra, task="classification", dev_file=None):
    args = [f"task={task}", f"model.init={ckpt}", f"data.train={train_file}", f"train.output_dir={tmp_path / 'out'}"]
    args += [f"data.validation={dev_file or train_file}", "train.max_steps=1", "data.max_length=64", *extra]
    args += ["data=squad", "data.max_query_length=16", "data.doc_stride=16"] if task == "qa" else []
    return run(args, tmp_path, "finetune")


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.slow  # a process start per case
def test_finetune_row_errors(tmp_path, ckpts):
    good = [{"sentence": "good film", "label": 1}, {"sentence": "bad film", "label": 0}]
    cases = [
        (good + [{"sentence": None, "label": 1}], ["rows.jsonl, row 3", "'sentence' is null"]),
        (good + [{"sentence": "ok"}], ["rows.jsonl, row 3", "'label'"]),
        (good + [{"sentence": "", "label": 1}], ["row 3", "is empty"]),
        (good + [{"sentence": ["a"], "label": 1}], ["row 3", "not a string"]),
    ]
    for rows, words in cases[:2]:  # each case is a process start: the two of the issue here, the rest in-process
        assert_user_error(*finetune(tmp_path, ckpts["bert"], jsonl(tmp_path / "rows.jsonl", rows)), *words)
    from finetune.config import FinetuneDataConfig
    from pretrain.errors import DataError

    for rows, words in cases[2:]:
        with pytest.raises(DataError, match=words[-1]):
            cls.check_columns(rows, FinetuneDataConfig(), "rows.jsonl")


@pytest.mark.slow  # a process start per case
def test_finetune_file_errors(tmp_path, ckpts):
    (tmp_path / "empty.tsv").write_text("")
    assert_user_error(*finetune(tmp_path, ckpts["bert"], tmp_path / "empty.tsv"), "empty.tsv is empty")
    train = jsonl(tmp_path / "t.jsonl", [{"sentence": "good", "label": "pos"}, {"sentence": "bad", "label": "neg"}])
    dev = jsonl(tmp_path / "d.jsonl", [{"sentence": "meh", "label": "neutral"}])
    assert_user_error(*finetune(tmp_path, ckpts["bert"], train, dev_file=dev), "d.jsonl", "['neutral']")


def squad(path: Path, articles) -> Path:
    path.write_text(json.dumps({"version": "1.1", "data": articles}), encoding="utf-8")
    return path


@pytest.mark.slow  # a process start per case
def test_finetune_squad_errors(tmp_path, ckpts):
    no_paragraphs = squad(tmp_path / "a.json", [{"title": "x"}])
    assert_user_error(*finetune(tmp_path, ckpts["bert"], no_paragraphs, task="qa"), "data[0].paragraphs is missing")
    qas = [{"id": str(i), "question": "who?", "answers": [{"text": "cat", "answer_start": 40}]} for i in range(3)]
    wrong = squad(tmp_path / "w.json", [{"title": "x", "paragraphs": [{"context": "the cat sat", "qas": qas}]}])
    assert_user_error(*finetune(tmp_path, ckpts["bert"], wrong, task="qa"), "w.json", "none of the 3 answers")


def test_squad_missing_answer_field_is_named(tmp_path):
    from finetune.qa import read_squad
    from pretrain.errors import DataError

    qas = [{"id": "1", "question": "who?", "answers": [{"text": "cat"}]}]
    path = squad(tmp_path / "s.json", [{"paragraphs": [{"context": "the cat", "qas": qas}]}])
    with pytest.raises(DataError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\]\.answers\[0\]\.answer_start is missing"):
        read_squad(str(path))


# ----------------------------------------------------------------------------- scripts


@pytest.mark.parametrize(
    "args, words",
    [
        (["--max-new-tokens", "-5"], ["--max-new-tokens must be >= 1"]),
        (["--top-p", "0"], ["--top-p must be in (0, 1]"]),
        (["--temperature", "-1"], ["--temperature must be > 0"]),
    ],
)
@pytest.mark.slow  # a process start per case
def test_generate_arguments(tmp_path, ckpts, args, words):
    assert_user_error(*run([str(ROOT / "scripts/generate.py"), str(ckpts["gpt"]), "hi", *args], tmp_path), *words)


@pytest.mark.slow  # a process start per case
def test_generate_refuses_a_bert(tmp_path, ckpts):
    status, stderr = run([str(ROOT / "scripts/generate.py"), str(ckpts["bert"]), "hi"], tmp_path)
    assert_user_error(status, stderr, "BERT-style", "GPT-style")


@pytest.mark.slow  # a process start per case
def test_export_refuses_a_head_the_checkpoint_lacks(tmp_path, ckpts):
    args = [str(ROOT / "scripts/export.py"), str(ckpts["gpt"]), str(tmp_path / "x"), "--head", "qa"]
    status, stderr = run(args, tmp_path)
    assert_user_error(status, stderr, "--head qa", "randomly initialised", "causal_lm")
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- fine-tuning correctness


def test_classifier_reheading(tmp_path, caplog):
    three = checkpoint(tmp_path / "three", "bert", "classification", num_labels=3)
    with caplog.at_level(logging.INFO):
        kept = cls.load_classifier(str(three), 3, 0.0, ["a", "b", "c"], 0)
        reheaded = cls.load_classifier(str(three), 2, 0.0, ["a", "b"], 0)
    original = load_pretrained(three)
    assert torch.equal(kept.classifier.weight, original.classifier.weight), "our own classifier is kept"
    assert reheaded.classifier.weight.shape == (2, 32)
    assert torch.equal(reheaded.transformer.embeddings.word.weight, original.transformer.embeddings.word.weight)
    assert "re-initialised" in caplog.text and "keeping its trained classifier" in caplog.text


def test_gpt_classification_left_padding_equals_right_padding():
    model = SequenceClassifier(tiny_config(causal=True, pad_token_id=0), num_labels=2).eval()
    ids = torch.randint(1, 100, (1, 7))
    pad, ones = torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 7, dtype=torch.long)
    with torch.no_grad():
        right = model(torch.cat([ids, pad], 1), torch.cat([ones, pad], 1)).logits
        left = model(torch.cat([pad, ids], 1), torch.cat([pad, ones], 1)).logits
        alone = model(ids).logits
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)


def test_gpt_classification_export_has_a_pad_token(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=32, n_layer=1, n_head=4, n_positions=64))
    assert hf.config.pad_token_id is None
    hf.save_pretrained(tmp_path / "gpt2")
    model = cls.load_classifier(str(tmp_path / "gpt2"), 2, 0.0, ["neg", "pos"], pad_token_id=299)
    assert hf_config_dict(model)["pad_token_id"] == 299


def test_squad_metric_versions_follow_the_official_scripts():
    # a gold answer that normalises to nothing ("the"): v1.1 keeps it (EM 1 on "", F1 0: no tokens);
    # v2.0 drops it, leaving the question unanswerable (an empty prediction scores 1 and 1)
    v1 = squad_scores({"q": ""}, {"q": ["the"]}, version="1.1")
    v2 = squad_scores({"q": ""}, {"q": ["the"]}, version="2.0")
    assert (v1["exact_match"], v1["f1"]) == (100.0, 0.0)
    assert (v2["exact_match"], v2["f1"]) == (100.0, 100.0) and v2["NoAns_total"] == 1.0
    # v1.1: "an" vs "a" normalise equal (EM) but share no token (F1 0)
    assert squad_scores({"q": "a"}, {"q": ["an"]}, version="1.1")["f1"] == 0.0
    both = {"q1": "Denver Broncos", "q2": "Panthers"}, {"q1": ["the Denver Broncos"], "q2": ["Carolina Panthers"]}
    assert squad_scores(*both, version="1.1")["f1"] == squad_scores(*both, version="2.0")["f1"]
    assert "HasAns_exact" not in squad_scores(*both, version="1.1")


def test_a_tokenizer_path_without_a_tokenizer_is_named(tmp_path):
    """An empty directory or a file as the tokenizer: our message, not transformers' long guess about
    sentencepiece and tiktoken (or a JSON error)."""
    from pretrain.config import ConfigError
    from pretrain.tokenizer import load_tokenizer

    (tmp_path / "notes.txt").write_text("hello")
    for path in (tmp_path, tmp_path / "notes.txt"):
        with pytest.raises(ConfigError, match=f"{path} is not a tokenizer directory"):
            load_tokenizer(str(path))


def test_fine_tuning_files_that_used_to_end_in_a_traceback_or_a_dropped_answer(tmp_path):
    """A CoNLL file that is not UTF-8; a SQuAD file with a byte-order mark (refused as not JSON); a SQuAD
    `is_impossible` given as a string ("false" counted as true and dropped the answers); a training context
    of invisible characters only (IndexError); a hub dataset that cannot be fetched (ConnectionError); a
    directory as data.exclude_ids_file."""
    from finetune import qa
    from finetune.config import FinetuneDataConfig
    from finetune.files import hub_split
    from finetune.token_classification import read_conll
    from pretrain.errors import ConfigError, DataError

    conll = tmp_path / "train.txt"
    conll.write_bytes("\ufeffHe PRP B-NP\nran VBD B-VP\n".encode() + b"\xff\xfe VBD B-VP\n")
    with pytest.raises(DataError, match=r"train.txt, line 3: not UTF-8 text"):
        read_conll(str(conll))
    conll.write_text("\ufeffHe PRP B-NP\nran VBD B-VP\n", encoding="utf-8")
    assert read_conll(str(conll))[0].words == ["He", "ran"]  # the byte-order mark is not part of the first word

    def squad(qa_fields: dict, context: str = "in paris") -> Path:
        question = {"id": "q1", "question": "where?", "answers": [{"text": "paris", "answer_start": 3}], **qa_fields}
        f = tmp_path / "squad.json"
        f.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [question]}]}]}))
        return f

    with pytest.raises(DataError, match=r"qas\[0\].is_impossible is str 'false', expected true or false"):
        qa.read_squad(str(squad({"is_impossible": "false"})))
    assert qa.read_squad(str(squad({"is_impossible": False})))[0].answers == ["paris"]
    bom = squad({})
    bom.write_bytes(b"\xef\xbb\xbf" + bom.read_bytes())  # as Windows tools save JSON
    assert qa.read_squad(str(bom))[0].answers == ["paris"]
    bom.write_bytes(bom.read_bytes().replace(b"where?", b"wh\xffere?"))
    with pytest.raises(DataError, match=r"squad.json, line 1: not UTF-8 text"):
        qa.read_squad(str(bom))
    tokenizer = train_tokenizer(["where is it? it is in paris."] * 20, "bert", vocab_size=120)
    invisible = qa.read_squad(str(squad({"answers": [{"text": "\u200b", "answer_start": 0}]}, "\u200b\u200b")))
    cfg = FinetuneDataConfig(max_length=32, doc_stride=8, max_query_length=8)
    features = qa.windows(tokenizer, invisible, cfg, training=True)
    assert [(f["start_positions"], f["end_positions"]) for f in features] == [(0, 0)]  # no answer in the window
    tokenizer.model_input_names = ["input_ids", "attention_mask"]  # as ModernBERT's: no token types (KeyError)
    features = qa.windows(tokenizer, qa.read_squad(str(squad({}))), cfg, training=True)
    assert [(f["start_positions"], f["end_positions"]) for f in features] == [(5, 5)]  # [CLS] where ? [SEP] in paris
    assert set(qa.QACollator(0)(features)) == {"input_ids", "attention_mask", "start_positions", "end_positions"}

    with pytest.raises(ConfigError, match=r"data.hub_name=nyu-mll/glue: the train split cannot be fetched"):
        hub_split("nyu-mll/glue", "sst2", "train")
    rows = [{"#1 ID": "1", "#2 ID": "2", "Quality": "1"}]
    with pytest.raises(FileNotFoundError, match=r"data.exclude_ids_file .*: a directory, not a file"):
        cls.exclude_rows(rows, str(tmp_path), ["#1 ID", "#2 ID"])
    ids = tmp_path / "dev_ids.csv"
    ids.write_text("1,2\n3,4\n")  # comma-separated: excluded nothing, silently
    with pytest.raises(DataError, match=r"dev_ids.csv, line 1: 1 tab-separated ids \('1,2'\), but data.id_columns"):
        cls.exclude_rows(rows, str(ids), ["#1 ID", "#2 ID"])
    ids.write_text("1\t2\r\n\n3\t4\n")
    assert cls.exclude_rows(rows, str(ids), ["#1 ID", "#2 ID"]) == []


def test_pretraining_inputs_found_by_the_second_probe(tmp_path, monkeypatch, ckpts):
    """A list or an object in a text column (its repr was trained), a Parquet binary text column (trained as
    b'...'); num_kv_heads=0 (read as "all heads"); a RoBERTa position table too short for data.max_length
    (a traceback at the first step, after the data were prepared); wandb asked for but not installed (a
    traceback after the data); resuming with another data.tokenizer (the old one was kept, silently)."""
    import importlib.util

    import pyarrow
    import pyarrow.parquet as pq
    from test_pretraining import tiny_run

    from pretrain.config import ConfigError, TrainConfig, check_positions
    from pretrain.data.corpus import json_rows, parquet_rows
    from pretrain.errors import DataError
    from pretrain.pretraining import run_pretraining

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "fine"}\n{"text": ["a", "b"]}\n')
    with pytest.raises(DataError, match=r"rows.jsonl: a text cell is a list \(\['a', 'b'\]\), not text"):
        list(json_rows(rows, "text"))
    table = tmp_path / "binary.parquet"
    pq.write_table(pyarrow.table({"text": pyarrow.array([b"First Citizen:\nBefore", None], pyarrow.binary())}), table)
    assert list(parquet_rows(table, "text")) == ["First Citizen:\nBefore", ""]

    with pytest.raises(ValueError, match=r"num_kv_heads \(0\) must divide num_heads"):
        tiny_config(num_kv_heads=0)

    roberta = tiny_config(positions_skip_padding=True, pad_token_id=1, max_positions=128)
    with pytest.raises(ConfigError, match=r"data.max_length=128 needs 130 positions \(positions count from pad_token"):
        check_positions(128, roberta)
    check_positions(126, roberta)

    if importlib.util.find_spec("wandb") is None:
        from pretrain.train.metrics import check_wandb

        with pytest.raises(ConfigError, match=r"train.wandb_project=abc needs the wandb package"):
            check_wandb(TrainConfig(wandb_project="abc"))

    cfg = tiny_run(tmp_path, max_steps=3, save_every=3, eval_every=0)
    run_pretraining(cfg)
    resumed = tiny_run(tmp_path, max_steps=6, save_every=3, eval_every=0, resume="auto")
    resumed.data.tokenizer = str(ckpts["bert_other"])
    with pytest.raises(ConfigError, match=r"data.tokenizer=.* is not the tokenizer of the run being resumed"):
        run_pretraining(resumed)

    # train.resume=<another run's checkpoint> into a new directory trained a new tokenizer (scrambled embeddings),
    # and a tokenizer/ left by a run that never checkpointed was reused whatever the data settings were
    from pretrain.tokenizer import load_tokenizer

    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000003"
    elsewhere = tiny_run(tmp_path, max_steps=4, eval_every=0, resume=str(checkpoint), output_dir=str(tmp_path / "b"))
    elsewhere.data.lowercase = False  # a fresh tokenizer would differ
    run_pretraining(elsewhere)
    assert load_tokenizer(str(tmp_path / "b" / "tokenizer")).get_vocab() == load_tokenizer(str(checkpoint)).get_vocab()
    stale = tmp_path / "c"
    load_tokenizer(str(ckpts["bert_other"])).save_pretrained(str(stale / "tokenizer"))
    run_pretraining(tiny_run(tmp_path, max_steps=1, eval_every=0, resume="auto", output_dir=str(stale)))
    assert load_tokenizer(str(stale / "tokenizer")).get_vocab() == load_tokenizer(str(checkpoint)).get_vocab()


def test_a_deleted_setting_is_refused_not_replaced_by_the_builtin_default(tmp_path):
    status, stderr = run(["~model.hidden_size", f"train.output_dir={tmp_path}/run"], ROOT, "pretrain")
    assert_user_error(status, stderr, "~model.hidden_size deletes a setting", "give it a value instead")
    # a defaults-list group may be dropped (~recipe: the model's recipe off): the run goes on to its next check
    status, stderr = run(
        ["model=gpt-tiny", "~recipe", "train.lr=-1", f"train.output_dir={tmp_path}/run"], ROOT, "pretrain"
    )
    assert_user_error(status, stderr, "train.lr must be > 0")


def test_fine_tuning_refuses_an_export_hugging_face_has_no_class_for_before_training():
    """A Llama multiple-choice model trained, then failed in its export (HF has no such class):
    train.export=true is refused when the task is built, before any step. Loading such a head from a
    Hugging Face checkpoint initialises it fresh (it was an "internal mapping error")."""
    import transformers

    from pretrain import load_hf
    from pretrain.errors import ConfigError
    from pretrain.interop import check_exportable

    tiny = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**tiny, max_position_embeddings=40))
    for hf, head, kwargs in ((llama, "multiple_choice", {}),):
        model = load_hf(hf, head=head, **kwargs)
        refused = r"train.export=true but the \w+ export maps no Hugging Face class for our"
        with pytest.raises(ConfigError, match=refused) as e:
            check_exportable(model, export=True)
        assert str(e.value).endswith("Set train.export=false (keep our checkpoint format)")
        check_exportable(model, export=False)
    check_exportable(load_hf(llama, head="token_classification", num_labels=2), export=True)  # this one has a class


def test_pretraining_refuses_an_unexportable_model_init_before_training(tmp_path):
    """model=bert (NSP head) with model.init=<a RoBERTa run>: it trained every step, then failed in the export
    (HF RoBERTa has no pretraining head); now refused once the model is built."""
    from test_pretraining import tiny_run

    from pretrain.errors import ConfigError
    from pretrain.pretraining import run_pretraining

    tokenizer = train_tokenizer(TEXT, "bert", vocab_size=120)
    roberta = tiny_config(vocab_size=len(tokenizer), positions_skip_padding=True, pad_token_id=1, max_positions=80)
    save_model_dir(build_model(roberta, "mlm"), tmp_path / "roberta")
    tokenizer.save_pretrained(str(tmp_path / "roberta"))
    cfg = tiny_run(tmp_path, export=True)
    cfg.model.init = cfg.data.tokenizer = str(tmp_path / "roberta")
    with pytest.raises(ConfigError, match=r"train.export=true but the roberta export maps no Hugging Face class for"):
        run_pretraining(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_data_paths_read_twice_or_holding_the_run_are_refused(tmp_path):
    """A file listed twice (or reached by a directory and by name) trained its documents and held them out at
    once; a run whose output or cache lies inside a data directory read its own files as corpus; data.seed=-1
    was a traceback after the tokenizer was trained."""
    from test_pretraining import tiny_run

    from pretrain.config import ConfigError, DataConfig
    from pretrain.data.corpus import resolve_files
    from pretrain.errors import DataError
    from pretrain.pretraining import check_run_inputs

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("one document.\n", encoding="utf-8")
    (corpus / "b.txt").write_text("another one.\n", encoding="utf-8")
    assert [f.name for f in resolve_files([str(corpus)])] == ["a.txt", "b.txt"]
    for paths in ([str(corpus / "a.txt")] * 2, [str(corpus), str(corpus / "b.txt")]):
        with pytest.raises(DataError, match=r"data.paths reaches .*\.txt twice \(.* and .*\); list each file once"):
            resolve_files(paths)
    cfg = tiny_run(tmp_path, output_dir=str(corpus / "runs" / "x"))
    cfg.data.paths = [str(corpus)]
    with pytest.raises(ConfigError, match=r"train.output_dir=.*/corpus/runs/x lies inside the data directory"):
        check_run_inputs(cfg)
    cfg.train.output_dir, cfg.data.cache_dir = str(tmp_path / "run"), str(corpus / ".cache")
    with pytest.raises(ConfigError, match=r"data.cache_dir=.*/corpus/.cache lies inside the data directory"):
        check_run_inputs(cfg)
    with pytest.raises(ConfigError, match=r"data.seed=-1"):
        DataConfig(seed=-1).validate("bert")


@pytest.mark.slow  # a two-job multirun through the CLI
def test_a_multirun_whose_jobs_share_train_output_dir_is_refused_at_the_second_job(tmp_path):
    """train.lr=1e-3,3e-3 with one train.output_dir: job 1 resumed job 0's finished run (lr 0, its metrics)."""
    from test_pretraining import CLI_TINY

    out = tmp_path / "shared"
    args = ["-m", "model=gpt-tiny", "train.lr=1e-3,3e-3", "train.max_steps=2", f"train.output_dir={out}"]
    args += [f"data.cache_dir={tmp_path / 'cache'}", "train.export=false", "train.plot=false", *CLI_TINY]
    status, stderr = run(args, tmp_path, "pretrain")
    assert_user_error(status, stderr, f"train.output_dir={out} is the directory of job 0 of this multirun too")
    assert "leave train.output_dir unset" in stderr


def test_json_documents_and_a_gzip_file_without_its_suffix(tmp_path):
    """{"data": [...]} (documented, but refused: "line 1 is not valid JSON" pretty-printed, "no column 'text'" on
    one line); a gzip file named .txt was "not valid UTF-8 ... iconv -f latin1"."""
    import gzip

    from pretrain.data.corpus import decoded_lines, json_rows
    from pretrain.errors import DataError

    rows = {"data": [{"text": "a cat"}, {"text": "a dog"}]}
    for name, text in (("pretty.json", json.dumps(rows, indent=2)), ("one_line.json", json.dumps(rows))):
        (tmp_path / name).write_text(text, encoding="utf-8")
        assert list(json_rows(tmp_path / name, "text")) == ["a cat", "a dog"]
    (tmp_path / "lines.jsonl").write_text('{"text": "a cat", "data": []}\n{"text": "a dog"}\n', encoding="utf-8")
    assert list(json_rows(tmp_path / "lines.jsonl", "text")) == ["a cat", "a dog"]  # rows that have a data key
    (tmp_path / "object.json").write_text('{\n"rows": 3\n}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"object.json is one JSON object without a 'data' list"):
        list(json_rows(tmp_path / "object.json", "text"))
    (tmp_path / "blank_first.jsonl").write_text('\n\n{"text": "a cat"}\n{"text": "a dog"}\n', encoding="utf-8")
    assert list(json_rows(tmp_path / "blank_first.jsonl", "text")) == ["a cat", "a dog"]
    (tmp_path / "broken.jsonl").write_text('\n{"text": "a cat"}\n{"text": "a d\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken.jsonl line 3 is not valid JSON"):
        list(json_rows(tmp_path / "broken.jsonl", "text"))
    rows_per_line = '{"data": [\n{"text": "a cat"},\n{"text": "a dog"}\n]}\n'  # pretty-printed, a row a line
    (tmp_path / "per_line.json").write_text(rows_per_line, encoding="utf-8")
    assert list(json_rows(tmp_path / "per_line.json", "text")) == ["a cat", "a dog"]
    (tmp_path / "corpus.txt").write_bytes(gzip.compress(b"some text\n"))
    with pytest.raises(DataError, match=r"corpus.txt is gzip-compressed; name it corpus.txt.gz, or decompress it"):
        list(decoded_lines(tmp_path / "corpus.txt"))
