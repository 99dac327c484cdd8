import json

import h5py
import nibabel as nib
import numpy as np
import pytest

from cmrstudio.anatomy import LV, MYO, RV, enclosure
from cmrstudio.case import Case
from cmrstudio.data.frame import from_frame, make_frame, to_frame
from cmrstudio.data.phantom import phantom_case
from cmrstudio.errors import CmrError
from cmrstudio.io import read_case, scan, write_case
from cmrstudio.io.nifti import write_nifti
from cmrstudio.io.sitk_io import write_sitk

from helpers import write_dicom_series


# ----------------------------------------------------------------------------- real data
def _anatomy_stats(cases):
    lv_in, rv_in = [], []
    for c in cases:
        for sl in c.mask:
            if (sl == LV).any() and (sl == MYO).any():
                e = enclosure(sl)
                lv_in.append(e["lv_inside"])
                if (sl == RV).any():
                    rv_in.append(e["rv_inside"])
    return np.array(lv_in), np.array(rv_in)


def _native_round_trip(c):
    fr = make_frame(c, size=max(c.shape[1:]) + 64, step=1.0)
    assert np.array_equal(from_frame(to_frame(c, fr).mask, fr, "mask"), c.mask), c.case_id


def test_every_acdc_case_reads_remaps_and_round_trips(acdc_dir):
    refs = scan(acdc_dir)
    assert len(refs) == len(list(acdc_dir.glob("patient*_frame*.h5"))) >= 60 and {r.phase for r in refs} == {"ED", "ES"}
    cases = [r.load() for r in refs]
    for c in cases:
        assert c.spacing is None, "ACDC HDF5 stores no spacing; it must stay unknown"
        assert c.vendor == "siemens" and c.source["label_convention"] == "acdc"
        assert c.image.shape == c.mask.shape and set(np.unique(c.mask)) <= {0, 1, 2, 3}
        _native_round_trip(c)
    lv_in, rv_in = _anatomy_stats(cases)
    # Remapped correctly, the LV sits inside the myocardial ring and the RV outside it.
    assert np.median(lv_in) == 1.0 and (lv_in > 0.9).mean() > 0.95
    assert rv_in.max() < 0.02
    # ED has the larger LV cavity for nearly every patient
    by_pid = {}
    for c in cases:
        by_pid.setdefault(c.case_id[:10], {})[c.phase] = (c.mask == LV).sum()
    assert np.mean([v["ED"] > v["ES"] for v in by_pid.values()]) > 0.9


def test_every_mnms_case_reads_with_vendor_and_spacing(mnms_dir):
    refs = scan(mnms_dir)
    assert len(refs) == 12
    cases = [r.load() for r in refs]
    vendors = {c.case_id[:6]: c.vendor for c in cases}
    assert vendors["H1N8S6"] == "siemens" and vendors["G1K1V3"] == "philips" and vendors["A5P5W0"] == "canon"
    for c in cases:
        sp = c.spacing
        assert sp is not None and 0.7 < sp[1] < 1.6 and 5.0 < sp[0] <= 10.5
        _native_round_trip(c)
    assert sum(c.image is None for c in cases) == 4  # masks_only
    lv_in, rv_in = _anatomy_stats(cases)
    assert (lv_in > 0.9).mean() > 0.95 and rv_in.max() < 0.02


def test_sunnybrook_contours_become_canonical_masks(sunnybrook_dir):
    refs = scan(sunnybrook_dir)
    assert len(refs) == 10
    cases = {r.case_id: r.load() for r in refs}
    for cid, c in cases.items():
        assert c.vendor == "ge" and c.spacing[1] == pytest.approx(1.3, abs=0.1)
        assert RV not in np.unique(c.mask)
        _native_round_trip(c)
        # contoured LV sits on bright blood pool: brighter than the image as a whole
        assert c.image[c.mask == LV].mean() > np.percentile(c.image, 75)
    for pid in ("SCD0000101", "SCD0000201", "SCD0000301", "SCD0000401", "SCD0000501"):
        assert (cases[f"{pid}_ED"].mask == LV).sum() > (cases[f"{pid}_ES"].mask == LV).sum()
    good = [cases[f"{p}_ED"] for p in ("SCD0000101", "SCD0000201", "SCD0000301", "SCD0000401")]
    lv_in, _ = _anatomy_stats(good)
    assert (lv_in > 0.9).mean() > 0.9
    # Patient 5's epicardial contours are displaced from its endocardium in the source
    # data; the checker must notice.
    from cmrstudio.anatomy import check_mask

    codes = {f.code for f in check_mask(cases["SCD0000501_ED"].mask, cases["SCD0000501_ED"].spacing)}
    assert "ring-open" in codes


