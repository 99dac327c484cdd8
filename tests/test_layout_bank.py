"""Layout banks: real scans' own tissue classes as the body layout of fully synthetic renders. Built from the
bundled real case (Sunnybrook SCD0000101, CC0) with the real command, read back, sampled, and used by
`cmrstudio render` end to end; the bad inputs are refused in one sentence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import cli, run


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    from cmrstudio.resources import sample_dir

    root = tmp_path_factory.mktemp("bank")
    p = run("train", "layout-bank", "--data", str(sample_dir()), "--k", "1", "--out", str(root), "--name", "bank-t")
    assert "Layout bank bank-t" in p.stdout
    return root / "bank-t.json"


@pytest.fixture(scope="module")
def scenes():
    """The sample case's heart slices in their scene frames, as the bank was built from them."""
    from cmrstudio.data.dataset import SceneDataset
    from cmrstudio.io import sample_case

    return SceneDataset([sample_case("ED"), sample_case("ES")], window=128, spacing_mm=1.25, augment=None,
                        require_labels=(1, 2), layout_factor=2)


@pytest.fixture(scope="module")
def loaded(bank):
    from cmrstudio.models.checkpoint import read_card
    from cmrstudio.models.layout import load_layout

    return load_layout(read_card(bank))


def test_bank_card_names_its_scans_cells_and_fallback(bank, scenes):
    from cmrstudio.resources import resources_dir

    card = json.loads(bank.read_text(encoding="utf-8"))
    fine = json.loads((resources_dir() / "models" / "layout-cmr-fine.json").read_text(encoding="utf-8"))
    cond = card["conditioning"]
    assert card["kind"] == "layout" and cond["scheme"] == "layout-bank-v1" and cond["cell_px"] == 2
    assert cond["fallback_prior"] == {"name": "layout-cmr-fine", "sha256": fine["sha256"]}
    entries = card["training"]["entries"]
    assert len(entries) == card["training"]["slices"] == len(scenes) >= 8
    assert [(e["case"], e["slice"]) for e in entries] == [(c, int(z)) for c, z in scenes.index]
    assert card["terms"].startswith("No non-commercial data") and "body layouts" in card["terms"]


def test_a_heart_takes_its_own_scan_and_the_layout_moves_with_the_heart(loaded, scenes):
    from cmrstudio.data.scene import class_fractions
    from cmrstudio.models.layout import BEYOND_SCAN

    i = len(scenes) // 2
    mask, inside = scenes.masks[i], scenes.insides[i]
    assert loaded.nearest(mask)[0] == i  # its own heart overlaps itself best (Dice 1)
    own = loaded.classes[i]
    assert (own == BEYOND_SCAN).any() and ((own == BEYOND_SCAN) == ~inside).all()  # padding is unknown, not 'outside'
    expected = class_fractions(np.where(own == BEYOND_SCAN, 0, own), 2)
    lay = loaded.scene_sample(mask, inside, 0, seed=0)
    cells = mask.shape[-1] // 2
    assert lay.shape == (5, cells, cells) and np.allclose(lay.sum(0), 1, atol=1e-5)
    ins = inside.reshape(cells, 2, cells, 2).all(axis=(1, 3))
    assert np.allclose(lay[:, ins], expected[:, ins])  # the slice's own classes where its scan is
    assert (lay[0, ~inside.reshape(cells, 2, cells, 2).any(axis=(1, 3))] == 1).all()  # beyond the scan: outside
    # the heart painted 8 px lower and 6 px further left: the body layout follows it, 4 cells down and 3 left
    moved = np.roll(mask, (8, -6), axis=(0, 1))
    lay2 = loaded.scene_sample(moved, np.ones_like(inside), 0, seed=0)
    a, b = cells // 4, 3 * cells // 4
    assert ins[a:b, a:b].all()
    assert np.allclose(lay2[:, a + 4:b + 4, a - 3:b - 3], expected[:, a:b, a:b])
    assert not np.allclose(lay2[:, a:b, a:b], expected[:, a:b, a:b])


