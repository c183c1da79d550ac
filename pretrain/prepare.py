"""`python -m pretrain.prepare`: tokenizer and token shards only, from the same hydra config as
`python -m pretrain`, so a cluster job can prepare once and many training jobs start at once.

    python -m pretrain.prepare model=gpt-tiny data.paths=[corpus/*.txt.gz]
    python -m pretrain model=gpt-tiny data.paths=[corpus/*.txt.gz]      # finds the prepared cache
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from .config import PretrainConfig, from_dict
from .hydra_utils import CONF_DIR, clear_errors, run_cli

log = logging.getLogger("pretrain")


def prepare(cfg: PretrainConfig) -> dict[str, object]:
    """Trains (or finds) the tokenizer and prepares the examples; returns a summary."""
    from .data import build_pretraining_data, trained_tokenizer
    from .tokenizer import check_family, load_tokenizer

    cfg.validate()
    family = cfg.model.style
    tokenizer = load_tokenizer(cfg.data.tokenizer) if cfg.data.tokenizer else trained_tokenizer(cfg.data, family)
    check_family(tokenizer, family)
    data = build_pretraining_data(cfg.data, tokenizer, family, nsp=cfg.model.nsp)
    return {
        "tokens_dir": str(data.tokens_dir),
        "train_examples": len(data.train),
        "validation_examples": len(data.validation),
        "unigram_entropy": data.unigram_entropy,
    }


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="pretrain")
@clear_errors
def _app(raw: DictConfig) -> None:
    cfg = from_dict(PretrainConfig, OmegaConf.to_container(raw, resolve=True))
    log.info("prepared: %s", prepare(cfg))


def main() -> None:
    run_cli(_app)


if __name__ == "__main__":
    main()
