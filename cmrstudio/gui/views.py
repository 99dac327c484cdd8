"""The three linked image views (real | live | HQ): layout, fit, captions, cursor echo, window/level.

The views are napari's own grid: since napari 0.6 each grid cell is a vispy viewbox of its own, and
the cells share one camera and one slice, so zoom, pan and slice are linked by construction, every
napari mouse binding (the brush, its circle cursor, right-drag fill) works in every cell, and there is
one OpenGL canvas to draw (a second canvas would double the drawing, which a software-rendered
display pays on the CPU). What the grid does not do, this module adds:

* the grid's shape follows the canvas (a row of three unless a 2×2 square gives clearly bigger
  images, e.g. on a portrait screen) and the heart is refitted when the window is resized;
* a caption on each cell (napari's layer-name overlay) saying what it shows, in this patient ℗
  (amber) or fully synthetic (cyan);
* the mouse position echoed as a small cross in the other cells: a vispy marker in each cell's viewbox,
  not a napari layer (a Points layer's data setter recomputes the viewer's extent and dims, ~20 ms a
  move on a software-rendered display; a marker is one vertex upload);
* window/level per view with Shift+drag (left/right: window, up/down: level), presets, and
  "sync W/L" that shows the live and HQ renders in the real scan's window/level.
"""

from __future__ import annotations

import time

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt, QTimer

CELLS = ("real", "live", "hq")
IMAGE_KEY = {"real": "scan", "live": "synthetic", "hq": "hq"}
CROSS_COLOUR = "#ffd54a"
PATIENT_COLOUR = "#f2b84b"  # amber: derived from the patient's scan
SYNTHETIC_COLOUR = "#5ec8f2"  # cyan: no real pixel
REAL_COLOUR = "#e8e8e8"
PRESETS = {  # name: (what, percentiles or None for min-max, heart only)
    "auto": ("Auto (0.5–99.5 % of the slice stack)", (0.5, 99.5), False),
    "heart": ("Heart (1–99 % around the painted heart)", (1.0, 99.0), True),
    "full": ("Full range (min–max)", None, False),
}


def heart_fov(mask, spacing, shape) -> float | None:
    """The field of view (mm) that shows the painted heart with some surroundings: 1.7 times the heart's extent
    over all slices, at least 80 mm, at most the scan's own field; None when nothing is painted."""
    if mask is None or not mask.any():
        return None
    ys, xs = np.nonzero(mask.any(axis=0))
    ext = max((ys.max() - ys.min() + 1) * spacing[1], (xs.max() - xs.min() + 1) * spacing[2])
    full = max(shape[1] * spacing[1], shape[2] * spacing[2])
    return float(min(full, max(80.0, 1.7 * ext)))


def best_grid(width: float, height: float, n: int = 3) -> tuple[int, int]:
    """(rows, columns) for ``n`` square images on a ``width`` × ``height`` canvas: a row unless a square
    (or a column) gives images a quarter bigger (a portrait screen, a narrow window)."""
    shapes = [(1, n), (2, int(np.ceil(n / 2))), (n, 1)]
    side = {s: min(width / s[1], height / s[0]) for s in shapes}
    best = max(shapes, key=lambda s: side[s])
    return best if side[best] >= 1.25 * side[(1, n)] else (1, n)


