"""Pretraining data: documents -> tokens -> examples (BERT sentence pairs or packed GPT blocks),
cached as Arrow; collators that pad and mask per batch; a batch plan that can start at any step.

This module knows the tokenizer and the sequence length, nothing of the model.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import random
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ConfigError, DataConfig

log = logging.getLogger(__name__)

SAMPLE_CORPUS = Path(__file__).parent / "sample_data" / "shakespeare.txt"
CACHE_VERSION = "2"
IGNORE_INDEX = -100


# ----------------------------------------------------------------------------- documents


def check_text_files(paths: Sequence[str | Path]) -> list[Path]:
    """Fail early and clearly on a missing, empty or non-UTF-8 file."""
    files = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data file {path} does not exist; check data.paths")
        if path.stat().st_size == 0:
            raise ValueError(f"data file {path} is empty; remove it from data.paths")
        with path.open("rb") as f:
            offset = 0
            decoder = __import__("codecs").getincrementaldecoder("utf-8")()
            while chunk := f.read(1 << 20):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as e:
                    raise ValueError(
                        f"data file {path} is not valid UTF-8 (byte {offset + e.start}); "
                        "re-encode it, e.g. iconv -f latin1 -t utf-8"
                    ) from None
                offset += len(chunk)
        files.append(path)
    return files


def load_documents(cfg: DataConfig) -> Any:
    """A `datasets.Dataset` with one document per row in column `text`."""
    import datasets

    if cfg.format in ("sample", "text"):
        files = check_text_files([SAMPLE_CORPUS] if cfg.format == "sample" else cfg.paths)
        # size and mtime make the cached Arrow copy follow the files' contents
        stamps = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        if next(text_documents(stamps), None) is None:
            raise ValueError(f"the corpus is empty: {', '.join(map(str, files))} hold only blank lines")
        features = datasets.Features({"text": datasets.Value("string")})
        ds = datasets.Dataset.from_generator(text_documents, features=features, gen_kwargs={"files": stamps})
    elif cfg.format in ("json", "parquet"):
        files = [str(f) for f in _existing(cfg.paths)]
        ds = datasets.load_dataset(cfg.format, data_files=files, split="train")
    else:  # hub: needs internet
        ds = datasets.load_dataset(cfg.hub_name, cfg.hub_config, split=cfg.hub_split)
    if cfg.text_column not in ds.column_names:
        raise ConfigError(
            f"the data has no column {cfg.text_column!r} (columns: {ds.column_names}); set data.text_column"
        )
    ds = ds.select_columns([cfg.text_column])
    if cfg.text_column != "text":
        ds = ds.rename_column(cfg.text_column, "text")
    ds = ds.filter(lambda b: [bool(t and t.strip()) for t in b["text"]], batched=True)
    if cfg.max_documents:
        ds = ds.select(range(min(cfg.max_documents, len(ds))))
    if len(ds) == 0:
        raise ValueError("the corpus is empty: no non-blank document was found in the data; check data.paths")
    return ds


LINES_PER_PSEUDO_DOCUMENT = 100


def text_documents(files: Sequence[tuple[str, int, int]]) -> Iterator[dict[str, str]]:
    """Documents of text files: runs of lines between blank (or whitespace-only) lines. A file with
    no blank line at all is cut into pseudo-documents of LINES_PER_PSEUDO_DOCUMENT lines, so it still
    has documents to pair and to hold out."""
    for name, *_ in files:
        with open(name, encoding="utf-8") as f:
            paragraphs = _paragraphs(f)
            head = [p for p in (next(paragraphs, None), next(paragraphs, None)) if p is not None]
            if len(head) == 1 and len(head[0]) > LINES_PER_PSEUDO_DOCUMENT:
                log.warning(
                    "%s has no blank line between documents: every %d lines are taken as one document",
                    name,
                    LINES_PER_PSEUDO_DOCUMENT,
                )
                lines = head[0]
                head = [
                    lines[i : i + LINES_PER_PSEUDO_DOCUMENT] for i in range(0, len(lines), LINES_PER_PSEUDO_DOCUMENT)
                ]
            for lines in itertools.chain(head, paragraphs):
                yield {"text": "\n".join(lines)}


def _paragraphs(lines: Iterable[str]) -> Iterator[list[str]]:
    paragraph: list[str] = []
    for line in lines:
        if line.strip():
            paragraph.append(line.rstrip("\n"))
        elif paragraph:
            yield paragraph
            paragraph = []
    if paragraph:
        yield paragraph


def _existing(paths: Sequence[str]) -> list[Path]:
    for p in paths:
        if not Path(p).expanduser().is_file():
            raise FileNotFoundError(f"data file {p} does not exist; check data.paths")
    return [Path(p).expanduser() for p in paths]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(document: str) -> list[str]:
    """One sentence per line when the document has lines; otherwise a simple punctuation splitter."""
    lines = [s.strip() for s in document.split("\n") if s.strip()]
    if len(lines) > 1:
        return lines
    return [s for s in _SENTENCE_END.split(document.strip()) if s]


# ----------------------------------------------------------------------------- examples


def bert_pairs_from_document(
    docs: Sequence[Sequence[Sequence[int]]], index: int, max_length: int, short_seq_prob: float, rng: random.Random
) -> list[tuple[list[int], list[int], int]]:
    """BERT's create_pretraining_data for one document: (A, B, is_random) pairs.

    Chunks of sentences fill up to the target length (shorter with `short_seq_prob`); A is the first
    part of a chunk; B is the true continuation or, half the time, text from another document.
    Label 1 means B is random (Hugging Face's convention)."""
    doc = docs[index]
    max_tokens = max_length - 3  # [CLS] A [SEP] B [SEP]
    target = max_tokens if rng.random() >= short_seq_prob else rng.randint(2, max_tokens)
    pairs = []
    chunk: list[Sequence[int]] = []
    length = 0
    i = 0
    while i < len(doc):
        chunk.append(doc[i])
        length += len(doc[i])
        if i == len(doc) - 1 or length >= target:
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            a = [t for s in chunk[:a_end] for t in s]
            b: list[int] = []
            is_random = len(docs) > 1 and rng.random() < 0.5
            if not is_random:
                b = [t for s in chunk[a_end:] for t in s]
                while not b and i + 1 < len(doc):  # a one-sentence chunk: B is the next sentence(s)
                    i += 1
                    b.extend(doc[i])
                if not b and len(a) >= 2:  # the document's last sentence: its second half continues its first
                    a, b = a[: len(a) // 2], a[len(a) // 2 :]
            if is_random:
                other = rng.randrange(len(docs) - 1)
                other += other >= index  # any document but this one
                start = rng.randrange(len(docs[other]))
                for sentence in docs[other][start:]:
                    b.extend(sentence)
                    if len(b) >= target - len(a):
                        break
                i -= len(chunk) - a_end  # the unused sentences start the next chunk
            _truncate_pair(a, b, max_tokens, rng)
            if a and b:
                pairs.append((a, b, int(is_random)))
            chunk, length = [], 0
        i += 1
    return pairs


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: random.Random) -> None:
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def pack_blocks(token_lists: Sequence[Sequence[int]], block_size: int) -> list[np.ndarray]:
    """GPT: documents (each already ending in end-of-text) joined and cut into blocks of block_size.
    Every token appears exactly once, in order; only the last block may be shorter."""
    flat = (
        np.concatenate([np.asarray(t, dtype=np.int64) for t in token_lists]) if token_lists else np.zeros(0, np.int64)
    )
    return [flat[i : i + block_size] for i in range(0, len(flat), block_size)]


# ----------------------------------------------------------------------------- the pipeline


@dataclass
class PretrainingData:
    train: Any  # datasets.Dataset of examples
    validation: Any
    unigram_entropy: float  # nats/token of a unigram model of the training tokens: the floor to beat


def build_pretraining_data(
    cfg: DataConfig, tokenizer: Any, family: str, seed: int, docs: Any = None
) -> PretrainingData:
    """Documents -> held-out split -> tokens -> examples, cached on disk keyed by everything it depends on."""
    import datasets

    docs = docs if docs is not None else load_documents(cfg)
    key = _cache_key(docs._fingerprint, tokenizer, family, cfg, seed)
    cache = cache_root(cfg) / key
    if (cache / "meta.json").exists():
        log.info("using cached examples in %s", cache)
        return _load_cached(cache, json.loads((cache / "meta.json").read_text())["unigram_entropy"])

    n_val = int(round(len(docs) * cfg.validation_fraction))
    if cfg.validation_fraction > 0:
        n_val = max(1, n_val)
    if n_val >= len(docs):
        raise ValueError(
            f"the corpus has only {len(docs)} document(s): too few to hold out {cfg.validation_fraction:.0%} "
            "for evaluation; add documents (blank line between them) or lower data.validation_fraction"
        )
    order = np.random.default_rng(seed).permutation(len(docs))
    splits = {"validation": docs.select(sorted(order[:n_val])), "train": docs.select(sorted(order[n_val:]))}

    out = {}
    for name, split in splits.items():
        if len(split) == 0:  # validation_fraction=0: no held-out split
            continue
        tokens = split.map(
            _tokenize_sentences if family == "bert" else _tokenize_documents,
            batched=True,
            fn_kwargs={"tokenizer": tokenizer},
            remove_columns=["text"],
            num_proc=_procs(cfg, split),
            desc=f"tokenizing {name}",
        )
        if family == "bert":
            out[name] = tokens.map(
                _bert_examples,
                batched=True,
                batch_size=1000,
                with_indices=True,
                remove_columns=["sentences"],
                fn_kwargs={"tokenizer": tokenizer, "cfg": cfg, "seed": seed},
                num_proc=_procs(cfg, tokens),
                desc=f"building {name} sentence pairs",
            )
        else:
            blocks = pack_blocks(tokens["input_ids"], cfg.max_length)
            out[name] = datasets.Dataset.from_dict({"input_ids": blocks})
        if len(out[name]) == 0 and name == "train":
            raise ValueError(f"the {name} split produced no examples; the corpus is too small for data.max_length")

    entropy = _unigram_entropy(out["train"], tokenizer, family)
    tmp = cache.with_name(cache.name + ".tmp")
    if tmp.exists():  # left by a run killed while writing
        shutil.rmtree(tmp)
    for name, ds in out.items():
        ds.save_to_disk(str(tmp / name))
    (tmp / "meta.json").write_text(json.dumps({"unigram_entropy": entropy}))
    if cache.exists():
        shutil.rmtree(cache)
    tmp.rename(cache)
    return _load_cached(cache, entropy)


def _load_cached(cache: Path, entropy: float) -> PretrainingData:
    import datasets

    train = datasets.load_from_disk(str(cache / "train"))
    # an empty split cannot be saved as Arrow: no validation directory means no held-out data
    validation = datasets.load_from_disk(str(cache / "validation")) if (cache / "validation").exists() else []
    return PretrainingData(train, validation, entropy)


def cache_root(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir or Path.home() / ".cache" / "pretrain").expanduser()


def _procs(cfg: DataConfig, ds: Any) -> int | None:
    return cfg.num_proc if cfg.num_proc > 1 and len(ds) >= 10 * cfg.num_proc else None


def _cache_key(fingerprint: str, tokenizer: Any, family: str, cfg: DataConfig, seed: int) -> str:
    h = hashlib.sha256()
    params = (
        CACHE_VERSION,
        fingerprint,
        family,
        cfg.max_length,
        cfg.short_seq_prob,
        cfg.validation_fraction,
        cfg.max_documents,
        seed,
    )
    h.update(json.dumps(params).encode())
    h.update(tokenizer.backend_tokenizer.to_str().encode())
    return h.hexdigest()[:24]


def _tokenize_sentences(batch: dict[str, list], tokenizer: Any) -> dict[str, list]:
    per_doc = [split_sentences(t) for t in batch["text"]]
    flat = [s for doc in per_doc for s in doc]
    ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    sentences, k = [], 0
    for doc in per_doc:
        sentences.append([s for s in ids[k : k + len(doc)] if s])
        k += len(doc)
    return {"sentences": sentences}


def _tokenize_documents(batch: dict[str, list], tokenizer: Any) -> dict[str, list]:
    ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
    return {"input_ids": [x + [tokenizer.eos_token_id] for x in ids]}


def _bert_examples(batch: dict[str, list], indices: list[int], tokenizer: Any, cfg: DataConfig, seed: int):
    """Random B segments come from the other documents of the same 1000-document batch."""
    rng = random.Random(seed * 1_000_003 + indices[0])
    docs = [d for d in batch["sentences"] if d]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    out: dict[str, list] = {"input_ids": [], "token_type_ids": [], "next_sentence_label": []}
    for i in range(len(docs)):
        for a, b, is_random in bert_pairs_from_document(docs, i, cfg.max_length, cfg.short_seq_prob, rng):
            out["input_ids"].append([cls, *a, sep, *b, sep])
            out["token_type_ids"].append([0] * (len(a) + 2) + [1] * (len(b) + 1))
            out["next_sentence_label"].append(is_random)
    return out


def _unigram_entropy(ds: Any, tokenizer: Any, family: str) -> float:
    """Entropy of the training tokens that are prediction targets (BERT never predicts specials)."""
    ids = ds.data.column("input_ids").combine_chunks().flatten().to_numpy()
    counts = np.bincount(ids, minlength=len(tokenizer)).astype(np.float64)
    if family == "bert":
        counts[list(tokenizer.all_special_ids)] = 0
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# ----------------------------------------------------------------------------- batches


def example_seed(seed: int, epoch: int, index: int) -> int:
    """Masking of an example depends only on (seed, epoch, index): exact resume, and the same masks
    whether a global batch runs in one process or several."""
    return (seed * 1_000_003 + epoch * 2_147_483_647 + index) % (1 << 62)


class BatchPlan:
    """Which examples make up global batch k, for any k, with no iteration: epoch e is a permutation
    seeded by (seed, e). Resuming at step k is index arithmetic, not a replay of the data."""

    def __init__(self, num_examples: int, global_batch_size: int, seed: int, shuffle: bool = True):
        if num_examples < global_batch_size:
            raise ValueError(
                f"only {num_examples} training examples for a global batch of {global_batch_size}; "
                "use more data or a smaller train.batch_size"
            )
        self.num_examples, self.global_batch_size, self.seed, self.shuffle = (
            num_examples,
            global_batch_size,
            seed,
            shuffle,
        )
        self.batches_per_epoch = num_examples // global_batch_size  # the incomplete tail batch is dropped

    def batch(self, k: int) -> tuple[int, list[int]]:
        epoch, position = divmod(k, self.batches_per_epoch)
        order = self._order(epoch)
        return epoch, order[position * self.global_batch_size : (position + 1) * self.global_batch_size].tolist()

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_examples)
        cached = getattr(self, "_cached", None)
        if cached is None or cached[0] != epoch:
            self._cached = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_examples))
        return self._cached[1]


