"""What the two hydra apps (pretrain, finetune) share: where conf/ is, and turning a config error
into one clear line instead of a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def run_cli(app: Callable[[], None]) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    if not CONF_DIR.is_dir():
        sys.exit(f"error: the config directory {CONF_DIR} is missing; install the project with `pip install -e .`")
    from .config import ConfigError

    try:
        app()
    except (ConfigError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
