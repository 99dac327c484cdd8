"""The recipe of a synthetic dataset: a YAML or JSON file, validated with pydantic.

::

    cases: 200                      # how many cases (volumes)
    seed: 7                         # the whole dataset follows from it
    shard_size: 8                   # cases per shard (the unit of resume and of work on a cluster)
    anatomy:                        # where the masks come from, each with a weight
      - kind: parametric            # the procedural phantom (cmrstudio.data.phantom)
        weight: 3
        lv_diameter_mm: {dist: normal, mean: 50, sd: 6}
        wall_thickness_mm: {dist: uniform, low: 6, high: 12}
        rv_scale: 1.0               # a bare number is a fixed value
        slices: {dist: uniform, low: 6, high: 10}
        phase: [ED, ES]
      - kind: masks                 # real label maps (a folder or a glob, relative to the recipe)
        path: masks/*.nii.gz
        labels: canonical           # or mnms / acdc (guessed from file names when omitted)
        augment: {rotate_deg: 10, scale: 0.08, elastic_mm: 2}
      - kind: project               # the kept renders of a studio project
        path: ~/cmrstudio/projects/dilated
        min_rating: 3
    vendors: {siemens: 1, philips: 1, ge: 1, canon: 1}     # or a list (equal weights)
    models:
      - {name: spade-cmr, weight: 4}                       # live (one step)
      - {name: flow-cmr-fine-2step, weight: 1}             # HQ (its own 2 steps)
    output: {format: nnunet, name: SyntheticCMR, dataset_id: 601}

A bad recipe raises :class:`~cmrstudio.errors.CmrError` with one sentence naming the field and value.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cmrstudio.anatomy import VENDORS
from cmrstudio.errors import CmrError

FORMATS = ("nnunet", "nifti", "bids", "dicom")
# plausible ranges: a sample outside is clipped to them (and the clipped value recorded)
BOUNDS = {"lv_diameter_mm": (20.0, 90.0), "wall_thickness_mm": (2.0, 25.0), "rv_scale": (0.1, 2.5), "slices": (1, 30)}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Normal(_Strict):
    dist: Literal["normal"]
    mean: float
    sd: float = Field(ge=0)


class Uniform(_Strict):
    dist: Literal["uniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _order(self):
        if self.high < self.low:
            raise ValueError(f"high {self.high:g} is below low {self.low:g}")
        return self


class Fixed(_Strict):
    dist: Literal["fixed"]
    value: float


Dist = Annotated[Union[Normal, Uniform, Fixed], Field(discriminator="dist")]


def _bare_number(v: Any) -> Any:
    """``lv_diameter_mm: 50`` means a fixed value."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return {"dist": "fixed", "value": v}
    return v


class Parametric(_Strict):
    kind: Literal["parametric"]
    weight: float = Field(1.0, gt=0)
    lv_diameter_mm: Dist = Normal(dist="normal", mean=52.0, sd=6.0)
    wall_thickness_mm: Dist = Uniform(dist="uniform", low=6.0, high=12.0)
    rv_scale: Dist = Uniform(dist="uniform", low=0.7, high=1.3)
    slices: Dist = Uniform(dist="uniform", low=6, high=10)
    phase: list[Literal["ED", "ES"]] = Field(default_factory=lambda: ["ED"], min_length=1)
    spacing_mm: float = Field(1.5, gt=0.5, le=3.0)  # in-plane pixel size of the phantom grid
    slice_mm: float = Field(8.0, ge=2.0, le=20.0)

    _bare = field_validator("lv_diameter_mm", "wall_thickness_mm", "rv_scale", "slices", mode="before")(_bare_number)

    @field_validator("phase", mode="before")
    @classmethod
    def _one_phase(cls, v):
        return [v] if isinstance(v, str) else v


class Augment(_Strict):
    rotate_deg: float = Field(0.0, ge=0, le=180)  # uniform in ±rotate_deg
    scale: float = Field(0.0, ge=0, lt=0.5)  # uniform in 1 ± scale
    elastic_mm: float = Field(0.0, ge=0, le=10)  # smooth displacement field, this many mm at most (about)
    flip: bool = False  # left-right mirror half of the time (changes the RV side: off by default)


class Masks(_Strict):
    kind: Literal["masks"]
    path: str = Field(min_length=1)
    weight: float = Field(1.0, gt=0)
    labels: Literal["canonical", "mnms", "acdc"] | None = None
    augment: Augment = Augment()
    max_slices: int | None = Field(None, ge=1)  # the central slices only


class ProjectSource(_Strict):
    kind: Literal["project"]
    path: str = Field(min_length=1)
    weight: float = Field(1.0, gt=0)
    min_rating: int | None = Field(None, ge=1, le=5)
    augment: Augment = Augment()


