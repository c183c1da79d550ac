"""User errors: a bad config value, file or argument, not a bug. The command-line tools print the
message of a PretrainError on one line and exit with status 2; any other exception keeps its traceback.
The checks here run before any expensive work."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class PretrainError(Exception):
    """A bad input of the user's (a config value, a file, an argument), not a bug: the command-line
    tools print its message on one line and exit with status 2; any other exception keeps its
    traceback."""


class ConfigError(PretrainError, ValueError):
    """A configuration value is wrong; the message names the key and the fix."""


class DataError(PretrainError, ValueError):
    """A data file is wrong; the message names the file (and the row) and the fix."""


def require(ok: bool, key: str, value: Any, rule: str, fix: str = "") -> None:
    """Raise a ConfigError naming `key`, its value, the rule it breaks and the fix, unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is out of range: {rule}{'; ' + fix if fix else ''}")


def not_a_file(path: Path) -> str:
    """Why a path that is not a regular file cannot be read as a data file (for the error message)."""
    if path.is_dir():
        return "a directory, not a file"
    return "not a regular file (a pipe, socket or device)" if path.exists() else "does not exist"


def check_source(key: str, value: str, what: str = "directory") -> None:
    """A name for a local directory or a Hugging Face hub name. A value that exists locally is local;
    one that does not is refused when it cannot be a hub name (it looks like a path) or when the hub
    is offline, and the message says which places were tried."""

    path = Path(value).expanduser()
    if path.exists():
        return
    tried = f"tried the local path {path.resolve()} (it does not exist)"
    parts = value.split("/")
    hub_like = not value.startswith((".", "/", "~")) and len(parts) <= 2 and all(parts) and "\\" not in value
    if not hub_like:
        raise ConfigError(f"{key}={value}: no such {what}; {tried}; it is not a hub name (owner/name) either")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ConfigError(
            f"{key}={value}: {tried} and it cannot be fetched from the Hugging Face hub as a model name "
            "(HF_HUB_OFFLINE is set); give a local {what} or unset HF_HUB_OFFLINE".replace("{what}", what)
        )


def check_output_dir(key: str, directory: str | Path, needed_bytes: int = 0) -> None:
    """Before any work: `directory` (or its nearest existing parent) is a directory we can write in,
    and its disk has room for about `needed_bytes` (checkpoints, export)."""
    import shutil
    import tempfile

    path = Path(directory).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={directory} is a file, not a directory; choose another {key}")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{key}={directory}: {parent} is a file, so the directory cannot be created")
    try:  # a real write: permission bits do not tell about read-only mounts (or a root user)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ConfigError(
            f"{key}={directory} is not writable ({parent}: {e.strerror or e}); choose a directory you can write to"
        ) from None
    free = shutil.disk_usage(parent).free
    if needed_bytes and free < needed_bytes:
        raise ConfigError(
            f"{key}={directory}: the disk has {free / 2**20:.0f} MiB free but the run needs about "
            f"{needed_bytes / 2**20:.0f} MiB (checkpoints and export); free some space or choose another {key}"
        )
