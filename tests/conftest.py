import inspect
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CMRSTUDIO_SHARED_DATA", ROOT.parent / "shared" / "data"))


def pytest_configure(config):
    """Each test process gets its own settings and data folders, so the tests never touch the user's own and two
    pytest-xdist workers never share one. A worker gets one torch thread (its subprocesses inherit it): `make test`
    runs one worker per core."""
    home = config._cmrstudio_home = Path(tempfile.mkdtemp(prefix="cmrstudio-tests-"))
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        os.environ[var] = str(home / var.lower())
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CMRSTUDIO_LIVE_THREADS"):
            os.environ[var] = "1"
        import torch

        torch.set_num_threads(1)


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "_cmrstudio_home", ""), ignore_errors=True)  # those folders go with the process


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


# ---- test tiers ---------------------------------------------------------------------------------------------------
# `make test` runs everything. The fast tier (`make test-fast`, i.e. `pytest -m "not slow"`) leaves out what costs
# minutes: tests that train a model, open a window, run the cmrstudio command (in a subprocess, or in this process with
# helpers.cli: those tests' fixtures train), or kill processes.
# The mark is given here, from what a test uses, so a new test lands in the right tier without anyone remembering to.
_SLOW_FIXTURES = {"tiny_run", "tiny_diffusion", "tiny_flow", "memorising_flow", "make_napari_viewer", "open_window", "qtbot"}
_SLOW_MODULES = {"test_kill", "test_gui", "test_studio"}
_SLOW_CODE = re.compile(r"(?<![\w.])(run|cli)\(|subprocess|Trainer\(|\.run\(progress")


def _is_slow(item) -> bool:
    if set(getattr(item, "fixturenames", ())) & _SLOW_FIXTURES or item.module.__name__.rsplit(".", 1)[-1] in _SLOW_MODULES:
        return True
    try:
        src = inspect.getsource(item.function)
    except (OSError, TypeError):
        return False
    return bool(_SLOW_CODE.search(src))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _is_slow(item):
            item.add_marker(pytest.mark.slow)
