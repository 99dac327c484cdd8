"""Kept renders as a BIDS-derivatives dataset, and a structural check of one (the BIDS schema's rules that apply).

Layout (``--format bids``)::

    dataset_description.json   DatasetType "derivative", GeneratedBy cmrstudio (written by the export)
    README.md                  what the dataset is, how each file is labelled
    dseg.tsv                   the label table every *_dseg file inherits (1 LV, 2 MYO, 3 RV)
    participants.tsv/.json     one row per render: what is synthetic, what is derived from a patient
    .bidsignore                cmrstudio's own files (export.json, manifest.json, contact_sheet.png)
    sub-<id>/anat/sub-<id>_desc-<synthetic|inpatient>_T2w.nii    the rendered image  (+ .json sidecar)
    sub-<id>/anat/sub-<id>_desc-<synthetic|patient|unverified>_dseg.nii   its mask  (+ .json sidecar)

Each render is one ``sub-`` (a synthetic subject has no sessions). BIDS has no suffix for cardiac cine;
``T2w`` is the nearest (balanced SSFP contrast is T2/T1-weighted) and each sidecar says what the image is.
The ``desc`` label says what the file holds: ``synthetic`` (made by the model, or painted), ``inpatient`` (an
image rendered in a patient's own scan), ``patient`` (the patient's own segmentation), ``unverified`` (a mask
whose origin is not recorded). NIfTI files are uncompressed: BIDS allows ``.nii``, and the schema validator's
header reader fails on ``.nii.gz`` files smaller than 1 KiB, which a one-slice label map often is.
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import numpy as np

from cmrstudio.anatomy import LABELS
from cmrstudio.export.source import ExportItem
from cmrstudio.io.common import jsonable, write_text_atomic

IMAGE_SUFFIX = "T2w"
BIDSIGNORE = ("export.json", "manifest.json", "contact_sheet.png")
# the BIDS entity order (schema rules.entities) of the entities an anat derivative may carry
ENTITY_ORDER = ("sub", "ses", "acq", "ce", "rec", "run", "echo", "part", "space", "res", "den", "label", "desc")
ANAT_SUFFIXES = ("T1w", "T2w", "PDw", "T2starw", "FLAIR", "inplaneT1", "inplaneT2", "PDT2", "angio", "dseg", "probseg", "mask")
TOP_LEVEL = ("dataset_description.json", "README", "README.md", "README.rst", "README.txt", "CHANGES", "LICENSE",
             "participants.tsv", "participants.json", "dseg.tsv", "dseg.json", ".bidsignore", "CITATION.cff")
_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_FILE = re.compile(r"^(?P<entities>sub-[A-Za-z0-9]+(?:_[a-z]+-[A-Za-z0-9]+)*)_(?P<suffix>[A-Za-z0-9]+)(?P<ext>\.nii\.gz|\.nii|\.json)$")


def subject_labels(ids: list[str]) -> dict[str, str]:
    """A BIDS label (letters and digits) for each export id, unique."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for i in ids:
        base = re.sub(r"[^A-Za-z0-9]", "", i) or "render"
        label, n = base, 1
        while label in used:
            n += 1
            label = f"{base}{n}"
        used.add(label)
        out[i] = label
    return out


def descs(prov: dict) -> tuple[str, str]:
    image = "synthetic" if prov.get("image_origin") == "synthetic" else "inpatient"
    mask = {"synthetic": "synthetic", "patient": "patient"}.get(prov.get("mask_origin"), "unverified")
    return image, mask


def _write_json(path: Path, obj) -> Path:
    return write_text_atomic(path, json.dumps(jsonable(obj), indent=2) + "\n")


def write_bids_case(item: ExportItem, out: Path, sidecar: dict, label: str | None = None) -> list[Path]:
    """One render as ``sub-<label>/anat/``: the image (``_T2w``) and its mask (``_dseg``), each with a JSON sidecar."""
    from cmrstudio.export.writers import descriptions
    from cmrstudio.io.nifti import write_nifti

    c, prov = item.case, item.provenance
    label = label or subject_labels([c.case_id])[c.case_id]
    anat = out / f"sub-{label}" / "anat"
    d_img, d_msk = descs(prov)
    say = descriptions(prov)
    img_name = f"sub-{label}_desc-{d_img}_{IMAGE_SUFFIX}"
    msk_name = f"sub-{label}_desc-{d_msk}_dseg"
    img = write_nifti(anat / f"{img_name}.nii", c.image, c.affine, dtype=np.float32, orthonormal=True, descrip=say["image"])
    msk = write_nifti(anat / f"{msk_name}.nii", c.mask, c.affine, dtype=np.uint8, orthonormal=True, descrip=say["mask"])
    files = {"image": f"sub-{label}/anat/{img.name}", "mask": f"sub-{label}/anat/{msk.name}"}
    img_side = {
        "Description": f"{say['image']}; short-axis cardiac cine MRI slice (balanced SSFP-style contrast, T2/T1-weighted; "
                       "BIDS has no cine suffix, so T2w).",
        "SkullStripped": False,
        "Manufacturer": "cmrstudio (synthetic)",  # the equipment that made the image, as in the DICOM export
        "ManufacturersModelName": str(prov.get("model") or "cmrstudio"),
        "SoftwareVersions": str(sidecar.get("exported_by") or "cmrstudio"),
        "cmrstudio": {**sidecar, "files": files},
    }
    msk_side = {
        "Description": f"{say['mask']}; labels in dseg.tsv (1 LV blood pool, 2 LV myocardium, 3 RV blood pool).",
        "cmrstudio": {k: sidecar.get(k) for k in ("case_id", "synthetic", "derived_from_patient", "mask_origin", "mask_origin_how",
                                                   "labels", "geometry", "source")} | {"files": files},
    }
    a = _write_json(anat / f"{img_name}.json", img_side)
    b = _write_json(anat / f"{msk_name}.json", msk_side)
    return [img, msk, a, b]


