"""The record of a render: how it was made, what it is derived from. Torch-free.

:class:`RenderRecord` is the one description of a render that every path writes: the live
engine, the HQ queue, ``cmrstudio render`` and the server. :func:`make_record` builds it from a
renderer (anything with ``info``, ``name``, ``kind`` and ``describe()``) and the render's options.
:class:`Render` is a finished render — the image in the scan's own grid and in the frame, the mask,
the frame and its record — which :mod:`cmrstudio.io` saves as a case (NIfTI image + mask + JSON
sidecar) and reads back. Projects and exports read these files through :class:`Render` and never
import the engine.

Modes: ``synthetic`` (no real pixel: the content is the model's, the mask is the painter's) and
``in-patient`` (the heart painted into a patient's own slice: everything outside the repainted
region is that patient's scan, so the render is *derived from a patient* and never anonymous).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cmrstudio.anatomy import VENDORS
from cmrstudio.data.frame import Frame
from cmrstudio.errors import CmrError

MODES = ("synthetic", "in-patient")
RECORD_VERSION = 2


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class RenderRecord:
    """How one render was made (JSON-able; the sidecar's ``source.render``)."""

    model: str
    kind: str
    seed: int
    vendor: str
    model_sha256: str | None = None
    sampler: str | None = None  # "one-step" (SPADE and other single-pass generators), "ddim", "euler", "heun"; with a card's
    # time-grid shift other than 1, "<solver>, time shift <s>"
    steps: int | None = None
    guidance: float | None = None
    mode: str = "synthetic"
    margin_mm: float | None = None  # in-patient: how far around what the painting changed was repainted
    band_mm: float | None = None  # in-patient: how far around the rest of the heart (an outline left as the scan's own labels
    # had it: UNCHANGED_MARGIN_MM or the margin when smaller; the margin when the scan had no labels to compare with)
    seconds: float | None = None
    private: bool | None = None  # the generator was trained with differential privacy (None: not recorded, older renders)
    dp_epsilon: float | None = None  # its privacy budget (private generators)
    dp_delta: float | None = None
    layout_prior: str | None = None  # scene models, fully synthetic: the layout model the tissue classes came from (a layout bank
    # puts a real scan's body layout, classes on 2.5 mm cells, under the painted heart)
    created: str = field(default_factory=now_iso)
    version: int = RECORD_VERSION

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise CmrError(f"Render mode {self.mode!r} is not known; it is one of {', '.join(MODES)}.")
        if self.vendor not in VENDORS:
            raise CmrError(f"Vendor {self.vendor!r} is not one of {', '.join(VENDORS)}.")

    @property
    def derived_from_patient(self) -> bool:
        """True when real patient pixels are part of the image (never anonymous)."""
        return self.mode == "in-patient"

    @property
    def synthetic(self) -> bool:
        return self.mode == "synthetic"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["derived_from_patient"] = self.derived_from_patient
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "The render record") -> "RenderRecord":
        """Read a record (also the older ``params`` dictionaries without a mode: those were all fully synthetic)."""
        if not isinstance(d, dict):
            raise CmrError(f"{where} is {type(d).__name__}, not an object.")
        try:
            def opt(key, conv):
                v = d.get(key)
                return None if v is None else conv(v)

            guidance = opt("guidance", float)
            if guidance is not None and not math.isfinite(guidance):
                raise ValueError(f"guidance {guidance}")
            return cls(model=str(d["model"]), kind=str(d["kind"]), seed=int(d["seed"]), vendor=str(d.get("vendor") or "unknown"),
                       model_sha256=opt("model_sha256", str), sampler=opt("sampler", str), steps=opt("steps", int), guidance=guidance,
                       mode=str(d.get("mode") or "synthetic"), margin_mm=opt("margin_mm", float), band_mm=opt("band_mm", float),
                       seconds=opt("seconds", float),
                       private=opt("private", bool), dp_epsilon=opt("dp_epsilon", float), dp_delta=opt("dp_delta", float),
                       layout_prior=opt("layout_prior", str), created=str(d.get("created") or ""), version=int(d.get("version") or 1))
        except KeyError as exc:
            raise CmrError(f"{where} lacks {exc.args[0]!r}; it was not written by cmrstudio or is damaged.") from None
        except (TypeError, ValueError) as exc:
            raise CmrError(f"{where} is malformed ({exc}); it was not written by cmrstudio or is damaged.") from None

    # the older dictionary view (``params``), kept for code and files that read it
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)


def sampler_name(solver: str, time_shift: float = 1.0, shifts: int = 1, spectrum: bool = False, held: bool = False) -> str:
    """How a render's sampler is named in its record: the solver, the time grid's shift when it is not uniform, the
    patch-grid offsets each step is averaged over when more than one (``held``: with a scene's tissue classes held
    still, midway between the offsets), and the card's spectrum gain when applied."""
    name = solver if time_shift == 1.0 else f"{solver}, time shift {time_shift:g}"
    name = name if shifts == 1 else f"{name}, averaged over {shifts} shifts{' with the tissue classes held midway' if held else ''}"
    return f"{name}, spectrum matched" if spectrum else name


def sampler_of(r) -> str:
    """:func:`sampler_name` of a step-wise renderer as it renders (a plugin's may have no time grid, shifts or gain)."""
    return sampler_name(r.solver, getattr(r, "time_shift", 1.0), getattr(r, "shifts", 1), getattr(r, "spectrum", None) is not None,
                        getattr(r, "tissue_held", False))


