"""The config layout: each app's presets compose into its typed dataclasses, the model config is defined
once (TransformerConfig's fields), and speed-only settings live in the impl group."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from finetune.config import FinetuneConfig
from pretrain.config import CONF_DIR, ImplConfig, ModelConfig, PretrainConfig, from_dict, model_preset
from pretrain.errors import ConfigError
from pretrain.model import TransformerConfig


def composed(app_dir: Path, name: str, overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(app_dir), version_base=None):
        raw = compose(name, overrides=[*overrides, "train.output_dir=unused"])
        return OmegaConf.to_container(raw, resolve=True)


def presets(group: Path) -> list[str]:
    return sorted(p.stem for p in group.glob("*.yaml"))


def test_every_preset_of_each_app_composes_into_its_typed_config():
    corpora, datasets = presets(CONF_DIR / "data"), presets(CONF_DIR / "finetune" / "data")
    assert "sample" in corpora and "sst2" in datasets and not set(corpora) & set(datasets)
    for corpus in corpora:
        for model in presets(CONF_DIR / "model"):
            cfg = from_dict(PretrainConfig, composed(CONF_DIR, "pretrain", [f"data={corpus}", f"model={model}"]))
            assert cfg.data.name and cfg.model.name == model
    for dataset in datasets:
        cfg = from_dict(FinetuneConfig, composed(CONF_DIR / "finetune", "finetune", [f"data={dataset}"]))
        assert cfg.data.name and cfg.impl == ImplConfig()


def test_a_model_preset_brings_its_tuned_recipe_and_overrides_still_win():
    """conf/recipe/<model>.yaml follows the model choice; presets without one keep conf/train/pretrain.yaml."""
    shared = from_dict(PretrainConfig, composed(CONF_DIR, "pretrain", []))
    gpt = from_dict(PretrainConfig, composed(CONF_DIR, "pretrain", ["model=gpt-tiny"]))
    mine = from_dict(PretrainConfig, composed(CONF_DIR, "pretrain", ["model=gpt-tiny", "train.lr=1e-3"]))
    other = from_dict(PretrainConfig, composed(CONF_DIR, "pretrain", ["model=gpt-mini"]))
    assert (shared.train.lr, shared.train.warmup_steps) == (other.train.lr, other.train.warmup_steps) == (2e-3, 60)
    assert (gpt.train.lr, gpt.train.warmup_steps, gpt.train.batch_size, gpt.train.max_steps) == (3e-3, 30, 8, 1600)
    assert (mine.train.lr, mine.train.warmup_steps) == (1e-3, 30)


def test_an_app_does_not_see_the_other_apps_data_presets():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="data/sst2"):
        composed(CONF_DIR, "pretrain", ["data=sst2"])
    with pytest.raises(MissingConfigException, match="data/sample"):
        composed(CONF_DIR / "finetune", "finetune", ["data=sample"])


def test_impl_presets_and_the_keys_that_moved_there(caplog):
    cfg = from_dict(PretrainConfig, composed(CONF_DIR, "pretrain", ["impl=gpu_fast"]))
    assert (cfg.impl.precision, cfg.impl.compile, cfg.impl.num_workers) == ("bf16", True, 2)
    assert cfg.impl.parallelism == "auto"  # the rest from impl/default.yaml
    with caplog.at_level(logging.WARNING, logger="pretrain"):
        cfg = from_dict(PretrainConfig, composed(CONF_DIR, "pretrain", ["train.num_workers=3", "train.cpu=true"]))
    assert (cfg.impl.num_workers, cfg.impl.cpu) == (3, True)
    assert "train.num_workers is now impl.num_workers" in caplog.text
    assert "train.precision" not in caplog.text  # the YAML's null placeholders are not the user's
    assert not {"num_workers", "cpu", "precision", "compile", "parallelism"} & {
        f.name for f in dataclasses.fields(type(cfg.train))
    }


def test_the_model_config_is_defined_once():
    ours = {f.name: f for f in dataclasses.fields(ModelConfig)}
    for f in dataclasses.fields(TransformerConfig):  # every architecture field, with the model's own default
        assert f.name in ours
        if f.name not in ("vocab_size", "causal", "pad_token_id"):
            assert ours[f.name].default == f.default, f.name

    class Tokenizer(list):
        pad_token_id, eos_token_id = 3, 7

    gpt = model_preset("gpt-tiny").transformer_config(Tokenizer(range(300)))
    assert type(gpt) is TransformerConfig
    assert (gpt.vocab_size, gpt.causal, gpt.pad_token_id, gpt.eos_token_id) == (300, True, 3, 7)
    bert = model_preset("bert-tiny").transformer_config(Tokenizer(range(100)))
    assert (bert.causal, bert.eos_token_id, bert.hidden_size) == (False, None, 128)


@pytest.mark.parametrize(
    "values, words",
    [
        ({"family": "bert", "causal": True}, "model.causal=True is out of range: it follows model.family"),
        ({"family": "gpt", "eos_token_id": 5}, "model.eos_token_id=5 is out of range: it follows model.family"),
        ({"hidden_size": 100, "num_heads": 3}, "model.hidden_size (100) is not divisible by num_heads (3)"),
        ({"activation": "swish"}, "model.activation='swish' is not one of"),
    ],
)
def test_model_values_are_checked_as_model_keys(values, words):
    with pytest.raises(ConfigError) as error:
        from_dict(ModelConfig, values, "model").validate()
    assert words in str(error.value)


def test_a_warmup_longer_than_the_run_is_warned_about(caplog):
    """The learning rate would never reach train.lr: legal (a short test run), but said."""
    from pretrain.config import TrainConfig

    with caplog.at_level(logging.WARNING, logger="pretrain.config"):
        TrainConfig(max_steps=3, warmup_steps=100, lr=1e-3).validate()
    assert "train.warmup_steps=100 > train.max_steps=3: the learning rate never reaches train.lr=0.001" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pretrain.config"):
        TrainConfig(max_steps=300, warmup_steps=100).validate()
        TrainConfig(max_steps=100, warmup_steps=100).validate()  # the last step reaches train.lr
        TrainConfig(max_steps=3, warmup_steps=100, max_minutes=1.0).validate()  # a time budget: its own schedule
    assert "warmup_steps" not in caplog.text
