"""A recipe and its seed, expanded into a deterministic list of case specs grouped in shards; and the
anatomy (mask + geometry) of one spec. Torch-free.

Every case draws what it is from its own generator, ``SeedSequence([recipe seed, case index])``: which
anatomy source, vendor style and model, the render seed, the anatomy's parameters and augmentation.
So case 17 is the same case whatever the number of workers, the order shards finish in, or whether
the run was resumed. :func:`build_anatomy` turns a spec into its mask and geometry, again from the
spec alone.
"""

from __future__ import annotations

import glob
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmrstudio.errors import CmrError
from cmrstudio.generate.recipe import BOUNDS, Masks, Parametric, ProjectSource, Recipe

MASK_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".h5", ".hdf5")
PLAN_VERSION = 1


@dataclass
class Plan:
    recipe: Recipe
    base: Path  # the recipe's folder: relative paths are read from there
    cases: list[dict]
    shards: list[list[int]]  # case indices per shard
    sources: list[dict] = field(default_factory=list)  # per anatomy source: files / items it draws from
    models: dict[str, dict] = field(default_factory=dict)  # name -> {kind, sha256, card}

    @property
    def recipe_sha256(self) -> str:
        return self.recipe.sha256()

    @property
    def sha256(self) -> str:
        """What the result depends on: the recipe, the mask files (by content) and the models (by checksum)."""
        body = {"version": PLAN_VERSION, "recipe": self.recipe_sha256,
                "sources": [{k: v for k, v in s.items() if k != "paths"} for s in self.sources],
                "models": {k: v.get("sha256") for k, v in sorted(self.models.items())}}
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def shard_cases(self, k: int) -> list[dict]:
        return [self.cases[i] for i in self.shards[k]]


def case_id(index: int, n: int) -> str:
    """Neutral ids ``r0001`` ... (an export keeps them as they are)."""
    return f"r{index + 1:0{max(4, len(str(n)))}d}"


def _sample(dist, rng: np.random.Generator) -> float:
    if dist.dist == "fixed":
        return float(dist.value)
    if dist.dist == "uniform":
        return float(rng.uniform(dist.low, dist.high))
    return float(rng.normal(dist.mean, dist.sd))


def _bounded(name: str, v: float) -> float:
    lo, hi = BOUNDS[name]
    return float(min(max(v, lo), hi))


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _mask_files(src: Masks, base: Path, where: str) -> list[Path]:
    pattern = Path(src.path).expanduser()
    pattern = pattern if pattern.is_absolute() else base / pattern
    if pattern.is_dir():
        found = [p for p in pattern.rglob("*") if p.is_file() and p.name.lower().endswith(MASK_SUFFIXES)]
        if not found:
            raise CmrError(f"{where}.path {src.path!r}: the folder {pattern} holds no mask file ({', '.join(MASK_SUFFIXES)}); "
                           "give a folder or glob of label maps.")
    elif any(ch in str(pattern) for ch in "*?["):
        found = [Path(p) for p in glob.glob(str(pattern), recursive=True) if Path(p).is_file()]
        if not found:
            raise CmrError(f"{where}.path {src.path!r} matches no file (looked for {pattern}); check the pattern.")
    elif pattern.is_file():
        found = [pattern]
    else:
        raise CmrError(f"{where}.path {src.path!r}: {pattern} does not exist; give a folder, a file or a glob of label maps "
                       "(relative paths are read from the recipe's folder).")
    return sorted(found)


def _project_items(src: ProjectSource, base: Path, where: str) -> tuple[Path, list[str]]:
    from cmrstudio.project import Project

    folder = Path(src.path).expanduser()
    folder = folder if folder.is_absolute() else base / folder
    try:
        project = Project.open(folder)
    except CmrError as exc:
        raise CmrError(f"{where}.path {src.path!r}: {exc.message}") from None
    ids = sorted(it.id for it in project.items if src.min_rating is None or (it.rating or 0) >= src.min_rating)
    if not ids:
        raise CmrError(f"{where}.path {src.path!r}: the project {folder} keeps no render"
                       + (f" rated {src.min_rating} or more" if src.min_rating else "") + "; keep some renders or lower min_rating.")
    return folder.resolve(), ids