Anatomy = Annotated[Union[Parametric, Masks, ProjectSource], Field(discriminator="kind")]


class ModelChoice(_Strict):
    name: str = Field(min_length=1)
    steps: int | None = Field(None, ge=1, le=1000)
    weight: float = Field(1.0, gt=0)


class Output(_Strict):
    format: Literal["nnunet", "nifti", "bids", "dicom"] = "nnunet"
    name: str = Field("SyntheticCMR", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    dataset_id: int = Field(601, ge=1, le=999)


class Recipe(_Strict):
    cases: int = Field(ge=1, le=1_000_000)
    seed: int = Field(0, ge=0, lt=2**63)
    shard_size: int = Field(8, ge=1, le=10_000)
    anatomy: list[Anatomy] = Field(default_factory=lambda: [Parametric(kind="parametric")], min_length=1)
    vendors: dict[str, float] = Field(default_factory=lambda: {"unknown": 1.0})
    models: list[ModelChoice] = Field(default_factory=lambda: [ModelChoice(name="spade-cmr")], min_length=1)
    output: Output = Output()

    @field_validator("anatomy", mode="before")
    @classmethod
    def _one_anatomy(cls, v):
        return [v] if isinstance(v, dict) else v

    @field_validator("models", mode="before")
    @classmethod
    def _model_names(cls, v):
        v = [v] if isinstance(v, (str, dict)) else v
        return [{"name": m} if isinstance(m, str) else m for m in v] if isinstance(v, list) else v

    @field_validator("vendors", mode="before")
    @classmethod
    def _vendor_list(cls, v):
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            return {str(x).lower(): 1.0 for x in v}
        return v

    @field_validator("vendors")
    @classmethod
    def _known_vendors(cls, v: dict[str, float]):
        if not v:
            raise ValueError("give at least one vendor")
        for name, w in v.items():
            if name not in VENDORS:
                raise ValueError(f"vendor {name!r} is not one of {', '.join(VENDORS)}")
            if not w > 0:
                raise ValueError(f"the weight of vendor {name!r} must be above 0")
        return v

    def canonical(self) -> dict:
        """The recipe with every default filled in: what the hash covers."""
        return self.model_dump(mode="json")

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.canonical(), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("normal", "uniform", "fixed", "parametric", "masks", "project", "function-after[_order()]"):
            continue  # the union branch pydantic tried, not a field
        elif str(part).startswith(("function-", "tagged-union")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _sentence(err: ValidationError, where: str) -> str:
    e = err.errors()[0]
    field = _loc(e.get("loc", ()))
    kind = e.get("type", "")
    value = e.get("input")
    msg = e.get("msg", "is not valid")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind == "extra_forbidden":
        return f"{where}: the field '{field}' is not known; check its spelling (see resources/recipes/example.yaml)."
    if kind == "missing":
        return f"{where}: the field '{field}' is missing; add it (see resources/recipes/example.yaml)."
    if kind == "union_tag_invalid":
        ctx = e.get("ctx") or {}
        key = str(ctx.get("discriminator", "")).strip("'")
        return f"{where}: '{field}.{key}' is {ctx.get('tag')!r}, which is not known; use one of {ctx.get('expected_tags')}."
    if kind == "union_tag_not_found":
        ctx = e.get("ctx") or {}
        return f"{where}: '{field}' needs '{ctx.get('discriminator', 'kind').strip(chr(39))}' (one of its kinds); add it."
    shown = json.dumps(value, default=str)
    if len(shown) > 60:
        shown = shown[:57] + "…"
    return f"{where}: '{field}' = {shown} is not valid ({msg[0].lower() + msg[1:]}); fix it."


def parse_recipe(data: Any, where: str = "The recipe") -> Recipe:
    if not isinstance(data, dict):
        raise CmrError(f"{where} holds {type(data).__name__}, not a mapping of fields (cases, anatomy, vendors, models, ...).")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise CmrError(_sentence(exc, where)) from None


def load_recipe(path: str | Path) -> tuple[Recipe, Path]:
    """(recipe, the folder its relative paths are read from) from a YAML or JSON file."""
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise CmrError(f"The recipe {p} does not exist or is not a file; give a YAML or JSON recipe (see resources/recipes/example.yaml).")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CmrError(f"The recipe {p} cannot be read ({exc}).") from None
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else f" at line {exc.lineno}" if hasattr(exc, "lineno") else ""
        raise CmrError(f"The recipe {p} is not valid {'JSON' if p.suffix.lower() == '.json' else 'YAML'}{at}; fix its syntax.") from None
    return parse_recipe(data, f"The recipe {p}"), p.parent.resolve()
