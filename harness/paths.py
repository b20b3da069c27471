"""Where kmatrix keeps its cache and runs."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from harness.errors import ConfigError


def cache_dir() -> Path:
    """User cache (downloads, unpacked packages, built images); KMATRIX_CACHE overrides."""
    override = os.environ.get("KMATRIX_CACHE")
    path = Path(override) if override else Path(platformdirs.user_cache_dir("kmatrix"))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"cache directory {path} cannot be created: {error.strerror}",
            hint="set KMATRIX_CACHE to a writable directory",
        ) from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"cache directory {path} is not writable", hint="set KMATRIX_CACHE to a writable directory")
    return path


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def default_matrix_path() -> Path:
    return Path(os.environ.get("KMATRIX_MATRIX", project_root() / "matrix.yaml"))