class PlannedBatches(torch.utils.data.Sampler):
    """Yields this process's share of global batches start, start+1, ... as (index, seed) pairs."""

    def __init__(self, plan: BatchPlan, start: int, rank: int, world_size: int, seed: int):
        self.plan, self.start, self.rank, self.world_size, self.seed = plan, start, rank, world_size, seed

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        k = self.start
        per_process = self.plan.global_batch_size // self.world_size
        while True:
            epoch, indices = self.plan.batch(k)
            mine = indices[self.rank * per_process : (self.rank + 1) * per_process]
            yield [(i, example_seed(self.seed, epoch, i)) for i in mine]
            k += 1


class SeededExamples(torch.utils.data.Dataset):
    """Looks up (index, seed) pairs and passes the seed on to the collator."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, seed = key
        return {**self.dataset[int(index)], "_seed": seed}


def pad_to_tensor(sequences: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    length = max(len(s) for s in sequences)
    out = torch.full((len(sequences), length), value, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


class MLMCollator:
    """Pads a batch and masks it: `mlm_probability` of the non-special tokens (whole words with
    `whole_word_mask`); of those 80% become [MASK], 10% a random token, 10% stay. Labels are -100
    elsewhere. Each example is masked with its own generator (seed from `_seed`)."""

    def __init__(self, tokenizer: Any, mlm_probability: float = 0.15, whole_word_mask: bool = False):
        self.pad_id, self.mask_id = tokenizer.pad_token_id, tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        self.mlm_probability = mlm_probability
        self.special = torch.zeros(self.vocab_size, dtype=torch.bool)
        self.special[list(tokenizer.all_special_ids)] = True
        self.continuation = None
        if whole_word_mask:
            tokens = tokenizer.convert_ids_to_tokens(list(range(self.vocab_size)))
            self.continuation = torch.tensor([t.startswith("##") for t in tokens])

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids = pad_to_tensor([e["input_ids"] for e in examples], self.pad_id)
        batch = {
            "input_ids": input_ids,
            "attention_mask": (pad_to_tensor([e["input_ids"] for e in examples], -1) != -1).long(),
        }
        if "token_type_ids" in examples[0]:
            batch["token_type_ids"] = pad_to_tensor([e["token_type_ids"] for e in examples], 0)
        if "next_sentence_label" in examples[0]:
            batch["next_sentence_label"] = torch.tensor([e["next_sentence_label"] for e in examples])
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            ids, row_labels = self.mask(input_ids[row, :n], torch.Generator().manual_seed(example.get("_seed", row)))
            input_ids[row, :n], labels[row, :n] = ids, row_labels
        batch["labels"] = labels
        return batch

    def mask(self, ids: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        eligible = ~self.special[ids]
        draw = torch.rand(ids.shape, generator=generator)
        if self.continuation is None:
            selected = eligible & (draw < self.mlm_probability)
        else:  # choose words, then take all their pieces; a word is a start piece and its ## pieces
            starts = eligible & ~self.continuation[ids]
            word = torch.cumsum(starts.long(), 0) - 1
            chosen_word = (draw < self.mlm_probability) & starts
            selected = (
                eligible & (word >= 0) & chosen_word[starts][word.clamp(min=0)] if starts.any() else eligible & False
            )
        labels = torch.where(selected, ids, IGNORE_INDEX)
        how = torch.rand(ids.shape, generator=generator)
        random_tokens = torch.randint(self.vocab_size, ids.shape, generator=generator)
        ids = torch.where(selected & (how < 0.8), self.mask_id, ids)
        ids = torch.where(selected & (how >= 0.8) & (how < 0.9), random_tokens, ids)
        return ids, labels


class CausalCollator:
    """Stacks packed blocks; labels are the inputs (the loss shifts them). Pads only a short tail block."""

    def __init__(self, tokenizer: Any):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [e["input_ids"] for e in examples]
        input_ids = pad_to_tensor(seqs, self.pad_id)
        batch = {"input_ids": input_ids, "labels": pad_to_tensor(seqs, IGNORE_INDEX)}
        if len({len(s) for s in seqs}) > 1:
            batch["attention_mask"] = (batch["labels"] != IGNORE_INDEX).long()
        return batch
