"""Synthetic cases as DICOM series: synthetic marking, fresh UIDs, pixels and geometry round trips."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

try:  # pydicom >= 3
    from pydicom.pixels import apply_modality_lut
except ImportError:  # pydicom 2.x
    from pydicom.pixel_data_handlers.util import apply_modality_lut

from cmrstudio.case import Case
from cmrstudio.data.phantom import phantom_case
from cmrstudio.errors import CmrError
from cmrstudio.export.dicom import MASK_DESCRIPTION, UNKNOWN_SPACING_COMMENT, write_dicom
from cmrstudio.io.common import affine_to_sitk_geometry
from cmrstudio.io.sitk_io import read_dicom

PROV = {
    "model": "spade-acdc-v1",
    "model_sha256": "0f" * 32,
    "kind": "spade",
    "sampler": "ddim",
    "steps": 50,
    "guidance": 1.5,
    "seed": 1234,
    "vendor": "philips",
}
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    ax, ay, az = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _oblique(case: Case) -> Case:
    """The phantom's axis-aligned affine rotated and shifted in world space (still right-handed)."""
    world = np.eye(4)
    world[:3, :3] = _rotation(20, -35, 50)
    world[:3, 3] = [12.5, -40.25, 101.0]
    base = np.array([[0, 0, -1.7, 0], [0, -1.4, 0, 0], [8.0, 0, 0, 0], [0, 0, 0, 1]])
    return dataclasses.replace(case, affine=world @ base)


@pytest.fixture(scope="module")
def oblique() -> Case:
    return _oblique(phantom_case(3, n_slices=4, shape=(64, 72)))


@pytest.fixture(scope="module")
def no_affine() -> Case:
    return dataclasses.replace(phantom_case(4, n_slices=4, shape=(64, 72)), affine=None, case_id="acdc/patient 001 ED")


def _read_all(paths):
    return [pydicom.dcmread(p) for p in paths]


def _bound(case: Case) -> float:
    return float(case.image.max() - case.image.min()) / 65535


def _sitk_series(folder):
    r = sitk.ImageSeriesReader()
    names = r.GetGDCMSeriesFileNames(str(folder))
    r.SetFileNames(names)
    return r.Execute()


# ----------------------------------------------------------------------------- tags and UIDs
def test_files_are_marked_synthetic_with_fresh_uids(tmp_path, oblique):
    out = write_dicom(oblique, tmp_path / "a", PROV)
    assert [p.name for p in out["image"]] == ["IM0001.dcm", "IM0002.dcm", "IM0003.dcm", "IM0004.dcm"]
    assert [p.parent.name for p in out["mask"]] == ["mask"] * 4 and out["image"][0].parent == tmp_path / "a" / "image"
    image, mask = _read_all(out["image"]), _read_all(out["mask"])
    for ds in image + mask:
        assert ds.preamble == b"\x00" * 128
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == MR_IMAGE_STORAGE == ds.SOPClassUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]  # defined terms of the MR Image IOD
        assert "ConversionType" not in ds and "RescaleType" not in ds  # not MR Image attributes
        assert ds.PatientPosition == "HFS" and ds.StudyID.startswith("CMR") and len(ds.StudyID) <= 16
        purpose = ds.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0]
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == ("109100", "DCM", "Synthesizing Equipment")
        assert ds.SeriesDescription.startswith("SYNTHETIC") and len(ds.SeriesDescription) <= 64
        assert str(ds.PatientName) == "SYNTHETIC^CMRSTUDIO" and ds.PatientID.startswith("SYN-")
        assert "phantom" not in ds.PatientID and ds.SyntheticData == "YES"  # nothing of the source's name
        assert not ds.get("PatientBirthDate") and not ds.get("PatientSex") and "PatientAge" not in ds
        assert not ds.get("InstitutionName")
        assert ds.Manufacturer == "cmrstudio (synthetic)"
        assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod == "synthetic: no patient data"
        assert ds.BurnedInAnnotation == "NO" and ds.Modality == "MR" and "AcquisitionNumber" not in ds
        assert ds.BitsAllocated == 16 and ds.BitsStored == 16 and ds.HighBit == 15 and ds.PixelRepresentation == 0
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.SamplesPerPixel == 1
        assert (ds.Rows, ds.Columns) == (64, 72)
        assert ds.TimezoneOffsetFromUTC == "+0000" and ds.ContentDate == ds.SeriesDate
        assert not any(el.tag.is_private for el in ds)
        d = ds.DerivationDescription
        assert len(d) <= 1024
        for word in ("spade-acdc-v1", "0f" * 32, "ddim", "steps=50", "seed=1234", "guidance=1.5", "philips"):
            assert word in d
    assert "philips" in image[0].SeriesDescription and "spade-acdc-v1" in image[0].SeriesDescription
    assert mask[0].SeriesDescription == MASK_DESCRIPTION
    assert [ds.InstanceNumber for ds in image] == [1, 2, 3, 4] == [ds.InstanceNumber for ds in mask]
    assert {ds.SeriesNumber for ds in image} == {1} and {ds.SeriesNumber for ds in mask} == {2}
    # one study and one frame of reference, two series, every instance unique
    assert len({ds.StudyInstanceUID for ds in image + mask}) == 1
    assert len({ds.FrameOfReferenceUID for ds in image + mask}) == 1
    assert len({ds.SeriesInstanceUID for ds in image}) == 1 == len({ds.SeriesInstanceUID for ds in mask})
    assert image[0].SeriesInstanceUID != mask[0].SeriesInstanceUID
    assert len({ds.SOPInstanceUID for ds in image + mask}) == 8

    def uids(dss):
        out = set()
        for ds in dss:
            out |= {str(el.value) for el in ds if el.VR == "UI" and el.keyword not in ("SOPClassUID",)}
        return out

    first = uids(image + mask)
    again = write_dicom(oblique, tmp_path / "b", PROV)
    second = uids(_read_all(again["image"] + again["mask"]))
    assert first and second and not (first & second)  # nothing reused between two exports of the same case