def _check_models(recipe: Recipe, where: str) -> dict[str, dict]:
    from cmrstudio.engine.factory import generator_kinds
    from cmrstudio.models.registry import get_model

    out = {}
    for i, m in enumerate(recipe.models):
        try:
            info = get_model(m.name, kind=generator_kinds())
        except CmrError as exc:
            raise CmrError(f"{where}: models[{i}].name {m.name!r}: {exc.message}") from None
        if m.steps is not None and info.kind == "spade":
            raise CmrError(f"{where}: models[{i}].steps is {m.steps}, but '{m.name}' is a one-step SPADE model; drop steps for it.")
        out[m.name] = {"kind": info.kind, "sha256": info.card.get("sha256"), "terms": info.card.get("terms")}
    return out


def make_plan(recipe: Recipe, base: str | Path, where: str = "The recipe") -> Plan:
    """The recipe expanded: every case's spec, the shards, the files each source draws from. Bad sources and
    unknown models give one sentence naming the recipe's field."""
    base = Path(base)
    sources: list[dict] = []
    for i, src in enumerate(recipe.anatomy):
        at = f"{where}: anatomy[{i}]"
        if isinstance(src, Masks):
            files = _mask_files(src, base, at)
            sources.append({"kind": "masks", "files": [_file_sha256(f) for f in files], "paths": [str(f) for f in files]})
        elif isinstance(src, ProjectSource):
            folder, ids = _project_items(src, base, at)
            sources.append({"kind": "project", "items": ids, "paths": [str(folder)]})
        else:
            sources.append({"kind": "parametric"})
    models = _check_models(recipe, where)
    weights = np.array([a.weight for a in recipe.anatomy], float)
    vendors = list(recipe.vendors)
    vweights = np.array([recipe.vendors[v] for v in vendors], float)
    mweights = np.array([m.weight for m in recipe.models], float)
    cases = []
    for index in range(recipe.cases):
        rng = np.random.default_rng(np.random.SeedSequence([recipe.seed, index]))
        k = int(rng.choice(len(weights), p=weights / weights.sum()))
        vendor = vendors[int(rng.choice(len(vendors), p=vweights / vweights.sum()))]
        model = recipe.models[int(rng.choice(len(mweights), p=mweights / mweights.sum()))]
        seed = int(rng.integers(2**31))
        src = recipe.anatomy[k]
        anatomy: dict = {"kind": src.kind, "source": k}
        if isinstance(src, Parametric):
            anatomy.update(seed=int(rng.integers(2**31)), params={
                "lv_diameter_mm": round(_bounded("lv_diameter_mm", _sample(src.lv_diameter_mm, rng)), 3),
                "wall_thickness_mm": round(_bounded("wall_thickness_mm", _sample(src.wall_thickness_mm, rng)), 3),
                "rv_scale": round(_bounded("rv_scale", _sample(src.rv_scale, rng)), 4),
                "slices": int(_bounded("slices", round(_sample(src.slices, rng)))),
                "phase": str(src.phase[int(rng.integers(len(src.phase)))]),
                "spacing_mm": src.spacing_mm, "slice_mm": src.slice_mm})
        else:
            pool = sources[k]["files"] if isinstance(src, Masks) else sources[k]["items"]
            j = int(rng.integers(len(pool)))
            if isinstance(src, Masks):
                anatomy.update(file_index=j, file_sha256=pool[j], file=sources[k]["paths"][j],
                               labels=src.labels, max_slices=src.max_slices)
            else:
                anatomy.update(item=pool[j], project=sources[k]["paths"][0])
            aug = src.augment
            anatomy["augment"] = {
                "rotate_deg": round(float(rng.uniform(-aug.rotate_deg, aug.rotate_deg)), 4) if aug.rotate_deg else 0.0,
                "scale": round(float(rng.uniform(1 - aug.scale, 1 + aug.scale)), 5) if aug.scale else 1.0,
                "elastic_mm": aug.elastic_mm, "elastic_seed": int(rng.integers(2**31)),
                "flip": bool(aug.flip and rng.random() < 0.5)}
        cases.append({"index": index, "id": case_id(index, recipe.cases), "seed": seed, "vendor": vendor,
                      "model": {"name": model.name, "steps": model.steps}, "anatomy": anatomy})
    n = recipe.shard_size
    shards = [list(range(s, min(s + n, recipe.cases))) for s in range(0, recipe.cases, n)]
    return Plan(recipe, base, cases, shards, sources, models)


