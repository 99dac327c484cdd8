"""Fuzz suite: several hundred corrupted and odd inputs, built from the phantom and (when ../shared/data
is present) from slabs of the real scans, put through the readers and the CLI in this process.

Every input has an expectation: ``ok`` (read, no warning), ``warn`` (read, with a warning whose assumption
is in ``case.source["assumptions"]``), ``error`` (one clear sentence), ``flag`` (invalid: a warning or an
error, never silent) or ``any`` (valid or not, unknown in advance: anything but a traceback). For every
input and every command (``info``, ``info --check``, ``check``, ``convert``):

* no traceback, no hang (each input runs under a time limit), no stray output (Python warnings, or C
  libraries printing to stderr);
* an error is exit code 2 and exactly one ``cmrstudio:`` line that names the file (``warning:`` lines may
  come before it);
* the CLI agrees with the library: an error there is an error here, a warning there is a ``warning:`` line
  here;
* what ``convert`` writes reads back with no warning and no error, and its sidecar keeps the assumptions.

Then a property-based layer (Hypothesis) over the synthesis frame and its inverse, the label remaps and
the anatomy checks. The figures: ``python -m pytest tests/test_fuzz.py -q -s`` prints them.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import resource
import shutil
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from cmrstudio.errors import CmrError, CmrWarning

from conftest import SHARED_DATA
from helpers import cli, write_dicom_series

TIME_LIMIT_S = 30.0  # per input, all its runs together (each is milliseconds; a hang is caught, not waited out)
EXPECTS = ("ok", "warn", "error", "flag", "any")


@dataclass
class Input:
    name: str
    category: str
    path: Path
    expect: str
    mask: Path | None = None
    frame: int | None = None

    def __post_init__(self):
        assert self.expect in EXPECTS, self.expect


# ----------------------------------------------------------------------------------------------- helpers
def _aff_xyz(sp=(1.5, 1.5, 8.0)):
    return np.diag([sp[0], sp[1], sp[2], 1.0])


def save_nifti(path: Path, arr_xyz, affine=None, dtype=None) -> Path:
    arr = np.asarray(arr_xyz) if dtype is None else np.asarray(arr_xyz).astype(dtype)
    extra = {"dtype": arr.dtype} if arr.dtype.kind in "iu" and arr.dtype.itemsize == 8 else {}
    img = nib.Nifti1Image(arr, _aff_xyz() if affine is None else affine, **extra)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return path


def patch_nifti(path: Path, **fields) -> Path:
    """Rewrite header fields in place (the bytes nibabel would never write): pixdim_xyz, srow, or any header key."""
    gz = path.name.endswith(".gz")
    data = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(data), check=False)
    for k, v in fields.items():
        if k == "pixdim_xyz":
            hdr["pixdim"][1:4] = v
        elif k == "srow":
            hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = v
        elif k.startswith("dim"):
            d = hdr["dim"].copy()
            d[int(k[3:])] = v
            hdr["dim"] = d
        else:
            hdr[k] = v
    data = hdr.binaryblock + data[348:]
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def write_h5(path: Path, **datasets) -> Path:
    attrs = datasets.pop("attrs", {})
    with h5py.File(path, "w") as fh:
        for k, v in datasets.items():
            fh[k] = v
        for k, v in attrs.items():
            fh.attrs[k] = v
    return path


def write_sitk_file(path: Path, arr_zyx, spacing=(1.5, 1.5, 8.0), compress=True, vector=False) -> Path:
    img = sitk.GetImageFromArray(np.asarray(arr_zyx), isVector=vector)
    if img.GetDimension() == 3:
        img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path), useCompression=compress)
    return path


def dicom_variant(src: Path, dest: Path, edit) -> Path:
    import pydicom

    ds = pydicom.dcmread(str(src))
    edit(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(str(dest), enforce_file_format=False)
    return dest


def _set_raw(ds, tag, vr, text):
    """Put a value pydicom would refuse (e.g. 'nan' as a decimal string) into the dataset as raw bytes."""
    from pydicom.dataelem import RawDataElement

    raw = text.encode("latin-1")
    if len(raw) % 2:
        raw += b" "
    ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)


def truncations(n: int) -> list[int]:
    cuts = {0, 1, 16, 100, 347, n // 4, n // 2, (3 * n) // 4, n - 200, n - 100, n - 20, n - 9, n - 8, n - 4, n - 1}
    return sorted(c for c in cuts if 0 <= c < n)


# ----------------------------------------------------------------------------------------------- the generator
def build_inputs(root: Path, shared: Path | None) -> list[Input]:
    """Several hundred bad and odd inputs under ``root``, from the phantom and (``shared``) the real scans."""
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.io import write_case
    from cmrstudio.io.nifti import write_nifti

    rng = np.random.default_rng(19)
    out: list[Input] = []
    counter = [0]

    def new(name: str) -> Path:
        counter[0] += 1
        d = root / f"{counter[0]:04d}"
        d.mkdir()
        return d / name

    def add(category, label, path, expect, **kw):
        out.append(Input(f"{category}/{label}", category, Path(path), expect, **kw))

    ph = phantom_case(5, n_slices=3, shape=(40, 36), spacing=2.5, vendor="siemens")  # small, with all three labels
    img_xyz = ph.image.transpose(2, 1, 0)
    msk_xyz = ph.mask.transpose(2, 1, 0)

    # ---- controls: valid inputs in every format (no warning may be raised for them)
    p = new("ph_image.nii.gz"); write_nifti(p, ph.image, ph.affine)
    m = p.parent / "ph_gt.nii.gz"; write_nifti(m, ph.mask, ph.affine, dtype=np.uint8)
    add("control", "nii.gz", p, "ok"); add("control", "nii.gz+mask", p, "ok", mask=m); add("control", "mask.nii.gz", m, "ok")
    good_gz, good_mask = p, m
    p = new("ph.nii"); write_nifti(p, ph.image, ph.affine); add("control", "nii", p, "ok"); good_nii = p
    for suf, comp in ((".mha", True), (".nrrd", True), (".mha", False), (".nrrd", False), (".mhd", False), (".nhdr", False)):
        p = new(f"ph{suf}"); write_sitk_file(p, ph.image, compress=comp)
        add("control", f"{suf}-{'gz' if comp else 'raw'}", p, "ok")
    good_mha = [i.path for i in out if i.name == "control/.mha-gz"][0]
    good_nrrd = [i.path for i in out if i.name == "control/.nrrd-gz"][0]
    good_mha_raw = [i.path for i in out if i.name == "control/.mha-raw"][0]
    good_nrrd_raw = [i.path for i in out if i.name == "control/.nrrd-raw"][0]
    p = new("ph_mask.mha"); write_sitk_file(p, ph.mask); add("control", "mask.mha", p, "ok")
    p = new("ph.h5"); write_h5(p, image=ph.image, label=ph.mask); add("control", "h5", p, "ok"); good_h5 = p
    p = new("ph_sp.h5"); write_h5(p, image=ph.image, label=ph.mask, attrs={"spacing": [8.0, 1.5, 1.5]}); add("control", "h5+spacing", p, "ok")
    d = new("series"); write_dicom_series(d, (ph.image * 1000).astype(np.int16), "1.2.826.0.1.3680043.8.498.77", spacing=(8.0, 1.5, 1.5))
    add("control", "dicom-series", d, "ok"); good_series = d
    good_dcm = sorted(d.glob("*.dcm"))[1]
    add("control", "dicom-file", good_dcm, "ok")
    d = new("layout"); write_case(ph, d); add("control", "cmrstudio-layout", d, "ok")
    p = new("slice2d.nii.gz"); save_nifti(p, img_xyz[:, :, 0]); add("control", "2d-nifti", p, "ok")
    p = new("ph1.nii.gz"); save_nifti(p, img_xyz[..., None]); add("control", "4d-one-frame", p, "ok")
    p = new("zeros_gt.nii.gz"); write_nifti(p, np.zeros_like(ph.mask), ph.affine, dtype=np.uint8); add("control", "empty-mask", p, "ok")

    real: list[tuple[str, Path]] = []
    if shared is not None:
        real = _real_bases(shared, new)
        for label, path in real:
            add("control", f"real-{label}", path, "ok")

    # ---- truncations at many lengths, of every format
    bases = [("nii.gz", good_gz), ("mask.nii.gz", good_mask), ("nii", good_nii), ("mha", good_mha), ("nrrd", good_nrrd),
             ("mha-raw", good_mha_raw), ("nrrd-raw", good_nrrd_raw), ("h5", good_h5), ("dcm", good_dcm)] + [(f"real-{k}", v) for k, v in real if v.is_file()]
    for label, src in bases:
        data = src.read_bytes()
        n = len(data)
        for cut in truncations(n):
            p = new(src.name)
            p.write_bytes(data[:cut])
            # a gzip stream cut inside its 8-byte trailer still holds all its data: readable, with a warning
            gz_tail = src.name.endswith(".gz") and n - 8 <= cut
            add("truncated", f"{label}@{cut}", p, "warn" if gz_tail else "flag")

    # ---- random bytes under every extension (and with each format's magic in front)
    exts = [".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr", ".h5", ".hdf5", ".hdf", ".dcm", ".dicom", ".ima", ".txt", ""]
    for ext in exts:
        for size in (0, 7, 1000, 70000):
            p = new(f"random{ext}")
            p.write_bytes(rng.bytes(size))
            add("random", f"{ext or 'noext'}-{size}", p, "error")
    magics = {".nii": b"\x5c\x01\x00\x00", ".nii.gz": b"\x1f\x8b\x08\x00", ".mha": b"ObjectType = Image\nNDims = 3\n",
              ".nrrd": b"NRRD0004\n", ".h5": b"\x89HDF\r\n\x1a\n", ".dcm": b"\x00" * 128 + b"DICM"}
    for ext, magic in magics.items():
        for size in (10, 5000):
            p = new(f"magic{ext}")
            p.write_bytes(magic + rng.bytes(size))
            add("random", f"magic{ext}-{size}", p, "error")
    # a valid header with random data behind it: an image of noise (NaN patterns possible): anything clean
    p = new("noise.nii"); save_nifti(p, rng.random((16, 16, 3), dtype=np.float32))
    raw = bytearray(p.read_bytes()); raw[352:] = rng.bytes(len(raw) - 352); p.write_bytes(bytes(raw))
    add("random", "valid-header-random-data", p, "any")

    # ---- dimensions
    add("dims", "1d", save_nifti(new("d1.nii.gz"), np.arange(10, dtype=np.float32)), "error")
    add("dims", "4d-no-frame", save_nifti(new("d4.nii.gz"), np.stack([img_xyz] * 3, -1)), "error")
    add("dims", "4d-frame-1", save_nifti(new("d4f.nii.gz"), np.stack([img_xyz] * 3, -1)), "ok", frame=1)
    add("dims", "4d-frame-out-of-range", save_nifti(new("d4r.nii.gz"), np.stack([img_xyz] * 3, -1)), "error", frame=7)
    add("dims", "5d-singletons", save_nifti(new("d5s.nii.gz"), img_xyz[..., None, None]), "ok")
    add("dims", "5d-vector", save_nifti(new("d5v.nii.gz"), np.stack([img_xyz] * 3, -1)[:, :, :, None, :]), "error")
    add("dims", "5d-2x2", save_nifti(new("d5.nii.gz"), np.zeros((8, 8, 2, 2, 2), np.float32)), "error")
    add("dims", "6d", save_nifti(new("d6.nii.gz"), np.zeros((8, 8, 2, 1, 2, 2), np.float32)), "error")
    add("dims", "7d", save_nifti(new("d7.nii.gz"), np.zeros((4, 4, 2, 1, 1, 2, 2), np.float32)), "error")
    add("dims", "mask-4d-no-frame", save_nifti(new("m4_gt.nii.gz"), np.stack([msk_xyz] * 2, -1), dtype=np.uint8), "error")
    add("dims", "mha-2d", write_sitk_file(new("s2.mha"), ph.image[0]), "ok")
    img4 = sitk.JoinSeries([sitk.GetImageFromArray(ph.image)] * 2)
    p = new("s4.mha"); sitk.WriteImage(img4, str(p)); add("dims", "mha-4d-no-frame", p, "error")
    p = new("s4f.mha"); sitk.WriteImage(img4, str(p)); add("dims", "mha-4d-frame-1", p, "ok", frame=1)
    add("dims", "h5-1d", write_h5(new("h1.h5"), image=np.arange(5.0)), "error")
    add("dims", "h5-4d", write_h5(new("h4.h5"), image=np.zeros((2, 3, 8, 8))), "error")
    add("dims", "h5-2d", write_h5(new("h2.h5"), image=ph.image[0], label=ph.mask[0]), "ok")
    add("dims", "h5-scalar", write_h5(new("h0.h5"), image=np.float32(3)), "error")

    # ---- NaN, infinities, values float32 cannot hold
    def with_values(vals, dtype=np.float32):
        a = img_xyz.astype(dtype).copy()
        flat = a.reshape(-1)
        flat[: len(vals)] = vals
        return a

    add("nan-inf", "nan", save_nifti(new("nan.nii.gz"), with_values([np.nan] * 5)), "warn")
    add("nan-inf", "+inf", save_nifti(new("pinf.nii.gz"), with_values([np.inf])), "warn")
    add("nan-inf", "-inf", save_nifti(new("ninf.nii.gz"), with_values([-np.inf, np.nan])), "warn")
    add("nan-inf", "all-nan", save_nifti(new("allnan.nii.gz"), np.full((8, 8, 2), np.nan, np.float32)), "error")
    add("nan-inf", "float64-1e300", save_nifti(new("big.nii.gz"), with_values([1e300, -1e300], np.float64)), "warn")
    a = ph.image.copy(); a[1, 2, 3] = np.nan
    add("nan-inf", "mha-nan", write_sitk_file(new("nan.mha"), a), "warn")
    a = ph.image.copy(); a[0, 0, 0] = np.inf
    add("nan-inf", "nrrd-inf", write_sitk_file(new("inf.nrrd"), a), "warn")
    a = ph.image.copy(); a[2] = np.nan
    add("nan-inf", "h5-nan-slice", write_h5(new("nan.h5"), image=a, label=ph.mask), "warn")
    m = msk_xyz.astype(np.float32); m[0, 0, 0] = np.nan
    add("nan-inf", "mask-nan", save_nifti(new("nan_gt.nii.gz"), m), "error")
    m = msk_xyz.astype(np.float32); m[0, 0, 0] = np.inf
    add("nan-inf", "mask-inf", save_nifti(new("inf_gt.nii.gz"), m), "error")
    p = save_nifti(new("slope_inf.nii.gz"), (img_xyz * 100).astype(np.int16)); patch_nifti(p, scl_slope=np.inf, scl_inter=0)
    add("nan-inf", "scl_slope-inf", p, "any")  # the standard: a slope that is not finite means no scaling
    p = save_nifti(new("slope_nan.nii.gz"), (img_xyz * 100).astype(np.int16)); patch_nifti(p, scl_slope=np.nan)
    add("nan-inf", "scl_slope-nan", p, "any")
    p = save_nifti(new("inter_inf.nii.gz"), (img_xyz * 100).astype(np.int16)); patch_nifti(p, scl_slope=1.0, scl_inter=-np.inf)
    add("nan-inf", "scl_inter-inf", p, "flag")

    # ---- odd dtypes
    for dt in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64, np.float64):
        add("dtype", f"image-{np.dtype(dt).name}", save_nifti(new(f"{np.dtype(dt).name}.nii.gz"), (img_xyz * 100).astype(dt)), "ok")
    for dt in (np.complex64, np.complex128):
        add("dtype", f"image-{np.dtype(dt).name}", save_nifti(new(f"{np.dtype(dt).name}.nii.gz"), img_xyz.astype(dt) * (1 + 1j)), "error")
    rgb = np.zeros(img_xyz.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    add("dtype", "rgb24", save_nifti(new("rgb.nii.gz"), rgb), "error")
    rgba = np.zeros(img_xyz.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1"), ("A", "u1")])
    add("dtype", "rgba32", save_nifti(new("rgba.nii.gz"), rgba), "error")
    p = save_nifti(new("dtcode.nii.gz"), img_xyz); patch_nifti(p, datatype=9999)
    add("dtype", "datatype-9999", p, "error")
    p = save_nifti(new("dtrgb.nii.gz"), img_xyz); patch_nifti(p, datatype=128, bitpix=24)
    add("dtype", "float-data-declared-rgb", p, "error")
    for dt in (np.int16, np.float32, np.uint64):
        add("dtype", f"mask-{np.dtype(dt).name}", save_nifti(new(f"m_{np.dtype(dt).name}_gt.nii.gz"), msk_xyz.astype(dt)), "ok")
    add("dtype", "mask-fractional", save_nifti(new("frac_gt.nii.gz"), msk_xyz.astype(np.float32) * 0.5), "error")
    add("dtype", "mask-complex", save_nifti(new("cplx_gt.nii.gz"), msk_xyz.astype(np.complex64)), "error")
    add("dtype", "h5-complex", write_h5(new("c.h5"), image=ph.image.astype(np.complex64)), "error")
    comp = np.zeros(ph.image.shape, dtype=[("a", "f4"), ("b", "i2")])
    add("dtype", "h5-compound", write_h5(new("compound.h5"), image=comp), "error")
    add("dtype", "h5-strings", write_h5(new("str.h5"), image=np.array([b"abc", b"def"] * 4).reshape(2, 2, 2)), "error")
    add("dtype", "h5-float16", write_h5(new("f16.h5"), image=ph.image.astype(np.float16)), "ok")
    add("dtype", "h5-bool-label", write_h5(new("bool.h5"), image=ph.image, label=ph.mask > 0), "ok")
    add("dtype", "mha-vector", write_sitk_file(new("vec.mha"), np.stack([ph.image] * 3, -1), vector=True), "error")
    add("dtype", "mha-complex", write_sitk_file(new("cplx.mha"), ph.image.astype(np.complex64)), "error")
    add("dtype", "mha-uint64", write_sitk_file(new("u64.mha"), (ph.image * 100).astype(np.uint64)), "ok")

    # ---- label values
    for v, dt in ((4, np.uint8), (7, np.uint8), (255, np.uint8), (-1, np.int8), (1000, np.int16), (2**40, np.int64)):
        m = msk_xyz.astype(dt).copy(); m[0, 0, 0] = v
        add("labels", f"value-{v}", save_nifti(new(f"lab{v}_gt.nii.gz"), m), "error")
    m = msk_xyz.astype(np.uint8).copy(); m[0, 0, 0] = 5
    add("labels", "h5-label-5", write_h5(new("lab5.h5"), image=ph.image, label=m.transpose(2, 1, 0)), "error")
    add("labels", "mha-mask-9", write_sitk_file(new("lab9_mask.mha"), np.where(ph.mask == 3, 9, ph.mask).astype(np.uint8)), "error")
    acdc_lab = np.choose(ph.mask, [0, 3, 2, 1]).astype(np.uint8)
    root_nn = new("Dataset001_X").with_suffix("")
    (root_nn / "imagesTr").mkdir(parents=True); (root_nn / "labelsTr").mkdir()
    write_nifti(root_nn / "imagesTr" / "c_001_0000.nii.gz", ph.image, ph.affine)
    write_nifti(root_nn / "labelsTr" / "c_001.nii.gz", np.where(acdc_lab == 3, 6, acdc_lab).astype(np.uint8), ph.affine)
    (root_nn / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "RV": 1, "MYO": 2, "LV": 3}}))
    add("labels", "nnunet-value-not-named", root_nn, "error")
    root_nn = new("Dataset002_X").with_suffix("")
    (root_nn / "imagesTr").mkdir(parents=True); (root_nn / "labelsTr").mkdir()
    write_nifti(root_nn / "imagesTr" / "c_001_0000.nii.gz", ph.image, ph.affine)
    write_nifti(root_nn / "labelsTr" / "c_001.nii.gz", ph.mask, ph.affine, dtype=np.uint8)
    (root_nn / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "LV": 1, "MYO": 2, "RV": 10**12}}))
    add("labels", "nnunet-huge-label-number", root_nn, "error")  # the mask's 3 is then not named

    # ---- shape mismatches
    p = new("img.nii.gz"); write_nifti(p, ph.image, ph.affine)
    for label, sl in (("z", np.s_[:2]), ("y", np.s_[:, :-3]), ("x", np.s_[:, :, :-1])):
        mp = p.parent / f"img_{label}_gt.nii.gz"; write_nifti(mp, ph.mask[sl], ph.affine, dtype=np.uint8)
        add("shape", f"mask-shorter-in-{label}", p, "error", mask=mp)
    mp = p.parent / "img4_gt.nii.gz"; save_nifti(mp, np.stack([msk_xyz] * 2, -1), dtype=np.uint8)
    add("shape", "mask-4d-image-3d", p, "error", mask=mp, frame=None)
    d = new("layout_bad"); write_case(ph, d)
    write_nifti(d / f"{ph.case_id}_mask.nii.gz", ph.mask[:, :-2], ph.affine, dtype=np.uint8)
    add("shape", "cmrstudio-layout-mismatch", d, "error")
    add("shape", "h5-image-label-mismatch", write_h5(new("mm.h5"), image=ph.image, label=ph.mask[:2]), "error")
    root_nn = new("Dataset003_X").with_suffix("")
    (root_nn / "imagesTr").mkdir(parents=True); (root_nn / "labelsTr").mkdir()
    write_nifti(root_nn / "imagesTr" / "c_001_0000.nii.gz", ph.image, ph.affine)
    write_nifti(root_nn / "labelsTr" / "c_001.nii.gz", ph.mask[:, 1:], ph.affine, dtype=np.uint8)
    add("shape", "nnunet-mismatch", root_nn, "error")

    # ---- absurd spacings and affines
    def nif(name, **fields):
        p = save_nifti(new(name), img_xyz)
        return patch_nifti(p, **fields) if fields else p

    no_codes = dict(qform_code=0, sform_code=0)
    add("geometry", "sform-zeros", nif("s0.nii.gz", qform_code=0, sform_code=2, srow=[np.zeros(4)] * 3), "warn")
    add("geometry", "sform-nan", nif("snan.nii.gz", qform_code=0, sform_code=2, srow=[np.full(4, np.nan)] * 3), "warn")
    add("geometry", "sform-inf", nif("sinf.nii.gz", qform_code=0, sform_code=2, srow=[[np.inf, 0, 0, 0], [0, 1.5, 0, 0], [0, 0, 8, 0]]), "warn")
    add("geometry", "sform-collinear", nif("scol.nii.gz", qform_code=0, sform_code=2, srow=[[1.5, 1.5, 0, 0], [1.5, 1.5, 0, 0], [0, 0, 8, 0]]), "warn")
    add("geometry", "sform-bad-qform-good", nif("sq.nii.gz", qform_code=1, sform_code=2, srow=[np.zeros(4)] * 3), "warn")
    add("geometry", "qform-pixdim-0", nif("q0.nii.gz", qform_code=1, sform_code=0, pixdim_xyz=[0, 0, 0]), "warn")
    add("geometry", "qform-pixdim-nan", nif("qnan.nii.gz", qform_code=1, sform_code=0, pixdim_xyz=[np.nan] * 3), "warn")
    add("geometry", "qform-bad-quaternion", nif("qq.nii.gz", qform_code=1, sform_code=0, quatern_b=5.0, quatern_c=5.0), "flag")
    add("geometry", "pixdim-0-no-codes", nif("p0.nii.gz", pixdim_xyz=[0, 0, 0], **no_codes), "warn")
    add("geometry", "pixdim-nan-no-codes", nif("pnan.nii.gz", pixdim_xyz=[np.nan] * 3, **no_codes), "warn")
    add("geometry", "pixdim-negative-no-codes", nif("pneg.nii.gz", pixdim_xyz=[-1.5, 1.5, 8], **no_codes), "warn")
    add("geometry", "pixdim-1e9", nif("pbig.nii.gz", pixdim_xyz=[1e9] * 3, **no_codes), "warn")
    add("geometry", "pixdim-1e-9", nif("ptiny.nii.gz", pixdim_xyz=[1e-9] * 3, **no_codes), "warn")
    add("geometry", "pixdim-in-plane-0-only", nif("pxy0.nii.gz", pixdim_xyz=[0, 0, 8], **no_codes), "warn")
    add("geometry", "pixdim-valid-no-codes", nif("pok.nii.gz", pixdim_xyz=[1.5, 1.5, 8], **no_codes), "ok")
    p = save_nifti(new("one.nii.gz"), img_xyz[:, :, :1]); patch_nifti(p, qform_code=1, sform_code=0, pixdim_xyz=[1.5, 1.5, 0])
    add("geometry", "single-slice-no-thickness", p, "warn")
    p = save_nifti(new("m0_gt.nii.gz"), msk_xyz, dtype=np.uint8); patch_nifti(p, qform_code=0, sform_code=2, srow=[np.zeros(4)] * 3)
    add("geometry", "mask-sform-zeros", p, "warn")
    p = save_nifti(new("unit_m.nii.gz"), img_xyz, affine=_aff_xyz((0.0015, 0.0015, 0.008)))
    patch_nifti(p, xyzt_units=1 | 8)  # metres
    add("geometry", "units-metres", p, "ok")
    mha = good_mha_raw.read_bytes()
    for label, new_line, expect in (("0", b"ElementSpacing = 0 0 0", "error"), ("negative", b"ElementSpacing = -1.5 1.5 8", "warn"),
                                    ("1e9", b"ElementSpacing = 1e9 1e9 1e9", "warn"), ("nan", b"ElementSpacing = nan nan nan", "error"),
                                    ("missing", b"", "warn"), ("tiny", b"ElementSpacing = 1e-7 1e-7 1e-7", "warn")):
        p = new(f"sp_{label}.mha")
        p.write_bytes(mha.replace(b"ElementSpacing = 1.5 1.5 8\n", new_line + (b"\n" if new_line else b"")))
        add("geometry", f"mha-spacing-{label}", p, expect)
    p = new("tm.mha"); p.write_bytes(mha.replace(b"TransformMatrix = 1 0 0 0 1 0 0 0 1", b"TransformMatrix = 0 0 0 0 0 0 0 0 0"))
    add("geometry", "mha-direction-zeros", p, "flag")
    p = new("tm2.mha"); p.write_bytes(mha.replace(b"TransformMatrix = 1 0 0 0 1 0 0 0 1", b"TransformMatrix = 1 0 0 1 0 0 0 0 1"))
    add("geometry", "mha-direction-collinear", p, "flag")
    p = new("off.mha"); p.write_bytes(mha.replace(b"Offset = 0 0 0", b"Offset = nan inf 0"))
    add("geometry", "mha-origin-nan", p, "flag")
    nrrd = good_nrrd_raw.read_bytes()
    import re as _re

    for label, line, expect in (("zero", b"space directions: (0,0,0) (0,0,0) (0,0,0)\n", "error"),
                                ("nan", b"space directions: (nan,0,0) (0,nan,0) (0,0,nan)\n", "error"),
                                ("missing", b"", "warn"), ("1e9", b"space directions: (1e9,0,0) (0,1e9,0) (0,0,1e9)\n", "warn")):
        p = new(f"sd_{label}.nrrd")
        p.write_bytes(_re.sub(rb"space directions: [^\n]*\n", line, nrrd))
        add("geometry", f"nrrd-directions-{label}", p, expect)
    for label, value, expect in (("text", "abc", "warn"), ("nan", [np.nan, 1.5, 1.5], "warn"), ("zeros", [0.0, 0.0, 0.0], "warn"),
                                 ("two", [1.5, 1.5], "warn"), ("1e9", [1e9, 1.5, 1.5], "warn"), ("negative", [-8.0, 1.5, 1.5], "warn")):
        add("geometry", f"h5-spacing-{label}", write_h5(new(f"sp_{label}.h5"), image=ph.image, label=ph.mask, attrs={"spacing": value}), expect)

    # ---- NIfTI header patches
    def hp(label, expect, base=None, **fields):
        p = save_nifti(new(f"hp_{label}.nii.gz"), img_xyz if base is None else base)
        add("header", label, patch_nifti(p, **fields), expect)

    hp("dim0-0", "error", dim0=0)
    hp("dim0-8", "error", dim0=8)
    hp("dim0--1", "error", dim0=-1)
    hp("dim1-0", "error", dim1=0)
    hp("dim1--5", "error", dim1=-5)
    hp("dim3-huge", "error", dim3=30000)
    hp("dim1-larger", "flag", dim1=img_xyz.shape[0] + 7)
    hp("vox_offset-1e9", "error", vox_offset=1e9)
    hp("vox_offset-nan", "error", vox_offset=np.nan)
    hp("vox_offset-negative", "error", vox_offset=-352)
    hp("vox_offset-0", "any", vox_offset=0)
    hp("sizeof_hdr-0", "flag", sizeof_hdr=0)
    hp("magic-bad", "error", magic=b"xy1")
    hp("bitpix-wrong", "any", bitpix=8)
    hp("cal-garbage", "ok", cal_min=np.nan, cal_max=-np.inf)
    hp("descrip-binary", "ok", descrip=bytes(range(200, 240)))
    hp("intent-odd", "ok", intent_code=2005, intent_p1=np.nan)
    hp("qform_code-99", "any", qform_code=99)
    hp("sform_code--1", "any", sform_code=-1)
    hp("xyzt_units-odd", "any", xyzt_units=255)
    hp("slice_duration-nan", "ok", slice_duration=np.nan)
    hp("toffset-inf", "ok", toffset=np.inf)
    hp("scl_slope-0", "ok", base=(img_xyz * 100).astype(np.int16), scl_slope=0.0)
    hp("quatern-huge", "flag", qform_code=1, sform_code=0, quatern_b=1e30)
    hp("qoffset-nan", "flag", qform_code=1, sform_code=0, qoffset_x=np.nan)
    hp("pixdim0-qfac-0", "any", qform_code=1, sform_code=0, pixdim=np.array([0, 1.5, 1.5, 8, 1, 1, 1, 1], np.float32))
    p = save_nifti(new("ext.nii"), img_xyz); raw = bytearray(p.read_bytes()); raw[348:352] = b"\x01\x00\x00\x00"; p.write_bytes(bytes(raw))
    add("header", "extension-flag-without-extension", p, "any")
    p = save_nifti(new("be.nii"), img_xyz.astype(">f4")); add("header", "big-endian", p, "ok")
    mha_lines = {"NDims-0": (b"NDims = 3", b"NDims = 0", "error"), "NDims-9": (b"NDims = 3", b"NDims = 9", "error"),
                 "DimSize-missing": (b"DimSize = 36 40 3\n", b"", "error"), "DimSize-0": (b"DimSize = 36 40 3", b"DimSize = 0 40 3", "error"),
                 "ElementType-bogus": (b"ElementType = MET_FLOAT", b"ElementType = MET_BOGUS", "error"),
                 "datafile-missing": (b"ElementDataFile = LOCAL", b"ElementDataFile = nowhere.raw", "error"),
                 "channels-3": (b"ElementType = MET_FLOAT", b"ElementNumberOfChannels = 3\nElementType = MET_FLOAT", "error"),
                 "compressed-but-raw": (b"CompressedData = False", b"CompressedData = True", "error"),
                 "byte-order-flipped": (b"BinaryDataByteOrderMSB = False", b"BinaryDataByteOrderMSB = True", "any"),
                 "HeaderSize-negative": (b"ElementDataFile = LOCAL", b"HeaderSize = -5\nElementDataFile = LOCAL", "any")}
    for label, (old, repl, expect) in mha_lines.items():
        assert old in mha, label
        p = new(f"{label}.mha"); p.write_bytes(mha.replace(old, repl)); add("header", f"mha-{label}", p, expect)
    nrrd_lines = {"dimension-0": (b"dimension: 3", b"dimension: 0", "error"), "sizes-missing": (b"sizes: 36 40 3\n", b"", "error"),
                  "type-bogus": (b"type: float", b"type: quaternion", "error"), "encoding-bogus": (b"encoding: raw", b"encoding: zstd", "error"),
                  "endian-flipped": (b"endian: little", b"endian: big", "any"),
                  "datafile-missing": (b"encoding: raw", b"encoding: raw\ndata file: nowhere.raw", "error"),
                  "sizes-huge": (b"sizes: 36 40 3", b"sizes: 36 40 3000000", "error")}
    for label, (old, repl, expect) in nrrd_lines.items():
        assert old in nrrd, label
        p = new(f"{label}.nrrd"); p.write_bytes(nrrd.replace(old, repl)); add("header", f"nrrd-{label}", p, expect)
    p = good_nrrd.read_bytes()
    q = new("gzcrc.nrrd"); b = bytearray(p); b[-6] ^= 0xFF; q.write_bytes(bytes(b)); add("header", "nrrd-gzip-crc-flipped", q, "flag")
    b = bytearray(good_gz.read_bytes()); b[-6] ^= 0xFF
    q = new("crc.nii.gz"); q.write_bytes(bytes(b)); add("header", "nii.gz-crc-flipped", q, "error")
    b = bytearray(good_gz.read_bytes()); b[len(b) // 2] ^= 0xFF
    q = new("mid.nii.gz"); q.write_bytes(bytes(b)); add("header", "nii.gz-byte-flipped-mid-stream", q, "error")

    # ---- memory bombs: a header declaring far more than the file holds (refused before anything is read)
    def bomb_nifti(name, shape, dtype=np.float32):
        h = nib.Nifti1Header()
        h.set_data_dtype(dtype)
        h.set_data_shape(shape)
        h.set_sform(_aff_xyz(), code=2)
        data = h.binaryblock + b"\x00" * 4 + rng.bytes(4096)
        p = new(name)
        p.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        return p

    add("bomb", "nii-30000^3", bomb_nifti("bomb.nii", (30000, 30000, 30000)), "error")
    add("bomb", "nii.gz-30000^3", bomb_nifti("bomb.nii.gz", (30000, 30000, 30000)), "error")
    add("bomb", "nii.gz-32767^2-uint8", bomb_nifti("wide.nii.gz", (32767, 32767, 1), np.uint8), "error")
    add("bomb", "nii-4d-30000-frames", bomb_nifti("cine.nii", (256, 256, 10, 30000)), "error", frame=0)
    add("bomb", "mask-30000^3", bomb_nifti("bomb_gt.nii.gz", (30000, 30000, 30000), np.uint8), "error")
    for ext, text in ((".mha", b"ObjectType = Image\nNDims = 3\nDimSize = 30000 30000 30000\nElementType = MET_FLOAT\nElementSpacing = 1 1 1\nElementDataFile = LOCAL\n"),
                      (".nrrd", b"NRRD0004\ntype: float\ndimension: 3\nsizes: 30000 30000 30000\nspacings: 1 1 1\nendian: little\nencoding: gzip\n\n")):
        p = new(f"bomb{ext}"); p.write_bytes(text + gzip.compress(b"\x00" * 100000)); add("bomb", f"{ext}-30000^3", p, "error")
    p = new("bomb.h5")
    with h5py.File(p, "w") as fh:
        fh.create_dataset("image", shape=(30000, 30000, 30000), dtype="f4", chunks=(1, 64, 64), compression="gzip")
    add("bomb", "h5-30000^3-chunked-empty", p, "error")
    add("bomb", "dicom-65535^2", dicom_variant(good_dcm, new("bomb.dcm"), lambda ds: (setattr(ds, "Rows", 65535), setattr(ds, "Columns", 65535))), "error")

    # ---- DICOM: stripped tags, missing or short pixel data, odd values
    src_dcm = good_dcm
    if shared is not None and (shared / "sunnybrook").is_dir():
        src_dcm = next(iter(sorted((shared / "sunnybrook" / "dicoms").rglob("*.dcm"))))
    for label, edit, expect in (
        ("no-pixel-data", lambda ds: delattr(ds, "PixelData"), "error"),
        ("short-pixel-data", lambda ds: setattr(ds, "PixelData", ds.PixelData[:1000]), "error"),
        ("no-pixel-spacing", lambda ds: delattr(ds, "PixelSpacing"), "warn"),
        ("pixel-spacing-0", lambda ds: _set_raw(ds, 0x00280030, "DS", "0\\0"), "warn"),
        ("pixel-spacing-nan", lambda ds: _set_raw(ds, 0x00280030, "DS", "nan\\nan"), "warn"),
        ("pixel-spacing-1e9", lambda ds: _set_raw(ds, 0x00280030, "DS", "1e9\\1e9"), "warn"),
        ("no-position-orientation", lambda ds: (delattr(ds, "ImagePositionPatient"), delattr(ds, "ImageOrientationPatient")), "warn"),
        ("orientation-zeros", lambda ds: _set_raw(ds, 0x00200037, "DS", "0\\0\\0\\0\\0\\0"), "warn"),
        ("orientation-nan", lambda ds: _set_raw(ds, 0x00200037, "DS", "nan\\0\\0\\0\\1\\0"), "warn"),
        ("bits-allocated-7", lambda ds: setattr(ds, "BitsAllocated", 7), "error"),
        ("instance-number-text", lambda ds: _set_raw(ds, 0x00200013, "IS", "abc"), "ok"),
        ("instance-number-nan", lambda ds: _set_raw(ds, 0x00200013, "IS", "nan"), "ok"),
        ("no-series-uid", lambda ds: delattr(ds, "SeriesInstanceUID"), "ok"),
        ("manufacturer-latin1", lambda ds: _set_raw(ds, 0x00080070, "LO", "Sch\xf6n\xe9 \xff"), "ok"),
        ("rows-double", lambda ds: setattr(ds, "Rows", int(ds.Rows) * 2), "error"),
        ("multiframe-declared", lambda ds: (setattr(ds, "NumberOfFrames", 3), setattr(ds, "PixelData", ds.PixelData * 3)), "error"),
    ):
        add("dicom", label, dicom_variant(src_dcm, new(f"{label}.dcm"), edit), expect)
    rgbimg = sitk.GetImageFromArray((rng.random((16, 16, 3)) * 255).astype(np.uint8), isVector=True)
    p = new("rgb.dcm"); sitk.WriteImage(rgbimg, str(p)); add("dicom", "rgb", p, "error")
    d = new("two_series")
    write_dicom_series(d, (ph.image * 1000).astype(np.int16), "1.2.3.4.5.91", description="SAX")
    write_dicom_series(d, (ph.image * 1000).astype(np.int16), "1.2.3.4.5.92", description="LAX")
    add("dicom", "two-series-folder", d, "error")
    d = new("gap"); write_dicom_series(d, (np.concatenate([ph.image] * 2) * 1000).astype(np.int16), "1.2.3.4.5.93")
    sorted(d.glob("*.dcm"))[2].unlink(); add("dicom", "missing-slice", d, "error")
    d = new("nopos_series"); write_dicom_series(d, (ph.image * 1000).astype(np.int16), "1.2.3.4.5.94")
    for f in sorted(d.glob("*.dcm")):
        dicom_variant(f, f, lambda ds: delattr(ds, "ImagePositionPatient"))
    add("dicom", "series-without-positions", d, "error")
    d = new("nospacing_series"); write_dicom_series(d, (ph.image * 1000).astype(np.int16), "1.2.3.4.5.95")
    for f in sorted(d.glob("*.dcm")):
        dicom_variant(f, f, lambda ds: delattr(ds, "PixelSpacing"))
    add("dicom", "series-without-spacing", d, "warn")
    d = new("mixed_sizes"); write_dicom_series(d, (ph.image * 1000).astype(np.int16), "1.2.3.4.5.96")
    write_dicom_series(d, (ph.image[:, :20] * 1000).astype(np.int16), "1.2.3.4.5.96", start_instance=10)
    add("dicom", "series-of-two-sizes", d, "error")

    # ---- HDF5 without what it needs
    p = new("empty.h5"); h5py.File(p, "w").close(); add("hdf5", "no-datasets", p, "error")
    add("hdf5", "other-datasets", write_h5(new("other.h5"), volume=ph.image), "error")
    p = new("group.h5")
    with h5py.File(p, "w") as fh:
        fh.create_group("image")["x"] = ph.image
    add("hdf5", "image-is-a-group", p, "error")
    add("hdf5", "label-only", write_h5(new("lab.h5"), label=ph.mask), "ok")
    add("hdf5", "image-only", write_h5(new("img.h5"), image=ph.image), "ok")
    p = new("attrs.h5")
    with h5py.File(p, "w") as fh:
        fh["image"] = ph.image
        fh.attrs["note"] = np.void(b"\x00\xff")
    add("hdf5", "odd-attribute", p, "ok")
    p = new("ext.h5")
    with h5py.File(p, "w") as fh:
        fh.create_dataset("image", shape=ph.image.shape, dtype="f4", external=[("nowhere.bin", 0, h5py.h5f.UNLIMITED)])
    add("hdf5", "external-data-missing", p, "error")

    # ---- links, loops, pipes, devices, folders with extensions
    d = new("links"); d.mkdir()
    (d / "self.nii.gz").symlink_to("self.nii.gz"); add("special", "symlink-to-itself", d / "self.nii.gz", "error")
    (d / "a.nii.gz").symlink_to("b.nii.gz"); (d / "b.nii.gz").symlink_to("a.nii.gz"); add("special", "symlink-loop", d / "a.nii.gz", "error")
    (d / "dangling.nii.gz").symlink_to("gone.nii.gz"); add("special", "dangling-symlink", d / "dangling.nii.gz", "error")
    (d / "zero.nii").symlink_to("/dev/zero"); add("special", "device", d / "zero.nii", "error")
    os.mkfifo(d / "fifo.nii.gz"); add("special", "fifo", d / "fifo.nii.gz", "error")
    (d / "folder.nii.gz").mkdir(); add("special", "folder-named-nii.gz", d / "folder.nii.gz", "error")
    (d / "folder.h5").mkdir(); add("special", "folder-named-h5", d / "folder.h5", "error")
    dd = new("loopdir"); dd.mkdir(); write_case(ph, dd); (dd / "again").symlink_to(".")
    add("special", "dataset-folder-with-a-loop", dd, "ok")
    p = d / "good_link.nii.gz"; p.symlink_to(good_gz); add("special", "symlink-to-a-good-file", p, "ok")

    # ---- names that are not UTF-8 (and one with a line break)
    weird = new("x").parent
    for raw_name, expect, kind in ((b"\xff\xfe_image.nii.gz", "ok", "image"), (b"caf\xe9_gt.nii.gz", "ok", "mask"),
                                   (b"\xff.nii", "error", "junk"), (b"line\nbreak.nii.gz", "ok", "image")):
        p = weird / os.fsdecode(raw_name)
        if kind == "image":
            write_nifti(p, ph.image, ph.affine)
        elif kind == "mask":
            write_nifti(p, ph.mask, ph.affine, dtype=np.uint8)
        else:
            p.write_bytes(rng.bytes(500))
        add("names", f"{raw_name!r}", p, expect)
    dd = new("x").parent / os.fsdecode(b"d\xff\xfe")
    dd.mkdir(); write_case(ph, dd); add("names", "folder-not-utf8", dd, "ok")
    dd = new("plain")  # SimpleITK (which writes the series) cannot take such a name: write, then rename
    write_dicom_series(dd, (ph.image * 1000).astype(np.int16), "1.2.3.4.5.97")
    dd = dd.rename(dd.parent / os.fsdecode(b"s\xe9ries")); add("names", "dicom-folder-not-utf8", dd, "ok")

    # ---- folders
    d = new("empty"); d.mkdir(); add("folder", "empty", d, "error")
    d = new("readme"); d.mkdir(); (d / "README.md").write_text("nothing"); add("folder", "unrelated-files", d, "error")
    for label, text in (("invalid-json", b"{not json"), ("json-list", b"[1, 2]"), ("binary", bytes(range(256))),
                        ("vendor-number", json.dumps({"vendor": 5}).encode()), ("phase-bogus", json.dumps({"phase": "XX"}).encode()),
                        ("vendor-bogus", json.dumps({"vendor": "acme"}).encode()),
                        ("convention-bogus", json.dumps({"label_convention_written": "weird"}).encode())):
        d = new("side"); d.mkdir(); write_case(ph, d); (d / f"{ph.case_id}.json").write_bytes(text)
        add("folder", f"sidecar-{label}", d, "error")
    for label, text in (("invalid", b"{"), ("labels-list", json.dumps({"labels": [1, 2]}).encode()), ("binary", b"\xff\xfe\x00")):
        root_nn = new(f"Dataset00{label[0]}_Y").with_suffix("")
        (root_nn / "imagesTr").mkdir(parents=True); (root_nn / "labelsTr").mkdir()
        write_nifti(root_nn / "imagesTr" / "c_001_0000.nii.gz", ph.image, ph.affine)
        (root_nn / "dataset.json").write_bytes(text)
        add("folder", f"nnunet-dataset.json-{label}", root_nn, "error")
    d = new("acdc"); d.mkdir(); (d / "patient001_frame01.h5").write_bytes(rng.bytes(3000)); add("folder", "acdc-named-junk", d, "error")
    d = new("mnms"); d.mkdir(); (d / "A1B2C3_sa_ED.nii.gz").write_bytes(good_gz.read_bytes()[:500]); add("folder", "mnms-truncated", d, "error")
    d = new("mixed"); d.mkdir(); write_case(ph, d)
    (d / "zz_image.nii.gz").write_bytes(rng.bytes(900)); add("folder", "good-and-junk-case", d, "error")
    d = new("sb"); (d / "dicoms" / "SCD0000101").mkdir(parents=True); (d / "contourfiles" / "SC-HF-I-1").mkdir(parents=True)
    (d / "link.csv").write_bytes(b"\xff\xfe\x00\x01garbage"); add("folder", "sunnybrook-link.csv-binary", d, "error")
    d = new("acdcinfo"); d.mkdir(); shutil.copy(good_h5, d / "patient002_frame01.h5"); (d / "Info.cfg").write_bytes(b"\xff\xfeED: x")
    add("folder", "acdc-info.cfg-binary", d, "ok")

    names = [i.name for i in out]
    assert len(names) == len(set(names)), [n for n in names if names.count(n) > 1]
    return out


def _real_bases(shared: Path, new) -> list[tuple[str, Path]]:
    """Small slabs of real scans (3 slices, 64×64 around the heart), so that corruptions of real files stay fast."""
    from cmrstudio.io import read_case
    from cmrstudio.io.nifti import write_nifti

    out = []
    mnms = shared / "mnms" / "H1N8S6_sa_ED.nii.gz"
    if mnms.exists():
        c = read_case(mnms, mask=mnms.with_name("H1N8S6_sa_ED_gt.nii.gz"))
        z0, y0, x0 = _heart_window(c.mask)
        img = c.image[z0:z0 + 3, y0:y0 + 64, x0:x0 + 64]
        msk = c.mask[z0:z0 + 3, y0:y0 + 64, x0:x0 + 64]
        aff = c.affine.copy()
        aff[:3, 3] = (c.affine @ np.array([z0, y0, x0, 1.0]))[:3]
        p = new("H1N8S6_sa_ED.nii.gz"); write_nifti(p, img, aff)
        write_nifti(p.with_name("H1N8S6_sa_ED_gt.nii.gz"), msk, aff, dtype=np.uint8)
        out += [("mnms.nii.gz", p), ("mnms-gt.nii.gz", p.with_name("H1N8S6_sa_ED_gt.nii.gz"))]
    acdc = shared / "acdc" / "patient001_frame01.h5"
    if acdc.exists():
        with h5py.File(acdc, "r") as fh:
            image, label = fh["image"][()], fh["label"][()]
        z0, y0, x0 = _heart_window(label)
        p = new("patient001_frame01.h5")
        write_h5(p, image=image[z0:z0 + 3, y0:y0 + 64, x0:x0 + 64], label=label[z0:z0 + 3, y0:y0 + 64, x0:x0 + 64])
        out.append(("acdc.h5", p))
    sb = shared / "sunnybrook" / "dicoms"
    if sb.is_dir():
        src = next(iter(sorted(sb.rglob("*.dcm"))))
        p = new(src.name); shutil.copy(src, p)
        out.append(("sunnybrook.dcm", p))
    return out


def _heart_window(mask) -> tuple[int, int, int]:
    pts = np.argwhere(mask > 0)
    zc, yc, xc = (pts.mean(0) if len(pts) else np.array(mask.shape) / 2).astype(int)
    z0 = int(np.clip(zc - 1, 0, max(mask.shape[0] - 3, 0)))
    y0 = int(np.clip(yc - 32, 0, max(mask.shape[1] - 64, 0)))
    x0 = int(np.clip(xc - 32, 0, max(mask.shape[2] - 64, 0)))
    return z0, y0, x0


# ----------------------------------------------------------------------------------------------- running
class Hang(BaseException):
    """Raised by the alarm when an input runs past its time limit (a BaseException: readers cannot swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def on_alarm(signum, frame):
        raise Hang()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def memory_cap(extra_bytes: int = 3 << 30):
    """Cap this process's address space a few GiB above what it uses now: a reader that tried to allocate a
    memory bomb fails here (and the test with it) instead of taking the machine down."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    vm = 0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                vm = int(line.split()[1]) * 1024
    cap = vm + extra_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """``cmrstudio ARGS`` in this process, with stdout (strict UTF-8, like a terminal) and stderr captured."""
    p = cli(*args, check=False, reraise=(Hang,))
    return p.returncode, p.stdout, p.stderr


def printable(text: str) -> str:
    """As the CLI prints it: control characters escaped, and what is not UTF-8 backslash-escaped."""
    from cmrstudio.errors import one_line

    return one_line(text).encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class Result:
    inp: Input
    outcome: str = ""  # of the library read: ok | warn | error | traceback | hang
    failures: list[str] = field(default_factory=list)
    cli_runs: int = 0
    seconds: float = 0.0


def _library(inp: Input):
    from cmrstudio.io import read_cases

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cases = read_cases(inp.path, mask=inp.mask, frame=inp.frame)
            err = None
        except CmrError as exc:
            cases, err = None, exc
    cmr = [str(w.message) for w in caught if issubclass(w.category, CmrWarning)]
    stray = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, CmrWarning)]
    return cases, err, cmr, stray


def check_input(inp: Input, work: Path) -> Result:
    from cmrstudio.io import read_cases
    from cmrstudio.io.checks import captured_stderr

    res = Result(inp)
    fail = res.failures.append
    t0 = time.perf_counter()
    names = {printable(inp.path.name)} | ({printable(inp.mask.name)} if inp.mask else set())
    try:
        with time_limit(TIME_LIMIT_S), captured_stderr() as leaked:
            try:
                cases, err, cmr, stray = _library(inp)
            except (Hang, KeyboardInterrupt):
                raise
            except BaseException as exc:
                res.outcome = "traceback"
                fail(f"library: {type(exc).__name__}: {exc}")
                cases, err, cmr, stray = None, None, [], []
            if not res.outcome:
                res.outcome = "error" if err else "warn" if cmr else "ok"
            if stray:
                fail(f"library: stray Python warnings {stray[:2]}")
            if err is not None:
                if "\n" in err.message:
                    fail(f"library: the error is not one line: {err.message!r}")
                if not any(n in printable(err.message) for n in names):
                    fail(f"library: the error does not name the file: {err.message}")
            if cases is not None and cmr:
                noted = {a for c in cases for a in c.source.get("assumptions", [])}
                missing = [w for w in cmr if w not in noted]
                if missing:
                    fail(f"library: warned but not recorded in case.source['assumptions']: {missing[0]}")
            # -- the expectation
            o, e = res.outcome, inp.expect
            if o in ("ok", "warn", "error") and not (
                e == "any" or o == e or (e == "flag" and o in ("warn", "error"))
            ):
                fail(f"expected {e}, got {o}" + (f": {err.message}" if err else f": {cmr[0]}" if cmr else ""))
            # -- the CLI, in this process
            base = [str(inp.path)] + (["--mask", str(inp.mask)] if inp.mask else [])
            framed = base + (["--frame", str(inp.frame)] if inp.frame is not None else [])
            conv_out = work / "converted"
            shutil.rmtree(conv_out, ignore_errors=True)
            for label, args in (("info", ["info"] + framed), ("info --check", ["info", "--check"] + framed),
                                ("check", ["check"] + base), ("convert", ["convert"] + framed + ["--out", str(conv_out)])):
                rc, out, errtext = run_cli(args)
                res.cli_runs += 1
                lines = [ln for ln in errtext.splitlines() if ln.strip()]
                if rc == 99 or "Traceback" in errtext:
                    fail(f"{label}: traceback: {errtext.strip().splitlines()[-1] if errtext.strip() else ''}")
                    continue
                if rc not in (0, 2):
                    fail(f"{label}: exit code {rc}")
                noise = [ln for ln in lines if not ln.startswith(("warning: ", "cmrstudio: "))]
                if noise:
                    fail(f"{label}: stray output on stderr: {noise[0][:160]}")
                errors = [ln for ln in lines if ln.startswith("cmrstudio: ")]
                if rc == 2:
                    if len(errors) != 1 or lines[-1] != errors[0]:
                        fail(f"{label}: exit 2 needs exactly one 'cmrstudio:' line, last; stderr was {lines}")
                    elif not any(n in errors[0] for n in names):
                        fail(f"{label}: the error does not name the file: {errors[0]}")
                elif errors:
                    fail(f"{label}: exit 0 with an error line: {errors[0]}")
                warned = any(ln.startswith("warning: ") for ln in lines)
                if label.startswith("info"):
                    if (rc == 2) != (res.outcome == "error"):
                        fail(f"{label}: exit {rc} but the library read gave {res.outcome}")
                    if res.outcome == "warn" and not warned:
                        fail(f"{label}: the library warned, the CLI said nothing")
                    if res.outcome == "ok" and warned:
                        fail(f"{label}: a warning the library did not give: {lines[0]}")
                if label == "check" and res.outcome == "error" and rc != 2:
                    fail("check: the library refused the input, check did not")
                if label == "convert":
                    if res.outcome == "error" and rc != 2:
                        fail("convert: the library refused the input, convert did not")
                    if rc == 0:
                        _check_converted(conv_out, cases, cmr, fail)
        if leaked["text"].strip():
            fail(f"C libraries printed to stderr: {leaked['text'].strip().splitlines()[0][:160]}")
    except Hang:
        res.outcome = "hang"
        fail(f"ran past the {TIME_LIMIT_S:g} s limit")
    res.seconds = time.perf_counter() - t0
    return res


def _check_converted(folder: Path, cases, cmr: list[str], fail) -> None:
    """What convert wrote reads back without a warning or an error, and keeps the assumptions in its sidecar."""
    from cmrstudio.io import read_cases

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            back = read_cases(folder)
        except CmrError as exc:
            fail(f"convert: its output does not read back: {exc.message}")
            return
    again = [str(w.message) for w in caught if issubclass(w.category, CmrWarning)]
    if again:
        fail(f"convert: its output reads back with a warning: {again[0]}")
    if cases is not None and len(back) != len(cases):
        fail(f"convert: {len(cases)} case(s) read, {len(back)} written")
    if cmr:
        kept = [a for side in folder.glob("*.json") for a in json.loads(side.read_text(encoding="utf-8")).get("source", {}).get("assumptions", [])]
        if not kept:
            fail("convert: the sidecar does not keep what the reader assumed")
    for c in back:
        if c.image is not None and not np.all(np.isfinite(c.image)):
            fail("convert: the written image holds non-finite values")


# ----------------------------------------------------------------------------------------------- the tests
FIGURES: dict = {}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    shared = SHARED_DATA if SHARED_DATA.is_dir() else None
    root = tmp_path_factory.mktemp("fuzz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_inputs(root, shared), root


def test_the_generator_builds_several_hundred_inputs_of_every_kind(inputs):
    items, _ = inputs
    cats = {i.category for i in items}
    assert len(items) >= 300, len(items)
    assert {"truncated", "random", "dims", "nan-inf", "dtype", "labels", "shape", "geometry", "header", "bomb", "dicom",
            "hdf5", "special", "names", "folder", "control"} <= cats
    by = {e: sum(i.expect == e for i in items) for e in EXPECTS}
    assert by["error"] > 100 and by["warn"] > 30 and by["ok"] > 20, by


def test_every_input_gets_a_clean_answer(inputs, tmp_path):
    items, _ = inputs
    results = []
    t0 = time.perf_counter()
    with memory_cap():
        for inp in items:
            results.append(check_input(inp, tmp_path))
    wall = time.perf_counter() - t0
    failed = [r for r in results if r.failures]
    outcomes = {k: sum(r.outcome == k for r in results) for k in ("ok", "warn", "error", "traceback", "hang")}
    silent = [r for r in results if r.inp.expect in ("warn", "error", "flag") and r.outcome == "ok"]
    cli_tracebacks = sum(any("traceback" in f for f in r.failures) for r in results)
    FIGURES.update(inputs=len(results), cli_runs=sum(r.cli_runs for r in results), clean_errors=outcomes["error"],
                   warnings=outcomes["warn"], read_ok=outcomes["ok"], tracebacks=outcomes["traceback"] + cli_tracebacks,
                   hangs=outcomes["hang"], silent_acceptances=len(silent), failed_inputs=len(failed), seconds=round(wall, 1),
                   slowest=max(results, key=lambda r: r.seconds).inp.name)
    print(f"\nfuzz: {len(results)} inputs ({FIGURES['cli_runs']} CLI runs) in {wall:.1f} s: {outcomes['error']} clean errors, "
          f"{outcomes['warn']} read with a warning, {outcomes['ok']} read cleanly; tracebacks {FIGURES['tracebacks']}, "
          f"hangs {outcomes['hang']}, silent acceptances of invalid input {len(silent)}")
    report = "\n".join(f"{r.inp.name} [{r.inp.expect} -> {r.outcome}]: {'; '.join(r.failures)}" for r in failed[:40])
    assert not failed, f"{len(failed)} of {len(results)} inputs failed:\n{report}"
    assert outcomes["traceback"] == outcomes["hang"] == 0 and not silent


RENDER_SAMPLE = ["truncated/mask.nii.gz@557", "random/.nii.gz-1000", "bomb/mask-30000^3", "dims/mask-4d-no-frame", "labels/value-7",
                 "nan-inf/mask-nan", "dtype/rgb24", "special/symlink-loop", "special/fifo", "dicom/short-pixel-data",
                 "hdf5/no-datasets", "names/b'\\xff.nii'", "geometry/mask-sform-zeros"]


def test_render_refuses_bad_masks_in_one_sentence_and_says_what_it_assumed(inputs, tmp_path):
    """``cmrstudio render`` reads masks through the same readers: a bad one is one sentence and no output file; one
    read with an assumption renders, with the warning (the model is loaded for each run, so only a sample here)."""
    from cmrstudio.models.registry import get_model

    try:
        get_model("spade")
    except CmrError as exc:
        pytest.skip(f"no SPADE model to render with: {exc.message}")
    items = {i.name: i for i in inputs[0]}
    cuts = sorted((int(n.rsplit("@", 1)[1]), n) for n in items if n.startswith("truncated/mask.nii.gz@"))
    assert cuts, "the generator made no truncated masks"
    # the cut lengths follow the written file's size: take the one nearest the middle of the header and data
    sample = [min(cuts, key=lambda c: abs(c[0] - 557))[1] if n.startswith("truncated/mask.nii.gz@") else n for n in RENDER_SAMPLE]
    assert set(sample) <= set(items), set(sample) - set(items)
    for name in sample:
        inp = items[name]
        out = tmp_path / f"{len(os.listdir(tmp_path))}.nii.gz"
        with time_limit(120):
            rc, stdout, err = run_cli(["render", str(inp.path), "--out", str(out)])
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert "Traceback" not in err, (name, err)
        if rc == 2:
            assert inp.expect in ("error", "flag"), (name, lines)
            assert [ln for ln in lines if not ln.startswith("warning: ")] == lines[-1:], (name, lines)
            assert lines[-1].startswith("cmrstudio: ") and printable(inp.path.name) in lines[-1], (name, lines)
            assert not out.exists()
        else:
            assert rc == 0 and inp.expect in ("warn", "flag"), (name, rc, lines)
            assert out.exists() and any(ln.startswith("warning: ") for ln in lines), (name, lines)


# ----------------------------------------------------------------------------------------------- properties (Hypothesis)
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

PROPS = settings(max_examples=int(os.environ.get("CMRSTUDIO_HYPOTHESIS_EXAMPLES", "60")), deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow])


@st.composite
def label_maps(draw, max_value: int = 3, min_side: int = 4, max_side: int = 40, max_z: int = 3):
    """A (Z, Y, X) uint8 mask: random blocks of labels over background, as painters (and bugs) make them."""
    z = draw(st.integers(1, max_z))
    h, w = draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side))
    m = np.zeros((z, h, w), np.uint8)
    for _ in range(draw(st.integers(0, 6))):
        zi = draw(st.integers(0, z - 1))
        y0, x0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        y1, x1 = draw(st.integers(y0 + 1, h)), draw(st.integers(x0 + 1, w))
        m[zi, y0:y1, x0:x1] = draw(st.integers(0, max_value))
    return m


@PROPS
@given(mask=label_maps(), size=st.integers(8, 64), dy=st.floats(-30, 30), dx=st.floats(-30, 30))
def test_frame_and_its_inverse_are_exact_at_native_step(mask, size, dy, dx):
    """A mask cropped into its frame at native resolution and put back is the mask itself, wherever the frame
    sits (pixels outside it come from ``into``); pixels the frame covers come from the frame."""
    from cmrstudio.case import Case
    from cmrstudio.data.frame import frame_mask, from_frame, make_frame

    c = Case(None, mask)
    cy, cx = (mask.shape[1] - 1) / 2 + dy, (mask.shape[2] - 1) / 2 + dx
    fr = make_frame(c, size=size, step=1.0, centre=(cy, cx))
    framed = frame_mask(mask, fr)
    assert framed.shape == (mask.shape[0], size, size) and framed.dtype == np.uint8
    assert set(np.unique(framed)) <= set(np.unique(mask)) | {0}  # nearest neighbour: no new labels
    assert np.array_equal(from_frame(framed, fr, "mask", into=mask), mask)
    blank = from_frame(framed, fr, "mask")
    covered = blank != 0
    assert np.array_equal(blank[covered], mask[covered])


@PROPS
@given(image=hnp.arrays(np.float32, st.tuples(st.integers(1, 2), st.integers(8, 32), st.integers(8, 32)),
                        elements=st.floats(-1000, 1000, width=32)),
       size=st.integers(8, 48))
def test_image_through_the_frame_and_back_is_the_clipped_image(image, size):
    """Normalised into the frame at native step and denormalised back, every covered pixel is its original value,
    clipped to the frame's intensity range (robust percentiles)."""
    from cmrstudio.case import Case
    from cmrstudio.data.frame import from_frame, make_frame, to_frame

    c = Case(image, None)
    fr = make_frame(c, size=size, step=1.0)
    lo, hi = fr.intensity
    assert np.isfinite(lo) and hi > lo
    back = from_frame(to_frame(c, fr).image, fr, "image")
    coords = fr.native_coords()
    inside = (coords[0] >= 0) & (coords[0] <= size - 1) & (coords[1] >= 0) & (coords[1] <= size - 1)
    want = np.clip(image, lo, hi)
    assert np.allclose(back[:, inside], want[:, inside], atol=1e-4 * (hi - lo) + 1e-5)


_WILD = st.one_of(st.none(), st.integers(-5, 300), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
                  st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 300)), max_size=3))
