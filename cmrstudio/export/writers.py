"""Export curated synthetic cases: NIfTI + JSON, an nnU-Net v2 raw dataset, DICOM series or a BIDS-derivatives dataset.

Every export also gets a BIDS-derivatives ``dataset_description.json``, a PNG contact sheet,
``export.json`` (what was exported, what was skipped and why) and ``manifest.json`` (a
sha256 per file; ``cmrstudio export --verify DEST`` checks it).

Before anything is written each render is labelled honestly (:func:`~cmrstudio.export.source.judge_mask`:
an image rendered in a patient's scan, or a mask that is the patient's own segmentation, makes the render
derived from that patient), its geometry made one that every reader accepts (the direction orthonormalised,
by how much recorded; unknown spacing kept unknown), and its provenance stripped of what names the source
(:mod:`cmrstudio.export.privacy`) unless ``keep_source_ids``.

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
from cmrstudio.export.privacy import NEUTRAL_ID, Scrubber, new_salt, path_identifiers, public_source
from cmrstudio.export.source import ExportItem, collect, judge_mask, set_origin, source_identifiers
from cmrstudio.io.common import jsonable, orthonormal_affine, write_text_atomic

FORMATS = ("nifti", "nnunet", "dicom", "bids")
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
    c, prov = item.case, item.provenance
    return {
        "synthetic": bool(prov.get("synthetic", False)),
        "derived_from_patient": prov.get("derived_from_patient"),
        "case_id": c.case_id,
        "files": files,
        "labels": {str(k): v for k, v in LABELS.items()},
        **{k: v for k, v in prov.items() if k not in ("synthetic", "derived_from_patient", "id")},
        "exported_by": f"cmrstudio {__version__}",
        "exported": _now(),
    }


def descriptions(prov: dict) -> dict[str, str]:
    """What each file is, in a few words (NIfTI headers, BIDS sidecars): honest about patient content."""
    image = ("cmrstudio SYNTHETIC image (model-generated, no patient pixel)" if prov.get("image_origin") == "synthetic"
             else "cmrstudio render in a patient scan: DERIVED from patient data")
    mask = {"synthetic": "cmrstudio mask: painted, SYNTHETIC (no patient segmentation)",
            "patient": "cmrstudio mask: the patient's own segmentation, DERIVED",
            }.get(prov.get("mask_origin"), "cmrstudio mask: origin not recorded (may be a patient's)")
    return {"image": image, "mask": mask}


def write_nifti_case(item: ExportItem, out: Path) -> list[Path]:
    from cmrstudio.io.nifti import write_nifti

    c, cid = item.case, item.case.case_id
    say = descriptions(item.provenance)
    img = write_nifti(out / f"{cid}_image.nii.gz", c.image, c.affine, dtype=np.float32, orthonormal=True, descrip=say["image"])
    msk = write_nifti(out / f"{cid}_mask.nii.gz", c.mask, c.affine, dtype=np.uint8, orthonormal=True, descrip=say["mask"])
    side = _write_json(out / f"{cid}.json", _sidecar(item, {"image": img.name, "mask": msk.name}))
    return [img, msk, side]


def write_dicom_case(item: ExportItem, out: Path) -> list[Path]:
    from cmrstudio.export.dicom import write_dicom

    written = write_dicom(item.case, out / item.case.case_id, item.provenance)
    side = _write_json(out / item.case.case_id / "provenance.json",
                       _sidecar(item, {k: f"{k}/" for k in written}))
    return [p for ps in written.values() for p in ps] + [side]


def write_bids_case(item: ExportItem, out: Path, label: str | None = None) -> list[Path]:
    from cmrstudio.export.bids import write_bids_case as write

    return write(item, out, _sidecar(item, {}), label)


def nnunet_folder(dataset_id: int, name: str) -> str:
    if not 1 <= int(dataset_id) <= 999:
        raise CmrError(f"--dataset-id {dataset_id} must be 1–999 (nnU-Net names datasets DatasetNNN_Name).")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", name or ""):
        raise CmrError(f"--name {name!r} must be letters, digits, '_' or '-' (it becomes part of a folder name).")
    return f"Dataset{int(dataset_id):03d}_{name}"


def write_nnunet_case(case: Case, root: Path, case_id: str, say: dict[str, str] | None = None) -> list[Path]:
    from cmrstudio.io.nifti import write_nifti

    if case.affine is None:  # nnU-Net plans its target spacing from the files: never invent one
        raise CmrError(f"{case_id} has no known pixel spacing, which nnU-Net needs; give the source scan its spacing "
                       "(--spacing when converting) or export it as nifti.")
    say = say or {}
    img = write_nifti(root / "imagesTr" / f"{case_id}_0000.nii.gz", case.image, case.affine, dtype=np.float32, orthonormal=True,
                      descrip=say.get("image"))
    lab = write_nifti(root / "labelsTr" / f"{case_id}.nii.gz", case.mask, case.affine, dtype=np.uint8, orthonormal=True,
                      descrip=say.get("mask"))
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

# where the public datasets cmrstudio reads live (BIDS SourceDatasets: a URL, never a local path)
DATASET_URLS = {
    "acdc": "https://www.creatis.insa-lyon.fr/Challenge/acdc/",
    "mnms": "https://www.ub.edu/mnms/",
    "sunnybrook": "https://www.cardiacatlas.org/sunnybrook-cardiac-data/",
}


def dataset_url(dataset) -> str | None:
    d = str(dataset or "").lower()
    return next((url for key, url in DATASET_URLS.items() if d.startswith(key)), None)


def dataset_description(name: str, fmt: str, n: int, models: list[str], datasets: list[str] | None = None,
                        derived: bool = False) -> dict:
    """BIDS-derivatives: Name, BIDSVersion, DatasetType 'derivative', GeneratedBy; SourceDatasets only as public URLs."""
    what = ("short-axis cardiac MRI cases rendered from masks" + (", some derived from patient scans" if derived else ", fully synthetic"))
    desc = {
        "Name": name,
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "cmrstudio", "Version": __version__,
                         "Description": f"{n} {what} by {', '.join(models) or 'cmrstudio models'}; format {fmt}"}],
        "License": "The images are synthetic. Models trained on ACDC / M&Ms carry those datasets' non-commercial research terms (see each model's card).",
        "Authors": ["cmrstudio"],
        "HowToAcknowledge": "Cite cmrstudio and the datasets the rendering models were trained on (their cards list them).",
    }
    urls = sorted({u for u in (dataset_url(d) for d in datasets or []) if u})
    if urls:
        desc["SourceDatasets"] = [{"URL": u} for u in urls]
    return desc


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


def _prepare(items: list[ExportItem], keep: bool) -> None:
    """Export ids: a render keeps its id when it is a neutral gallery id (``r0001``) or ``keep``; any other (a file name,
    often the source case's id) gets the next free neutral one."""
    if keep:
        return
    used = {it.case.case_id for it in items if NEUTRAL_ID.match(it.case.case_id)}
    n = max((int(u[1:]) for u in used), default=0)
    for it in items:
        if not NEUTRAL_ID.match(it.case.case_id):
            n += 1
            it.case.case_id = f"r{n:04d}"


def _geometry(case: Case, frame) -> dict:
    """The geometry the export writes: unknown spacing stays unknown (a render whose frame has no mm was made from a
    mask with no spacing: the 1 mm its files say is a placeholder); a known one gets an orthonormal direction."""
    if isinstance(frame, dict) and "spacing_mm" in frame and frame.get("spacing_mm") is None:
        case.affine = None
    if case.affine is None:
        return {"shape_zyx": list(case.shape), "spacing_mm": "unknown", "coordinates": "unknown (1 mm placeholders; NIfTI xform codes 0)",
                "affine_zyx_ras": None}
    before = case.affine
    case.affine, moved = orthonormal_affine(before, case.shape)
    return {"shape_zyx": list(case.shape), "spacing_mm": list(case.spacing), "coordinates": "scanner (NIfTI qform and sform code 1)",
            "affine_zyx_ras": case.affine.tolist(), "direction_orthonormalised": moved}


def _public(prov: dict, salt: str, keep: bool) -> dict:
    """What an export writes of a render's provenance (see :mod:`cmrstudio.export.privacy`)."""
    out = {k: v for k, v in prov.items() if k not in ("source", "project", "render_id")}
    out["source"] = public_source(prov.get("source"), salt, keep)
    if keep:
        out["project"] = prov.get("project")
        out["render_id"] = prov.get("render_id")
    return out


def _refusal(it: ExportItem) -> str:
    prov = it.provenance
    if prov.get("image_origin") == "in-patient":
        return f"{it.origin} was rendered in a patient's own scan (derived from patient data); --anonymous-only leaves it out"
    if prov.get("mask_origin") == "patient":
        return f"{it.origin} has a mask that is its patient's own segmentation (derived from patient data); --anonymous-only leaves it out"
    return (f"{it.origin} does not record where its mask came from (it may be a patient's segmentation); "
            "--anonymous-only leaves it out")


def export(source: str | Path, dest: str | Path, fmt: str = "nifti", overwrite: bool = False,
           with_real: list[str | Path] | None = None, dataset_id: int = 501, name: str = "SyntheticCMR",
           min_rating: int | None = None, progress: Callable[[str], None] | None = None, anonymous_only: bool = False,
           keep_source_ids: bool = False, extra_files: dict[str, dict] | None = None) -> ExportReport:
    """Export the renders of ``source`` (a studio project or a folder of renders) to ``dest``.

    Renders that cannot be read are skipped and named in the report; the others are written. A render made in a
    patient's own scan, or whose mask is that patient's own segmentation, is derived from that patient: exported and
    marked so, or, with ``anonymous_only``, left out and named (an anonymous export holds fully synthetic renders only,
    and so none whose mask's origin is not recorded). Nothing that names a source scan (paths, case ids, file names
    made from them) is written unless ``keep_source_ids``. ``extra_files``: JSON documents written at the export's top level
    (name -> content; ``cmrstudio generate`` adds its ``generation.json``), covered by the manifest like every file.
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
    scans: dict = {}
    for it in items:
        set_origin(it.provenance, *judge_mask(it, scans))
    if anonymous_only:
        problems += [_refusal(it) for it in items if it.provenance.get("derived_from_patient") is not False]
        items = [it for it in items if it.provenance.get("derived_from_patient") is False]
    report = ExportReport(dest, fmt, skipped=list(problems))
    if not items:
        raise CmrError(f"Nothing to export from {source}: " + ("; ".join(problems) if problems else "it holds no renders"
                                                                 + (f" rated {min_rating} or more" if min_rating else "") + "."))
    scrub = Scrubber()
    scrub.add(source_identifiers(source))
    for it in items:
        scrub.add(it.identifiers)
    real_cases = _real_cases(with_real or [], report.skipped, keep_source_ids, scrub)
    salt = new_salt()  # per export, never written: case hashes cannot be looked up nor linked between exports
    _prepare(items, keep_source_ids)
    datasets = []
    for it in items:
        geometry = _geometry(it.case, it.provenance.get("frame"))
        datasets.append((it.provenance.get("source") or {}).get("dataset"))
        if str((it.provenance.get("source") or {}).get("path", "")).startswith("built-in sample"):
            datasets.append("sunnybrook")  # the studio's built-in case is Sunnybrook SCD0000101
        pub = _public(it.provenance, salt, keep_source_ids)
        pub["id"] = it.case.case_id
        pub["geometry"] = geometry
        it.provenance = pub if keep_source_ids else scrub.obj(pub)
    tmp = _staging(dest)
    say = progress or (lambda _m: None)
    clean = (lambda x: x) if keep_source_ids else scrub.obj
    try:
        root = tmp / folder if folder else tmp
        root.mkdir(parents=True, exist_ok=True)
        done: list[ExportItem] = []
        from cmrstudio.export.bids import subject_labels

        labels = subject_labels([it.case.case_id for it in items])
        writers = {"nifti": write_nifti_case, "dicom": write_dicom_case,
                   "bids": lambda it, r: write_bids_case(it, r, labels[it.case.case_id]),
                   "nnunet": lambda it, r: write_nnunet_case(it.case, r, it.case.case_id, descriptions(it.provenance))}
        for i, it in enumerate(items, 1):
            if not _write_case(it.case.case_id, root, tmp / ".case", report, it.origin, lambda r, it=it: writers[fmt](it, r)):
                continue
            done.append(it)
            report.exported.append(it.case.case_id)
            say(f"[{i}/{len(items)}] {it.case.case_id}")
        if not done:
            raise CmrError(f"No render of {source} could be written: " + "; ".join(report.skipped))
        derived = [it.case.case_id for it in done if it.provenance.get("derived_from_patient") is True]
        unsure = [it.case.case_id for it in done if it.provenance.get("derived_from_patient") is None]
        if fmt == "nnunet":
            written_real = []
            for rid, c, prov in real_cases:
                if _write_case(rid, root, tmp / ".case", report, f"Real case {c.case_id}",
                               lambda r, c=c, rid=rid: write_nnunet_case(c, r, rid, {"image": "real scan", "mask": "real segmentation"})):
                    report.real.append(rid)
                    written_real.append((rid, prov))
            _write_json(root / "dataset.json", nnunet_dataset_json(name, len(done) + len(report.real), report.exported, report.real)
                        | {"derived_from_patient": derived + report.real})
            prov_doc = {it.case.case_id: _sidecar(it, {"image": f"imagesTr/{it.case.case_id}_0000.nii.gz",
                                                       "label": f"labelsTr/{it.case.case_id}.nii.gz"}) for it in done}
            prov_doc.update({rid: p for rid, p in written_real})
            _write_json(root / "provenance.json", clean(prov_doc))
        if fmt == "bids":
            from cmrstudio.export.bids import write_bids_dataset_files

            write_bids_dataset_files(tmp, done, labels)
        models = sorted({str(it.provenance.get("model")) for it in done if it.provenance.get("model")})
        _write_json(tmp / "dataset_description.json",
                    dataset_description(name if fmt in ("nnunet", "bids") else dest.name, fmt, len(done), models, datasets,
                                        derived=bool(derived or unsure or report.real)))
        contact_sheet(done, tmp / "contact_sheet.png")
        listing = {"format": fmt, "source": {"kind": "project" if (src / "project.json").is_file() else "folder of renders"},
                   "created": _now(), "exported_by": f"cmrstudio {__version__}", "cases": report.exported,
                   "anonymous": not derived and not unsure and not report.real, "derived_from_patient": derived,
                   "mask_origin_not_recorded": unsure, "real_cases": report.real, "skipped": report.skipped,
                   "source_ids_kept": bool(keep_source_ids), **({"nnunet_dataset": folder} if folder else {})}
        if keep_source_ids:
            listing["source"]["path"] = str(src)
        _write_json(tmp / "export.json", clean(listing))
        for fname, doc in (extra_files or {}).items():
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.json", fname) or fname in (MANIFEST, "export.json", "dataset_description.json"):
                raise CmrError(f"An export cannot add a file named {fname!r}; give a plain NAME.json that the export does not write itself.")
            _write_json(tmp / fname, clean(doc))
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


def _real_cases(folders: list[str | Path], skipped: list[str], keep: bool = False,
                scrub: Scrubber | None = None) -> list[tuple[str, Case, dict]]:
    """Real cases (image + canonical mask) to merge into an nnU-Net dataset, as (id, case, provenance): ids ``real_0001``,
    ... (``real_<case id>`` with ``keep``); the provenance says the dataset and a case hash, never the case id or path
    unless ``keep``. Cases without a mask or with non-finite pixels are named in ``skipped``."""
    from cmrstudio.export.privacy import new_salt as _salt
    from cmrstudio.export.privacy import source_identifiers as ids_of
    from cmrstudio.io import read_cases

    out: list[tuple[str, Case, dict]] = []
    seen: set[str] = set()
    salt = _salt()
    for f in folders:
        if scrub is not None:
            scrub.add(path_identifiers(f))
        for c in read_cases(f):
            if scrub is not None:
                scrub.add(ids_of({"case_id": c.case_id, "path": c.source.get("path") or c.source.get("image")}))
            if c.image is None or c.mask is None:
                skipped.append(f"Real case {c.case_id} in {f}: it has no {'image' if c.image is None else 'mask'}, so it cannot train a segmenter.")
                continue
            if not np.all(np.isfinite(c.image)):
                skipped.append(f"Real case {c.case_id} in {f}: its image holds non-finite pixels.")
                continue
            rid = "real_" + re.sub(r"[^A-Za-z0-9_-]", "_", c.case_id) if keep else f"real_{len(out) + 1:04d}"
            while rid in seen:
                rid += "_"
            seen.add(rid)
            raw = {"dataset": c.source.get("dataset"), "case_id": c.case_id, "phase": c.phase, "vendor": c.vendor}
            if keep:
                raw["path"] = str(f)
            geometry = _geometry(c, None)
            prov = {"real": True, "synthetic": False, "derived_from_patient": True, "source": public_source(raw, salt, keep),
                    "geometry": geometry, "files": {"image": f"imagesTr/{rid}_0000.nii.gz", "label": f"labelsTr/{rid}.nii.gz"}}
            out.append((rid, c, prov))
    if folders and not out:
        raise CmrError(f"{', '.join(map(str, folders))} holds no real case with both an image and a mask to merge.")
    return out