def make_record(renderer, seed: int, vendor: str, context=None, steps: int | None = None, guidance: float | None = None,
                sampler: str | None = None, seconds: float | None = None) -> RenderRecord:
    """The record of a render by ``renderer`` (any generator front): the one function every path calls.

    ``context`` is the :class:`~cmrstudio.engine.scene.SliceContext` the render used (None: fully
    synthetic); the sampler, steps and guidance default to the renderer's own.
    """
    from cmrstudio.settings import band_mm

    d = renderer.describe()
    stepwise = "steps" in d  # diffusion and flow describe their sampling; a one-step generator does not
    mode = getattr(context, "mode", "synthetic") if context is not None else "synthetic"
    dp = (renderer.info.card.get("training") or {}).get("differential_privacy") or {}
    layout = renderer.layout_prior_name() if mode == "synthetic" and getattr(renderer, "scene", False) else None
    return RenderRecord(
        model=renderer.name, kind=renderer.kind, seed=int(seed), vendor=vendor, model_sha256=renderer.info.card.get("sha256"),
        sampler=sampler_name(sampler or d.get("solver"), d.get("time_shift", 1.0), d.get("shifts", 1), d.get("spectrum_gain", False),
                             d.get("tissue_held", False)) if stepwise else (sampler or "one-step"),
        steps=int(steps if steps is not None else d.get("steps", 1)),
        guidance=(guidance if guidance is not None else d.get("guidance")) if stepwise else None,
        mode=mode, margin_mm=float(context.margin_mm) if mode == "in-patient" else None,
        band_mm=band_mm(context.margin_mm, context.heart is not None) if mode == "in-patient" else None,
        seconds=None if seconds is None else round(float(seconds), 3),
        private=bool(dp), dp_epsilon=dp.get("epsilon"), dp_delta=dp.get("delta"), layout_prior=layout,
    )


@dataclass
class Render:
    """A finished render: the image in the scan's grid (and in the frame), its mask, frame and record."""

    image: np.ndarray  # native 2D slice, float32 (scan units when the frame has an intensity range, else [0, 1])
    framed: np.ndarray | None  # (N, N) float32 [0, 1]; None when read back (the native image is the record)
    mask: np.ndarray  # native 2D mask slice (canonical labels)
    frame: Frame
    record: RenderRecord

    @property
    def params(self) -> RenderRecord:
        """The record under its older name."""
        return self.record

    def to_case(self, case_id: str, affine: np.ndarray | None = None):
        return render_case(self.image, self.mask, affine, self.frame, self.record, case_id)

    def save(self, folder: str | Path, case_id: str, affine: np.ndarray | None = None) -> dict[str, Path]:
        """Write ``case_id``_image.nii.gz, _mask.nii.gz and .json (atomically, the sidecar last)."""
        from cmrstudio.io import write_case

        return write_case(self.to_case(case_id, affine), folder, name=case_id)

    @classmethod
    def load(cls, folder: str | Path, case_id: str) -> "Render":
        """Read a saved render back (its sidecar, image and mask) from ``folder``."""
        from cmrstudio.io import read_case

        folder = Path(folder)
        path = folder / f"{case_id}.json"
        try:
            src = json.loads(path.read_text(encoding="utf-8")).get("source", {})
        except (OSError, ValueError, AttributeError) as exc:
            raise CmrError(f"{path} cannot be read as a render's sidecar ({exc}); it may be damaged or not a cmrstudio render.") from None
        c = read_case(folder / f"{case_id}_image.nii.gz", mask=folder / f"{case_id}_mask.nii.gz", labels="canonical")
        render, fr = src.get("render"), src.get("frame")
        if not isinstance(render, dict) or not isinstance(fr, dict) or c.image is None or c.mask is None:
            raise CmrError(f"{path} is not a saved cmrstudio render (its sidecar lacks 'render' or 'frame', or the image or mask is missing).")
        return cls(c.image[0], None, c.mask[0], Frame.from_dict(fr), RenderRecord.from_dict(render, f"The render record in {path}"))


def render_case(image: np.ndarray, mask: np.ndarray, affine: np.ndarray | None, frame: Frame, record: RenderRecord, case_id: str,
                mask_source: dict | None = None):
    """A render (one slice or a volume) as a case whose sidecar says how it was made: what :func:`cmrstudio.io.write_case`
    writes for projects, ``render --case-out`` and exports to read back.

    ``mask_source``: where the mask came from (``dataset``, ``case_id``, ``path`` and, for one slice of a scan,
    ``slice``), as the studio's gallery records it; an export compares the mask with that scan's own segmentation
    to tell a patient's segmentation from a painted mask (without it the mask's origin is unknown)."""
    from cmrstudio.case import Case

    src = {"dataset": "cmrstudio-render", "synthetic": record.synthetic, "derived_from_patient": record.derived_from_patient,
           "render": record.to_dict(), "frame": frame.to_dict()}
    if mask_source:
        src["mask_source"] = {k: (str(v) if k == "path" and v is not None else v) for k, v in dict(mask_source).items()
                              if k in ("dataset", "case_id", "path", "slice", "phase", "vendor")}
    img = np.asarray(image, np.float32)
    msk = np.asarray(mask, np.uint8)
    return Case(img[None] if img.ndim == 2 else img, msk[None] if msk.ndim == 2 else msk, affine, vendor=record.vendor,
                case_id=case_id, source=src)
