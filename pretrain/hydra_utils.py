"""What the two hydra apps (pretrain, finetune) share: where conf/ is, and a bad input reported as
one clear line rather than a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def clear_errors(job: Callable[[Any], None]) -> Callable[[Any], None]:
    """Wraps a hydra job: configuration and input errors end the run with their message only
    (PRETRAIN_TRACEBACK=1 shows the traceback)."""
    from .config import ConfigError

    @functools.wraps(job)
    def wrapper(raw: Any) -> None:
        try:
            job(raw)
        except (ConfigError, FileNotFoundError, ValueError) as e:  # our messages name the problem and the fix
            if os.environ.get("PRETRAIN_TRACEBACK"):
                raise
            sys.exit(f"error: {e}")

    return wrapper


def run_cli(app: Callable[[], None]) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not CONF_DIR.is_dir():
        sys.exit(f"error: the config directory {CONF_DIR} is missing; install the project with `pip install -e .`")
    app()
