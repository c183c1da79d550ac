"""`python -m finetune` / `finetune`: the hydra app over conf/finetune/ (its data/ group holds fine-tuning datasets)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from pretrain.config import from_dict
from pretrain.hydra_utils import CONF_DIR, clear_errors, run_cli

from .config import FinetuneConfig


@hydra.main(version_base=None, config_path=str(CONF_DIR / "finetune"), config_name="finetune")
@clear_errors
def _app(raw: DictConfig) -> None:
    from .run import run_finetune

    run_finetune(from_dict(FinetuneConfig, OmegaConf.to_container(raw, resolve=True)))


def main() -> None:
    run_cli(_app)


if __name__ == "__main__":
    main()
