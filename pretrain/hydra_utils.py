"""What the two hydra apps (pretrain, finetune) share: where conf/ is, where a run writes, and the two
kinds of failure told apart.

- A user error (a `PretrainError`: a config value, a file, an argument; a missing file; a full disk)
  prints one line, `error: <what is wrong and the fix>`, and exits with status 2.
- Anything else is a bug: its full traceback is printed and the exit status is 1.
- Hydra's own errors (an unknown override, a missing preset) print hydra's message and exit with 2.

PRETRAIN_TRACEBACK=1 shows the traceback of user errors too.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .config import CONF_DIR
from .errors import ConfigError

USER_ERROR = 2

_job_started = False  # hydra exits with 1 on its own errors; ours set this first, so the two are told apart


def _output_dir(default: str) -> str:
    """`train.output_dir` when not given: `default` for a single run; for a multirun sweep, the job's
    own directory inside the sweep's (`<sweep dir>/<job number>`), so jobs never share one. Hydra's
    run directory is `.` (conf/*.yaml): nothing is written outside train.output_dir."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return default
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return str(Path(hydra_cfg.sweep.dir) / str(hydra_cfg.job.num))
    return default


OmegaConf.register_new_resolver("output_dir", _output_dir, replace=True)


def user_error_message(e: BaseException) -> str | None:
    """The one-line message of a user error; None for anything else (a bug keeps its traceback)."""
    from omegaconf.errors import OmegaConfBaseException

    from .errors import PretrainError

    if isinstance(e, PretrainError):
        return str(e)
    if isinstance(e, OmegaConfBaseException):  # an override that does not resolve, e.g. ${typo}
        return f"{e}".splitlines()[0] + " (check the command-line overrides)"
    if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):  # a path the user gave
        return str(e)
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        where = f" writing {e.filename}" if e.filename else ""
        return f"no space left on the device{where}; free some space or choose another train.output_dir"
    if isinstance(e, PermissionError):
        return f"{e}; check the permissions, or choose another train.output_dir / data.cache_dir"
    return None


def report_and_exit(e: BaseException) -> None:
    message = user_error_message(e)
    if message is None or os.environ.get("PRETRAIN_TRACEBACK"):
        traceback.print_exc()
        sys.exit(1 if message is None else USER_ERROR)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USER_ERROR)


def _refuse_deletions() -> None:
    """`~key` removes a setting from the composed config, and the dataclass default (not the preset's value)
    would then be used without a word: refused."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    # a key (~model.hidden_size), not a defaults-list group (~recipe drops the model's recipe, as designed)
    deleted = [o for o in HydraConfig.get().overrides.task if o.startswith("~") and "." in o.split("=")[0]]
    if deleted:
        raise ConfigError(
            f"{deleted[0]} deletes a setting, and the built-in default (not the preset's value) would be used; "
            f"give it a value instead ({deleted[0][1:].split('=')[0]}=...)"
        )


_sweep_output_dirs: dict[tuple[str, Path], int] = {}  # (sweep dir, output dir) -> the job that has it


def _refuse_shared_output_dir(raw: Any) -> None:
    """A multirun whose jobs resolve one train.output_dir (given on the command line): each later job would
    continue the first one's run (resume=auto) instead of training its own values."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    out = Path(str(OmegaConf.select(raw, "train.output_dir"))).expanduser().resolve()
    job = HydraConfig.get().job.num
    first = _sweep_output_dirs.setdefault((str(HydraConfig.get().sweep.dir), out), job)  # one process: one sweep
    if first != job:
        raise ConfigError(
            f"train.output_dir={out} is the directory of job {first} of this multirun too: job {job} would "
            "continue its run; leave train.output_dir unset (each job writes <sweep dir>/<job number>) or put "
            "${hydra:job.num} in it"
        )


def clear_errors(job: Callable[[Any], None]) -> Callable[[Any], None]:
    """Wraps a hydra job: user errors end the run with their message on one line (status 2); any
    other exception prints its full traceback (status 1), which hydra would otherwise shorten."""

    @functools.wraps(job)
    def wrapper(raw: Any) -> None:
        global _job_started
        _job_started = True
        try:
            _refuse_deletions()
            _refuse_shared_output_dir(raw)
            job(raw)
        except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs
            report_and_exit(e)

    return wrapper


def run_cli(app: Callable[[], None]) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not CONF_DIR.is_dir():
        print(f"error: the config directory {CONF_DIR} is missing; install the project with `pip install -e .`")
        sys.exit(USER_ERROR)
    try:
        app()
    except KeyboardInterrupt:  # a second Ctrl-C: stopped between checkpoints, nothing more to say
        print("interrupted: stopped without saving; the last checkpoint resumes (train.resume=auto)", file=sys.stderr)
        sys.exit(130)
    except SystemExit as e:
        if e.code == 1 and not _job_started:  # hydra's own message (bad override, unknown preset) was printed
            sys.exit(USER_ERROR)
        raise