_PAIR = st.one_of(st.tuples(st.floats(-50, 50), st.floats(-50, 50)).map(list), _WILD)
_STEP = st.one_of(st.tuples(st.floats(0.1, 4), st.floats(0.1, 4)).map(list), _WILD)


@PROPS
@given(st.fixed_dictionaries({"size": st.one_of(st.integers(8, 256), _WILD), "native_shape": st.one_of(st.tuples(st.integers(1, 300), st.integers(1, 300)).map(list), _WILD),
                              "origin": _PAIR, "step": _STEP, "spacing_mm": st.one_of(st.floats(0.3, 3), _WILD),
                              "intensity": st.one_of(st.tuples(st.floats(-10, 0), st.floats(1, 10)).map(list), _WILD)}))
def test_a_frame_record_is_read_back_or_refused_in_one_sentence(d):
    """A frame read from a sidecar (possibly hand-edited) is either a usable frame or one CmrError, never a crash
    later: a usable frame has a positive size, shape and step and finite numbers."""
    from cmrstudio.data.frame import Frame

    try:
        fr = Frame.from_dict(d)
    except CmrError as exc:
        assert "\n" not in exc.message
        return
    assert fr.size >= 1 and all(n >= 1 for n in fr.native_shape) and all(np.isfinite(fr.origin))
    assert all(np.isfinite(s) and s > 0 for s in fr.step)
    assert fr.spacing_mm is None or (np.isfinite(fr.spacing_mm) and fr.spacing_mm > 0)
    assert Frame.from_dict(fr.to_dict()) == fr