def test_read_case_on_single_real_files(acdc_dir, mnms_dir):
    c = read_case(acdc_dir / "patient001_frame01.h5")
    assert c.source["label_convention"] == "acdc" and c.spacing is None
    c2 = read_case(acdc_dir / "patient001_frame01.h5", spacing=(10, 1.5, 1.5))
    assert c2.spacing == pytest.approx((10, 1.5, 1.5)) and c2.source["spacing_from"] == "user"
    m = read_case(mnms_dir / "H1N8S6_sa_ED.nii.gz", mask=mnms_dir / "H1N8S6_sa_ED_gt.nii.gz")
    assert m.mask.shape == m.image.shape and m.source["label_convention"] == "mnms"
    only = read_case(mnms_dir / "masks_only" / "B9G4U2_sa_ES_gt.nii.gz")
    assert only.image is None and only.mask.max() == 3


# ----------------------------------------------------------------------------- formats
@pytest.fixture
def case():
    return phantom_case(7, n_slices=5, shape=(96, 112))


def test_cmrstudio_layout_round_trips(tmp_path, case):
    paths = write_case(case, tmp_path)
    assert {p.name for p in paths.values()} == {f"{case.case_id}_image.nii.gz", f"{case.case_id}_mask.nii.gz", f"{case.case_id}.json"}
    back = scan(tmp_path)[0].load()
    assert np.array_equal(back.mask, case.mask) and np.allclose(back.image, case.image)
    assert np.allclose(back.affine, case.affine) and back.vendor == case.vendor and back.phase == case.phase
    # and nibabel itself sees the same geometry and labels
    nimg = nib.load(str(paths["mask"]))
    assert nimg.shape == (112, 96, 5) and np.allclose(nimg.header.get_zooms(), (1.5, 1.5, 8.0))
    assert np.array_equal(np.asarray(nimg.dataobj).transpose(2, 1, 0), case.mask)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_mha_nrrd_round_trip(tmp_path, case, suffix):
    write_sitk(tmp_path / f"scan{suffix}", case.image, case.affine)
    write_sitk(tmp_path / f"scan_mask{suffix}", case.mask, case.affine)
    c = read_case(tmp_path / f"scan{suffix}", mask=tmp_path / f"scan_mask{suffix}")
    assert np.allclose(c.image, case.image) and np.array_equal(c.mask, case.mask)
    assert np.allclose(c.affine, case.affine)


def test_nifti_4d_needs_a_frame(tmp_path, case):
    cine = np.stack([case.image, case.image * 0.5, case.image * 0.25], axis=-1)  # Z, Y, X, T
    aff = nib.Nifti1Image(np.zeros((1, 1, 1)), np.eye(4)).affine
    nib.save(nib.Nifti1Image(cine.transpose(2, 1, 0, 3), aff), str(tmp_path / "cine.nii.gz"))
    with pytest.raises(CmrError) as err:
        read_case(tmp_path / "cine.nii.gz")
    assert "cine.nii.gz" in str(err.value) and "3 frames" in str(err.value) and "--frame" in str(err.value)
    c = read_case(tmp_path / "cine.nii.gz", frame=1)
    assert np.allclose(c.image, case.image * 0.5, atol=1e-3) and c.source["frame"] == 1
    with pytest.raises(CmrError, match="out of range"):
        read_case(tmp_path / "cine.nii.gz", frame=9)


