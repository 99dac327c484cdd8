"""Turn a canonical case into napari layer data (used by the studio and the npe2 reader)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.colormaps import DirectLabelColormap

from cmrstudio.anatomy import COLOURS, LABELS
from cmrstudio.case import Case


def label_colormap() -> DirectLabelColormap:
    colours = {k: np.asarray(v, dtype=np.float32) for k, v in COLOURS.items()}
    colours[None] = np.zeros(4, dtype=np.float32)
    return DirectLabelColormap(color_dict=colours)


def case_layers(case: Case) -> list[tuple]:
    """napari LayerDataTuples for a case: the scan, then its canonical mask."""
    scale = case.spacing if case.spacing else (1.0, 1.0, 1.0)
    layers: list[tuple] = []
    if case.image is not None:
        lo, hi = np.percentile(case.image, (0.5, 99.5))
        layers.append(
            (case.image, {"name": f"{case.case_id} scan", "scale": scale, "contrast_limits": (float(lo), float(max(hi, lo + 1))), "metadata": {"cmrstudio": case.describe()}}, "image")
        )
    if case.mask is not None:
        layers.append(
            (
                case.mask,
                {
                    "name": f"{case.case_id} mask",
                    "scale": scale,
                    "colormap": label_colormap(),
                    "opacity": 0.45,
                    "features": {"index": list(LABELS), "structure": list(LABELS.values())},
                    "metadata": {"cmrstudio": {"labels": LABELS}},
                },
                "labels",
            )
        )
    return layers


def napari_reader(path):
    """npe2 reader contribution: any file or folder cmrstudio reads, as layers."""
    from cmrstudio.errors import CmrError
    from cmrstudio.io import read_case

    if isinstance(path, list):
        path = path[0]
    p = Path(path)
    try:
        case = read_case(p)
    except CmrError:
        return None
    return lambda _path: case_layers(case)


def sample_data():
    """npe2 sample-data contribution: the built-in real case (Sunnybrook, CC0)."""
    from cmrstudio.io import sample_case

    return case_layers(sample_case("ED"))