@PROPS
@given(conv=st.sampled_from(["canonical", "mnms", "acdc"]), data=st.data())
def test_label_remaps_are_bijections_and_refuse_unknown_values(conv, data):
    from cmrstudio.anatomy import CONVENTIONS, remap

    table = CONVENTIONS[conv]
    dtype = data.draw(st.sampled_from([np.uint8, np.int16, np.int64, np.float32, np.float64]))
    arr = data.draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=1, max_dims=3, max_side=12),
                               elements=st.sampled_from(sorted(table))))
    out = remap(arr, conv)
    assert out.dtype == np.uint8 and out.shape == arr.shape
    inverse = {v: k for k, v in table.items()}
    assert len(inverse) == len(table)  # a bijection on 0–3
    assert np.array_equal(np.vectorize(inverse.get, otypes=[np.int64])(out) if out.size else out, arr.astype(np.int64))
    bad = data.draw(st.one_of(st.integers(4, 2**31 - 1), st.integers(-(2**31), -1)))
    flat = arr.astype(np.int64).reshape(-1).copy()
    assume(flat.size > 0)
    flat[data.draw(st.integers(0, flat.size - 1))] = bad
    with pytest.raises(CmrError, match=f"label value {bad}"):
        remap(flat.reshape(arr.shape), conv)
    frac = arr.astype(np.float64).reshape(-1).copy()
    frac[0] = data.draw(st.sampled_from([0.5, 1.25, np.nan, np.inf, -np.inf]))
    with pytest.raises(CmrError, match="whole numbers"):
        remap(frac.reshape(arr.shape), conv)