def test_dicom_series_single_file_and_cine(tmp_path, case):
    vol = case.image.astype(np.int16)
    write_dicom_series(tmp_path / "series", vol, "1.2.3.4.5.1001", spacing=(8.0, 1.5, 1.5))
    c = read_case(tmp_path / "series")
    assert c.shape == vol.shape and np.array_equal(c.image, vol.astype(np.float32))
    assert c.spacing == pytest.approx((8.0, 1.5, 1.5)) and c.vendor == "siemens"
    one = read_case(sorted((tmp_path / "series").glob("*.dcm"))[2])
    assert one.shape == (1,) + vol.shape[1:] and np.array_equal(one.image[0], vol[2].astype(np.float32))
    # a cine: two phases at each position in one series
    write_dicom_series(tmp_path / "cine", vol, "1.2.3.4.5.2002", trigger=20)
    write_dicom_series(tmp_path / "cine", vol // 2, "1.2.3.4.5.2002", trigger=400, start_instance=100)
    with pytest.raises(CmrError, match="2 phases"):
        read_case(tmp_path / "cine")
    es = read_case(tmp_path / "cine", frame=1)
    assert np.array_equal(es.image, (vol // 2).astype(np.float32))


def test_nnunet_and_acdc_nifti_layouts(tmp_path, case):
    # nnU-Net with dataset.json naming labels in another order
    root = tmp_path / "Dataset001_Heart"
    (root / "imagesTr").mkdir(parents=True)
    acdc_style = np.choose(case.mask, [0, 3, 2, 1]).astype(np.uint8)  # LV->3, RV->1
    write_nifti(root / "imagesTr" / "heart_001_0000.nii.gz", case.image, case.affine)
    write_nifti(root / "labelsTr" / "heart_001.nii.gz", acdc_style, case.affine)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "cineMRI"}, "labels": {"background": 0, "RV": 1, "MYO": 2, "LV": 3}, "numTraining": 1, "file_ending": ".nii.gz"}))
    refs = scan(root)
    assert [r.case_id for r in refs] == ["heart_001"]
    assert np.array_equal(refs[0].load().mask, case.mask)
    # ACDC NIfTI with Info.cfg
    pdir = tmp_path / "acdc" / "patient101"
    write_nifti(pdir / "patient101_frame01.nii.gz", case.image, case.affine)
    write_nifti(pdir / "patient101_frame01_gt.nii.gz", acdc_style, case.affine)
    write_nifti(pdir / "patient101_frame12.nii.gz", case.image, case.affine)
    write_nifti(pdir / "patient101_frame12_gt.nii.gz", acdc_style, case.affine)
    (pdir / "Info.cfg").write_text("ED: 1\nES: 12\nGroup: DCM\n")
    refs = scan(tmp_path / "acdc")
    assert [(r.case_id, r.phase) for r in refs] == [("patient101_frame01", "ED"), ("patient101_frame12", "ES")]
    assert np.array_equal(refs[1].load().mask, case.mask)


def test_hdf5_with_spacing_attribute(tmp_path, case):
    with h5py.File(tmp_path / "x.h5", "w") as fh:
        fh["image"] = case.image
        fh["label"] = case.mask
        fh.attrs["spacing"] = [8.0, 1.5, 1.5]
    c = read_case(tmp_path / "x.h5")
    assert c.spacing == pytest.approx((8.0, 1.5, 1.5)) and np.array_equal(c.mask, case.mask)


# ----------------------------------------------------------------------------- bad input
def test_truncated_nifti(tmp_path, case):
    p = write_nifti(tmp_path / "scan.nii.gz", case.image, case.affine)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CmrError) as err:
        read_case(p)
    assert str(p) in str(err.value) and "truncated" in str(err.value)


def test_dicom_folder_with_two_series(tmp_path, case):
    write_dicom_series(tmp_path / "mixed", case.image, "1.2.3.4.5.3003", description="SAX")
    write_dicom_series(tmp_path / "mixed", case.image, "1.2.3.4.5.4004", description="LAX 4ch")
    with pytest.raises(CmrError) as err:
        read_case(tmp_path / "mixed")
    msg = str(err.value)
    assert "2 DICOM series" in msg and "SAX" in msg and "LAX 4ch" in msg and "--series" in msg
    assert read_case(tmp_path / "mixed", series="4004").shape == case.shape


def test_mask_shape_differs_from_image(tmp_path, case):
    write_nifti(tmp_path / "img.nii.gz", case.image, case.affine)
    write_nifti(tmp_path / "img_gt.nii.gz", case.mask[:, :-4], case.affine)
    with pytest.raises(CmrError) as err:
        read_case(tmp_path / "img.nii.gz", mask=tmp_path / "img_gt.nii.gz")
    assert "img_gt.nii.gz" in str(err.value) and "shape" in str(err.value)


def test_label_value_7(tmp_path, case):
    bad = case.mask.copy()
    bad[0, 0, 0] = 7
    write_nifti(tmp_path / "seven_gt.nii.gz", bad, case.affine)
    with pytest.raises(CmrError) as err:
        read_case(tmp_path / "seven_gt.nii.gz")
    assert "seven_gt.nii.gz" in str(err.value) and "label value 7" in str(err.value)


