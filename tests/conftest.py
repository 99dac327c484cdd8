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


# A tiny SPADE (64×64, phantom data) shared by the model, engine and evaluation tests.
SMALL = dict(phantom=4, size=64, batch=4, sample_every=20, save_every=1000, log_every=5, threads=None)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny SPADE trained for 60 steps on phantom data."""
    from cmrstudio.train.spade import SpadeTrainer, TrainOptions

    out = tmp_path_factory.mktemp("run") / "tiny"
    tr = SpadeTrainer(TrainOptions(out=str(out), name="tiny", steps=60, seed=0, **SMALL))
    tr.run(progress=False)
    return tr