@PROPS
@given(mask=label_maps(max_value=5, max_side=48),
       spacing=st.one_of(st.none(), st.tuples(st.floats(0.5, 10), st.floats(0.3, 3), st.floats(0.3, 3)),
                         st.tuples(st.sampled_from([np.nan, 0.0, -1.0, np.inf]), st.sampled_from([np.nan, 0.0, -1.5, np.inf, 1.5]),
                                   st.sampled_from([np.nan, 0.0, 1.5, -np.inf]))))
def test_anatomy_checks_never_fail_and_report_only_sound_findings(mask, spacing):
    """Whatever is painted, the checks return findings (never raise); an unknown label is an error finding exactly
    when one is there; spacing that is not a positive number is treated as unknown (no mm judged from it)."""
    from cmrstudio.anatomy import check_mask, enclosure, summarise

    findings = check_mask(mask, spacing)
    assert all(f.severity in ("error", "warning", "info") and "\n" not in f.message for f in findings)
    assert any(f.code == "unknown-label" for f in findings) == bool((mask > 3).any())
    bad_spacing = spacing is not None and not all(np.isfinite(s) and s > 0 for s in spacing[1:])
    if bad_spacing or spacing is None:
        assert not any(f.code == "wall-thickness" for f in findings)
    for sl in mask:
        e = enclosure(sl)
        for k in ("lv_inside", "rv_inside"):
            assert np.isnan(e[k]) or 0.0 <= e[k] <= 1.0
    assert len(summarise(findings)) <= len(findings)


