import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CMRSTUDIO_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared(sub: str) -> Path:
    p = SHARED_DATA / sub
    if not p.exists():
        pytest.skip(f"{p} is absent: the real scans in ../shared/data are only beside the development checkout")
    return p


@pytest.fixture
def acdc_dir():
    return shared("acdc")


@pytest.fixture
def mnms_dir():
    return shared("mnms")


@pytest.fixture
def sunnybrook_dir():
    return shared("sunnybrook")
