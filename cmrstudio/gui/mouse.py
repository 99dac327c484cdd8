"""Real mouse input on the napari canvas: Qt mouse events sent to the canvas widget.

Used by the GUI tests, the screenshot script and ``cmrstudio bench studio``: the events go
through Qt, vispy and napari's own mouse bindings exactly as a radiologist's drag does.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
from qtpy.QtCore import QEvent, QPoint, QPointF, Qt
from qtpy.QtGui import QMouseEvent
from qtpy.QtWidgets import QApplication


def canvas_widget(viewer):
    return viewer.window._qt_viewer.canvas.native


def data_to_canvas(viewer, layer, yx: Sequence[float]) -> tuple[float, float]:
    """Canvas pixel (x, y) of a point (row, col) on the displayed slice of ``layer`` (grid cell included)."""
    visual = viewer.window._qt_viewer.canvas.layer_to_visual[layer]
    tr = visual.node.get_transform(map_from="visual", map_to="canvas")
    p = tr.map([float(yx[1]), float(yx[0]), 0.0, 1.0])
    return float(p[0] / p[3]), float(p[1] / p[3])


def _send(widget, kind, pos, buttons, modifiers=Qt.NoModifier, button=Qt.LeftButton) -> None:
    button = button if kind != QEvent.MouseMove else Qt.NoButton
    local = QPointF(*pos)
    glob = QPointF(widget.mapToGlobal(QPoint(int(pos[0]), int(pos[1]))))
    ev = QMouseEvent(kind, local, glob, button, buttons, modifiers)
    QApplication.sendEvent(widget, ev)


def move(viewer, point_xy: tuple[float, float]) -> None:
    """A mouse move (no button) to a canvas point."""
    _send(canvas_widget(viewer), QEvent.MouseMove, point_xy, Qt.NoButton)
    QApplication.processEvents()


def drag(viewer, points_xy: Sequence[tuple[float, float]], interval_s: float = 0.016,
         between: Callable[[], None] | None = None, modifiers=Qt.NoModifier, button=Qt.LeftButton) -> None:
    """Press at the first canvas point, move through the others (one move per ``interval_s``), release.

    ``modifiers`` (e.g. ``Qt.ShiftModifier``) are held throughout; ``button`` is the mouse button.
    """
    w = canvas_widget(viewer)
    _send(w, QEvent.MouseMove, points_xy[0], Qt.NoButton, modifiers)
    QApplication.processEvents()
    _send(w, QEvent.MouseButtonPress, points_xy[0], button, modifiers, button)
    QApplication.processEvents()
    for p in points_xy[1:]:
        t_next = time.perf_counter() + interval_s
        _send(w, QEvent.MouseMove, p, button, modifiers)
        QApplication.processEvents()
        if between is not None:
            between()
        while time.perf_counter() < t_next:
            QApplication.processEvents()
            time.sleep(0.001)
    _send(w, QEvent.MouseButtonRelease, points_xy[-1], Qt.NoButton, modifiers, button)
    QApplication.processEvents()


def stroke_points(viewer, layer, centre_yx, radius_px: float, n: int = 12, turns: float = 0.5) -> list[tuple[float, float]]:
    """Canvas points of an arc of ``turns`` of a circle around ``centre_yx`` (data pixels) on ``layer``."""
    angles = np.linspace(0, 2 * np.pi * turns, n)
    return [data_to_canvas(viewer, layer, (centre_yx[0] + radius_px * np.sin(a), centre_yx[1] + radius_px * np.cos(a))) for a in angles]


def stroke_on_mask(viewer, layer, label: int = 1, n: int = 12, radius_frac: float = 0.06, centre_yx=None, interval_s: float = 0.016,
                   between: Callable[[], None] | None = None) -> list[tuple[float, float]]:
    """Paint ``label`` with a real drag on the current slice of ``layer`` (around the heart or the centre)."""
    layer.selected_label = label
    layer.mode = "paint"
    viewer.layers.selection.active = layer
    shape = layer.data.shape[-2:]
    if centre_yx is None:
        sl = np.asarray(layer.data[int(viewer.dims.current_step[0])]) if layer.data.ndim == 3 else np.asarray(layer.data)
        pts = np.argwhere(sl > 0)
        centre_yx = pts.mean(0) if len(pts) else ((shape[0] - 1) / 2, (shape[1] - 1) / 2)
    pts = stroke_points(viewer, layer, centre_yx, radius_frac * min(shape) * 2, n)
    drag(viewer, pts, interval_s, between)
    return pts
