"""`python -m pretrain` / `pretrain`: the hydra app over conf/pretrain.yaml."""

from __future__ import annotations

import logging
import os

import hydra
from omegaconf import DictConfig, OmegaConf

from .config import PretrainConfig, from_dict
from .hydra_utils import CONF_DIR, clear_errors, run_cli


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="pretrain")
@clear_errors
def _app(raw: DictConfig) -> None:
    from .pretraining import run_pretraining

    cfg = from_dict(PretrainConfig, OmegaConf.to_container(raw, resolve=True))
    metrics = run_pretraining(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        logging.getLogger("pretrain").info("final evaluation: %s", metrics)


def main() -> None:
    run_cli(_app)


if __name__ == "__main__":
    main()