def public_spec(spec: dict) -> dict:
    """A spec as a dataset may carry it: a mask file is named by its sha256, not its path."""
    out = json.loads(json.dumps(spec))
    a = out["anatomy"]
    a.pop("file", None)
    a.pop("project", None)
    return out


# -- anatomy ------------------------------------------------------------------------------------------

@dataclass
class Anatomy:
    mask: np.ndarray  # (Z, Y, X) canonical labels
    affine: np.ndarray | None
    mask_source: dict  # what the render's sidecar records of the mask's origin
    mask_origin: str  # synthetic | patient | unknown (what an export labels it)
    how: str
    detail: dict = field(default_factory=dict)  # what was done to it (for provenance)

    @property
    def spacing(self):
        if self.affine is None:
            return None
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def build_anatomy(spec: dict) -> Anatomy:
    """The mask of a case, from its spec alone."""
    from cmrstudio.generate.augment import augment

    a = spec["anatomy"]
    if a["kind"] == "parametric":
        from cmrstudio.data.phantom import phantom_case

        p = a["params"]
        c = phantom_case(seed=a["seed"], n_slices=p["slices"], spacing=p["spacing_mm"], slice_mm=p["slice_mm"], phase=p["phase"],
                         vendor="unknown", params={"lv_radius_mm": p["lv_diameter_mm"] / 2, "wall_mm": p["wall_thickness_mm"],
                                                   "rv_scale": p["rv_scale"]})
        return Anatomy(c.mask, c.affine, {"dataset": "phantom"}, "synthetic",
                       "a parametric cmrstudio phantom: no patient's segmentation", {"phantom": c.source["params"]})
    if a["kind"] == "masks":
        from cmrstudio.io import read_mask

        path = Path(a["file"])
        if not path.is_file() or _file_sha256(path) != a["file_sha256"]:
            raise CmrError(f"The mask file {path} has changed or gone since the plan was made; run generate again with a fresh --out folder.")
        c = read_mask(path, labels=a.get("labels"))
        mask = c.mask
        detail = {}
        if a.get("max_slices") and mask.shape[0] > a["max_slices"]:
            z0 = (mask.shape[0] - a["max_slices"]) // 2
            mask = mask[z0:z0 + a["max_slices"]]
            detail["slices"] = [z0, z0 + a["max_slices"]]
        dataset = c.source.get("dataset") or "masks"
        origin, how = (("synthetic", "a cmrstudio phantom's mask, augmented") if dataset == "phantom"
                       else ("patient", "an augmented copy of a segmentation read from a mask file, taken to be a patient's"))
        src = {"dataset": dataset, "case_id": c.case_id, "path": str(path), "phase": c.phase}
        m, affine = mask, c.affine
    else:
        from cmrstudio.export.source import collect, judge_mask

        folder, item = Path(a["project"]), a["item"]
        items, _ = collect(folder)
        it = next((x for x in items if x.case.case_id == item), None)
        if it is None:
            raise CmrError(f"The project {folder} no longer keeps the render {item}; run generate again with a fresh --out folder.")
        origin, how = judge_mask(it)
        how = f"from a studio project's kept render ({how})"
        src = {k: v for k, v in (it.provenance.get("source") or {}).items() if k in ("dataset", "case_id", "path", "slice", "phase")}
        m, affine, detail = it.case.mask, it.case.affine, {"item": item}
    spacing = None if affine is None else tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    m = augment(m, spacing, a["augment"])
    detail["augment"] = a["augment"]
    return Anatomy(m, affine, src, origin, how, detail)
