"""npe2 widget contribution: the studio's panels inside plain napari.

The widget takes over the viewer's first image layer (the scan) and first labels layer (its
mask, when the shapes match) as the studio's case, then lays the layers out side by side
as the studio does. Without an image layer it opens the built-in sample case.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QTabWidget

from cmrstudio.case import Case


def case_from_layers(viewer) -> tuple[Case | None, str | None, list]:
    """(case, note, the layers it came from) from the viewer's first image and labels layers; (None, None, []) without an image layer."""
    from napari.layers import Image, Labels

    imgs = [layer for layer in viewer.layers if isinstance(layer, Image) and not layer.rgb]
    if not imgs:
        return None, None, []
    im = imgs[0]
    data = np.asarray(im.data, dtype=np.float32)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        return None, f"The layer '{im.name}' is {data.ndim}D; the studio paints 2D slices of 3D volumes, so the sample case is open instead.", []
    scale = tuple(float(s) for s in im.scale[-3:]) if im.ndim >= 3 else (1.0,) + tuple(float(s) for s in im.scale[-2:])
    spacing_known = any(abs(s - 1.0) > 1e-6 for s in scale)
    affine = np.diag(list(scale) + [1.0]) if spacing_known else None
    mask, note, used = None, None, [im]
    for lab in (layer for layer in viewer.layers if isinstance(layer, Labels)):
        m = np.asarray(lab.data)
        m = m[None] if m.ndim == 2 else m
        if m.shape == data.shape:
            used.append(lab)
            if m.max() <= 3:
                mask = m.astype(np.uint8)
            else:
                note = f"The labels layer '{lab.name}' holds label {int(m.max())}; the studio knows 0–3 (background, LV, MYO, RV), so the mask starts empty."
            break
    meta = im.metadata.get("cmrstudio", {}) if isinstance(im.metadata, dict) else {}
    case_id = str(meta.get("case") or im.name.replace(" scan", ""))
    return Case(data, mask, affine, vendor=meta.get("vendor", "unknown"), case_id=case_id,
                source={"dataset": "napari layer", "layer": im.name}), note, used


def synthesis_widget(napari_viewer):
    """The studio (paint, synthesis, gallery) as one docked widget on an existing viewer."""
    from cmrstudio.gui.gallery import GalleryPanel
    from cmrstudio.gui.panels import PaintPanel, SynthesisPanel
    from cmrstudio.gui.studio import Studio
    from cmrstudio.project import Project, default_project_dir

    studio = Studio(napari_viewer)
    studio.owns_viewer = False
    try:
        studio.session.project = Project.open_or_create(studio.session.settings.last_project or default_project_dir())
    except Exception as exc:
        studio.session.say("warning", f"{getattr(exc, 'message', exc)} Kept renders need a project.")
    case, note, used = case_from_layers(napari_viewer)
    if case is None:
        studio.session.open_path(None)  # the sample: it takes the viewer over
    else:
        studio.set_case(case, replace=used)  # other layers (points, shapes, ...) stay
    if note:
        studio.session.say("warning", note)
    tabs = QTabWidget()
    tabs.addTab(SynthesisPanel(studio), "Synthesis")
    tabs.addTab(PaintPanel(studio), "Paint")
    tabs.addTab(GalleryPanel(studio), "Gallery")
    tabs.studio = studio
    tabs.destroyed.connect(lambda *_: studio.close())
    return tabs