def test_beyond_the_picked_scan_the_fallback_prior_fills_in(loaded, scenes):
    i = 0
    mask, s = scenes.masks[i], scenes.masks[i].shape[-1]
    big = np.zeros((s + 64, s + 64), mask.dtype)
    big[32:32 + s, 32:32 + s] = mask  # a larger scan around the same heart: its edges lie beyond the bank scan
    inside = np.ones(big.shape, bool)
    lay = loaded.scene_sample(big, inside, 0, seed=4)
    fb = loaded.fallback.scene_sample(big, inside, 0, seed=4)
    assert np.allclose(lay[:, :8, :], fb[:, :8, :]) and np.allclose(lay[:, :, -8:], fb[:, :, -8:])
    assert not np.allclose(lay[:, 40:60, 40:60], fb[:, 40:60, 40:60])  # the scan's own classes where it has them


def test_seeds_pick_among_the_k_nearest_scans(loaded, scenes):
    mask = scenes.masks[3]
    loaded.k = 5
    try:
        near = set(loaded.nearest(mask).tolist())
        picks = [loaded.pick(mask, s) for s in range(12)]
        again = [loaded.pick(mask, s) for s in range(12)]
    finally:
        loaded.k = 1
    assert len(near) == 5 and 3 in near  # the slice itself is among its nearest
    assert set(picks) <= near and len(set(picks)) >= 3  # seeds spread over them
    assert again == picks  # and a seed is always the same scan


def test_evaluations_leave_the_rendered_patients_own_scans_out(bank, scenes):
    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.engine.scene import leaving_out

    r = open_renderer("spade-cmr", layout_prior=str(bank))
    b = r._prior().model
    mask, inside = scenes.masks[2], scenes.insides[2]
    assert b.pick(mask, 0) == 2
    for case in ("SCD0000101_ES", "SCD0000101_ED", "SCD0000101_ES"):  # case after case, as an evaluation goes
        with leaving_out(r, case):  # the bank holds only this patient (ED and ES): the fallback prior draws
            assert b.leave_out == "SCD0000101" and b.pick(mask, 0) is None
            assert np.array_equal(b.scene_sample(mask, inside, 0, 5), b.fallback.scene_sample(mask, inside, 0, 5))
        assert b.leave_out is None
    assert b.leave_out is None and b.pick(mask, 0) == 2
    b.leave_out = "patient001"  # another patient left out: this one's scans are picked as before
    try:
        assert b.pick(mask, 0) == 2
    finally:
        b.leave_out = None


def test_render_takes_the_body_layout_from_a_bank_and_records_it(bank, tmp_path):
    import nibabel as nib

    from cmrstudio.resources import sample_dir

    mask = str(sample_dir() / "SCD0000101_ED_mask.nii.gz")
    run("render", mask, "--out", str(tmp_path / "prior.nii.gz"), "--seed", "3")
    p = run("render", mask, "--out", str(tmp_path / "bank.nii.gz"), "--seed", "3", "--layout-prior", str(bank),
            "--case-out", str(tmp_path / "cases"))
    assert "tissue classes from bank-t" in p.stdout
    a = np.asarray(nib.load(tmp_path / "prior.nii.gz").dataobj, np.float32)
    b = np.asarray(nib.load(tmp_path / "bank.nii.gz").dataobj, np.float32)
    assert a.shape == b.shape and np.isfinite(b).all()
    assert np.abs(a - b).mean() > 0.02 * (a.max() - a.min())  # another body around the same heart
    side = json.loads(next((tmp_path / "cases").glob("*.json")).read_text(encoding="utf-8"))
    rec = side["source"]["render"]
    assert rec["layout_prior"] == "bank-t" and rec["mode"] == "synthetic" and rec["derived_from_patient"] is False