class _WindowLevelDrag(QObject):
    """Shift+left drag (or a middle-button drag) on a cell adjusts that view's window/level.

    The events are taken before napari sees them, so the gesture never paints or pans.
    """

    def __init__(self, views: "Views"):
        super().__init__()
        self.views = views
        self._drag = None

    def eventFilter(self, obj, event):  # noqa: N802 (Qt API)
        t = event.type()
        if t == QEvent.MouseButtonPress:
            wl = (event.button() == Qt.LeftButton and event.modifiers() & Qt.ShiftModifier) or event.button() == Qt.MiddleButton
            if not wl:
                return False
            pos = event.position() if hasattr(event, "position") else event.localPos()
            cell = self.views.cell_at(pos.x(), pos.y())
            if cell is None or self.views.image_layer(cell) is None:
                return False
            self._drag = (cell, pos.x(), pos.y(), self.views.window_level(cell))
            return True
        if t == QEvent.MouseMove and self._drag is not None:
            pos = event.position() if hasattr(event, "position") else event.localPos()
            cell, x0, y0, (lo, hi) = self._drag
            width, level = hi - lo, (hi + lo) / 2
            # right: a wider window (less contrast); up: a lower level (brighter); ~300 px doubles the window
            width = width * float(np.exp((pos.x() - x0) / 430.0))
            level = level + (pos.y() - y0) * (hi - lo) / 300.0
            self.views.set_window_level(cell, level - width / 2, level + width / 2)
            return True
        if t == QEvent.MouseButtonRelease and self._drag is not None:
            self._drag = None
            return True
        return False


