"""The family-independent half of Hugging Face interop: configs, state dicts and files, both ways.
Everything family-specific comes from the adapter (`family_of` for our models, `FAMILIES[model_type]`
for Hugging Face checkpoints)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import ConfigError
from ..model import MultipleChoice, SequenceClassifier, TokenClassifier, Transformer, TransformerConfig
from ..tokenizer import TOKENIZER_FILES, special_affixes
from .base import FAMILIES, HEADS, Adapter, AnyModel, build_model, family_of, head_name, hf_from_ours, ours_from_hf

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- configs


def hf_config_dict(model: AnyModel) -> dict[str, Any]:
    """The Hugging Face config of our model; refuses what the HF architecture cannot express."""
    cfg = model.config
    adapter = family_of(cfg)
    arch = adapter.architecture(model)
    hf, problems = adapter.config_to_hf(model)
    if problems:
        raise ValueError(
            f"cannot export to Hugging Face {arch}: the model uses "
            + "; ".join(problems)
            + ". Train with a config the HF architecture supports, or keep our own checkpoint format."
        )
    common: dict[str, Any] = {"architectures": [arch], "vocab_size": cfg.vocab_size, "pad_token_id": cfg.pad_token_id}
    if cfg.bos_token_id is not None:
        common["bos_token_id"] = cfg.bos_token_id
    if cfg.eos_token_id is not None:
        common["eos_token_id"] = cfg.eos_token_id
    if isinstance(model, SequenceClassifier):
        labels = getattr(model, "id2label", None) or {i: f"LABEL_{i}" for i in range(model.num_labels)}
        common["id2label"] = {int(k): v for k, v in labels.items()}
        common["label2id"] = {v: int(k) for k, v in labels.items()}
        common["problem_type"] = "regression" if model.num_labels == 1 else "single_label_classification"
        if model.symmetric:
            log.warning(
                "symmetric classifier exported as %s: Hugging Face runs one order of a pair; our logits are "
                "its logits of (a, b) plus those of (b, a), minus the classifier bias once",
                arch,
            )
    if isinstance(model, TokenClassifier):
        labels = getattr(model, "id2label", None) or {i: f"LABEL_{i}" for i in range(model.num_labels)}
        common["id2label"] = {int(k): v for k, v in labels.items()}
        common["label2id"] = {v: int(k) for k, v in labels.items()}
    if isinstance(model, MultipleChoice) and cfg.causal:
        common["summary_first_dropout"] = cfg.dropout  # GPT-2's other summary_* defaults are our head
    return {**hf, **common}


def hf_adapter(hf: dict[str, Any]) -> Adapter:
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        supported = " and ".join(a.description for a in FAMILIES.values())
        raise ConfigError(
            f"unsupported architecture: model_type={model_type!r} ({hf.get('architectures')}); "
            f"load_hf supports {supported}"
        )
    return FAMILIES[model_type]


def config_from_hf(hf: dict[str, Any]) -> TransformerConfig:
    return hf_adapter(hf).config_from_hf(hf)


# ----------------------------------------------------------------------------- export


def hf_state_dict(model: AnyModel) -> dict[str, torch.Tensor]:
    """Our weights under Hugging Face names (tied weights once, as HF saves them)."""
    adapter = family_of(model.config)
    ours = {k: _true_vocab_rows(k, v, model.config) for k, v in model.state_dict().items()}
    trunk, heads = adapter.full_table(model)
    out: dict[str, torch.Tensor] = {}
    for o, t, how in trunk + heads:
        if o not in ours:  # e.g. segment embeddings of a model without segments
            continue
        converted = hf_from_ours(ours[o], how)
        if isinstance(t, tuple):
            out.update(zip(t, converted, strict=True))
        else:
            out[t] = converted
    prefix = "" if isinstance(model, Transformer) else adapter.prefix_for(model)
    out.update({prefix + k: v for k, v in adapter.extra_hf_weights(model).items()})
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def check_exportable(model: AnyModel, export: bool) -> None:
    """With train.export=true, a model our export maps to no Hugging Face class (a Llama multiple-choice model; a BERT
    pretraining head on a RoBERTa model.init) is refused before training, not after it."""
    if not export:
        return
    try:
        hf_config_dict(model)
    except ValueError as e:
        raise ConfigError(f"train.export=true but {e} Set train.export=false (keep our checkpoint format)") from None


def save_hf(model: AnyModel, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """Write config.json + model.safetensors (+ tokenizer files) loadable by `transformers` as is."""
    out = Path(out_dir)
    config = hf_config_dict(model)  # refuses inexpressible configs before anything is written
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a directory; save the model to a directory")
    stale = [f.name for f in out.glob("*") if f.name in TOKENIZER_FILES] if out.is_dir() and tokenizer is None else []
    if stale:  # they would be loaded with this model as if they were its tokenizer
        log.warning(
            "%s keeps tokenizer files written before (%s), which may not be this model's; pass "
            "tokenizer= to write its own, or remove them",
            out,
            ", ".join(sorted(stale)),
        )
    out.mkdir(parents=True, exist_ok=True)
    from transformers import AutoConfig

    model_type = config.pop("model_type")
    AutoConfig.for_model(model_type, **config).save_pretrained(out)
    save_file(hf_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
        fit_tokenizer_files(out, tokenizer, model.config)
    return out


def fit_tokenizer_files(out: Path, tokenizer: Any, config: TransformerConfig) -> None:
    """The tokenizer files just written to `out`, made to fit the model saved with them. The files are edited,
    not `tokenizer`: training goes on with the caller's tokenizer as it is. `transformers` reads from the files:
    - model_max_length: the positions the model can use (RoBERTa's table starts after the padding id), so that
      truncation=True (as pipelines pass it) cuts to what fits; a trained tokenizer says 1e30;
    - no token_type_ids from the tokenizer of a model with fewer than two token types (our RoBERTa trained with
      a BERT tokenizer): HF RoBERTa has one row, and the 1s of a pair's second text would index past it;
    - a causal model's texts truncated on the left and its pairs as our fine-tuning encodes them
      (`_causal_post_processor`);
    - no truncation or padding of the last call (a reloaded tokenizer took them as its own)."""
    config_file = out / "tokenizer_config.json"
    if not config_file.is_file():
        return
    settings = json.loads(config_file.read_text(encoding="utf-8"))
    for per_call in ("max_length", "stride", "truncation_strategy"):  # left by the last call with truncation=True
        settings.pop(per_call, None)
    usable = config.max_positions - config.positions_needed(0)
    settings["model_max_length"] = min(int(tokenizer.model_max_length), usable)
    if config.segment_vocab_size < 2 and "token_type_ids" in tokenizer.model_input_names:
        settings["model_input_names"] = [name for name in tokenizer.model_input_names if name != "token_type_ids"]
    if config.causal:  # truncation keeps a text's end, as our fine-tuning does: the classifier reads the last token
        settings["truncation_side"] = "left"
        for rebuilds in ("add_bos_token", "add_eos_token"):  # on load they would rebuild the pair template below
            settings.pop(rebuilds, None)
    config_file.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    backend = out / "tokenizer.json"
    if backend.is_file():
        saved = json.loads(backend.read_text(encoding="utf-8"))
        saved["truncation"] = saved["padding"] = None  # the last call's, not the tokenizer's (reloaded as defaults)
        if config.causal:
            saved["post_processor"] = _causal_post_processor(saved.get("post_processor"), tokenizer, backend)
        backend.write_text(json.dumps(saved, indent=2, ensure_ascii=False), encoding="utf-8")
    elif config.causal:
        log.warning("%s: no tokenizer.json to write the pair form `a <eos> b` into", out)


# post-processors that put tokens around a text (the template below replaces them); others (ByteLevel's offsets) stay
TOKEN_ADDING_PROCESSORS = ("TemplateProcessing", "BertProcessing", "RobertaProcessing")


def _causal_post_processor(current: dict[str, Any] | None, tokenizer: Any, where: Path) -> dict[str, Any] | None:
    """A pair as our causal fine-tuning encodes it (finetune.common.causal_inputs): `a <eos> b` between the
    special tokens the tokenizer puts around one text (BOS for a Llama-style one); a single text as before.
    A GPT-2 tokenizer's own pair is `a b`, other ids (and logits) than the model was fine-tuned on."""
    if tokenizer.eos_token_id is None:
        log.warning("%s: no end-of-text token: transformers encodes a pair (a, b) otherwise than `a <eos> b`", where)
        return current
    prefix, suffix = special_affixes(tokenizer)

    def special(token_id: int) -> dict[str, Any]:
        return {"SpecialToken": {"id": tokenizer.convert_ids_to_tokens(token_id), "type_id": 0}}

    first, second = ({"Sequence": {"id": name, "type_id": 0}} for name in "AB")
    before, after = [special(i) for i in prefix], [special(i) for i in suffix]
    specials = {tokenizer.convert_ids_to_tokens(i): i for i in {*prefix, *suffix, tokenizer.eos_token_id}}
    template = {
        "type": "TemplateProcessing",
        "single": [*before, first, *after],
        "pair": [*before, first, special(tokenizer.eos_token_id), second, *after],
        "special_tokens": {t: {"id": t, "ids": [i], "tokens": [t]} for t, i in specials.items()},
    }
    current = current or {"type": "Sequence", "processors": []}
    processors = current["processors"] if current["type"] == "Sequence" else [current]
    kept = [p for p in processors if p["type"] not in TOKEN_ADDING_PROCESSORS]
    return {"type": "Sequence", "processors": [*kept, template]} if kept else template


# ----------------------------------------------------------------------------- import


def load_hf(src: Any, head: str | None = None, **head_kwargs: Any) -> AnyModel:
    """Our model from a Hugging Face checkpoint of a supported family.

    `src`: a checkpoint directory, a hub name (downloaded by huggingface_hub; needs internet) or a
    built `transformers` model. `head`: one of HEADS; by default the checkpoint's own architecture.
    Pretraining heads the checkpoint lacks are an error; fine-tuning heads (classification, qa,
    token_classification, multiple_choice) it lacks are initialised fresh and logged."""
    hf_config, state = _read_hf(src)
    adapter = hf_adapter(hf_config)
    try:
        config = adapter.config_from_hf(hf_config)
    except KeyError as e:
        raise ConfigError(f"{src}: config.json lacks {e}, which a {hf_config.get('model_type')} config has") from None
    arch = (hf_config.get("architectures") or [adapter.architectures["base"]])[0]
    head = head or adapter.head_for(arch)
    if head is None:
        raise ConfigError(
            f"unsupported architecture {arch!r}; load it with head= one of {list(HEADS)} (the trunk is kept), "
            "or fine-tune it with python -m finetune, which picks the task's head"
        )
    if head in ("classification", "token_classification") and "num_labels" not in head_kwargs:
        head_kwargs["num_labels"] = len(hf_config.get("id2label") or {0: 0, 1: 1})
    model = build_model(config, head, **head_kwargs)
    if head in ("classification", "token_classification") and hf_config.get("id2label"):
        model.id2label = {int(k): v for k, v in hf_config["id2label"].items()}
    load_hf_state_dict(model, state, source=str(src) if not hasattr(src, "config") else type(src).__name__)
    return model


def load_hf_state_dict(model: AnyModel, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    adapter = family_of(model.config)
    state = adapter.add_prefix(adapter.normalise_keys(state), model)
    trunk, heads = adapter.full_table(model)
    ours: dict[str, torch.Tensor] = {}
    for o, t, how in trunk + heads:
        names = t if isinstance(t, tuple) else (t,)
        if all(n in state for n in names):
            ours[o] = ours_from_hf(tuple(state[n] for n in names) if isinstance(t, tuple) else state[t], how)
    # a weight HF may keep under two names (an untied MLM bias) needs one of them
    missing = [o for o in dict.fromkeys(o for o, _, _ in trunk + heads) if o not in ours]
    # the trunk (but an unused pooler) and a task's pretrained head must come from the checkpoint
    required_prefixes = HEADS[head_name(model)].required
    trunk_names = {o for o, _, _ in trunk}
    pooler = ("pooler.weight", "pooler.bias")
    required = [o for o in missing if (o in trunk_names and not o.endswith(pooler)) or o.startswith(required_prefixes)]
    if required:
        raise ConfigError(
            f"{source} has no weights for {required[:6]}{' ...' if len(required) > 6 else ''}: "
            f"it lacks the head that {type(model).__name__} needs. Load it with head='base', or with a "
            "fine-tuning head (classification, qa) whose fresh weights are initialised."
        )
    fresh = [o for o in missing if o not in required]
    if not heads and not isinstance(model, Transformer):  # a head the export maps to no HF class: all new
        trunk_names |= {k for k in model.state_dict() if k.startswith("transformer.")}
        fresh += [k for k in model.state_dict() if k not in trunk_names and not _is_tied(model, k)]
    if fresh:
        log.warning("%s: newly initialised (not in the checkpoint): %s", source, fresh)
    current = model.state_dict()
    ours = {k: _padded_vocab_rows(k, v, current[k], model.config.vocab_size) for k, v in ours.items()}
    head_names = {o for o, _, _ in heads}
    wrong = []
    for k in [k for k, v in ours.items() if v.shape != current[k].shape]:
        shape, expected = tuple(ours[k].shape), tuple(current[k].shape)
        if k in head_names and not k.startswith(required_prefixes):  # another task's head (num_labels): fresh
            del ours[k]
            log.warning("%s: %s has shape %s, this head %s: newly initialised", source, k, shape, expected)
            fresh.append(k)
        else:
            wrong.append(f"{k} {shape} (expected {expected})")
    if wrong:
        raise ConfigError(f"{source}: weights of another shape than its config.json says: {', '.join(wrong[:3])}")
    result = model.load_state_dict(ours, strict=False)
    leftover = [k for k in result.missing_keys if k not in fresh and not _is_tied(model, k)]
    if leftover or result.unexpected_keys:
        raise RuntimeError(f"internal mapping error: missing {leftover}, unexpected {result.unexpected_keys}")


# our tensors with one row per vocabulary entry: config.padded_vocab_size rows here, vocab_size in the export
VOCAB_ROWS = ("embeddings.word.weight", "mlm_head.decoder.weight", "lm_head.weight")


def _true_vocab_rows(key: str, tensor: torch.Tensor, config: TransformerConfig) -> torch.Tensor:
    """Export: the padded vocabulary rows (never used ids) are dropped."""
    return tensor[: config.vocab_size] if key.endswith(VOCAB_ROWS) else tensor


def _padded_vocab_rows(key: str, theirs: torch.Tensor, current: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Import: a checkpoint's vocab_size rows, completed with the model's own (initialised) padded rows.
    Any other row count is left as it is (and refused as a shape mismatch): never random real rows."""
    if not key.endswith(VOCAB_ROWS) or theirs.size(0) != vocab_size or theirs.size(0) >= current.size(0):
        return theirs
    return torch.cat([theirs, current[theirs.size(0) :].to(theirs.dtype)])


def _is_tied(model: torch.nn.Module, key: str) -> bool:
    return key.endswith(("mlm_head.decoder.weight", "lm_head.weight")) and model.config.tie_embeddings


def _read_hf(src: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if hasattr(src, "config") and hasattr(src, "state_dict"):  # a built transformers model
        config = src.config.to_dict()
        config["architectures"] = [type(src).__name__]  # what it is, whatever its config says
        return config, {k: v.detach() for k, v in src.state_dict().items()}
    path = Path(src)
    if not path.is_dir():
        if path.exists() or str(src).startswith((".", "/")):
            raise FileNotFoundError(f"{src}: not a Hugging Face checkpoint directory")
        from huggingface_hub import snapshot_download  # a hub name: needs internet

        path = Path(
            snapshot_download(str(src), allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"])
        )
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path} has no config.json; is it a Hugging Face checkpoint directory?")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ConfigError(f"{config_file} is not valid JSON ({e}); the checkpoint is damaged") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{config_file} holds a JSON {type(config).__name__}, not a config object")
    try:
        return config, read_weights(path)
    except (SafetensorError, EOFError, RuntimeError) as e:  # a truncated or foreign weights file
        raise ConfigError(
            f"{path}: its weights do not load ({type(e).__name__}: {e}); the checkpoint is damaged"
        ) from None


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """All weights of a checkpoint directory: safetensors (single or sharded), else .bin loaded
    with weights_only=True so no arbitrary object is unpickled."""
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").exists():
        return load_file(str(path / "model.safetensors"))
    if index.exists():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(str(path / shard)).items()}
    if (path / "pytorch_model.bin").exists():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path} has no model.safetensors or pytorch_model.bin")