@PROPS
@given(lv=st.floats(25, 65), wall=st.floats(5, 14), rv=st.floats(20, 45), angle=st.floats(120, 240),
       spacing=st.floats(0.8, 2.0))
def test_the_parametric_template_passes_the_anatomy_checks(lv, wall, rv, angle, spacing):
    """Every plausible template (LV 25–65 mm, wall 5–14 mm, RV 20–45 mm, RV beside the septum) is a heart the
    checks accept: the LV inside a closed ring, no RV inside it, the wall thickness plausible."""
    from cmrstudio.anatomy import check_mask, template_mask

    shape = (int(220 / spacing),) * 2
    m = template_mask(shape, spacing, lv_diameter_mm=lv, wall_mm=wall, rv_width_mm=rv, rv_angle_deg=angle)
    codes = {f.code for f in check_mask(m, (8.0, spacing, spacing)) if f.severity != "info"}
    assert not codes & {"ring-open", "rv-inside-lv", "lv-without-myo", "wall-thickness", "unknown-label"}, codes


@pytest.mark.parametrize("spacing", [(8.0, 0.0, 0.0), (8.0, np.nan, np.nan), (8.0, -1.5, 1.5), (np.inf, np.inf, 1.5), (8.0,)])
def test_anatomy_checks_treat_a_spacing_that_is_no_length_as_unknown(spacing):
    from cmrstudio.anatomy import check_mask, template_mask

    m = template_mask((160, 160), 1.5)[None]
    codes = {f.code for f in check_mask(m, spacing)}
    assert "wall-unknown-mm" in codes and "wall-thickness" not in codes
    assert "wall-unknown-mm" not in {f.code for f in check_mask(m, (8.0, 1.5, 1.5))}