def test_bad_layout_priors_are_refused_in_one_sentence(bank, tmp_path):
    from cmrstudio.resources import sample_dir

    mask = str(sample_dir() / "SCD0000101_ED_mask.nii.gz")
    p = cli("render", mask, "--out", str(tmp_path / "x.nii.gz"), "--layout-prior", "layout-cmr", check=False)
    assert p.returncode != 0 and "makes cells of 8 px" in p.stderr and not (tmp_path / "x.nii.gz").exists()
    p = cli("train", "layout-bank", "--data", str(sample_dir()), "--fallback", "layout-cmr", "--out", str(tmp_path / "b"), check=False)
    assert p.returncode != 0 and "is not a fine tissue-class prior" in p.stderr and not (tmp_path / "b").exists()
    p = cli("train", "layout-bank", "--data", str(sample_dir()), "--k", "0", "--out", str(tmp_path / "b"), check=False)
    assert p.returncode != 0 and "--k 0" in p.stderr
    for what in ("fidelity", "realism"):  # figures with another body layout than the card's do not go into the card
        p = cli("evaluate", what, "--data", str(sample_dir()), "--layout-prior", str(bank), "--write-card", check=False)
        assert p.returncode != 0 and "drop --layout-prior" in p.stderr
    # a damaged copy of the bank: its checksum says so, and nothing is written
    import shutil

    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(bank, bad / bank.name)
    w = bank.with_suffix(".safetensors")
    (bad / w.name).write_bytes(w.read_bytes()[:-8] + b"damaged!")
    p = cli("render", mask, "--out", str(tmp_path / "y.nii.gz"), "--layout-prior", str(bad / bank.name), check=False)
    assert p.returncode != 0 and "sha256" in p.stderr and not (tmp_path / "y.nii.gz").exists()


def test_bank_entries_are_stored_compressed_and_older_raw_banks_still_read(bank, loaded, tmp_path):
    """Class maps are long runs of one class: each entry is kept zlib-compressed (a bank of 1089 slices: 108 MB raw) and
    unpacked when picked. A bank written before (raw 2-D maps) reads the same; an entry that cannot be unpacked is one
    sentence naming the bank, not a crash."""
    import hashlib
    import shutil

    from safetensors.numpy import load_file, save_file

    from cmrstudio.errors import CmrError
    from cmrstudio.models.checkpoint import read_card
    from cmrstudio.models.layout import load_layout

    w = bank.with_suffix(".safetensors")
    state = load_file(str(w))
    raw = sum(int(h) * int(wd) for h, wd in state["shapes"])
    assert w.stat().st_size < raw / 5 and "zlib" in json.loads(bank.read_text(encoding="utf-8"))["conditioning"]["storage"]
    mask = loaded.classes[0]
    n = len(state["centres"])

    def rewrite(folder, new_state):
        folder.mkdir()
        shutil.copy(bank, folder / bank.name)
        save_file(new_state, str(folder / w.name))
        doc = json.loads((folder / bank.name).read_text(encoding="utf-8"))
        doc["sha256"] = hashlib.sha256((folder / w.name).read_bytes()).hexdigest()
        doc["weights_bytes"] = (folder / w.name).stat().st_size
        (folder / bank.name).write_text(json.dumps(doc), encoding="utf-8")
        return load_layout(read_card(folder / bank.name))

    old = {k: v for k, v in state.items() if k != "shapes"}
    for i in range(n):
        old[f"classes_{i:04d}"] = loaded.classes[i]
    legacy = rewrite(tmp_path / "raw", old)
    assert isinstance(legacy.classes, list) and all(np.array_equal(legacy.classes[i], loaded.classes[i]) for i in range(n))
    m = np.zeros_like(mask)
    m[100:140, 100:140] = 1
    assert np.array_equal(legacy.scene_sample(m, np.ones(m.shape, bool), 0, seed=2), loaded.scene_sample(m, np.ones(m.shape, bool), 0, seed=2))
    broken = dict(state)
    broken["classes_0000"] = np.frombuffer(b"not zlib at all", np.uint8).copy()
    with pytest.raises(CmrError, match=r"Entry 0 of the layout bank .*bank-t.safetensors cannot be unpacked .*rebuild the bank"):
        rewrite(tmp_path / "broken", broken).classes[0]
