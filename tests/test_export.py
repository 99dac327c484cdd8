"""Exports of kept renders: written from a studio project and from a folder of renders, read back
through nibabel, SimpleITK and pydicom; nnU-Net's dataset.json fields; safety (atomic, no
overwrite, interrupted exports, manifest + verify) and bad input."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from cmrstudio.errors import CmrError
from tests.helpers import cli


def _render(seed: int, z: int = 1, vendor: str = "siemens"):
    """A kept render as the studio makes one: a Render (framed image + native slice) and its slice affine."""
    from cmrstudio.data.frame import from_frame, make_frame, to_frame
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.record import Render, RenderRecord

    c = phantom_case(seed, n_slices=3, shape=(96, 88), vendor=vendor)
    frame = make_frame(c, size=64)
    framed = to_frame(c, frame).image[z]
    params = {"model": "spade-test", "model_sha256": "ab" * 32, "kind": "spade", "sampler": "spade", "steps": 1, "guidance": None,
              "seed": seed, "vendor": vendor, "seconds": 0.02, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    res = Render(from_frame(framed, frame, kind="image"), framed, c.mask[z], frame, RenderRecord.from_dict(params))
    aff = np.array(c.affine, float)
    aff[:3, 3] += aff[:3, 0] * z
    return res, aff, c


@pytest.fixture
def project(tmp_path):
    from cmrstudio.project import Project

    p = Project.create(tmp_path / "project", name="curated")
    for i, (note, rating) in enumerate([("dilated LV", 5), ("thin wall", 3), ("", None)]):
        res, aff, c = _render(10 + i)
        p.add(res, {"case_id": c.case_id, "slice": 1, "phase": "ED", "dataset": "phantom"}, note=note, rating=rating, affine=aff)
    return p


def test_nifti_export_from_a_project_round_trips(project, tmp_path):
    from cmrstudio.export import export, verify

    rep = export(project.folder, tmp_path / "out", "nifti")
    assert rep.exported == ["r0001", "r0002", "r0003"] and not rep.skipped
    out = tmp_path / "out"
    for it in project.items:
        kept = project.load(it.id)
        img = nib.load(str(out / f"{it.id}_image.nii.gz"))
        msk = nib.load(str(out / f"{it.id}_mask.nii.gz"))
        # same pixels, labels and geometry as the kept render, through nibabel and through SimpleITK
        assert np.array_equal(np.asarray(img.dataobj)[:, :, 0].T, kept.image)
        assert np.array_equal(np.asarray(msk.dataobj)[:, :, 0].T, kept.mask)
        ref = nib.load(str(project.render_files(it.id)["image"]))
        assert np.allclose(img.affine, ref.affine) and np.allclose(msk.affine, ref.affine)
        for f in (img, msk):  # both transforms set, scanner-based: every reader agrees on the geometry
            assert int(f.header["qform_code"]) == 1 and int(f.header["sform_code"]) == 1
            assert np.allclose(f.header.get_qform(), f.header.get_sform(), atol=1e-4)
        s = sitk.ReadImage(str(out / f"{it.id}_image.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(s)[0], kept.image)
        side = json.loads((out / f"{it.id}.json").read_text(encoding="utf-8"))
        assert side["synthetic"] is True and side["model"] == "spade-test" and side["model_sha256"] == "ab" * 32
        assert side["rating"] == it.rating and side["note"] == it.note and side["seed"] == it.seed
        assert side["source"]["slice"] == 1 and side["frame"]["size"] == 64 and side["sampler"] == "spade"
        # the source described by dataset, case hash and slice: not its case id
        assert side["source"]["dataset"] == "phantom" and len(side["source"]["case_hash"]) == 16 and "case_id" not in side["source"]
        assert side["mask_origin"] == "synthetic" and side["derived_from_patient"] is False and "project" not in side
        assert side["geometry"]["direction_orthonormalised"]["max_cosine_change"] < 1e-12
    desc = json.loads((out / "dataset_description.json").read_text(encoding="utf-8"))
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "cmrstudio" and desc["BIDSVersion"]
    assert "file:" not in json.dumps(desc) and str(project.folder) not in (out / "export.json").read_text(encoding="utf-8")
    from PIL import Image

    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width >= 3 * 100 and np.asarray(sheet).std() > 10
    assert verify(out) == []


def test_nnunet_dataset_passes_the_fields_nnunet_reads_and_merges_real_cases(project, tmp_path):
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.export import check_nnunet_dataset_json, export, verify
    from cmrstudio.io import write_case

    real = tmp_path / "real"
    for s in (1, 2):
        write_case(phantom_case(s, n_slices=3, shape=(64, 64)), real)
    rep = export(project.folder, tmp_path / "nn", "nnunet", with_real=[real], dataset_id=42, name="SynthCMR")
    root = tmp_path / "nn" / "Dataset042_SynthCMR"
    d = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    assert check_nnunet_dataset_json(d, root) == []
    assert d["numTraining"] == 5 and d["labels"] == {"background": 0, "LV": 1, "MYO": 2, "RV": 3} and d["file_ending"] == ".nii.gz"
    assert sorted(rep.real) == ["real_0001", "real_0002"] and d["real_cases"] == rep.real  # no source case ids
    for it in project.items:
        lab = np.asarray(nib.load(str(root / "labelsTr" / f"{it.id}.nii.gz")).dataobj)[:, :, 0].T
        assert np.array_equal(lab, project.load(it.id).mask)
        assert (root / "imagesTr" / f"{it.id}_0000.nii.gz").exists()
    prov = json.loads((root / "provenance.json").read_text(encoding="utf-8"))
    assert prov["r0001"]["synthetic"] is True and prov["r0001"]["note"] == "dilated LV"
    assert prov["real_0001"]["real"] is True and prov["real_0001"]["derived_from_patient"] is True and "case_id" not in prov["real_0001"]["source"]
    assert verify(tmp_path / "nn") == []
    kept = export(project.folder, tmp_path / "nn-ids", "nnunet", with_real=[real], keep_source_ids=True)
    assert sorted(kept.real) == ["real_phantom_0001_ED", "real_phantom_0002_ED"]
    # the check itself catches what nnU-Net would reject
    broken = dict(d, labels={"LV": 1, "MYO": 2}, numTraining=9)
    msgs = check_nnunet_dataset_json(broken, root)
    assert any("background" in m for m in msgs) and any("numTraining" in m for m in msgs)
    with pytest.raises(CmrError, match="merges real cases into an nnU-Net dataset"):
        export(project.folder, tmp_path / "x", "nifti", with_real=[real])


def test_dicom_export_is_marked_synthetic_and_reads_back(project, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from cmrstudio.export import export, verify

    export(project.folder, tmp_path / "dcm", "dicom")
    out = tmp_path / "dcm"
    for it in project.items:
        kept = project.load(it.id)
        files = sorted((out / it.id / "image").glob("*.dcm"))
        ds = pydicom.dcmread(str(files[0]))
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "OTHER"] and ds.SyntheticData == "YES" and "ConversionType" not in ds
        purpose = ds.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0]
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109100", "DCM")  # Synthesizing Equipment
        assert ds.PatientPosition == "HFS" and ds.StudyID.startswith("CMR")
        assert ds.SeriesDescription.startswith("SYNTHETIC") and "SYNTHETIC" in str(ds.PatientName)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(out / it.id / "image")))
        arr = sitk.GetArrayFromImage(reader.Execute())
        span = float(kept.image.max() - kept.image.min())
        assert np.abs(arr[0] - kept.image).max() <= span / 65535 * 1.01 + 1e-6
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(out / it.id / "mask")))
        assert np.array_equal(sitk.GetArrayFromImage(reader.Execute())[0], kept.mask)
    assert verify(out) == []


def test_a_folder_of_renders_exports_too(project, tmp_path):
    from cmrstudio.export import collect, export

    items, problems = collect(project.renders_dir)
    assert [i.case.case_id for i in items] == ["r0001", "r0002", "r0003"] and not problems
    rep = export(project.renders_dir, tmp_path / "out", "nifti")
    assert len(rep.exported) == 3
    # a project's renders folder keeps what the project listing says: rating, note, source
    side = json.loads((tmp_path / "out" / "r0001.json").read_text(encoding="utf-8"))
    assert side["rating"] == 5 and side["note"] == "dilated LV" and side["source"]["slice"] == 1 and side["source"]["case_hash"]
    rated = export(project.folder, tmp_path / "best", "nifti", min_rating=4)
    assert rated.exported == ["r0001"]
    # an export is itself a folder of renders: re-exported as nnU-Net it keeps rating and note
    again = export(tmp_path / "best", tmp_path / "nn", "nnunet", min_rating=5)
    assert again.exported == ["r0001"]
    prov = json.loads((tmp_path / "nn" / "Dataset501_SyntheticCMR" / "provenance.json").read_text(encoding="utf-8"))
    assert prov["r0001"]["rating"] == 5 and prov["r0001"]["note"] == "dilated LV" and prov["r0001"]["model"] == "spade-test"


def test_no_overwrite_unless_asked_and_interrupted_exports_leave_nothing(project, tmp_path, monkeypatch):
    import cmrstudio.export.writers as w
    from cmrstudio.export import export, verify

    dest = tmp_path / "out"
    export(project.folder, dest, "nifti")
    (dest / "stray.txt").write_text("from before")
    with pytest.raises(CmrError, match="already exists; choose a new destination or pass --overwrite"):
        export(project.folder, dest, "nnunet")
    assert (dest / "stray.txt").exists() and (dest / "r0001_image.nii.gz").exists()  # untouched

    def boom(*a, **k):
        raise RuntimeError("power cut")

    monkeypatch.setattr(w, "contact_sheet", boom)
    with pytest.raises(RuntimeError):
        export(project.folder, tmp_path / "half", "nifti")
    assert not (tmp_path / "half").exists() and not list(tmp_path.glob(".half*"))
    with pytest.raises(RuntimeError):
        export(project.folder, dest, "nnunet", overwrite=True)
    assert (dest / "stray.txt").exists() and verify(dest) == ["stray.txt is not part of the export (not in the manifest)."]
    monkeypatch.undo()
    # a folder that appears at DEST while the export is written is never replaced without --overwrite
    real_sheet = w.contact_sheet

    def racing(items, path):
        (tmp_path / "race").mkdir()
        (tmp_path / "race" / "precious.txt").write_text("mine")
        return real_sheet(items, path)

    monkeypatch.setattr(w, "contact_sheet", racing)
    with pytest.raises(CmrError, match="appeared while the export was being written; nothing was replaced"):
        export(project.folder, tmp_path / "race", "nifti")
    assert (tmp_path / "race" / "precious.txt").read_text(encoding="utf-8") == "mine" and not list(tmp_path.glob(".race*"))
    monkeypatch.undo()
    # what a killed export left (a dead process's staging folder) is cleared by the next one
    (tmp_path / ".out.partial-999999").mkdir()
    export(project.folder, dest, "nnunet", overwrite=True)
    assert not (tmp_path / ".out.partial-999999").exists()
    assert not (dest / "stray.txt").exists() and (dest / "Dataset501_SyntheticCMR" / "dataset.json").exists()
    assert verify(dest) == []


def test_a_case_failing_half_way_leaves_no_orphan_files(project, tmp_path, monkeypatch):
    import cmrstudio.io.nifti as nifti
    from cmrstudio.export import check_nnunet_dataset_json, export, verify

    real_write = nifti.write_nifti

    def flaky(path, *a, **k):
        if Path(path).name == "r0002.nii.gz":  # the label of r0002, after its image was written
            raise OSError(28, "No space left on device", str(path))
        return real_write(path, *a, **k)

    monkeypatch.setattr(nifti, "write_nifti", flaky)
    rep = export(project.folder, tmp_path / "nn", "nnunet")
    root = tmp_path / "nn" / "Dataset501_SyntheticCMR"
    assert rep.exported == ["r0001", "r0003"] and any("r0002" in s and "No space left" in s for s in rep.skipped)
    assert not (root / "imagesTr" / "r0002_0000.nii.gz").exists()
    d = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    assert d["numTraining"] == 2 and check_nnunet_dataset_json(d, root) == [] and verify(tmp_path / "nn") == []
    assert ".partial" not in " ".join(rep.skipped)  # messages name the export, not the staging folder
    (root / "imagesTr" / "stray_0000.nii.gz").write_bytes(b"x")
    assert "imagesTr has stray but labelsTr has no stray.nii.gz" in check_nnunet_dataset_json(d, root)


def test_dicom_export_keeps_the_vendor_style(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from cmrstudio.export import export
    from cmrstudio.project import Project

    p = Project.create(tmp_path / "p")
    res, aff, c = _render(5, vendor="philips")
    p.add(res, {"case_id": c.case_id, "slice": 1}, affine=aff)
    export(p.folder, tmp_path / "dcm", "dicom")
    ds = pydicom.dcmread(str(sorted((tmp_path / "dcm" / "r0001" / "image").glob("*.dcm"))[0]))
    assert "philips" in ds.SeriesDescription and "vendor_style=philips" in ds.DerivationDescription
    assert ds.SyntheticData == "YES" and c.case_id not in str(ds.PatientID)


def test_verify_names_changed_missing_and_extra_files(project, tmp_path):
    from cmrstudio.export import export, verify

    dest = tmp_path / "out"
    export(project.folder, dest, "nifti")
    (dest / "r0002.json").write_text("{}")
    (dest / "r0003_mask.nii.gz").unlink()
    problems = verify(dest)
    assert "r0002.json has changed since the export (its sha256 differs)." in problems
    assert "r0003_mask.nii.gz is listed in the manifest but missing." in problems
    (dest / "manifest.json").unlink()
    with pytest.raises(CmrError, match="manifest.json is missing or damaged"):
        verify(dest)
    p = cli("export", "--verify", str(dest), check=False)
    assert p.returncode == 2 and "manifest.json is missing or damaged" in p.stderr


def test_bad_renders_are_named_and_the_good_ones_still_export(project, tmp_path):
    from cmrstudio.export import export

    files = project.render_files("r0002")
    m = nib.load(str(files["mask"]))
    data = np.asarray(m.dataobj).copy()
    data[data == 2] = 7
    nib.save(nib.Nifti1Image(data, m.affine), str(files["mask"]))
    project.render_files("r0003")["image"].unlink()
    rep = export(project.folder, tmp_path / "out", "nifti")
    assert rep.exported == ["r0001"]
    assert any("r0002" in s and "label 7" in s for s in rep.skipped)
    assert any("r0003" in s and "r0003_image.nii.gz is missing" in s for s in rep.skipped)
    listed = json.loads((tmp_path / "out" / "export.json").read_text(encoding="utf-8"))["skipped"]
    assert len(listed) == len(rep.skipped) and not any(str(project.folder) in s for s in listed)  # no local paths
    # the command line says the same and exits 1, with the good case written
    p = cli("export", "--format", "dicom", str(project.folder), str(tmp_path / "cli"), check=False)
    assert p.returncode == 1 and "skipped" in p.stderr and "label 7" in p.stderr
    assert (tmp_path / "cli" / "r0001" / "image").is_dir() and not (tmp_path / "cli" / "r0002").exists()


def test_bad_destinations_and_sources_get_one_sentence(project, tmp_path):
    from cmrstudio.export import export
    from cmrstudio.project import Project

    with pytest.raises(CmrError, match="Cannot write in /proc/cmrstudio-export-test"):
        export(project.folder, Path("/proc/cmrstudio-export-test/out"), "nifti")
    with pytest.raises(CmrError, match="--format 'png' is not known"):
        export(project.folder, tmp_path / "o", "png")
    with pytest.raises(CmrError, match="Nothing to export"):
        export(Project.create(tmp_path / "empty").folder, tmp_path / "o", "nifti")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CmrError, match="holds no cmrstudio renders"):
        export(tmp_path / "plain", tmp_path / "o2", "nifti")
    # never over the source, nor over a folder that is not an export
    with pytest.raises(CmrError, match="a folder holding the source"):
        export(project.folder, tmp_path, "nifti", overwrite=True)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"jpg")
    with pytest.raises(CmrError, match="is not a cmrstudio export"):
        export(project.folder, tmp_path / "photos", "nifti", overwrite=True)
    assert (tmp_path / "photos" / "holiday.jpg").exists() and (project.folder / "project.json").exists()
    import shutil

    loose = shutil.copytree(project.renders_dir, tmp_path / "loose")  # renders away from their project: no ratings
    with pytest.raises(CmrError, match="--min-rating needs ratings"):
        export(loose, tmp_path / "o4", "nifti", min_rating=3)
    with pytest.raises(CmrError, match="--dataset-id 1000 must be 1–999"):
        export(project.folder, tmp_path / "o3", "nnunet", dataset_id=1000)
    p = cli("export", "--format", "nifti", str(project.folder), "/proc/cmrstudio-export-test/out", check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "choose a writable destination" in p.stderr


def test_renders_made_in_a_patients_scan_are_exported_as_derived_and_left_out_of_anonymous_exports(tmp_path):
    import dataclasses

    import pydicom

    from cmrstudio.export import export
    from cmrstudio.project import Project

    p = Project.create(tmp_path / "mixed")
    res, aff, c = _render(21)
    p.add(res, {"case_id": c.case_id, "slice": 1, "dataset": "phantom"}, affine=aff)  # fully synthetic
    res2, aff2, c2 = _render(22)
    res2.record = dataclasses.replace(res2.record, mode="in-patient", margin_mm=10.0)
    kept = p.add(res2, {"case_id": c2.case_id, "slice": 1}, affine=aff2)
    assert kept.derived_from_patient and json.loads(p.path.read_text(encoding="utf-8"))["items"][1]["derived_from_patient"] is True

    rep = export(p.folder, tmp_path / "all", fmt="dicom")
    assert rep.exported == ["r0001", "r0002"] and not rep.skipped
    listing = json.loads((tmp_path / "all" / "export.json").read_text(encoding="utf-8"))
    assert listing["anonymous"] is False and listing["derived_from_patient"] == ["r0002"]
    side = json.loads((tmp_path / "all" / "r0002" / "provenance.json").read_text(encoding="utf-8"))
    assert side["derived_from_patient"] is True and side["synthetic"] is False and side["mode"] == "in-patient"
    syn = pydicom.dcmread(sorted((tmp_path / "all" / "r0001" / "image").glob("*.dcm"))[0])
    der = pydicom.dcmread(sorted((tmp_path / "all" / "r0002" / "image").glob("*.dcm"))[0])
    assert syn.SyntheticData == "YES" and syn.SeriesDescription.startswith("SYNTHETIC")
    # the standard's flag is YES when some or all of the content was made artificially: a render in a patient's scan too
    assert der.SyntheticData == "YES" and der.SeriesDescription.startswith("DERIVED") and der.StudyDescription.startswith("DERIVED")
    assert "derived from patient data" in der.DerivationDescription

    p2 = cli("export", str(p.folder), str(tmp_path / "anon"), "--format", "nifti", "--anonymous-only", check=False)
    assert p2.returncode == 1 and "r0002" in p2.stderr and "--anonymous-only leaves it out" in p2.stderr
    listing = json.loads((tmp_path / "anon" / "export.json").read_text(encoding="utf-8"))
    assert listing["cases"] == ["r0001"] and listing["anonymous"] is True and not (tmp_path / "anon" / "r0002.json").exists()


def test_exports_record_whether_the_generator_was_private_and_its_epsilon(tmp_path):
    """A render's record carries the generator's differential-privacy budget from its card; every export format says it."""
    import pydicom

    from cmrstudio.export import export
    from cmrstudio.project import Project
    from cmrstudio.record import RenderRecord, make_record

    class Gen:  # what make_record reads of a renderer: its card, name, kind and sampling
        def __init__(self, card):
            self.info, self.name, self.kind = type("I", (), {"card": card})(), card["name"], "spade"

        def describe(self):
            return {"model": self.name, "kind": self.kind}

    dp = {"epsilon": 7.5, "delta": 1e-5, "target_epsilon": 8.0}
    private = make_record(Gen({"name": "spade-dp", "sha256": "cd" * 32, "training": {"differential_privacy": dp}}), 3, "siemens")
    public = make_record(Gen({"name": "spade-cmr", "sha256": "ef" * 32, "training": {}}), 4, "siemens")
    assert (private.private, private.dp_epsilon, private.dp_delta) == (True, 7.5, 1e-5)
    assert public.private is False and public.dp_epsilon is None
    assert RenderRecord.from_dict(private.to_dict()).dp_epsilon == 7.5  # read back as written
    assert RenderRecord.from_dict({"model": "m", "kind": "spade", "seed": 1}).private is None  # older renders: not recorded

    p = Project.create(tmp_path / "project", name="dp")
    for rec in (private, public):
        res, aff, c = _render(rec.seed)
        res.record = rec
        p.add(res, {"case_id": c.case_id, "slice": 1, "phase": "ED", "dataset": "phantom"}, affine=aff)
    export(p.folder, tmp_path / "nifti", "nifti")
    side = {json.loads((tmp_path / "nifti" / f"{i}.json").read_text(encoding="utf-8"))["model"]: json.loads((tmp_path / "nifti" / f"{i}.json").read_text(encoding="utf-8"))
            for i in ("r0001", "r0002")}
    assert side["spade-dp"]["private"] is True and side["spade-dp"]["dp_epsilon"] == 7.5 and side["spade-dp"]["dp_delta"] == 1e-5
    assert side["spade-cmr"]["private"] is False and side["spade-cmr"]["dp_epsilon"] is None
    export(p.folder, tmp_path / "dicom", "dicom")
    texts = [str(pydicom.dcmread(f).DerivationDescription) for f in sorted((tmp_path / "dicom").rglob("*.dcm"))]
    assert any("private=True" in t and "dp_epsilon=7.5" in t for t in texts) and any("private=False" in t for t in texts)