def test_missing_file_and_unknown_format_and_empty_folder(tmp_path):
    with pytest.raises(CmrError, match="does not exist"):
        read_case(tmp_path / "nope.nii.gz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CmrError, match="not a format"):
        read_case(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("nothing here")
    with pytest.raises(CmrError) as err:
        scan(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value) and "layout" in str(err.value)


def test_write_case_never_leaves_a_half_written_file(tmp_path, case, monkeypatch):
    paths = write_case(case, tmp_path)
    before = paths["image"].read_bytes()
    import nibabel

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(nibabel, "save", boom)
    changed = Case(case.image * 2, case.mask, case.affine, case.vendor, case.phase, case.case_id)
    with pytest.raises(OSError):
        write_case(changed, tmp_path)
    assert paths["image"].read_bytes() == before  # the saved file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())  # no temp left


# ----------------------------------------------------------------------------- review fixes
def test_nnunet_acdc_names_are_remapped_and_unknown_names_refused(tmp_path, case):
    root = tmp_path / "Dataset027_ACDC"
    acdc_style = np.choose(case.mask, [0, 3, 2, 1]).astype(np.uint8)
    write_nifti(root / "imagesTr" / "p_001_0000.nii.gz", case.image, case.affine)
    write_nifti(root / "labelsTr" / "p_001.nii.gz", acdc_style, case.affine)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}}))
    assert np.array_equal(scan(root)[0].load().mask, case.mask)
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "RV", "2": "MLV", "3": "LVC"}}))  # v1 style
    assert np.array_equal(scan(root)[0].load().mask, case.mask)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "scar": 1, "MYO": 2, "LV": 3}}))
    with pytest.raises(CmrError, match="scar"):
        scan(root)


def test_unknown_spacing_survives_write_and_read(tmp_path, case):
    nospace = Case(case.image, case.mask, None, case.vendor, case.phase, "nospace")
    write_case(nospace, tmp_path)
    back = scan(tmp_path)[0].load()
    assert back.spacing is None and np.array_equal(back.mask, case.mask)


def test_exact_case_name_wins_over_prefix(tmp_path, case):
    for cid in ("case1", "case10"):
        write_case(Case(case.image, case.mask, case.affine, case.vendor, "ED", cid), tmp_path)
    assert read_case(tmp_path, case="case1").case_id == "case1"
    write_case(case, tmp_path / "named", name="renamed")
    assert read_case(tmp_path / "named", case="renamed").case_id == "renamed"


def test_int16_refuses_to_destroy_fractional_images(tmp_path, case):
    frac = Case(case.image / case.image.max(), case.mask, case.affine, case.vendor, case.phase, "frac")
    with pytest.raises(CmrError, match="float32"):
        write_case(frac, tmp_path, image_dtype=np.int16)
    assert not list(tmp_path.glob("frac*"))


def test_dicom_with_a_missing_slice_is_refused(tmp_path, case):
    write_dicom_series(tmp_path / "gap", case.image, "1.2.3.4.5.6006")
    sorted((tmp_path / "gap").glob("*.dcm"))[2].unlink()
    with pytest.raises(CmrError, match="unevenly spaced"):
        read_case(tmp_path / "gap")


# ----------------------------------------------------------------------------- without SimpleITK
_WITHOUT_SIMPLEITK = """
import importlib.abc, sys
class NoSimpleITK(importlib.abc.MetaPathFinder):  # as on an image that lacks it (the lent GPU machines')
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "SimpleITK":
            raise ModuleNotFoundError("No module named 'SimpleITK'", name=name)
sys.meta_path.insert(0, NoSimpleITK())
from cmrstudio.cli import main
main(sys.argv[1:])
"""


def test_without_simpleitk_nifti_still_reads_and_a_metaimage_is_refused_in_one_sentence(tmp_path):
    """SimpleITK is imported when a file needs it: without it cmrstudio still starts, reads NIfTI (what training and the
    device machine's packed data use) and says in one sentence what a MetaImage needs. Before, importing cmrstudio.cli
    failed on `import SimpleITK` (so `device_train.sh there` could not start on the GPU image)."""
    import re
    import subprocess
    import sys

    case = phantom_case(3, n_slices=3, shape=(64, 64))
    nii = write_case(case, tmp_path / "nii")
    write_sitk(tmp_path / "scan.mha", case.image, case.affine)

    def run(path, without_simpleitk=True):
        python = [sys.executable, "-c", _WITHOUT_SIMPLEITK] if without_simpleitk else [sys.executable, "-m", "cmrstudio"]
        return subprocess.run([*python, "info", str(path)], capture_output=True, encoding="utf-8", errors="replace", timeout=300)

    shape = re.compile(r"shape 3\S+64\S+64")  # 3×64×64, whatever the locale makes of the ×
    ok = run(nii["image"])
    assert ok.returncode == 0, ok.stderr
    assert shape.search(ok.stdout) and "SimpleITK" not in ok.stdout + ok.stderr
    refused = run(tmp_path / "scan.mha")
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    lines = [ln for ln in refused.stderr.splitlines() if ln.strip()]
    assert lines == ["cmrstudio: Reading or writing DICOM, MetaImage and NRRD files needs SimpleITK, which is not installed here; "
                     "install it with `pip install SimpleITK`."], refused.stderr
    with_it = run(tmp_path / "scan.mha", without_simpleitk=False)
    assert with_it.returncode == 0 and shape.search(with_it.stdout), with_it.stderr  # the same file reads where SimpleITK is installed