def _tsv(rows: list[list]) -> str:
    return "".join("\t".join("n/a" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for v in r) + "\n" for r in rows)


def write_bids_dataset_files(root: Path, items: list[ExportItem], labels: dict[str, str] | None = None) -> list[Path]:
    """README.md, dseg.tsv, participants.tsv/.json and .bidsignore of a BIDS export (dataset_description.json is the export's)."""
    labels = labels or subject_labels([it.case.case_id for it in items])
    n = len(items)
    derived = sum(1 for it in items if it.provenance.get("derived_from_patient") is True)
    unsure = sum(1 for it in items if it.provenance.get("derived_from_patient") is None)
    readme = f"""# Rendered short-axis cardiac MRI (cmrstudio)

A BIDS-derivatives dataset written by `cmrstudio export --format bids`: {n} rendered case{'s' if n != 1 else ''}, one per `sub-` folder,
each an image (`*_T2w.nii`) and its label map (`*_dseg.nii`, labels in `dseg.tsv`: 1 LV blood pool, 2 LV myocardium,
3 RV blood pool).

What each file holds is in its name (`desc-`) and sidecar:

- `desc-synthetic`: made by a generative model (images) or painted (masks): no patient's pixels or segmentation.
- `desc-inpatient`: an image rendered into a patient's own scan: derived from that patient.
- `desc-patient`: a mask that is the source scan's own segmentation: derived from that patient.
- `desc-unverified`: a mask whose origin was not recorded: it may be a patient's segmentation.

{derived} of these cases are derived from patient data and {unsure} have a mask of unrecorded origin;
`participants.tsv` lists which. Sources are described by dataset, a salted case hash and the slice only.
BIDS has no suffix for cardiac cine, so the images use `T2w` (balanced SSFP contrast is T2/T1-weighted).
cmrstudio's own files (`export.json`, `manifest.json`, `contact_sheet.png`) are listed in `.bidsignore`.
"""
    out = [write_text_atomic(root / "README.md", readme)]
    out.append(write_text_atomic(root / "dseg.tsv", _tsv([["index", "name", "abbreviation"]]
                                                         + [[k, LABELS[k], ab] for k, ab in ((1, "LV"), (2, "MYO"), (3, "RV"))])))
    rows = [["participant_id", "image_origin", "mask_origin", "derived_from_patient"]]
    for it in items:
        p = it.provenance
        rows.append([f"sub-{labels[it.case.case_id]}", p.get("image_origin"), p.get("mask_origin"), p.get("derived_from_patient")])
    out.append(write_text_atomic(root / "participants.tsv", _tsv(rows)))
    out.append(_write_json(root / "participants.json", {
        "participant_id": {"Description": "One rendered case (a synthetic subject): the export id without '_' or '-'."},
        "image_origin": {"Description": "How the image was made.",
                         "Levels": {"synthetic": "by the model: no patient pixel", "in-patient": "rendered into a patient's own scan"}},
        "mask_origin": {"Description": "Where the label map came from.",
                        "Levels": {"synthetic": "painted, or a phantom: no patient's segmentation",
                                   "patient": "the source scan's own segmentation", "unknown": "not recorded"}},
        "derived_from_patient": {"Description": "Whether the case holds patient data (n/a: not known).",
                                 "Levels": {"true": "derived from a patient", "false": "fully synthetic"}},
    }))
    out.append(write_text_atomic(root / ".bidsignore", "".join(f"{p}\n" for p in BIDSIGNORE)))
    return out


# -- the structural check ------------------------------------------------------------------------------

def _ignored(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(rel, p.strip("/")) or fnmatch.fnmatch(rel.split("/")[-1], p) for p in patterns)


