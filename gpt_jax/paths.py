"""Where things live on disk: the shared data dir and the repository root.

The data dir is, in order: an explicit argument / config value, the env var GPT_JAX_DATA, or
`<repo>/../shared/data`. Data files are always read in place, never copied into the repo.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV_VAR = "GPT_JAX_DATA"


def default_data_dir() -> str:
    """The data dir used when a config leaves `data.dir` empty."""
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return env
    return str((REPO_ROOT.parent / "shared" / "data").resolve())


def resolve_data_dir(configured: str | None = None) -> Path:
    """Resolves (and checks) the data dir; raises with a clear message when it is missing."""
    path = Path(configured or default_data_dir()).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"data dir {path} does not exist; set config data.dir or the env var {DATA_ENV_VAR}"
        )
    return path