def test_given_study_uid_and_series_numbers(tmp_path, oblique):
    study = pydicom.uid.generate_uid()
    out = write_dicom(oblique, tmp_path / "s", PROV, study_uid=study, series_number=7)
    image, mask = _read_all(out["image"]), _read_all(out["mask"])
    assert {ds.StudyInstanceUID for ds in image + mask} == {study}
    assert {ds.SeriesNumber for ds in image} == {7} and {ds.SeriesNumber for ds in mask} == {8}


def test_a_real_source_uid_is_never_reused(tmp_path, oblique):
    real = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
    case = dataclasses.replace(oblique, source={"study_uid": real, "series_uid": real + ".1"})
    with pytest.raises(CmrError, match="real source") as err:
        write_dicom(case, tmp_path / "r", PROV, study_uid=real)
    assert case.case_id in str(err.value) and not (tmp_path / "r").exists()
    out = write_dicom(case, tmp_path / "ok", PROV)
    for ds in _read_all(out["image"] + out["mask"]):
        assert real not in {str(el.value) for el in ds if el.VR == "UI"}


# ----------------------------------------------------------------------------- pixels
def test_pixels_round_trip_in_pydicom(tmp_path, oblique):
    out = write_dicom(oblique, tmp_path / "p", PROV)
    bound = _bound(oblique)
    image = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in _read_all(out["image"])])
    assert image.shape == oblique.image.shape
    assert np.abs(image - oblique.image.astype(np.float64)).max() <= bound
    ds0 = pydicom.dcmread(out["image"][0])
    lo, hi = np.percentile(oblique.image, [0.5, 99.5])
    assert float(ds0.WindowCenter) == pytest.approx((lo + hi) / 2, rel=1e-6)
    assert float(ds0.WindowWidth) == pytest.approx(hi - lo, rel=1e-6)
    masks = _read_all(out["mask"])
    assert all(ds.pixel_array.dtype == np.uint16 for ds in masks)
    assert not any("RescaleSlope" in ds or "RescaleIntercept" in ds for ds in masks)  # labels as stored
    mask = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in masks])
    np.testing.assert_array_equal(mask, oblique.mask)


def test_normalised_and_constant_images(tmp_path, oblique):
    small = dataclasses.replace(oblique, image=(oblique.image - oblique.image.min()) / np.ptp(oblique.image) * 0.8 - 0.1)
    out = write_dicom(small, tmp_path / "n", PROV)
    dss = _read_all(out["image"])
    got = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in dss])
    assert np.abs(got - small.image.astype(np.float64)).max() <= _bound(small)
    assert dss[0].VOILUTFunction == "LINEAR_EXACT" and 0 < float(dss[0].WindowWidth) < 1
    flat = dataclasses.replace(oblique, image=np.full(oblique.shape, 0.1, np.float32), mask=None)
    out = write_dicom(flat, tmp_path / "c", PROV)
    assert out["mask"] == [] and not (tmp_path / "c" / "mask").exists()
    got = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in _read_all(out["image"])])
    np.testing.assert_array_equal(got.astype(np.float32), flat.image)


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("which", ["oblique", "no_affine"])
def test_simpleitk_reads_the_geometry_and_pixels(tmp_path, request, which):
    case = request.getfixturevalue(which)
    out = write_dicom(case, tmp_path / which, PROV)
    if case.affine is None:
        origin, spacing, direction = [0, 0, 0], [1, 1, 1], list(np.eye(3).ravel())
        assert all(ds.ImageComments == UNKNOWN_SPACING_COMMENT for ds in _read_all(out["image"] + out["mask"]))
    else:
        origin, spacing, direction = affine_to_sitk_geometry(case.affine)
        assert "ImageComments" not in pydicom.dcmread(out["image"][0])
    for name, ref, tol in (("image", case.image, _bound(case) + 1e-6), ("mask", case.mask, 0)):
        img = _sitk_series(tmp_path / which / name)
        np.testing.assert_allclose(img.GetOrigin(), origin, atol=1e-4)
        np.testing.assert_allclose(img.GetSpacing(), spacing, atol=1e-4)
        np.testing.assert_allclose(img.GetDirection(), direction, atol=1e-4)
        arr = sitk.GetArrayFromImage(img)
        assert arr.shape == ref.shape
        assert np.abs(arr.astype(np.float64) - ref).max() <= tol
    ds = pydicom.dcmread(out["image"][1])
    sp = case.spacing or (1.0, 1.0, 1.0)
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([sp[1], sp[2]])
    assert float(ds.SliceThickness) == pytest.approx(sp[0]) == float(ds.SpacingBetweenSlices)


