"""What an export reads: the kept renders of a studio project, or any folder of saved renders.

Each render becomes an :class:`ExportItem`: a :class:`~cmrstudio.case.Case` (image, canonical
mask, geometry) and its provenance (model and checksum, sampler, steps, seed, vendor style,
frame, the scan and slice it came from, time, the reviewer's rating and note). A render that
cannot be read is not fatal: it is named in the problems and the others go on.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmrstudio.anatomy import VENDORS
from cmrstudio.case import Case
from cmrstudio.errors import CmrError, CmrWarning

KNOWN_LABELS = (0, 1, 2, 3)
# names an export writes beside the cases: a render may not take one of them
RESERVED_IDS = {"export", "manifest", "dataset", "dataset_description", "contact_sheet", "provenance"}
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass
class ExportItem:
    case: Case  # case_id is the export id
    provenance: dict
    origin: str  # where it came from, for messages


def _err(exc: BaseException) -> str:
    return exc.message if isinstance(exc, CmrError) else f"{type(exc).__name__}: {exc}"


def _read_render(folder: Path, rid: str, what: str) -> tuple[Case, dict]:
    """The render ``rid`` in ``folder`` (cmrstudio layout + a sidecar whose source has 'render')."""
    from cmrstudio.io import read_case

    side = folder / f"{rid}.json"
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CmrError(f"{what}: its sidecar {side} cannot be read ({exc}).") from None
    if not _ID_RE.match(rid) or rid in RESERVED_IDS or rid.startswith("real_"):
        raise CmrError(f"{what}: the name {rid!r} cannot be an export id (letters, digits, '_' or '-'; not 'real_…' "
                       f"nor one of {', '.join(sorted(RESERVED_IDS))}); rename its three files.")
    src = meta.get("source") if isinstance(meta, dict) else None
    if isinstance(meta, dict) and meta.get("synthetic") is True and meta.get("model"):
        src = {"render": {k: meta.get(k) for k in ("model", "model_sha256", "kind", "sampler", "steps", "guidance", "seed",
                                                  "seconds", "created")} | {"vendor": meta.get("vendor_style")},
               "frame": meta.get("frame"), "exported": {k: meta.get(k) for k in ("rating", "note", "source")}}
    if not isinstance(src, dict) or not isinstance(src.get("render"), dict):
        raise CmrError(f"{what}: {side} is not the sidecar of a cmrstudio render (no 'render' record).")
    img, msk = folder / f"{rid}_image.nii.gz", folder / f"{rid}_mask.nii.gz"
    for f in (img, msk):
        if not f.exists():
            raise CmrError(f"{what}: {f.name} is missing from {folder}.")
    raw = _raw_labels(msk)
    bad = sorted(set(np.unique(raw).tolist()) - set(KNOWN_LABELS))
    if bad:
        raise CmrError(f"{what}: its mask {msk.name} holds label {bad[0]}, which is not a canonical label "
                       "(0 background, 1 LV, 2 MYO, 3 RV); fix the mask or remove the render.")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CmrWarning)
            case = read_case(img, mask=msk, labels="canonical")
    except Exception as exc:
        raise CmrError(f"{what}: {img.name} cannot be read ({_err(exc)}).") from None
    for w in caught:  # only the readers' own warnings are this function's business
        if not issubclass(w.category, CmrWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    odd = case.source.get("assumptions")
    if odd:  # cmrstudio wrote this render: anything the reader had to assume means it was damaged since
        raise CmrError(f"{what}: {img.name} is not as cmrstudio wrote it ({odd[0].rstrip('.')}); render it again.")
    if case.image is None or case.mask is None:
        raise CmrError(f"{what}: the image or the mask is missing.")
    if not np.all(np.isfinite(case.image)):
        raise CmrError(f"{what}: {img.name} holds non-finite pixels; render it again.")
    vendor = src["render"].get("vendor")
    if vendor in VENDORS:
        case.vendor = vendor  # the style it was rendered in (the NIfTI itself does not say)
    return case, src


def _raw_labels(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def _provenance(src: dict, rid: str, vendor: str, extra: dict | None = None) -> dict:
    render = dict(src.get("render", {}))
    mode = render.get("mode") or "synthetic"  # renders written before modes existed were all fully synthetic
    prov = {
        "synthetic": mode == "synthetic",
        "mode": mode,
        "derived_from_patient": mode != "synthetic",
        "margin_mm": render.get("margin_mm"),
        "id": rid,
        "model": render.get("model"),
        "model_sha256": render.get("model_sha256"),
        "kind": render.get("kind"),
        "sampler": render.get("sampler"),
        "steps": render.get("steps"),
        "guidance": render.get("guidance"),
        "seed": render.get("seed"),
        "vendor_style": render.get("vendor", vendor),
        "vendor": render.get("vendor", vendor),
        "seconds": render.get("seconds"),
        "created": render.get("created"),
        "frame": src.get("frame"),
        "rating": None,
        "note": "",
        "source": {},
    }
    prov.update(extra or {})
    return prov


def collect(source: str | Path, min_rating: int | None = None) -> tuple[list[ExportItem], list[str]]:
    """(items, problems) from a studio project folder or a folder of saved renders."""
    from cmrstudio.project import PROJECT_FILE, Project

    src = Path(source).expanduser()
    if not src.exists():
        raise CmrError(f"{src} does not exist; give a studio project folder or a folder of renders.")
    if not src.is_dir():
        raise CmrError(f"{src} is a file; give a studio project folder or a folder of renders.")
    items: list[ExportItem] = []
    problems: list[str] = []
    if (src / PROJECT_FILE).exists():
        project = Project.open(src)
        for it in project.items:
            if min_rating is not None and (it.rating or 0) < min_rating:
                continue
            what = f"Render {it.id} of project {project.name}"
            try:
                case, s = _read_render(project.renders_dir, it.id, what)
            except CmrError as exc:
                problems.append(exc.message)
                continue
            extra = {"rating": it.rating, "note": it.note, "source": dict(it.source), "project": str(project.folder)}
            case.case_id = it.id
            items.append(ExportItem(case, _provenance(s, it.id, case.vendor, extra), what))
        return items, problems
    if min_rating is not None and not (src / "export.json").exists():
        raise CmrError(f"--min-rating needs ratings, which a studio project keeps and {src} does not; export the project folder instead.")
    sidecars = sorted(p for p in src.glob("*.json") if (src / f"{p.stem}_image.nii.gz").exists() or (src / f"{p.stem}_mask.nii.gz").exists())
    if not sidecars:
        raise CmrError(f"{src} holds no cmrstudio renders (NAME.json beside NAME_image.nii.gz) and is not a studio project.")
    for side in sidecars:
        rid = side.stem
        what = f"Render {rid} in {src}"
        try:
            case, s = _read_render(src, rid, what)
        except CmrError as exc:
            problems.append(exc.message)
            continue
        extra = {k: v for k, v in (s.get("exported") or {}).items() if v is not None}  # a re-export keeps rating and note
        if min_rating is not None and (extra.get("rating") or 0) < min_rating:
            continue
        case.case_id = rid
        items.append(ExportItem(case, _provenance(s, rid, case.vendor, extra), what))
    return items, problems
