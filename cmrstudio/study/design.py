"""Reader-study design: which slices, balanced real and synthetic, in what order for whom.

A study is a folder:

- ``study.json``: the design (items with their truth and where they came from, 2AFC pairs,
  the question set, the seed) — for the coordinator; readers never see it;
- ``images.npz``: every item's slice, already cropped to the same heart-centred field of view
  (128×128 at 1.25 mm) and normalised the same way for both kinds (0.5–99.5 percentiles of the
  slice), so nothing but the anatomy and texture tells them apart; its sha256 is in study.json;
- ``answers.sqlite``: the answers (:mod:`cmrstudio.study.store`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cmrstudio.case import patient_of
from cmrstudio.errors import CmrError
from cmrstudio.io.common import atomic_path, write_text_atomic

STUDY_FILE = "study.json"
IMAGES_FILE = "images.npz"
SIZE = 128
SPACING_MM = 1.25
MODES = ("single", "2afc", "both")
KINDS = ("real", "synthetic")


@dataclass
class Item:
    id: str
    kind: str  # real | synthetic
    vendor: str
    phase: str | None
    source: dict  # where it came from (coordinator only)


@dataclass
class Pair:
    id: str
    left: str
    right: str
    real_side: str  # left | right


@dataclass
class Study:
    folder: Path
    name: str
    seed: int
    mode: str
    items: list[Item]
    pairs: list[Pair]
    questions: dict
    created: str
    images: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    sha256: str = ""
    selection: dict = field(default_factory=dict)

    def item(self, iid: str) -> Item:
        for it in self.items:
            if it.id == iid:
                return it
        raise CmrError(f"The study {self.folder} has no item {iid!r}.")

    def tasks(self) -> list[tuple[str, str]]:
        """Every (mode, item-or-pair id) a reader answers."""
        t: list[tuple[str, str]] = []
        if self.mode in ("single", "both"):
            t += [("single", it.id) for it in self.items]
        if self.mode in ("2afc", "both"):
            t += [("2afc", p.id) for p in self.pairs]
        return t

    def order(self, reader: str) -> list[tuple[str, str]]:
        """This reader's order: a permutation from the study's seed and the reader's name (stable across sessions).
        Single-image questions come first, then the pairs."""
        h = int.from_bytes(hashlib.sha256(reader.strip().encode("utf-8")).digest()[:8], "little")
        rng = np.random.default_rng([self.seed, h])
        out = []
        for mode in ("single", "2afc"):
            block = [t for t in self.tasks() if t[0] == mode]
            out += [block[i] for i in rng.permutation(len(block))]
        return out

    def truth(self, mode: str, key: str) -> str:
        if mode == "single":
            return self.item(key).kind
        for p in self.pairs:
            if p.id == key:
                return p.real_side
        raise CmrError(f"The study {self.folder} has no pair {key!r}.")

    def pair(self, pid: str) -> Pair:
        for p in self.pairs:
            if p.id == pid:
                return p
        raise CmrError(f"The study {self.folder} has no pair {pid!r}.")


def design_sha256(doc: dict) -> str:
    """A fingerprint of what a study asks (items and their truth, pairs, seed, mode): a hand edit changes it."""
    core = {"seed": doc["seed"], "mode": doc["mode"], "items": [[d["id"], d["kind"]] for d in doc["items"]],
            "pairs": [[d["id"], d["left"], d["right"], d["real_side"]] for d in doc.get("pairs", [])]}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode("utf-8")).hexdigest()


def _norm(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, (0.5, 99.5))
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def _heart(mask2d: np.ndarray) -> bool:
    return int((mask2d > 0).sum()) >= 20


def _resize(img: np.ndarray) -> np.ndarray:
    if img.shape == (SIZE, SIZE):
        return img
    from scipy import ndimage

    return ndimage.zoom(img, (SIZE / img.shape[0], SIZE / img.shape[1]), order=1)[:SIZE, :SIZE]


def _synthetic(case) -> bool:
    """A case that says it is synthetic (a cmrstudio render or export) never counts as real."""
    src = case.source or {}
    origin = src.get("origin") if isinstance(src.get("origin"), dict) else {}
    if src.get("synthetic") or origin.get("synthetic"):
        return True
    side = Path(str(src.get("image") or "")).with_name(f"{case.case_id}.json")
    try:
        return bool(json.loads(side.read_text(encoding="utf-8")).get("synthetic")) if side.is_file() else False
    except (OSError, ValueError, AttributeError):
        return False


def real_candidates(paths: list[str | Path]) -> list[tuple[dict, np.ndarray]]:
    """Heart slices of real scans (cases with an image and a mask), cropped and normalised."""
    from cmrstudio.case import Case
    from cmrstudio.data.frame import from_frame, make_frame, to_frame
    from cmrstudio.io import read_cases

    out = []
    for p in paths:
        for c in read_cases(p):
            if c.image is None or c.mask is None or _synthetic(c):
                continue
            frame = make_frame(c, size=SIZE, spacing_mm=SPACING_MM)
            fc = to_frame(c, frame)
            # the same path a kept render took (frame-resolution image -> scan grid -> frame), so both kinds
            # are resampled alike and smoothness cannot tell them apart
            native = from_frame(fc.image, frame, kind="image")
            again = to_frame(Case(native, c.mask, c.affine, vendor=c.vendor, case_id=c.case_id), frame).image
            for z in range(c.shape[0]):
                if _heart(fc.mask[z]):
                    out.append(({"kind": "real", "vendor": c.vendor, "phase": c.phase, "patient": patient_of(c.case_id),
                                 "source": {"path": str(p), "case": c.case_id, "slice": z}}, _norm(again[z])))
    return out


def synthetic_candidates(paths: list[str | Path]) -> list[tuple[dict, np.ndarray]]:
    """Synthetic slices from studio projects, folders of renders or exports, cropped to their own synthesis frame."""
    from cmrstudio.data.frame import Frame, frame_mask, to_frame
    from cmrstudio.export.source import collect

    out = []
    for p in paths:
        items, _problems = collect(p)
        for it in items:
            fr = it.provenance.get("frame")
            c = it.case
            frame = Frame.from_dict(fr) if isinstance(fr, dict) else None
            fc = to_frame(c, frame) if frame is not None else to_frame(c, size=SIZE, spacing_mm=SPACING_MM)
            for z in range(c.shape[0]):
                m = frame_mask(c.mask[z], fc.frame)
                if _heart(m):
                    src_case = str((it.provenance.get("source") or {}).get("case_id") or "")
                    out.append(({"kind": "synthetic", "vendor": it.provenance.get("vendor_style") or c.vendor,
                                 "phase": (it.provenance.get("source") or {}).get("phase"),
                                 "patient": patient_of(src_case) if src_case else None,
                                 "source": {"path": str(p), "render": it.case.case_id, "slice": z, "model": it.provenance.get("model"),
                                            "mask_from": src_case or None}},
                                _norm(_resize(fc.image[z]))))
    return out


def _balanced(real: list, syn: list, n: int | None, rng: np.random.Generator, fill: bool = False) -> list[tuple]:
    """Matched (real, synthetic) picks, stratum by stratum (vendor, phase) where both kinds exist; with ``fill``,
    then pairs across strata (which lets vendor or phase hint at the answer: off by default)."""
    n_max = min(len(real), len(syn))
    n = n_max if n is None else min(int(n), n_max)
    key = lambda c: (c[0]["vendor"], c[0]["phase"] or "")  # noqa: E731
    pools_r: dict = {}
    pools_s: dict = {}
    for c in (real[i] for i in rng.permutation(len(real))):
        pools_r.setdefault(key(c), []).append(c)
    for c in (syn[i] for i in rng.permutation(len(syn))):
        pools_s.setdefault(key(c), []).append(c)
    picks: list[tuple] = []
    common = sorted(set(pools_r) & set(pools_s))
    while len(picks) < n and any(pools_r[k] and pools_s[k] for k in common):
        for k in common:
            if len(picks) < n and pools_r[k] and pools_s[k]:
                picks.append((pools_r[k].pop(), pools_s[k].pop()))
    rest_r = [c for v in pools_r.values() for c in v]
    rest_s = [c for v in pools_s.values() for c in v]
    while fill and len(picks) < n and rest_r and rest_s:
        picks.append((rest_r.pop(), rest_s.pop()))
    return picks


def create_study(real: list[str | Path], synthetic: list[str | Path], out: str | Path, n: int | None = None, seed: int = 0,
                 mode: str = "both", free_text: bool = False, name: str | None = None, fill: bool = False) -> Study:
    """Design a study: ``n`` real and ``n`` synthetic heart slices (all that matched strata allow by default).

    Real slices of a patient whose mask made one of the synthetic slices are left out, so no patient
    appears as both kinds. ``fill`` also pairs slices across vendor/phase strata.
    """
    if int(seed) < 0:
        raise CmrError(f"--seed {seed} must be 0 or more.")
    if mode not in MODES:
        raise CmrError(f"--mode {mode!r} is not known; use one of {', '.join(MODES)}.")
    if n is not None and n < 1:
        raise CmrError(f"--n {n} must be at least 1 (slices of each kind).")
    out = Path(out).expanduser()
    if (out / STUDY_FILE).exists():
        raise CmrError(f"{out} already holds a study; choose a new folder (a study's design never changes once readers start).")
    if not real or not synthetic:
        raise CmrError("A study needs real and synthetic cases: give --real and --synthetic folders.")
    r, s = real_candidates(real), synthetic_candidates(synthetic)
    syn_patients = {c[0]["patient"] for c in s if c[0].get("patient")}
    excluded = sum(c[0]["patient"] in syn_patients for c in r)
    r = [c for c in r if c[0]["patient"] not in syn_patients]
    if not r and excluded:
        raise CmrError(f"Every real slice comes from a patient whose mask made a synthetic slice ({excluded} slices); "
                       "give real scans of other patients.")
    if not r:
        raise CmrError(f"No real heart slice (an image with an LV/MYO/RV mask) was found in {', '.join(map(str, real))}.")
    if not s:
        raise CmrError(f"No synthetic heart slice was found in {', '.join(map(str, synthetic))}; give a studio project, renders or an export.")
    rng = np.random.default_rng(seed)
    picks = _balanced(r, s, n, rng, fill=fill)
    if not picks:
        raise CmrError("No vendor/phase stratum has both real and synthetic slices; add matching cases or pass --fill "
                       "(then vendor or phase may hint at the answer).")
    sides = rng.permutation([True] * ((len(picks) + 1) // 2) + [False] * (len(picks) // 2))  # the real image left in half the pairs
    items: list[Item] = []
    images: dict[str, np.ndarray] = {}
    pairs: list[Pair] = []
    order = rng.permutation(2 * len(picks))  # ids do not reveal the kind
    ids = [f"i{k + 1:04d}" for k in range(2 * len(picks))]
    for j, (cr, cs) in enumerate(picks):
        ir, is_ = ids[order[2 * j]], ids[order[2 * j + 1]]
        for iid, (meta, img) in ((ir, cr), (is_, cs)):
            items.append(Item(iid, meta["kind"], meta["vendor"], meta["phase"], meta["source"]))
            images[iid] = img
        real_left = bool(sides[j])
        pairs.append(Pair(f"p{j + 1:04d}", ir if real_left else is_, is_ if real_left else ir, "left" if real_left else "right"))
    items.sort(key=lambda it: it.id)
    questions = {"single": "Is this image real or synthetic?", "2afc": "Which of the two images is real?",
                 "confidence": "How sure are you? 1 (guessing) to 5 (certain)", "free_text": bool(free_text)}
    study = Study(out, name or out.name, int(seed), mode, items, pairs if mode != "single" else [], questions,
                  datetime.now(timezone.utc).isoformat(timespec="seconds"), images)
    save_study(study, {"excluded_real_slices_same_patient": excluded, "fill_across_strata": bool(fill)})
    return load_study(out)


def save_study(study: Study, notes: dict | None = None) -> None:
    out = study.folder
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / IMAGES_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{k: v.astype(np.float32) for k, v in study.images.items()})
    digest = hashlib.sha256((out / IMAGES_FILE).read_bytes()).hexdigest()
    doc = {"format": "cmrstudio-study", "version": 1, "name": study.name, "created": study.created, "seed": study.seed,
           "mode": study.mode, "questions": study.questions, "frame": {"size": SIZE, "spacing_mm": SPACING_MM},
           "images": IMAGES_FILE, "images_sha256": digest,
           "items": [{"id": it.id, "kind": it.kind, "vendor": it.vendor, "phase": it.phase, "source": it.source} for it in study.items],
           "pairs": [{"id": p.id, "left": p.left, "right": p.right, "real_side": p.real_side} for p in study.pairs],
           "selection": notes or {}}
    doc["design_sha256"] = design_sha256(doc)
    write_text_atomic(out / STUDY_FILE, json.dumps(doc, indent=2) + "\n")


def load_study(folder: str | Path) -> Study:
    """Read a study and check that it is consistent; a hand-edited, inconsistent file gets one sentence."""
    folder = Path(folder).expanduser()
    path = folder / STUDY_FILE
    fix = "recreate it with `cmrstudio study create` (answers already given stay in answers.sqlite)"

    def bad(what: str):
        return CmrError(f"{path} is inconsistent: {what}; {fix}.")

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CmrError(f"{folder} is not a study (no {STUDY_FILE}); create one with `cmrstudio study create`.") from None
    except (OSError, ValueError) as exc:
        raise CmrError(f"{path} cannot be read ({exc}); {fix}.") from None
    if not isinstance(doc, dict) or doc.get("format") != "cmrstudio-study":
        raise CmrError(f"{path} is not a cmrstudio study file; {fix}.")
    try:
        items = [Item(d["id"], d["kind"], d.get("vendor", "unknown"), d.get("phase"), d.get("source", {})) for d in doc["items"]]
        pairs = [Pair(d["id"], d["left"], d["right"], d["real_side"]) for d in doc.get("pairs", [])]
        mode, seed = doc["mode"], int(doc["seed"])
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(f"a field is missing or malformed ({exc})") from None
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise bad("two items share an id")
    if len({p.id for p in pairs}) != len(pairs):
        raise bad("two pairs share an id")
    try:
        fingerprint = design_sha256(doc)
    except (KeyError, TypeError):
        raise bad("a field is missing or malformed") from None
    if fingerprint != doc.get("design_sha256"):
        raise bad("its items, truths, pairs, seed or mode were changed after it was created (the design fingerprint differs)")
    if mode not in MODES:
        raise bad(f"mode {mode!r} is not one of {', '.join(MODES)}")
    kinds = {it.id: it.kind for it in items}
    for it in items:
        if it.kind not in KINDS:
            raise bad(f"item {it.id} has kind {it.kind!r}, not real or synthetic")
    if sum(k == "real" for k in kinds.values()) != sum(k == "synthetic" for k in kinds.values()):
        raise bad("real and synthetic items are no longer balanced")
    for p in pairs:
        if p.left not in kinds or p.right not in kinds:
            raise bad(f"pair {p.id} names an item that does not exist")
        if p.real_side not in ("left", "right") or kinds[p.left if p.real_side == "left" else p.right] != "real" \
                or {kinds[p.left], kinds[p.right]} != {"real", "synthetic"}:
            raise bad(f"pair {p.id} does not hold one real and one synthetic image on the sides it says")
    if mode in ("2afc", "both") and not pairs:
        raise bad(f"mode {mode} asks for pairs but there are none")
    img_path = folder / doc.get("images", IMAGES_FILE)
    try:
        raw = img_path.read_bytes()
    except OSError:
        raise bad(f"its images file {img_path.name} is missing") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != doc.get("images_sha256"):
        raise bad(f"{img_path.name} is not the file the study was created with (sha256 differs)")
    import io

    with np.load(io.BytesIO(raw)) as z:
        images = {k: z[k] for k in z.files}
    missing = [i for i in ids if i not in images]
    if missing:
        raise bad(f"item {missing[0]} has no image")
    return Study(folder, doc.get("name", folder.name), seed, mode, items, pairs, doc.get("questions", {}), doc.get("created", ""),
                 images, hashlib.sha256((digest + fingerprint).encode("ascii")).hexdigest(), dict(doc.get("selection") or {}))
