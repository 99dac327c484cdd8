"""Segmentation accuracy: Dice and HD95 (mm) per structure, the instrument's own figures.

Images and expert masks are put in the segmenter's synthesis frame (in-plane pixels of a known
size in mm), segmented, and compared with the expert mask:

* **Dice** per structure over the case's heart slices (3D Dice of the stack);
* **HD95** per structure, the 95th percentile of the symmetric surface distance in mm, slice by
  slice in 2D (MONAI's ``compute_hausdorff_distance`` with the frame's pixel spacing), averaged over
  the slices where the expert drew the structure. A slice where the segmenter finds nothing of a
  drawn structure has no surface distance: it is counted apart as a miss.

Cases are then averaged (mean and standard deviation across cases).
"""

from __future__ import annotations

from dataclasses import dataclass

from cmrstudio.data.slices import framed_slices
from cmrstudio.errors import CmrError
from cmrstudio.metrics import STRUCTURES, case_scores, hd95_2d, summarise  # noqa: F401  (the figures this module reports)

@dataclass
class SegmentationResult:
    segmenter: str
    cases: int
    slices: int
    summary: dict
    per_case: list[dict]
    spacing_mm: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def evaluate_segmenter(cases, segmenter=None, device: str | None = None) -> SegmentationResult:
    """Dice and HD95 of a segmenter (a name, card path or loaded ModelInfo) on real cases with expert masks."""
    from cmrstudio.engine.device import pick_device
    from cmrstudio.engine.segment import segment_images
    from cmrstudio.models.registry import build_model, get_model

    info = get_model(segmenter, kind="segmenter") if not hasattr(segmenter, "card") else segmenter
    net = build_model(info, pick_device(device))
    size = int(net.cfg.size)
    spacing = float(info.card.get("frame", {}).get("spacing_mm") or 1.25)
    rows, n = [], 0
    for c, images, masks in framed_slices(cases, size, spacing):
        pred = segment_images(net, images, size)
        rows.append({"case": c.case_id, "vendor": c.vendor, "slices": len(masks), "scores": case_scores(pred, masks, spacing)})
        n += len(masks)
    if not rows:
        raise CmrError("None of the given cases has an image, a mask and heart slices to evaluate on.")
    return SegmentationResult(info.name, len(rows), n, summarise(rows), rows, spacing)
