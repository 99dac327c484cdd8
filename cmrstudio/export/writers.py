"""Export curated synthetic cases: NIfTI + JSON, an nnU-Net v2 raw dataset, or DICOM series.

Every export also gets a BIDS-derivatives ``dataset_description.json``, a PNG contact sheet,
``export.json`` (what was exported, what was skipped and why) and ``manifest.json`` (a
sha256 per file; ``cmrstudio export --verify DEST`` checks it).

Safety: everything is written into a hidden sibling folder ``.DEST.partial-<pid>`` and renamed
to DEST only when complete, so an interrupted export never leaves a folder that looks finished;
an existing DEST is replaced only with ``overwrite`` (the old one is removed after the swap).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from cmrstudio import __version__
from cmrstudio.anatomy import LABELS
from cmrstudio.case import Case
from cmrstudio.errors import CmrError
from cmrstudio.export.source import ExportItem, collect
from cmrstudio.io.common import jsonable, write_text_atomic

FORMATS = ("nifti", "nnunet", "dicom")
MANIFEST = "manifest.json"
NNUNET_LABELS = {"background": 0, "LV": 1, "MYO": 2, "RV": 3}  # canonical labels, as nnU-Net's dataset.json wants them


@dataclass
class ExportReport:
    dest: Path
    format: str
    exported: list[str] = field(default_factory=list)
    real: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one sentence each
    files: int = 0

    def to_dict(self) -> dict:
        return {"dest": str(self.dest), "format": self.format, "exported": self.exported, "real": self.real,
                "skipped": self.skipped, "files": self.files}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, obj) -> Path:
    return write_text_atomic(path, json.dumps(jsonable(obj), indent=2) + "\n")


def sha256(path: Path) -> str:
    from cmrstudio.models.checkpoint import sha256_file

    return sha256_file(path)


# -- one case per format -----------------------------------------------------------------------

def _sidecar(item: ExportItem, files: dict[str, str]) -> dict:
    c = item.case
    return {
        "synthetic": bool(item.provenance.get("synthetic", True)),
        "derived_from_patient": bool(item.provenance.get("derived_from_patient", False)),
        "case_id": c.case_id,
        "files": files,
        "labels": {str(k): v for k, v in LABELS.items()},
        "geometry": {"shape_zyx": list(c.shape), "spacing_mm": list(c.spacing) if c.spacing else "unknown",
                     "affine_zyx_ras": c.affine.tolist() if c.affine is not None else None},
        **{k: v for k, v in item.provenance.items() if k not in ("synthetic", "derived_from_patient")},
        "exported_by": f"cmrstudio {__version__}",
        "exported": _now(),
    }


def write_nifti_case(item: ExportItem, out: Path) -> list[Path]:
    from cmrstudio.io.nifti import write_nifti

    c, cid = item.case, item.case.case_id
    img = write_nifti(out / f"{cid}_image.nii.gz", c.image, c.affine, dtype=np.float32)
    msk = write_nifti(out / f"{cid}_mask.nii.gz", c.mask, c.affine, dtype=np.uint8)
    side = _write_json(out / f"{cid}.json", _sidecar(item, {"image": img.name, "mask": msk.name}))
    return [img, msk, side]


def write_dicom_case(item: ExportItem, out: Path) -> list[Path]:
    from cmrstudio.export.dicom import write_dicom

    written = write_dicom(item.case, out / item.case.case_id, item.provenance)
    side = _write_json(out / item.case.case_id / "provenance.json",
                       _sidecar(item, {k: f"{k}/" for k in written}))
    return [p for ps in written.values() for p in ps] + [side]


def nnunet_folder(dataset_id: int, name: str) -> str:
    if not 1 <= int(dataset_id) <= 999:
        raise CmrError(f"--dataset-id {dataset_id} must be 1–999 (nnU-Net names datasets DatasetNNN_Name).")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", name or ""):
        raise CmrError(f"--name {name!r} must be letters, digits, '_' or '-' (it becomes part of a folder name).")
    return f"Dataset{int(dataset_id):03d}_{name}"


def write_nnunet_case(case: Case, root: Path, case_id: str) -> list[Path]:
    from cmrstudio.io.nifti import write_nifti

    if case.affine is None:  # nnU-Net plans its target spacing from the files: never invent one
        raise CmrError(f"{case_id} has no known pixel spacing, which nnU-Net needs; give the source scan its spacing "
                       "(--spacing when converting) or export it as nifti.")

    img = write_nifti(root / "imagesTr" / f"{case_id}_0000.nii.gz", case.image, case.affine, dtype=np.float32)
    lab = write_nifti(root / "labelsTr" / f"{case_id}.nii.gz", case.mask, case.affine, dtype=np.uint8)
    return [img, lab]


def nnunet_dataset_json(name: str, n_training: int, synthetic: list[str], real: list[str]) -> dict:
    return {
        "channel_names": {"0": "cineMRI"},
        "labels": dict(NNUNET_LABELS),
        "numTraining": int(n_training),
        "file_ending": ".nii.gz",
        "name": name,
        "description": "Short-axis cardiac MRI; synthetic cases rendered by cmrstudio from painted masks"
                       + (", merged with real cases" if real else "") + ". Labels: 1 LV blood pool, 2 LV myocardium, 3 RV blood pool.",
        "synthetic_cases": synthetic,
        "real_cases": real,
        "generated_by": f"cmrstudio {__version__}",
    }


NNUNET_REQUIRED = {"channel_names": dict, "labels": dict, "numTraining": int, "file_ending": str}


def check_nnunet_dataset_json(d: dict, root: Path | None = None) -> list[str]:
    """The fields nnU-Net v2's planner reads, checked; with ``root``, the files are counted too."""
    problems = []
    for key, typ in NNUNET_REQUIRED.items():
        if not isinstance(d.get(key), typ):
            problems.append(f"dataset.json needs '{key}' as {typ.__name__}")
    labels = d.get("labels", {})
    if isinstance(labels, dict):
        if labels.get("background") != 0:
            problems.append("dataset.json 'labels' must map 'background' to 0")
        vals = sorted(v for v in labels.values() if isinstance(v, int))
        if vals != list(range(len(vals))):
            problems.append("dataset.json label values must be consecutive integers from 0")
    ch = d.get("channel_names", {})
    if isinstance(ch, dict) and sorted(ch) != [str(i) for i in range(len(ch))]:
        problems.append("dataset.json 'channel_names' keys must be '0', '1', ...")
    if root is not None and isinstance(d.get("numTraining"), int) and isinstance(d.get("file_ending"), str):
        fe = d["file_ending"]
        n_ch = len(ch) if isinstance(ch, dict) else 1
        labels_tr = sorted(p.name[: -len(fe)] for p in (root / "labelsTr").glob(f"*{fe}"))
        images_tr = sorted(p.name for p in (root / "imagesTr").glob(f"*{fe}"))
        if len(labels_tr) != d["numTraining"]:
            problems.append(f"numTraining is {d['numTraining']} but labelsTr holds {len(labels_tr)} cases")
        for cid in labels_tr:
            for i in range(n_ch):
                if f"{cid}_{i:04d}{fe}" not in images_tr:
                    problems.append(f"imagesTr lacks {cid}_{i:04d}{fe}")
        # as nnU-Net's verify_dataset_integrity does: every image belongs to a labelled case with all channels
        ids = {n[: -len(fe) - 5] for n in images_tr if re.fullmatch(r".+_\d{4}", n[: -len(fe)])}
        for cid in sorted(ids - set(labels_tr)):
            problems.append(f"imagesTr has {cid} but labelsTr has no {cid}{fe}")
        for n in images_tr:
            if not re.fullmatch(r".+_\d{4}", n[: -len(fe)]):
                problems.append(f"imagesTr/{n} does not end in _NNNN{fe} (the channel)")
    return problems


