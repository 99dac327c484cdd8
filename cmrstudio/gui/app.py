"""Studio assembly: a napari viewer opened on a case (the built-in sample by default)."""

from __future__ import annotations

from pathlib import Path

import napari

from cmrstudio import __version__
from cmrstudio.anatomy import check_mask, summarise
from cmrstudio.case import Case
from cmrstudio.gui.layers import case_layers


def load_case(path: Path | None, case: str | None = None) -> Case:
    from cmrstudio.io import read_case
    from cmrstudio.resources import sample_case

    if path is None:
        return sample_case("ED")
    return read_case(path, case=case)


def show_case(viewer: napari.Viewer, case: Case) -> None:
    """Replace the viewer's layers with a case and say what is open."""
    viewer.layers.clear()
    for data, kwargs, kind in case_layers(case):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    where = case.source.get("path") or case.source.get("image") or case.case_id
    viewer.title = f"cmrstudio {__version__} — {case.case_id} ({case.phase or 'phase ?'}, {case.vendor})"
    issues = [f for f in check_mask(case.mask, case.spacing) if f.severity != "info"] if case.mask is not None else []
    sp = "×".join(f"{v:.3g}" for v in case.spacing) + " mm" if case.spacing else "spacing unknown"
    overlay = f"{case.case_id} · {case.phase or '-'} · {case.vendor} · {'×'.join(map(str, case.shape))} · {sp}"
    if issues:
        kinds = summarise(issues)
        overlay += f"\nanatomy check: {len(kinds)} warning{'s' if len(kinds) > 1 else ''} (cmrstudio check for details)"
    viewer.status = f"{where} · {overlay.splitlines()[0]}"
    text = viewer.canvas.overlays["text"]
    text.text = overlay
    text.position = "top_left"
    text.visible = True
    text.font_size = 10
    if case.shape[0] > 1:
        viewer.dims.set_point(0, viewer.dims.range[0].start + (case.shape[0] // 2) * viewer.dims.range[0].step)


def build_viewer(path: Path | None = None, case: str | None = None, show: bool = True) -> napari.Viewer:
    c = load_case(path, case)
    viewer = napari.Viewer(title="cmrstudio", show=show)
    show_case(viewer, c)
    return viewer


def run(path: Path | None = None, case: str | None = None) -> None:
    build_viewer(path, case, show=True)
    napari.run()


def screenshot(out: Path, path: Path | None = None, case: str | None = None) -> Path:
    """Open the studio, render it, save a PNG of the whole window, close it."""
    from qtpy.QtWidgets import QApplication
    from skimage.io import imsave

    viewer = build_viewer(path, case, show=True)
    viewer.window.resize(1400, 860)
    for _ in range(30):
        QApplication.processEvents()
    img = viewer.screenshot(canvas_only=False, flash=False)
    viewer.close()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    imsave(out, img, check_contrast=False)
    return out