class Views:
    """Layout, captions, cursor echo and window/level of the studio's cells (see the module notes)."""

    def __init__(self, studio):
        self.studio = studio
        self.viewer = studio.viewer
        self.sync_wl = True
        self.shape = (1, 3)
        self._echo_at = 0.0
        self._cross: dict[str, object] = {}  # cell -> vispy Markers in that cell's viewbox
        self.echo: tuple[float, float] | None = None  # the echoed position (row, column in scan pixels)
        self._refit = QTimer()
        self._refit.setSingleShot(True)
        self._refit.setInterval(60)
        self._refit.timeout.connect(self.layout)
        self._echo_pending = None
        self._echo_timer = QTimer()
        self._echo_timer.setSingleShot(True)
        self._echo_timer.setInterval(25)
        self._echo_timer.timeout.connect(self._flush_echo)
        self._wl_drag = _WindowLevelDrag(self)
        try:
            qv = self.viewer.window._qt_viewer
            qv.canvas.native.installEventFilter(self._wl_drag)
            qv.canvas._scene_canvas.events.resize.connect(self._on_resize)
        except AttributeError:
            pass
        self.viewer.mouse_move_callbacks.append(self._on_move)
        self.viewer.mouse_drag_callbacks.append(self._on_drag)

    # -- geometry ----------------------------------------------------------------------------------
    def _canvas(self):
        return self.viewer.window._qt_viewer.canvas

    def canvas_size(self) -> tuple[int, int]:
        w, h = self._canvas()._scene_canvas.size
        return int(w), int(h)

    def cells(self) -> list[str]:
        return [c for c in CELLS if IMAGE_KEY[c] in self.studio.layers]

    def cell_rects(self) -> dict[str, tuple[float, float, float, float]]:
        """Each cell's (x, y, width, height) on the canvas in screen pixels."""
        out = {}
        layers = self.studio.layers
        grid = self.viewer.canvas.grid
        views = getattr(self._canvas(), "grid_views", [])
        order = [pos for pos, idx in grid.iter_viewboxes(self.viewer.layers) if idx]
        for cell in self.cells():
            layer = layers[IMAGE_KEY[cell]]
            if not grid.enabled or layer not in self.viewer.layers:
                w, h = self.canvas_size()
                out[cell] = (0.0, 0.0, float(w), float(h))
                continue
            pos = grid.position(self.viewer.layers.index(layer), self.viewer.layers)
            if pos in order and order.index(pos) < len(views):
                vb = views[order.index(pos)]
                # the viewbox's own rect starts at (0, 0): where it is on the canvas comes from its transform
                tr = vb.get_transform(map_from="visual", map_to="canvas")
                (x0, y0), (x1, y1) = (tr.map([0.0, 0.0])[:2], tr.map([float(vb.size[0]), float(vb.size[1])])[:2])
                out[cell] = (float(min(x0, x1)), float(min(y0, y1)), float(abs(x1 - x0)), float(abs(y1 - y0)))
        return out

    def view_sizes(self) -> dict[str, tuple[int, int]]:
        """On-screen size (width, height) of each image view in pixels."""
        return {c: (int(round(r[2])), int(round(r[3]))) for c, r in self.cell_rects().items()}

    def image_rect(self, cell: str) -> tuple[float, float, float, float] | None:
        """Where the cell's image (its whole slice) lands on the canvas: (x0, y0, x1, y1) in screen pixels."""
        from cmrstudio.gui.mouse import data_to_canvas

        layer = self.image_layer(cell)
        if layer is None:
            return None
        h, w = layer.data.shape[-2:]
        x0, y0 = data_to_canvas(self.viewer, layer, (-0.5, -0.5))
        x1, y1 = data_to_canvas(self.viewer, layer, (h - 0.5, w - 0.5))
        return x0, y0, x1, y1

    def cell_at(self, x: float, y: float) -> str | None:
        for cell, (cx, cy, cw, ch) in self.cell_rects().items():
            if cx <= x < cx + cw and cy <= y < cy + ch:
                return cell
        return None

    def image_layer(self, cell: str):
        return self.studio.layers.get(IMAGE_KEY[cell])

    # -- layout --------------------------------------------------------------------------------------
    def _on_resize(self, event=None) -> None:
        self._refit.start()

    def layout(self) -> None:
        """The grid shape for this canvas, then the heart fitted into the cells."""
        if self.studio.session.case is None or not self.studio.layers:
            return
        w, h = self.canvas_size()
        shape = best_grid(w, h, len(self.cells()))
        grid = self.viewer.canvas.grid
        if tuple(grid.shape) != shape:
            grid.shape = shape
        self.shape = shape
        self.fit()

    def fit(self) -> None:
        """Zoom every cell to the heart (the synthesis frame's field of view), centred; one camera for all."""
        s = self.studio.session
        c, fr = s.case, s.frame
        if c is None:
            return
        sp = c.spacing or (1.0, 1.0, 1.0)
        centre = s.centre or ((c.shape[1] - 1) / 2, (c.shape[2] - 1) / 2)
        fov = heart_fov(s.mask, sp, c.shape)
        if fov is None:  # nothing painted: the synthesis frame's field of view, or most of the scan
            fov = fr.size * max(fr.step) * max(sp[1], sp[2]) if fr is not None else 0.6 * max(c.shape[1] * sp[1], c.shape[2] * sp[2])
            fov = min(fov, 0.6 * max(c.shape[1] * sp[1], c.shape[2] * sp[2]))
        # the cells' size from the canvas and the grid's shape (napari's viewboxes get their size only at the next draw)
        w, h = self.canvas_size()
        rows, cols = self.viewer.canvas.grid.actual_shape(self.viewer.layers) if self.viewer.canvas.grid.enabled else (1, 1)
        cw, ch = w / cols, h / rows
        cam = self.viewer.scene.camera
        cam.center = (centre[0] * sp[1], centre[1] * sp[2])
        cam.zoom = 0.97 * min(cw, ch) / max(fov, 1e-3)

    # -- captions -------------------------------------------------------------------------------------
    def caption(self, cell: str, text: str, colour: str) -> None:
        """The cell's caption (napari's layer-name overlay of its image layer)."""
        layer = self.image_layer(cell)
        if layer is None:
            return
        ov = layer.name_overlay
        if not ov.visible:
            ov.position = "top_left"
            ov.font_size = 10
            ov.box = True
            ov.box_color = (0.0, 0.0, 0.0, 0.55)
            ov.visible = True
        if tuple(np.round(np.asarray(ov.color if ov.color is not None else (0, 0, 0, 0), float), 3)) != _rgba(colour):
            ov.color = _rgba(colour)
        if layer.name != text:
            layer.name = text

    # -- cursor echo --------------------------------------------------------------------------------
    def _viewboxes(self) -> dict[str, tuple[tuple[int, int], object]]:
        """Each cell's grid position and vispy viewbox."""
        grid, layers = self.viewer.canvas.grid, self.viewer.layers
        views = getattr(self._canvas(), "grid_views", [])
        order = [pos for pos, idx in grid.iter_viewboxes(layers) if idx]
        out = {}
        for cell in self.cells():
            img = self.image_layer(cell)
            if img not in layers:
                continue
            pos = tuple(grid.position(layers.index(img), layers))
            if pos in order and order.index(pos) < len(views):
                out[cell] = (pos, views[order.index(pos)])
        return out

    def _cross_node(self, cell: str, viewbox):
        """The cell's cross marker, a child of its viewbox's scene (napari makes new viewboxes when the grid changes)."""
        node = self._cross.get(cell)
        if node is None:
            from vispy.scene.visuals import Markers

            node = Markers()
            node.order = 1_000_000  # over the layers
            node.set_gl_state("translucent", depth_test=False)
            self._cross[cell] = node
        if node.parent is not viewbox.scene:
            node.parent = viewbox.scene
        return node

    def cross_canvas_xy(self, cell: str) -> tuple[float, float] | None:
        """Where the cell's cross is drawn on the canvas (screen pixels), None when it is not shown."""
        node = self._cross.get(cell)
        if node is None or not node.visible or self.echo is None:
            return None
        c = self.studio.session.case
        sp = c.spacing or (1.0, 1.0, 1.0)
        p = node.get_transform(map_from="visual", map_to="canvas").map([self.echo[1] * sp[2], self.echo[0] * sp[1], 0.0, 1.0])
        return float(p[0] / p[3]), float(p[1] / p[3])

    def _echo(self, position, under) -> None:
        """Echo the mouse at ``position`` (world coordinates) in the cells other than ``under``: ~40 updates a second at
        most, and the latest position is always shown (a move inside the 25 ms is shown when they are over)."""
        self._echo_pending = (tuple(position), under)
        if time.perf_counter() - self._echo_at < 0.025:
            if not self._echo_timer.isActive():
                self._echo_timer.start()
            return
        self._flush_echo()

    def _flush_echo(self) -> None:
        if self._echo_pending is None or self.studio._closed:
            return
        position, under = self._echo_pending
        self._echo_pending = None
        self._echo_at = time.perf_counter()
        c = self.studio.session.case
        if c is None:
            return
        sp = c.spacing or (1.0, 1.0, 1.0)
        self.echo = (position[-2] / sp[1], position[-1] / sp[2])
        xy = np.array([[position[-1], position[-2]]], np.float32)  # the viewbox's scene is napari's world, x first
        for cell, (pos, vb) in self._viewboxes().items():
            node = self._cross_node(cell, vb)
            here = pos == under  # the cell under the mouse has the brush circle
            node.visible = not here
            if not here:
                node.set_data(xy, symbol="cross", size=15, edge_width=0, face_color=CROSS_COLOUR)
        self._canvas()._scene_canvas.update()

    def _on_move(self, viewer, event) -> None:
        self._echo(event.position, tuple(event.viewbox) if getattr(event, "viewbox", None) is not None else None)

    def _on_drag(self, viewer, event):
        under = tuple(event.viewbox) if getattr(event, "viewbox", None) is not None else None
        self._echo(event.position, under)
        yield
        while event.type == "mouse_move":
            self._echo(event.position, under)
            yield

    # -- window / level ------------------------------------------------------------------------------
    def _to_cell(self, cell: str, lo: float, hi: float) -> tuple[float, float]:
        """Scan units -> the cell's own units (the live layer holds 8-bit values of the frame's intensity range)."""
        if cell != "live":
            return lo, hi
        fr = self.studio.session.frame
        a, b = fr.intensity if fr is not None and fr.intensity else (0.0, 1.0)
        return 255.0 * (lo - a) / (b - a), 255.0 * (hi - a) / (b - a)

    def _to_scan(self, cell: str, lo: float, hi: float) -> tuple[float, float]:
        if cell != "live":
            return lo, hi
        fr = self.studio.session.frame
        a, b = fr.intensity if fr is not None and fr.intensity else (0.0, 1.0)
        return a + lo / 255.0 * (b - a), a + hi / 255.0 * (b - a)

    def window_level(self, cell: str) -> tuple[float, float]:
        layer = self.image_layer(cell)
        lo, hi = layer.contrast_limits
        return float(lo), float(hi)

    def set_window_level(self, cell: str, lo: float, hi: float, sync: bool | None = None) -> None:
        """Set one view's contrast limits (in its own units); with sync, the others follow (in scan units)."""
        if hi <= lo:
            hi = lo + 1e-6 * max(1.0, abs(lo))
        self._apply(cell, lo, hi)
        if self.sync_wl if sync is None else sync:
            slo, shi = self._to_scan(cell, lo, hi)
            for other in self.cells():
                if other != cell:
                    self._apply(other, *self._to_cell(other, slo, shi))
        self.studio.changed.emit("window_level")

    def _apply(self, cell: str, lo: float, hi: float) -> None:
        layer = self.image_layer(cell)
        if layer is None:
            return
        rng = layer.contrast_limits_range
        if lo < rng[0] or hi > rng[1]:  # the range grows with the window, so a wide window is not clipped
            layer.contrast_limits_range = (min(lo, rng[0]), max(hi, rng[1]))
        layer.contrast_limits = (float(lo), float(hi))

    def preset(self, name: str, cell: str = "real") -> tuple[float, float]:
        """Apply a window/level preset (see ``PRESETS``) to ``cell`` (and, synced, to the others)."""
        s = self.studio.session
        _, pct, heart = PRESETS[name]
        layer = self.image_layer(cell)
        if cell == "real" and s.case is not None and s.case.image is not None:
            data = s.case.image
        else:
            data = np.asarray(layer.data[s.z])
        vals = data
        if heart and s.mask is not None:
            from scipy import ndimage

            region = s.mask[s.z] > 0 if data.ndim == 2 else s.mask > 0
            if region.any():
                region = ndimage.binary_dilation(region, iterations=6)
                vals = data[region]
        vals = np.asarray(vals, np.float32).ravel()
        if vals.size == 0:
            return self.window_level(cell)
        lo, hi = (float(vals.min()), float(vals.max())) if pct is None else (float(np.percentile(vals, pct[0])), float(np.percentile(vals, pct[1])))
        if hi <= lo:
            hi = lo + 1.0
        self.set_window_level(cell, lo, hi)
        return lo, hi

    def set_sync(self, on: bool) -> None:
        self.sync_wl = bool(on)
        if on and "real" in self.cells():
            self.set_window_level("real", *self.window_level("real"))

    def close(self) -> None:
        for node in self._cross.values():
            node.parent = None
        self._cross.clear()
        for timer in (self._refit, self._echo_timer):
            timer.stop()
            try:
                timer.timeout.disconnect()
            except (RuntimeError, TypeError):
                pass
        try:
            self.viewer.mouse_move_callbacks.remove(self._on_move)
            self.viewer.mouse_drag_callbacks.remove(self._on_drag)
        except ValueError:
            pass
        try:
            qv = self.viewer.window._qt_viewer
            qv.canvas.native.removeEventFilter(self._wl_drag)
            qv.canvas._scene_canvas.events.resize.disconnect(self._on_resize)
        except (AttributeError, RuntimeError, TypeError, ValueError):
            pass


def _rgba(colour: str) -> tuple[float, float, float, float]:
    c = colour.lstrip("#")
    return tuple(round(int(c[i:i + 2], 16) / 255.0, 3) for i in (0, 2, 4)) + (1.0,)