def test_cmrstudio_reads_its_own_export(tmp_path, oblique):
    write_dicom(oblique, tmp_path / "x", PROV)
    vol, affine, meta = read_dicom(tmp_path / "x" / "image")
    np.testing.assert_allclose(affine, oblique.affine, atol=1e-4)
    assert np.abs(vol - oblique.image).max() <= _bound(oblique) + 1e-3  # the reader returns float32
    assert meta["vendor"] == "unknown"  # the manufacturer is cmrstudio, never a scanner vendor
    mask, maffine, _ = read_dicom(tmp_path / "x" / "mask")
    np.testing.assert_array_equal(mask, oblique.mask)
    np.testing.assert_allclose(maffine, oblique.affine, atol=1e-4)


def test_left_handed_affine_keeps_slices_at_their_true_positions(tmp_path, oblique):
    flipped = oblique.affine.copy()
    flipped[:3, 0] *= -1  # slices run against the row x column normal: DICOM cannot say so
    case = dataclasses.replace(oblique, affine=flipped)
    out = write_dicom(case, tmp_path / "l", PROV)
    origin, spacing, direction = affine_to_sitk_geometry(flipped)
    step = np.reshape(direction, (3, 3))[:, 2] * spacing[2]
    for k, ds in enumerate(_read_all(out["image"])):
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], np.asarray(origin) + k * step, atol=1e-4)
    img = _sitk_series(tmp_path / "l" / "image")  # readers sort along the normal: the last slice comes first
    np.testing.assert_allclose(img.GetOrigin(), np.asarray(origin) + 3 * step, atol=1e-4)
    assert np.abs(sitk.GetArrayFromImage(img)[::-1] - case.image).max() <= _bound(case) + 1e-6


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_are_refused_and_nothing_is_written(tmp_path, oblique):
    bad_mask = oblique.mask.copy()
    bad_mask[2, 10, 10] = 5
    nan_image = oblique.image.copy()
    nan_image[1, 5, 5] = np.nan
    cases = {
        "label": (dataclasses.replace(oblique, mask=bad_mask), "label 5"),
        "nan": (dataclasses.replace(oblique, image=nan_image), "non-finite"),
        "noimage": (Case(None, oblique.mask, oblique.affine, case_id="mask_only"), "no image"),
    }
    for key, (case, words) in cases.items():
        dest = tmp_path / key
        with pytest.raises(CmrError) as err:
            write_dicom(case, dest, PROV)
        msg = str(err.value)
        assert words in msg and repr(case.case_id) in msg and msg.count(". ") == 0, msg
        assert not dest.exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(CmrError, match="not empty") as err:
        write_dicom(oblique, busy, PROV)
    assert str(busy) in str(err.value)
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"] and (busy / "keep.txt").read_text(encoding="utf-8") == "mine"
    with pytest.raises(CmrError, match="Quantisation"):
        write_dicom(oblique, tmp_path / "q", PROV, quantisation="int8")
    # an existing empty folder is fine
    (tmp_path / "empty").mkdir()
    assert len(write_dicom(oblique, tmp_path / "empty", PROV)["image"]) == 4


def test_a_failed_write_leaves_nothing(tmp_path, oblique, monkeypatch):
    import cmrstudio.export.dicom as mod

    real_save, calls = mod._save, []

    def flaky(ds, path):
        calls.append(path)
        if len(calls) == 6:
            raise OSError(28, "No space left on device")
        real_save(ds, path)

    monkeypatch.setattr(mod, "_save", flaky)
    with pytest.raises(CmrError, match="No space left"):
        write_dicom(oblique, tmp_path / "deep" / "out", PROV)
    assert not (tmp_path / "deep").exists()


def test_text_is_trimmed_and_sanitised(tmp_path, oblique):
    prov = dict(PROV, model="m" * 200 + "é\\x", sampler="s" * 2000)
    case = dataclasses.replace(oblique, case_id="ünï/code " + "z" * 100)
    out = write_dicom(case, tmp_path / "t", prov)
    ds = pydicom.dcmread(out["image"][0])
    assert len(ds.SeriesDescription) <= 64 and ds.SeriesDescription.startswith("SYNTHETIC cmrstudio spade m")
    assert len(ds.DerivationDescription) <= 1024 and ds.DerivationDescription.isascii()
    assert ds.PatientID.startswith("SYN-") and len(ds.PatientID) <= 64 and "/" not in ds.PatientID
    assert ds.PatientID.isascii()
