"""Where shipped files live: ``resources/`` at the repository root (or $CMRSTUDIO_RESOURCES)."""

from __future__ import annotations

import os
from pathlib import Path


def resources_dir() -> Path:
    env = os.environ.get("CMRSTUDIO_RESOURCES")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "resources"


def sample_dir() -> Path:
    return resources_dir() / "sample"
