"""Exports checked with the field's own tools, as a user's pipeline would check them (issue 18):

- every exported NIfTI (nifti, nnunet, bids) opens with ``SimpleITK.ReadImage``, image and mask on one geometry, also
  for a scan whose direction is non-orthonormal by about 1e-4 (as some M&Ms scans are), and on the real M&Ms scans;
- nnU-Net v2's own ``verify_dataset_integrity`` on an nnunet export (when ``nnunetv2`` is importable);
- dicom3tools' ``dciodvfy`` on every DICOM file (when installed): no error but the one its dictionary makes about
  Synthetic Data (0008,001C), which it predates; only the warnings the README lists; ``dcm2niix`` reads each series
  (when installed) with the pixels and geometry of the NIfTI export;
- a BIDS export passes a schema-level check always and the BIDS validator (the schema validator) when installed;
- no file of any export names a local path, ``file://`` or a source case id unless --keep-source-ids;
- from a mask file to every export format with the command line alone (``render --case-out``, then ``export``).

The tools are optional: each check skips, saying why, when its tool is absent. Real scans come from ../shared/data
(skipped without it)."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from helpers import cli, run

FORMATS = ("nifti", "nnunet", "dicom", "bids")
SKEW = np.array([[1.0, 2e-4, 0.0], [0.0, 1.0, -1e-4], [0.0, 0.0, 1.0]])  # non-orthonormal by ~1e-4, like M&Ms C8O0P2


def _stand_in_render(c, z: int, seed: int, mode: str | None = None):
    """A kept render of slice ``z`` of case ``c`` as the studio makes one, its image painted from the mask (no model,
    no patient pixel: these tests are about files and geometry), and the slice's affine."""
    import dataclasses

    from cmrstudio.data.frame import from_frame, make_frame, to_frame
    from cmrstudio.record import Render, RenderRecord

    frame = make_frame(c, size=64)
    fm = to_frame(c, frame).mask[z]
    rng = np.random.default_rng(seed)
    framed = (np.array([0.05, 0.8, 0.3, 0.7], np.float32)[fm] + rng.normal(0, 0.02, fm.shape)).clip(0, 1).astype(np.float32)
    params = {"model": "spade-test", "model_sha256": "ab" * 32, "kind": "spade", "sampler": "spade", "steps": 1, "guidance": None,
              "seed": seed, "vendor": "siemens", "seconds": 0.02, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    res = Render(from_frame(framed, frame, kind="image"), framed, c.mask[z], frame, RenderRecord.from_dict(params))
    if mode:
        res.record = dataclasses.replace(res.record, mode=mode, margin_mm=10.0)
    aff = np.array(c.affine, float)
    aff[:3, 3] += aff[:3, 0] * z
    return res, aff


def _project(folder: Path, cases, dataset: str):
    """A studio project with one kept render per case; the first with a skewed (non-orthonormal) direction, the
    second rendered in the patient's scan."""
    from cmrstudio.project import Project

    p = Project.create(folder, name="tools")
    for i, c in enumerate(cases):
        z = c.shape[0] // 2
        res, aff = _stand_in_render(c, z, seed=i, mode="in-patient" if i == 1 else None)
        if i == 0:
            aff[:3, :3] = aff[:3, :3] @ SKEW
        src = {"case_id": c.case_id, "slice": z, "phase": c.phase, "dataset": dataset}
        if c.source.get("mask"):
            src["path"] = str(c.source["mask"])
        p.add(res, src, rating=5 - i % 5, note=f"kept {i}", affine=aff)
    return p


def _phantom_cases(folder: Path):
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.io import scan, write_case

    for s in (1, 2, 3):
        write_case(phantom_case(s, n_slices=3, shape=(72, 64), vendor="philips"), folder)
    return [r.load() for r in scan(folder) if r.phase == "ED"]


@pytest.fixture(scope="module", params=["phantom", "mnms"])
def exports(request, tmp_path_factory):
    """The same project exported in every format (nnunet with real cases merged): from phantoms always, from the
    real M&Ms scans (masks only cases included) when ../shared/data is here."""
    from cmrstudio.export import export
    from cmrstudio.io import scan

    tmp = tmp_path_factory.mktemp(f"tools-{request.param}")
    if request.param == "mnms":
        from conftest import shared

        real = shared("mnms")
        cases = [r.load() for r in scan(real) if r.phase == "ED"]
    else:
        real = tmp / "phantoms"
        cases = _phantom_cases(real)
    p = _project(tmp / "project", cases, dataset=request.param if request.param == "mnms" else "phantom")
    out = {"kind": request.param, "project": p, "cases": cases, "real": real, "tmp": tmp}
    for fmt in FORMATS:
        rep = export(p.folder, tmp / fmt, fmt, with_real=[real] if fmt == "nnunet" else None)
        assert len(rep.exported) == len(cases), rep.skipped
        out[fmt] = tmp / fmt
    out["nnunet_root"] = tmp / "nnunet" / "Dataset501_SyntheticCMR"
    return out


# -- SimpleITK: every NIfTI opens -----------------------------------------------------------------------

def _pairs(e) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of every NIfTI the nifti, nnunet and bids exports hold."""
    pairs = [(f, f.with_name(f.name.replace("_image", "_mask"))) for f in sorted(e["nifti"].glob("*_image.nii.gz"))]
    root = e["nnunet_root"]
    pairs += [(f, root / "labelsTr" / f.name.replace("_0000", "")) for f in sorted((root / "imagesTr").glob("*_0000.nii.gz"))]
    for f in sorted(e["bids"].glob("sub-*/anat/*_T2w.nii")):
        pairs.append((f, next(f.parent.glob("*_dseg.nii"))))
    return pairs


def test_every_exported_nifti_opens_in_simpleitk_with_one_geometry_for_image_and_mask(exports):
    pairs = _pairs(exports)
    n_cases = len(exports["cases"])
    from cmrstudio.io import scan

    n_real = len([r for r in scan(exports["real"]) if r.image is not None])
    assert len(pairs) == 3 * n_cases + n_real
    every = {f for pair in pairs for f in pair}
    assert every == set(exports["nifti"].rglob("*.nii.gz")) | set(exports["nnunet"].rglob("*.nii.gz")) | set(exports["bids"].rglob("*.nii"))
    for img_f, msk_f in pairs:
        img, msk = sitk.ReadImage(str(img_f)), sitk.ReadImage(str(msk_f))  # raises on a direction ITK calls non-orthonormal
        for a, b in ((img.GetOrigin(), msk.GetOrigin()), (img.GetSpacing(), msk.GetSpacing()), (img.GetDirection(), msk.GetDirection())):
            assert np.allclose(a, b, atol=1e-5), (img_f, msk_f)
        d = np.array(img.GetDirection()).reshape(3, 3)
        assert np.allclose(d.T @ d, np.eye(3), atol=1e-6)
        # nibabel agrees with SimpleITK (RAS vs LPS), and both transforms are written
        ni = nib.load(str(img_f))
        assert int(ni.header["qform_code"]) == 1 and int(ni.header["sform_code"]) == 1
        lps = np.diag([-1.0, -1.0, 1.0]) @ ni.affine[:3, :3]
        assert np.allclose(lps, d @ np.diag(img.GetSpacing()), atol=1e-4)
        assert np.array_equal(sitk.GetArrayFromImage(msk), np.asarray(nib.load(str(msk_f)).dataobj).T)
    # the skewed case: orthonormalised, and the sidecar says by how much
    side = json.loads((exports["nifti"] / "r0001.json").read_text(encoding="utf-8"))["geometry"]["direction_orthonormalised"]
    assert 1e-5 < side["max_cosine_change"] < 1e-2 and side["max_angle_deg"] < 0.5


def test_a_skewed_direction_is_what_simpleitk_refuses_without_the_fix(tmp_path):
    """The check above bites: the file the issue found (qform code 0, the scan's skewed matrix in the sform) is refused."""
    aff = np.diag([1.25, 1.25, 8.0, 1.0])
    aff[:3, :3] = aff[:3, :3] @ np.array([[1.0, 2e-3, 0.0], [0.0, 1.0, -1e-3], [0.0, 0.0, 1.0]])
    old = nib.Nifti1Image(np.zeros((8, 8, 1), np.float32), aff)
    old.set_qform(None, code=0)
    old.set_sform(aff, code=2)
    nib.save(old, str(tmp_path / "old.nii.gz"))
    with pytest.raises(RuntimeError, match="orthonormal"):
        sitk.ReadImage(str(tmp_path / "old.nii.gz"))


# -- nnU-Net v2's own integrity check ------------------------------------------------------------------

def test_nnunet_export_passes_nnunets_own_dataset_integrity_check(exports):
    pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (pip install nnunetv2, or the test extras)")
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    root = exports["nnunet_root"]
    first = sorted((root / "imagesTr").glob("*.nii.gz"))[0]
    assert first.name == "r0001_0000.nii.gz"  # the skewed case comes first: the case that made nnU-Net fail
    verify_dataset_integrity(str(root), num_processes=1)  # raises (AssertionError / RuntimeError) on any problem


# -- DICOM: dciodvfy and dcm2niix ----------------------------------------------------------------------

# What dciodvfy may still say, and why (the README's export section lists the same):
DCIODVFY_ERRORS_ALLOWED = (
    # Synthetic Data (0008,001C) is in the standard (SOP Common module) but newer than dicom3tools' dictionary in
    # Debian 12 (1.00~20220618): it reports the tag as unknown. Any other error fails the test.
    re.compile(r"^Error - Attribute with an even group number is not a recognized standard attribute - \(0x0008,0x001c\)"),
)
DCIODVFY_WARNINGS_ALLOWED = (
    re.compile(r"\(0x0008,0x001c\)"),  # the same tag, unknown to the dictionary: "not present in standard DICOM IOD"
    # the image's float intensities as uint16 with Rescale Slope/Intercept: the Modality LUT is not in the MR IOD
    re.compile(r"^Warning - Attribute is not present in standard DICOM IOD - \(0x0028,0x105[23]\) DS Rescale (Intercept|Slope)"),
    re.compile(r"^Warning - Non-identity Modality LUT Module \(RescaleSlope and RescaleIntercept\) not expected to be present in standard MR IOD"),
    re.compile(r"^Warning - Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard Extended SOP Class"),
)


def _series(e) -> list[Path]:
    return sorted(p for p in e["dicom"].glob("r*/*") if p.is_dir())


def test_dciodvfy_finds_no_error_in_any_dicom_file(exports):
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy is not installed (Debian/Ubuntu: apt-get install dicom3tools)")
    files = sorted(exports["dicom"].rglob("*.dcm"))
    assert len(files) == 2 * len(exports["cases"])  # one slice per render: image + mask
    errors, warnings = [], set()
    for f in files:
        p = subprocess.run([exe, str(f)], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=60)
        for line in (p.stdout + p.stderr).splitlines():
            line = line.strip()
            if line.startswith("Error") and not any(r.search(line) for r in DCIODVFY_ERRORS_ALLOWED):
                errors.append(f"{f.relative_to(exports['dicom'])}: {line}")
            elif line.startswith("Warning") and not any(r.search(line) for r in DCIODVFY_WARNINGS_ALLOWED):
                warnings.add(line)
    assert errors == []
    assert warnings == set(), "dciodvfy warns about something the README does not list"


def test_dcm2niix_reads_every_series_with_the_pixels_and_geometry_of_the_nifti_export(exports, tmp_path):
    exe = shutil.which("dcm2niix")
    if exe is None:
        pytest.skip("dcm2niix is not installed (apt-get install dcm2niix)")
    for series in _series(exports):
        rid, kind = series.parent.name, series.name
        out = tmp_path / rid / kind
        out.mkdir(parents=True)
        p = subprocess.run([exe, "-b", "n", "-z", "n", "-o", str(out), "-f", "%s", str(series)], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        got = sorted(out.glob("*.nii"))
        assert len(got) == 1, p.stdout
        a = nib.as_closest_canonical(nib.load(str(got[0])))
        b = nib.as_closest_canonical(nib.load(str(exports["nifti"] / f"{rid}_{kind}.nii.gz")))
        A, B = np.asarray(a.dataobj, float).squeeze(), np.asarray(b.dataobj, float).squeeze()
        assert A.shape == B.shape
        tol = 0 if kind == "mask" else (B.max() - B.min()) / 65535 * 1.01 + 1e-6  # uint16 with rescale
        assert np.abs(A - B).max() <= tol
        assert np.allclose(a.affine, b.affine, atol=1e-3)


def test_dicom_marks_what_is_synthetic_and_what_is_a_patients(exports):
    import pydicom

    for series in _series(exports):
        prov = json.loads((series.parent / "provenance.json").read_text(encoding="utf-8"))
        ds = pydicom.dcmread(str(next(series.glob("*.dcm"))))
        assert ds.PatientPosition == "HFS" and ds.StudyID and "ConversionType" not in ds
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        if series.name == "image":
            assert ds.SyntheticData == "YES"  # made by the model, all or part
            assert ds.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109100"
        else:
            assert ds.get("SyntheticData") == {"synthetic": "YES", "patient": "NO", "unknown": None}[prov["mask_origin"]]
        # each series says whether its own content is derived from a patient; the study, whether the case is
        derived = prov["derived_from_patient"] is True if series.name == "image" else prov["mask_origin"] == "patient"
        assert ("derived from patient data" in ds.DerivationDescription) == derived
        assert ds.StudyDescription.startswith("SYNTHETIC" if prov["derived_from_patient"] is False else "DERIVED")


# -- BIDS ----------------------------------------------------------------------------------------------

def test_bids_export_has_the_layout_the_bids_schema_asks_for(exports):
    from cmrstudio.export.bids import check_bids

    root = exports["bids"]
    assert check_bids(root) == []
    desc = json.loads((root / "dataset_description.json").read_text(encoding="utf-8"))
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "cmrstudio" and desc["BIDSVersion"]
    assert all(not str(s.get("URL", "")).startswith("file:") for s in desc.get("SourceDatasets", []))
    assert (root / "README.md").read_text(encoding="utf-8").startswith("# ")
    assert (root / "dseg.tsv").read_text(encoding="utf-8").splitlines() == ["index\tname\tabbreviation", "1\tLV blood pool\tLV",
                                                             "2\tLV myocardium\tMYO", "3\tRV blood pool\tRV"]
    subs = sorted(p for p in root.iterdir() if p.is_dir())
    assert len(subs) == len(exports["cases"]) and all(re.fullmatch(r"sub-[A-Za-z0-9]+", s.name) for s in subs)
    participants = (root / "participants.tsv").read_text(encoding="utf-8").splitlines()
    assert len(participants) == len(subs) + 1
    for s in subs:
        assert [p.name for p in s.iterdir()] == ["anat"]
        names = sorted(p.name for p in (s / "anat").iterdir())
        assert len(names) == 4
        img = [n for n in names if n.endswith("_T2w.nii")]
        seg = [n for n in names if n.endswith("_dseg.nii")]
        assert len(img) == len(seg) == 1 and all(n.startswith(f"{s.name}_desc-") for n in names)
        assert {n[:-5] for n in names if n.endswith(".json")} == {n[:-4] for n in names if n.endswith(".nii")}
        side = json.loads((s / "anat" / img[0].replace(".nii", ".json")).read_text(encoding="utf-8"))
        prov = side["cmrstudio"]
        # desc says what the file holds: synthetic only when made by the model / painted
        assert img[0] == f"{s.name}_desc-{'synthetic' if prov['image_origin'] == 'synthetic' else 'inpatient'}_T2w.nii"
        assert seg[0] == f"{s.name}_desc-{ {'synthetic': 'synthetic', 'patient': 'patient'}.get(prov['mask_origin'], 'unverified')}_dseg.nii"
        assert side["SkullStripped"] is False and side["Manufacturer"] == "cmrstudio (synthetic)"
        labels = set(np.unique(np.asarray(nib.load(str(s / "anat" / seg[0])).dataobj)).tolist())
        assert labels <= {0, 1, 2, 3}
    ignored = (root / ".bidsignore").read_text(encoding="utf-8").split()
    assert all(n in ignored for n in ("export.json", "manifest.json", "contact_sheet.png"))
    if exports["kind"] == "mnms":  # a real patient's segmentation is labelled as one; the in-patient render too
        assert any(n.name.endswith("desc-patient_dseg.nii") for n in root.rglob("*.nii"))
    assert any(n.name.endswith("desc-inpatient_T2w.nii") for n in root.rglob("*.nii"))


def test_the_bids_check_names_what_the_validator_would_reject(exports, tmp_path):
    from cmrstudio.export.bids import check_bids

    bad = Path(shutil.copytree(exports["bids"], tmp_path / "bad"))
    (bad / "README.md").unlink()
    (bad / "notes.txt").write_text("x")
    img = next(bad.glob("sub-*/anat/*_T2w.nii"))
    img.rename(img.with_name(img.name.replace("_desc-", "_foo-")))
    seg = next(bad.glob("sub-*/anat/*_dseg.json"))
    seg.with_name(seg.name.replace(".json", ".nii")).unlink()
    d = json.loads((bad / "dataset_description.json").read_text(encoding="utf-8"))
    d["SourceDatasets"] = [{"URL": "file:///home/me/scans"}]
    d.pop("DatasetType")
    (bad / "dataset_description.json").write_text(json.dumps(d))
    msgs = " | ".join(check_bids(bad))
    for what in ("no README", "notes.txt is not a BIDS file", "entity 'foo'", "a sidecar without its data file",
                 "local path", "DatasetType 'derivative'"):
        assert what in msgs, what


def _bids_validator() -> tuple[list[str] | None, str]:
    """The command of a BIDS validator that validates derivative datasets, or None and why not. The schema validator
    is ``bids-validator-deno`` (PyPI; in the test extras), ``bids-validator`` 2.x (deno, jsr:@bids/validator); the npm
    package 1.x is the legacy validator, which does not validate derivatives (``desc-`` and ``_dseg`` are NOT_INCLUDED
    for it), but its 1.14-1.15 releases ship the schema validator as dist/validator/bids-validator.js, which deno runs."""
    if shutil.which("bids-validator-deno"):
        return [shutil.which("bids-validator-deno")], ""
    exe = shutil.which("bids-validator")
    if exe:
        v = subprocess.run([exe, "--version"], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=60).stdout.strip()
        if v and not v.lstrip("v").startswith("1."):
            return [exe], ""
        bundled = Path(os.path.realpath(exe)).parents[1] / "dist" / "validator" / "bids-validator.js"
        if bundled.is_file() and shutil.which("deno"):
            return [shutil.which("deno"), "run", "-A", str(bundled)], ""
        return None, f"bids-validator {v} is the legacy validator, which does not validate BIDS derivatives (pip install bids-validator-deno)"
    return None, "the BIDS validator is not installed (pip install bids-validator-deno, or the test extras)"


def test_the_bids_validator_accepts_the_export(exports):
    cmd, why = _bids_validator()
    if cmd is None:
        pytest.skip(why)
    p = subprocess.run([*cmd, str(exports["bids"]), "--json"], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    try:
        out = json.loads(p.stdout[p.stdout.index("{"):])
    except ValueError:
        pytest.fail(f"the validator printed no JSON: {p.stdout[-2000:]} {p.stderr[-2000:]}")
    issues = out["issues"]["issues"] if isinstance(out["issues"], dict) else out["issues"]
    errors = [i for i in issues if i.get("severity") == "error"]
    assert errors == [], json.dumps(errors, indent=1)[:4000]


# -- provenance: nothing local, no source ids ----------------------------------------------------------

def _texts(folder: Path):
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            b = f.read_bytes()
            yield f, (gzip.decompress(b) if f.name.endswith(".gz") else b)


def test_no_export_names_a_local_path_or_a_source_case(exports):
    tmp = exports["tmp"]
    needles = [b"file:", str(tmp).encode(), str(exports["real"]).encode(), str(Path.home()).encode() + b"/"]
    needles += [c.case_id.encode() for c in exports["cases"]]  # phantom_0001_ED, B5F8L9_ED, ...
    if exports["kind"] == "mnms":
        needles += [c.case_id.split("_")[0].encode() for c in exports["cases"]]  # the M&Ms subject ids alone (B5F8L9)
    for fmt in FORMATS:
        for f, data in _texts(exports[fmt]):
            hits = [n.decode() for n in needles if n in data]
            assert not hits, f"{f.relative_to(tmp)} names {hits}"


# -- the command line alone: from a mask file to every format ------------------------------------------

def test_from_a_mask_file_to_every_export_format_with_the_command_line_alone(tmp_path):
    from cmrstudio.export.bids import check_bids

    run("phantom", "--n", "1", "--out", str(tmp_path / "ph"), "--slices", "2", "--size", "96")
    mask = tmp_path / "ph" / "phantom_0000_ED_mask.nii.gz"
    p = run("render", str(mask), "--case-out", str(tmp_path / "cases"), "--seed", "1")
    assert "fully synthetic" in p.stdout
    shutil.copy(mask, tmp_path / "painted.nii.gz")  # a loose mask file: where it came from is not known
    run("render", str(tmp_path / "painted.nii.gz"), "--case-out", str(tmp_path / "cases"), "--seed", "2")
    cases = sorted((tmp_path / "cases").glob("*_image.nii.gz"))
    assert len(cases) == 2
    for fmt in FORMATS:
        dest = tmp_path / f"exp-{fmt}"
        p = run("export", str(tmp_path / "cases"), str(dest), "--format", fmt)
        assert f"exported 2 rendered cases as {fmt}" in p.stdout
        assert "every file matches its manifest" in run("export", "--verify", str(dest)).stdout
        listing = json.loads((dest / "export.json").read_text(encoding="utf-8"))
        assert listing["cases"] == ["r0001", "r0002"]
        if fmt == "nifti":  # the phantom's mask is synthetic; the loose file's origin is unknown, so it is not called anonymous
            painted, phantom = (json.loads((dest / f"{c}.json").read_text(encoding="utf-8")) for c in listing["cases"])
            assert painted["mask_origin"] == "unknown" and painted["derived_from_patient"] is None and not painted["synthetic"]
            assert phantom["mask_origin"] == "synthetic" and phantom["synthetic"] is True and phantom["source"]["dataset"] == "phantom"
            for f in dest.glob("*.nii.gz"):
                sitk.ReadImage(str(f))
        elif fmt == "nnunet":
            for f in dest.rglob("*.nii.gz"):
                sitk.ReadImage(str(f))
        elif fmt == "dicom":
            import pydicom

            marks = {f.parent.parent.name + "/" + f.parent.name: pydicom.dcmread(str(f)).get("SyntheticData") for f in dest.rglob("*.dcm")}
            # every image is made by the model; the phantom's mask is painted; the loose file's, of unknown origin, is not marked
            assert marks == {"r0001/image": "YES", "r0001/mask": None, "r0002/image": "YES", "r0002/mask": "YES"}
        else:
            assert check_bids(dest) == []
    anon = cli("export", str(tmp_path / "cases"), str(tmp_path / "anon"), "--format", "bids", "--anonymous-only", check=False)
    assert anon.returncode == 1 and "--anonymous-only leaves it out" in anon.stderr
    assert json.loads((tmp_path / "anon" / "export.json").read_text(encoding="utf-8"))["cases"] == ["r0001"]


def test_render_records_where_its_mask_came_from(tmp_path, mnms_dir):
    """render --case-out records a mask of a dataset (a file in its folder, or --case in the folder) so that an export
    can compare it with that scan's segmentation; a loose mask file records nothing (its origin stays unknown)."""
    from cmrstudio.cli.render import mask_source_of
    from cmrstudio.io import read_mask

    f = mnms_dir / "B5F8L9_sa_ED_gt.nii.gz"
    assert mask_source_of(f, read_mask(f)) == {"dataset": "mnms", "case_id": "B5F8L9_ED", "phase": "ED", "path": str(f.resolve())}
    assert mask_source_of(mnms_dir, read_mask(mnms_dir, case="H1N8S6_ES"))["case_id"] == "H1N8S6_ES"
    shutil.copy(f, tmp_path / "mine.nii.gz")
    assert mask_source_of(tmp_path / "mine.nii.gz", read_mask(tmp_path / "mine.nii.gz")) is None