# -- dataset-level files -----------------------------------------------------------------------

def dataset_description(name: str, source: Path, fmt: str, n: int, models: list[str]) -> dict:
    """BIDS-derivatives style: Name, BIDSVersion, DatasetType 'derivative', GeneratedBy."""
    return {
        "Name": name,
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "cmrstudio", "Version": __version__,
                         "Description": f"{n} synthetic short-axis cardiac MRI cases rendered from painted masks by {', '.join(models) or 'cmrstudio models'}; format {fmt}"}],
        "SourceDatasets": [{"URL": Path(source).resolve().as_uri()}],
        "License": "The images are synthetic. Models trained on ACDC / M&Ms carry those datasets' non-commercial research terms (see each model's card).",
        "HowToAcknowledge": "Cite cmrstudio and the datasets the rendering models were trained on (their cards list them).",
    }


def contact_sheet(items: list[ExportItem], path: Path, cols: int = 6, tile: int = 128) -> Path:
    """A PNG grid: the middle slice of every exported case with its mask outline and id."""
    from PIL import Image, ImageDraw

    from cmrstudio.project import render_thumbnail

    n = max(1, len(items))
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    label_h = 14
    sheet = Image.new("RGB", (cols * tile, rows * (tile + label_h)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for i, it in enumerate(items):
        c = it.case
        z = c.shape[0] // 2
        thumb = render_thumbnail(c.image[z], c.mask[z], intensity=None, size=tile)
        im = Image.fromarray(thumb)
        x, y = (i % cols) * tile, (i // cols) * (tile + label_h)
        sheet.paste(im, (x + (tile - im.width) // 2, y + (tile - im.height) // 2))
        text = c.case_id + (f" {'*' * it.provenance['rating']}" if it.provenance.get("rating") else "")
        draw.text((x + 3, y + tile + 1), text[:22], fill=(230, 230, 230))
    from cmrstudio.io.common import atomic_path

    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


def _self_sha256(manifest: dict) -> str:
    """The manifest's own checksum: sha256 of its content without this field, in a canonical form."""
    import hashlib

    body = {k: v for k, v in manifest.items() if k != "self_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()).hexdigest()


def _manifest_text(manifest: dict) -> str:
    return json.dumps(jsonable(manifest), indent=2) + "\n"


def write_manifest(root: Path) -> Path:
    """``manifest.json``: a sha256 per file, and its own checksum (``self_sha256``) so that a changed byte in
    the manifest itself is caught as well."""
    files = {str(p.relative_to(root)).replace(os.sep, "/"): sha256(p) for p in sorted(root.rglob("*"))
             if p.is_file() and p != root / MANIFEST}
    manifest = {"format": "cmrstudio-export-manifest", "version": 1, "created": _now(), "algorithm": "sha256", "files": files}
    manifest["self_sha256"] = _self_sha256(manifest)
    return write_text_atomic(root / MANIFEST, _manifest_text(manifest))


def verify(dest: str | Path) -> list[str]:
    """Problems with an export (one sentence each); an empty list means every file matches its manifest."""
    root = Path(dest).expanduser()
    mpath = root / MANIFEST
    if not root.is_dir():
        raise CmrError(f"{root} is not a folder; give the folder an export wrote.")
    try:
        text = mpath.read_text(encoding="utf-8")
        manifest = json.loads(text)
        files = manifest["files"]
        assert isinstance(files, dict) and all(isinstance(v, str) for v in files.values())
    except (OSError, ValueError, KeyError, AssertionError, TypeError):
        raise CmrError(f"{mpath} is missing or damaged, so {root} cannot be verified; export again.") from None
    problems = []
    if "self_sha256" in manifest:  # manifests before it had no checksum of their own
        if manifest["self_sha256"] != _self_sha256(manifest):
            problems.append(f"{MANIFEST} has changed since the export (its own checksum differs).")
        elif text != _manifest_text(manifest):
            problems.append(f"{MANIFEST} has been edited since the export (its bytes differ from what was written).")
    for rel, digest in files.items():
        p = root / rel
        if not p.is_file():
            problems.append(f"{rel} is listed in the manifest but missing.")
        elif sha256(p) != digest:
            problems.append(f"{rel} has changed since the export (its sha256 differs).")
    listed = set(files)
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root)).replace(os.sep, "/")
        if p.is_file() and p != root / MANIFEST and rel not in listed:
            problems.append(f"{rel} is not part of the export (not in the manifest).")
    return problems


# -- the export --------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _tidy(dest: Path) -> None:
    """What a killed export left beside ``dest``: its staging folders go; a previous export set aside is put back."""
    for p in dest.parent.glob(f".{dest.name}.partial-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
    for p in dest.parent.glob(f".{dest.name}.replaced-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            if not dest.exists():
                os.replace(p, dest)
            else:
                shutil.rmtree(p, ignore_errors=True)


def _is_export(folder: Path) -> bool:
    return (folder / MANIFEST).is_file() or (folder / "export.json").is_file()


def _staging(dest: Path) -> Path:
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _tidy(dest)
        tmp = parent / f".{dest.name}.partial-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as exc:
        raise CmrError(f"Cannot write in {parent} ({exc.strerror or exc}); choose a writable destination folder.") from None
    return tmp


def export(source: str | Path, dest: str | Path, fmt: str = "nifti", overwrite: bool = False,
           with_real: list[str | Path] | None = None, dataset_id: int = 501, name: str = "SyntheticCMR",
           min_rating: int | None = None, progress: Callable[[str], None] | None = None, anonymous_only: bool = False) -> ExportReport:
    """Export the renders of ``source`` (a studio project or a folder of renders) to ``dest``.

    Renders that cannot be read are skipped and named in the report; the others are written. Renders made in a
    patient's own scan are derived from that patient: exported and marked so, or, with ``anonymous_only``, left
    out and named (an anonymous export holds fully synthetic renders only).
    """
    if fmt not in FORMATS:
        raise CmrError(f"--format {fmt!r} is not known; use one of {', '.join(FORMATS)}.")
    if with_real and fmt != "nnunet":
        raise CmrError("--with-real merges real cases into an nnU-Net dataset; use it with --format nnunet.")
    folder = nnunet_folder(dataset_id, name) if fmt == "nnunet" else None
    dest = Path(dest).expanduser()
    src = Path(source).expanduser().resolve()
    d = dest.resolve()
    if d == src or src.is_relative_to(d) or d.is_relative_to(src):
        raise CmrError(f"{dest} is {'the source' if d == src else 'inside the source' if d.is_relative_to(src) else 'a folder holding the source'} "
                       f"{source}; export to a folder outside it.")
    if dest.exists() and not overwrite:
        raise CmrError(f"{dest} already exists; choose a new destination or pass --overwrite to replace it.")
    if dest.exists() and not dest.is_dir():
        raise CmrError(f"{dest} is a file; give a folder as the destination.")
    if dest.exists() and not _is_export(dest):
        raise CmrError(f"{dest} exists and is not a cmrstudio export (no manifest.json), so --overwrite will not replace it; "
                       "choose a new destination.")
    items, problems = collect(source, min_rating=min_rating)
    if anonymous_only:
        for it in [it for it in items if it.provenance.get("derived_from_patient")]:
            problems.append(f"{it.origin} was rendered in a patient's own scan (derived from patient data); "
                            "--anonymous-only leaves it out")
        items = [it for it in items if not it.provenance.get("derived_from_patient")]
    report = ExportReport(dest, fmt, skipped=list(problems))
    if not items:
        raise CmrError(f"Nothing to export from {source}: " + ("; ".join(problems) if problems else "it holds no renders"
                                                                 + (f" rated {min_rating} or more" if min_rating else "") + "."))
    real_cases = _real_cases(with_real or [], report.skipped)
    tmp = _staging(dest)
    say = progress or (lambda _m: None)
    try:
        root = tmp / folder if folder else tmp
        root.mkdir(parents=True, exist_ok=True)
        done: list[ExportItem] = []
        for i, it in enumerate(items, 1):
            if not _write_case(it.case.case_id, root, tmp / ".case", report, it.origin,
                               lambda r, it=it: write_nifti_case(it, r) if fmt == "nifti" else write_dicom_case(it, r)
                               if fmt == "dicom" else write_nnunet_case(it.case, r, it.case.case_id)):
                continue
            done.append(it)
            report.exported.append(it.case.case_id)
            say(f"[{i}/{len(items)}] {it.case.case_id}")
        if not done:
            raise CmrError(f"No render of {source} could be written: " + "; ".join(report.skipped))
        if fmt == "nnunet":
            for rid, c in real_cases:
                if _write_case(rid, root, tmp / ".case", report, f"Real case {c.case_id}",
                               lambda r, c=c, rid=rid: write_nnunet_case(c, r, rid)):
                    report.real.append(rid)
            _write_json(root / "dataset.json", nnunet_dataset_json(name, len(done) + len(real_cases), report.exported, report.real))
            _write_json(root / "provenance.json", {it.case.case_id: _sidecar(it, {"image": f"imagesTr/{it.case.case_id}_0000.nii.gz",
                                                                                 "label": f"labelsTr/{it.case.case_id}.nii.gz"})
                                                   for it in done})
        models = sorted({str(it.provenance.get("model")) for it in done if it.provenance.get("model")})
        _write_json(tmp / "dataset_description.json", dataset_description(dest.name, Path(source), fmt, len(done), models))
        contact_sheet(done, tmp / "contact_sheet.png")
        derived = [it.case.case_id for it in done if it.provenance.get("derived_from_patient")]
        _write_json(tmp / "export.json", {"format": fmt, "source": str(Path(source).resolve()), "created": _now(),
                                          "exported_by": f"cmrstudio {__version__}", "cases": report.exported,
                                          "anonymous": not derived and not report.real, "derived_from_patient": derived,
                                          "real_cases": report.real, "skipped": report.skipped,
                                          **({"nnunet_dataset": folder} if folder else {})})
        write_manifest(tmp)  # last: a folder with a manifest is a finished export
        report.files = sum(1 for p in tmp.rglob("*") if p.is_file())
        _publish(tmp, dest, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _write_case(cid: str, root: Path, scratch: Path, report: ExportReport, origin: str, write) -> bool:
    """Write one case into its own scratch folder, then move its files into ``root``: a case that fails
    half-way leaves nothing in the export. Failures are named in the report; False then."""
    work = scratch / cid
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        write(work)
        for f in sorted(p for p in work.rglob("*") if p.is_file()):
            target = root / f.relative_to(work)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, target)
        return True
    except (CmrError, OSError, ValueError) as exc:
        text = exc.message if isinstance(exc, CmrError) else f"{type(exc).__name__}: {exc}"
        report.skipped.append(f"{origin}: {text.replace(str(work), str(report.dest))}")
        # files already moved for this case (a failure while moving) go too
        for f in (p for p in work.rglob("*") if p.is_file()):
            (root / f.relative_to(work)).unlink(missing_ok=True)
        return False
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if scratch.exists() and not any(scratch.iterdir()):
            scratch.rmdir()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not available."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95, 1):  # EINVAL, ENOSYS, EOPNOTSUPP, EPERM: this file system cannot; fall back
        return False
    raise OSError(err, os.strerror(err), str(b))


def _publish(tmp: Path, dest: Path, overwrite: bool) -> None:
    """Put the finished export in place. Replacing an old one swaps the two folders in one step where the
    system can (so DEST is at every moment one complete export), else it sets the old one aside, moves the
    new one in and puts the old one back if that fails (a killed export's set-aside folder is restored by
    the next export to DEST)."""
    old = None
    if dest.exists() and not overwrite:  # it appeared while the export was being written
        raise CmrError(f"{dest} appeared while the export was being written; nothing was replaced. Export again to a new folder.")
    if dest.exists() and _exchange(tmp, dest):
        shutil.rmtree(tmp, ignore_errors=True)  # it now holds the old export (a kill here: tidied as a staging folder)
        return
    if dest.exists():
        old = dest.parent / f".{dest.name}.replaced-{os.getpid()}"
        os.replace(dest, old)
    try:
        os.replace(tmp, dest)
    except OSError:
        if old is not None:
            os.replace(old, dest)  # put the previous export back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _real_cases(folders: list[str | Path], skipped: list[str]) -> list[tuple[str, Case]]:
    """Real cases (image + canonical mask) to merge into an nnU-Net dataset, with ids prefixed 'real_'.
    Cases without a mask or with non-finite pixels are named in ``skipped``."""
    from cmrstudio.io import read_cases

    out: list[tuple[str, Case]] = []
    seen: set[str] = set()
    for f in folders:
        for c in read_cases(f):
            if c.image is None or c.mask is None:
                skipped.append(f"Real case {c.case_id} in {f}: it has no {'image' if c.image is None else 'mask'}, so it cannot train a segmenter.")
                continue
            if not np.all(np.isfinite(c.image)):
                skipped.append(f"Real case {c.case_id} in {f}: its image holds non-finite pixels.")
                continue
            rid = "real_" + re.sub(r"[^A-Za-z0-9_-]", "_", c.case_id)
            while rid in seen:
                rid += "_"
            seen.add(rid)
            out.append((rid, c))
    if folders and not out:
        raise CmrError(f"{', '.join(map(str, folders))} holds no real case with both an image and a mask to merge.")
    return out