def check_bids(root: str | Path) -> list[str]:
    """Problems with a BIDS-derivatives dataset as cmrstudio writes it, one sentence each ([] when none): the rules of
    the BIDS schema that apply to it (required files, dataset_description fields, folder layout, entity order and
    labels, suffixes, a sidecar for every data file and a data file for every sidecar, dseg labels in dseg.tsv)."""
    import nibabel as nib

    root = Path(root)
    problems: list[str] = []
    try:
        desc = json.loads((root / "dataset_description.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ["dataset_description.json is missing or not JSON"]
    for key in ("Name", "BIDSVersion"):
        if not isinstance(desc.get(key), str) or not desc[key]:
            problems.append(f"dataset_description.json needs '{key}'")
    if desc.get("DatasetType") != "derivative":
        problems.append("dataset_description.json must say DatasetType 'derivative'")
    gen = desc.get("GeneratedBy")
    if not (isinstance(gen, list) and gen and all(isinstance(g, dict) and g.get("Name") for g in gen)):
        problems.append("dataset_description.json needs GeneratedBy: a list of objects with a Name")
    for sd in desc.get("SourceDatasets", []) or []:
        if not isinstance(sd, dict) or set(sd) - {"DOI", "URL", "Version"}:
            problems.append(f"SourceDatasets entry {sd!r} may hold only DOI, URL and Version")
        elif str(sd.get("URL", "")).lower().startswith("file:"):
            problems.append(f"SourceDatasets names a local path ({sd['URL']}); give a public URL or DOI")
    if not any((root / n).is_file() for n in ("README", "README.md", "README.rst", "README.txt")):
        problems.append("the dataset has no README")
    ignore = []
    if (root / ".bidsignore").is_file():
        ignore = [ln.strip() for ln in (root / ".bidsignore").read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]
    dseg_indices: set[int] | None = None
    if (root / "dseg.tsv").is_file():
        lines = [ln.split("\t") for ln in (root / "dseg.tsv").read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines or lines[0][:2] != ["index", "name"]:
            problems.append("dseg.tsv must start with the columns index and name")
        else:
            try:
                dseg_indices = {int(r[0]) for r in lines[1:]}
            except ValueError:
                problems.append("dseg.tsv has an index that is not a whole number")
    subjects = []
    for p in sorted(root.iterdir()):
        rel = p.name
        if p.is_dir() and rel.startswith("sub-"):
            subjects.append(p)
        elif p.is_dir() and rel in ("derivatives", "sourcedata", "code"):
            continue
        elif rel not in TOP_LEVEL and not _ignored(rel, ignore):
            problems.append(f"{rel} is not a BIDS file and not in .bidsignore")
    if not subjects:
        problems.append("the dataset has no sub-* folder")
    for sub in subjects:
        label = sub.name[4:]
        if not _LABEL.match(label):
            problems.append(f"{sub.name}: a subject label holds letters and digits only")
        for f in sorted(sub.rglob("*")):
            rel = str(f.relative_to(root)).replace("\\", "/")
            if f.is_dir() or _ignored(rel, ignore):
                continue
            parts = rel.split("/")
            folders = parts[1:-1]
            if folders and folders[0].startswith("ses-"):
                folders = folders[1:]
            if folders != ["anat"]:
                problems.append(f"{rel}: data files go in sub-<label>/[ses-<label>/]anat/")
                continue
            m = _FILE.match(parts[-1])
            if not m:
                problems.append(f"{rel}: the name is not sub-<label>[_<entity>-<label>...]_<suffix>.nii[.gz]|.json")
                continue
            ents = [e.split("-", 1) for e in m["entities"].split("_")]
            keys = [k for k, _ in ents]
            if ents[0] != ["sub", label]:
                problems.append(f"{rel}: the file's subject is not its folder's ({sub.name})")
            if any(k not in ENTITY_ORDER for k in keys):
                problems.append(f"{rel}: entity {next(k for k in keys if k not in ENTITY_ORDER)!r} is not one an anat file may carry")
            elif keys != sorted(keys, key=ENTITY_ORDER.index) or len(set(keys)) != len(keys):
                problems.append(f"{rel}: entities are out of the BIDS order ({', '.join(ENTITY_ORDER)}) or repeated")
            if len(folders) and parts[1].startswith("ses-") and ("ses", parts[1][4:]) not in [tuple(e) for e in ents]:
                problems.append(f"{rel}: the file's session is not its folder's")
            if m["suffix"] not in ANAT_SUFFIXES:
                problems.append(f"{rel}: suffix {m['suffix']!r} is not an anat suffix")
            stem = f.name[: -len(m["ext"])]
            if m["ext"] == ".json":
                if not any((f.parent / f"{stem}{e}").is_file() for e in (".nii", ".nii.gz")):
                    problems.append(f"{rel}: a sidecar without its data file")
                    continue
                try:
                    side = json.loads(f.read_text(encoding="utf-8"))
                except ValueError:
                    problems.append(f"{rel}: not valid JSON")
                    continue
                if m["suffix"] != "dseg" and "desc" in keys and "SkullStripped" not in side:
                    problems.append(f"{rel}: a derivative anatomical image needs SkullStripped in its sidecar")
            else:
                if not (f.parent / f"{stem}.json").is_file():
                    problems.append(f"{rel}: a data file without its JSON sidecar")
                if m["suffix"] == "dseg":
                    if dseg_indices is None:
                        problems.append(f"{rel}: a dseg file needs a dseg.tsv (top level or beside it)")
                    else:
                        found = set(np.unique(np.asarray(nib.load(str(f)).dataobj)).astype(int).tolist()) - {0}
                        if found - dseg_indices:
                            problems.append(f"{rel}: labels {sorted(found - dseg_indices)} are not in dseg.tsv")
    return problems
