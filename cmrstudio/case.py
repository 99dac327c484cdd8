"""The one canonical in-memory case that readers produce and writers consume.

Array layout is ``(Z, Y, X)``: slices first, then rows, then columns, as numpy
and napari index them. ``affine`` maps a voxel index ``(z, y, x, 1)`` to world
coordinates in millimetres, RAS+ (the NIfTI convention). When a source stores
no geometry (the ACDC HDF5 files), ``affine`` and ``spacing`` are ``None``:
spacing is *unknown* and is never invented.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cmrstudio.anatomy import VENDORS, label_counts
from cmrstudio.errors import CmrError

PHASES = ("ED", "ES")


@dataclass(eq=False)  # arrays inside: identity, not element-wise comparison
class Case:
    image: np.ndarray | None
    mask: np.ndarray | None = None
    affine: np.ndarray | None = None
    vendor: str = "unknown"
    phase: str | None = None
    case_id: str = "case"
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image is None and self.mask is None:
            raise CmrError(f"Case {self.case_id!r} has neither an image nor a mask; give at least one.")
        for name in ("image", "mask"):
            arr = getattr(self, name)
            if arr is None:
                continue
            kind = np.asarray(arr).dtype
            if kind.fields or kind.kind not in "biuf":
                what = "complex values" if kind.kind == "c" else f"values of type {kind}"
                raise CmrError(f"Case {self.case_id!r}: the {name} holds {what}, not one real number per pixel; "
                               "give a single-channel magnitude image.")
        if self.image is not None:
            self.image = np.asarray(self.image, dtype=np.float32)
            if self.image.ndim == 2:
                self.image = self.image[None]
        if self.mask is not None:
            self.mask = np.asarray(self.mask, dtype=np.uint8)
            if self.mask.ndim == 2:
                self.mask = self.mask[None]
        for name, arr in (("image", self.image), ("mask", self.mask)):
            if arr is not None and arr.ndim != 3:
                raise CmrError(
                    f"Case {self.case_id!r}: the {name} has {arr.ndim} dimensions; "
                    "a case holds one 3D volume (slices, rows, columns)."
                )
        if self.image is not None and self.mask is not None and self.image.shape != self.mask.shape:
            where = self.source.get("mask_path") or self.source.get("mask") or self.source.get("path") or self.case_id
            raise CmrError(
                f"The mask {where} has shape {self.mask.shape} but its image has shape "
                f"{self.image.shape}; give the mask that was drawn on this image."
            )
        if self.vendor not in VENDORS:
            raise CmrError(f"Vendor {self.vendor!r} is not one of {', '.join(VENDORS)}.")
        if self.phase is not None and self.phase not in PHASES:
            raise CmrError(f"Phase {self.phase!r} is not one of ED, ES (or none).")
        if self.affine is not None:
            self.affine = np.asarray(self.affine, dtype=np.float64)
            if self.affine.shape != (4, 4):
                raise CmrError(f"Case {self.case_id!r}: the affine must be 4×4, got {self.affine.shape}.")
            if not np.all(np.isfinite(self.affine)) or abs(np.linalg.det(self.affine[:3, :3])) < 1e-12:
                raise CmrError(f"Case {self.case_id!r}: the affine holds NaN or a zero axis, so it is no geometry; "
                               "give None (spacing unknown) or a valid affine.")

    # -- geometry -------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        arr = self.image if self.image is not None else self.mask
        return tuple(arr.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float] | None:
        """Voxel size (z, y, x) in mm, or ``None`` when unknown."""
        if self.affine is None:
            return None
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    def with_spacing(self, spacing: tuple[float, float, float]) -> "Case":
        """Return a copy with a user-supplied spacing (z, y, x) in mm and an axis-aligned affine."""
        from cmrstudio.io.checks import IN_PLANE_MM, SLICE_MM

        try:
            sz, sy, sx = (float(s) for s in spacing)
        except (TypeError, ValueError):
            raise CmrError(f"Spacing {spacing!r} must be three numbers in mm (slice, row, column), like 8,1.25,1.25.") from None
        (lo, hi), (zlo, zhi) = IN_PLANE_MM, SLICE_MM
        if not all(np.isfinite((sz, sy, sx))) or min(sz, sy, sx) <= 0:
            raise CmrError(f"Spacing {tuple(spacing)} must be positive millimetres (slice, row, column).")
        if not (lo <= sy <= hi and lo <= sx <= hi and zlo <= sz <= zhi):
            raise CmrError(f"Spacing {tuple(spacing)} mm is implausible for a cardiac MR scan (rows and columns {lo:g}–{hi:g} mm, "
                           f"slices {zlo:g}–{zhi:g} mm apart); give the voxel size in mm as slice,row,column.")
        affine = np.zeros((4, 4))
        # index (z, y, x) -> RAS: columns go right-to-left (x -> -R), rows go anterior-to-posterior.
        affine[0, 2] = -sx
        affine[1, 1] = -sy
        affine[2, 0] = sz
        affine[3, 3] = 1.0
        src = dict(self.source, spacing_from="user")
        return dataclasses.replace(self, affine=affine, source=src)

    # -- description ----------------------------------------------------
    def describe(self) -> dict[str, Any]:
        sp = self.spacing
        out: dict[str, Any] = {
            "case": self.case_id,
            "shape": list(self.shape),
            "spacing_mm": [round(s, 4) for s in sp] if sp else "unknown",
            "vendor": self.vendor,
            "phase": self.phase,
            "has_image": self.image is not None,
            "labels": label_counts(self.mask) if self.mask is not None else None,
        }
        if self.image is not None:
            out["intensity_range"] = [float(self.image.min()), float(self.image.max())]
        for k in ("dataset", "label_convention", "path", "mask_path", "reader", "assumptions"):
            if k in self.source:
                out[k] = self.source[k]
        return out


def patient_of(case_id: str) -> str:
    """The patient a case id belongs to (without its phase or frame suffix): ``patient007_frame01`` -> ``patient007``."""
    import re

    return re.sub(r"(_(ed|es)|_frame\d+)$", "", str(case_id), flags=re.IGNORECASE)
