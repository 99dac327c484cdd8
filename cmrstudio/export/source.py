"""What an export reads: the kept renders of a studio project, or any folder of saved renders.

Each render becomes an :class:`ExportItem`: a :class:`~cmrstudio.case.Case` (image, canonical
mask, geometry) and its provenance (model and checksum, sampler, steps, seed, vendor style,
frame, the scan and slice it came from, time, the reviewer's rating and note). A render that
cannot be read is not fatal: it is named in the problems and the others go on.

The provenance held here is complete (source case ids and paths included: reader studies group slices
by patient with them); what an export may write of it is decided by :mod:`cmrstudio.export.privacy`.
:func:`judge_mask` says where a render's mask came from: the painter, or the source scan's own
segmentation (then the render is derived from that patient, whatever its image is).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmrstudio.anatomy import VENDORS
from cmrstudio.case import Case
from cmrstudio.errors import CmrError, CmrWarning
from cmrstudio.export.privacy import NEUTRAL_ID

KNOWN_LABELS = (0, 1, 2, 3)
# names an export writes beside the cases: a render may not take one of them
RESERVED_IDS = {"export", "manifest", "dataset", "dataset_description", "contact_sheet", "provenance", "README", "dseg", "participants"}
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# what an export's sidecar says that a re-export of it keeps (the reviewer's judgement and where it came from)
EXPORT_KEEPS = ("rating", "note", "source", "mask_origin", "mask_origin_how", "render_id", "project")


@dataclass
class ExportItem:
    case: Case  # case_id is the export id
    provenance: dict
    origin: str  # where it came from, for messages
    identifiers: list[tuple[str, str]] = field(default_factory=list)  # strings that name its source, to scrub


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
    if isinstance(meta, dict) and meta.get("exported_by") and meta.get("model"):  # an export's sidecar: a re-export keeps all it says
        src = {"render": {k: meta.get(k) for k in ("model", "model_sha256", "kind", "sampler", "steps", "guidance", "seed",
                                                  "seconds", "created", "mode", "margin_mm", "band_mm", "private", "dp_epsilon", "dp_delta")} | {"vendor": meta.get("vendor_style")},
               "frame": meta.get("frame"), "exported": {k: meta.get(k) for k in EXPORT_KEEPS if k in meta}}
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
        "band_mm": render.get("band_mm"),  # in this patient: repainted around an outline left as the scan's own (older renders: none)
        "id": rid,
        "render_id": rid,
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
        # whether the generator was trained with differential privacy, and its budget (None: the render did not record it)
        "private": render.get("private"),
        "dp_epsilon": render.get("dp_epsilon"),
        "dp_delta": render.get("dp_delta"),
        "created": render.get("created"),
        "frame": src.get("frame"),
        "rating": None,
        "note": "",
        "source": dict(src.get("mask_source") or {}) if isinstance(src.get("mask_source"), dict) else {},
    }
    prov.update(extra or {})
    return prov


def _listing_of(renders: Path) -> dict[str, dict]:
    """The gallery entries of the project whose ``renders/`` folder this is (read only; {} when it is none)."""
    from cmrstudio.project import PROJECT_FILE, RENDERS

    if renders.name != RENDERS or not (renders.parent / PROJECT_FILE).is_file():
        return {}
    try:
        doc = json.loads((renders.parent / PROJECT_FILE).read_text(encoding="utf-8"))
        return {d["id"]: d for d in doc.get("items", []) if isinstance(d, dict) and isinstance(d.get("id"), str)}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def _identifiers(rid: str, prov: dict, *paths) -> list[tuple[str, str]]:
    from cmrstudio.export.privacy import SOURCE_ID, id_strings, path_identifiers, source_identifiers

    out = source_identifiers(prov.get("source"))
    for p in paths:
        out += path_identifiers(p)
    if not NEUTRAL_ID.match(rid):
        out += [(s, SOURCE_ID) for s in id_strings(rid)]
    return out


def collect(source: str | Path, min_rating: int | None = None) -> tuple[list[ExportItem], list[str]]:
    """(items, problems) from a studio project folder or a folder of saved renders.

    A folder of renders keeps what is known of each render: from the project listing beside a project's
    ``renders/`` folder, or from the sidecars of an export (rating, note, source, where the mask came from).
    """
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
            prov = _provenance(s, it.id, case.vendor, extra)
            items.append(ExportItem(case, prov, what, _identifiers(it.id, prov, project.folder, src)))
        return items, problems
    listing = _listing_of(src)
    if min_rating is not None and not (src / "export.json").exists() and not listing:
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
        extra = {k: v for k, v in (s.get("exported") or {}).items() if v is not None}  # a re-export keeps what the export said
        entry = listing.get(rid)
        if entry is not None:  # a project's renders folder: the listing has the rating, note and source
            extra.update({"rating": entry.get("rating"), "note": entry.get("note") or "",
                          "source": dict(entry.get("source") or {}), "project": str(src.parent)})
        if min_rating is not None and (extra.get("rating") or 0) < min_rating:
            continue
        case.case_id = rid
        prov = _provenance(s, rid, case.vendor, extra)
        items.append(ExportItem(case, prov, what, _identifiers(rid, prov, src, *([src.parent] if entry is not None else []))))
    return items, problems


# -- where a render's mask came from ------------------------------------------------------------------

MASK_ORIGINS = ("synthetic", "patient", "unknown")
PATIENT_MASK_TOLERANCE = 0.05  # at most this share of the heart's pixels changed: still the patient's own segmentation
SAMPLE_PATH = "built-in sample"  # what the studio records as the path of its built-in (real, Sunnybrook) case


def _source_case(path: str, case_id: str | None, phase: str | None) -> Case:
    """The scan a render was painted on, read as the studio read it (its segmentation included)."""
    from cmrstudio.io import read_case, sample_case, scan

    if str(path).startswith(SAMPLE_PATH):
        return sample_case(phase or "ED")
    p = Path(path).expanduser()
    if p.is_dir():
        refs = [r for r in scan(p) if r.case_id == case_id]
        if not refs:
            raise CmrError(f"{p} no longer holds the case.")
        return refs[0].load()
    try:
        refs = scan(p.parent)
    except Exception:
        refs = []
    want = p.resolve()
    for r in refs:  # a file of a known layout: the studio took its mask from the layout
        if any(f is not None and Path(f).resolve() == want for f in (r.image, r.mask)) and (case_id is None or r.case_id == case_id):
            return r.load()
    return read_case(p)


def judge_mask(item: ExportItem, cache: dict | None = None) -> tuple[str, str]:
    """(origin, how) of a render's mask: ``patient`` (its source scan's own segmentation, unchanged or within
    :data:`PATIENT_MASK_TOLERANCE` of the heart's pixels), ``synthetic`` (painted, or from a phantom: no patient's
    segmentation) or ``unknown`` (the source is not recorded or cannot be read now). ``how`` is one sentence that
    names no source (it goes into the export)."""
    prov = item.provenance
    if prov.get("mask_origin") in MASK_ORIGINS:  # an export's sidecar said it (a re-export)
        return prov["mask_origin"], prov.get("mask_origin_how") or "as the export it was taken from said"
    src = prov.get("source") if isinstance(prov.get("source"), dict) else {}
    if src.get("dataset") == "phantom":
        return "synthetic", "its source is a cmrstudio phantom: no patient's segmentation"
    path, cid, z = src.get("path"), src.get("case_id", src.get("case")), src.get("slice")
    if not path:
        return "unknown", "the render does not record the scan its mask came from, so it cannot be compared with that scan's segmentation"
    key = (str(path), cid, src.get("phase"))
    cache = {} if cache is None else cache
    if key not in cache:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[key] = _source_case(str(path), cid, src.get("phase"))
        except Exception:
            cache[key] = None
    scan = cache[key]
    if scan is None or (cid is not None and scan.case_id != cid):
        return "unknown", "its source scan cannot be read now, so the mask cannot be compared with that scan's segmentation"
    if scan.mask is None:
        return "synthetic", "its source scan has no segmentation: the mask was painted"
    kept = np.asarray(item.case.mask)
    if z is None:
        ref = scan.mask if scan.mask.shape == kept.shape else None
    else:
        try:
            z = int(z)
        except (TypeError, ValueError):
            z = -1
        ref = scan.mask[z][None] if 0 <= z < scan.shape[0] and scan.mask.shape[1:] == kept.shape[1:] and kept.shape[0] == 1 else None
    if ref is None:
        return "unknown", "its source scan's grid does not match the render's, so the mask cannot be compared with its segmentation"
    heart = int(np.count_nonzero((kept > 0) | (ref > 0)))
    diff = int(np.count_nonzero(kept != ref))
    if heart == 0:
        return "synthetic", "neither the mask nor the source scan's segmentation of that slice holds a heart"
    if diff == 0:
        return "patient", "it is the source scan's own segmentation of that slice, unchanged"
    share = diff / heart
    if share <= PATIENT_MASK_TOLERANCE:
        return "patient", (f"it is the source scan's own segmentation of that slice with {diff} pixel{'s' if diff != 1 else ''} "
                           f"changed ({share:.1%} of the heart)")
    return "synthetic", f"painted: it differs from the source scan's segmentation of that slice in {share:.0%} of the heart's pixels"


def set_origin(prov: dict, mask_origin: str, how: str) -> dict:
    """The labels that follow from the image's mode and the mask's origin: derived from a patient when the image was
    rendered in a patient's scan or the mask is the patient's segmentation; fully synthetic (anonymous) only when
    neither is and the mask's origin is known."""
    in_patient = (prov.get("mode") or "synthetic") != "synthetic"
    derived = True if in_patient or mask_origin == "patient" else None if mask_origin == "unknown" else False
    prov.update(image_origin="in-patient" if in_patient else "synthetic", mask_origin=mask_origin, mask_origin_how=how,
                derived_from_patient=derived, synthetic=derived is False)
    return prov


def source_identifiers(source: str | Path) -> list[tuple[str, str]]:
    """Strings that name the sources of every render in ``source`` (skipped ones too): for scrubbing what an export says."""
    from cmrstudio.export.privacy import SOURCE_ID, id_strings, path_identifiers
    from cmrstudio.export.privacy import source_identifiers as ids_of
    from cmrstudio.project import PROJECT_FILE

    src = Path(source).expanduser()
    out = path_identifiers(src)
    listing = {}
    if (src / PROJECT_FILE).is_file():
        listing = _listing_of(src / "renders")
    elif src.is_dir():
        listing = _listing_of(src)
        if listing:
            out += path_identifiers(src.parent)
        for side in src.glob("*.json"):
            if not NEUTRAL_ID.match(side.stem):
                out += [(s, SOURCE_ID) for s in id_strings(side.stem)]
    for entry in listing.values():
        out += ids_of(entry.get("source"))
    return out
