"""Where shipped files live: ``resources/`` at the repository root (or $CMRSTUDIO_RESOURCES)."""

from __future__ import annotations

import os
from pathlib import Path

from cmrstudio.errors import CmrError


def resources_dir() -> Path:
    env = os.environ.get("CMRSTUDIO_RESOURCES")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "resources"


def sample_dir() -> Path:
    return resources_dir() / "sample"


def sample_case(phase: str = "ED"):
    """The built-in real case (Sunnybrook SCD0000101, CC0) in canonical labels."""
    from cmrstudio.io import scan

    d = sample_dir()
    if not d.is_dir():
        raise CmrError(f"The sample case folder {d} is missing; reinstall cmrstudio from its repository.")
    refs = [r for r in scan(d) if r.phase == phase]
    if not refs:
        raise CmrError(f"The sample case folder {d} has no {phase} volume; reinstall cmrstudio from its repository.")
    return refs[0].load()
