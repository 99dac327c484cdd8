"""The studio's napari mirror: a :class:`~cmrstudio.session.StudioSession` shown as layers.

All state and every action live in the Qt-free session; this object only

* lays the session out in the viewer (napari's grid puts the cells side by side with one camera
  and one slider)::

      cell 1: the real scan + the painted mask        (labels layer: it paints into session.mask itself)
      cell 2: the live render + mask contour          (re-rendered on every brush dab)
      cell 3: the HQ render + mask contour            (diffusion / flow, on demand)

* forwards what the painter does (brush dabs, stroke ends, undo, the slice slider) to the session;
* turns the session's events into Qt signals (``changed``, ``message``) for the panels, on the GUI
  thread: results from the render workers are queued onto it with ``call_soon``;
* times each live frame from the dab that asked for it to the canvas draw that shows it.
"""

from __future__ import annotations

import time

import numpy as np
from qtpy.QtCore import QObject, Signal

from cmrstudio import __version__
from cmrstudio.case import Case
from cmrstudio.data.frame import from_frame
from cmrstudio.gui.layers import label_colormap
from cmrstudio.session import START_KINDS, StudioSession, base_id  # noqa: F401  (START_KINDS for the panels)


class Studio(QObject):
    _call = Signal(object, object)  # (function, args): run on the GUI thread
    changed = Signal(str)  # "case", "mask", "slice", "anatomy", "live", "live_model", "hq", "project", "gallery", "seed", "vendor", "mode"
    message = Signal(str, str)  # level (info, warning, error), one sentence

    def __init__(self, viewer, settings=None, project=None, live_model: str | None = None, device: str | None = None,
                 load_async: bool = False, session: StudioSession | None = None):
        super().__init__()
        self.viewer = viewer
        self._call.connect(lambda fn, args: fn(*args))
        self.owns_viewer = True  # False inside plain napari: the user's other layers are left alone
        self.layers: dict[str, object] = {}
        self.contours_on = True
        self.frame_ms: list[float] = []  # dab -> synthetic layer drawn
        self._submitted: dict[int, float] = {}
        self._awaiting_draw: list[float] = []
        self._building = False
        self._stroking = False
        self._rendered_mask: dict[int, np.ndarray] = {}
        self._auto_contrast: dict[str, bool] = {}
        self._hq_contour_shown: set[int] = set()
        self._replace: list = []
        self._closed = False
        s = session or StudioSession(settings, project, live_model, device, call_soon=lambda fn, *a: self._call.emit(fn, a), load="none")
        self.session = s
        for name, handler in (("case", self._on_case), ("mask", self._on_mask), ("slice", self._on_slice), ("live", self._on_live),
                              ("live_model", self._on_live_model), ("hq", self._on_hq), ("hq_done", self._on_hq_done),
                              ("message", self.message.emit)):
            s.events.connect(name, handler)
        for name in ("anatomy", "project", "gallery", "seed", "vendor", "mode", "settings"):
            s.events.connect(name, lambda *_a, name=name: self.changed.emit(name))
        s.edit_sink = self._edit
        viewer.dims.events.current_step.connect(self._on_step)
        try:  # the moment the canvas has drawn: the end of the dab -> screen latency
            viewer.window._qt_viewer.canvas._scene_canvas.events.draw.connect(self._on_draw)
        except AttributeError:
            pass
        if session is None:
            if load_async:  # the window opens first (the event loop is running), then torch and the model load beside it
                from qtpy.QtCore import QTimer

                name = live_model or s.settings.live_model
                QTimer.singleShot(0, lambda: s.load_live_model_async(name))
            else:
                s.set_live_model(live_model or s.settings.live_model, quiet=False)

    # -- what the panels read ------------------------------------------------------------------------
    @property
    def mask_layer(self):
        return self.layers.get("mask")

    def current_z(self) -> int:
        return self.session.z

    def set_case(self, case: Case, replace: list | None = None) -> None:
        """Open ``case`` in the session. The studio owns the viewer: every layer goes, unless ``replace`` names
        the layers to take over (plain napari, the npe2 widget): then only those and the studio's own go."""
        self._replace = list(replace or [])
        self.session.set_case(case)

    def set_contours(self, on: bool) -> None:
        self.contours_on = bool(on)
        self._set_contour_opacity()

    # -- painter -> session ----------------------------------------------------------------------------
    def _edit(self, idx, vals) -> None:
        """Session edits go through the labels layer, so napari's undo covers them."""
        self.mask_layer.data_setitem(idx, vals)

    def _on_step(self, event=None) -> None:
        if self._building or self.session.case is None:
            return
        self.session.set_slice(int(self.viewer.dims.current_step[0]))

    def _on_labels_update(self, event=None) -> None:
        # every brush dab: nothing but a (latest-wins) render request on the GUI thread
        self._stroking = True
        rid = self.session.request_live()
        if rid is not None:
            self._submitted[rid] = time.perf_counter()

    def _on_paint(self, event=None) -> None:
        self._stroking = False  # the stroke ended: the contour catches up with the latest rendered mask
        z = self.session.z
        if self.session.live_on and z in self._rendered_mask:
            self._show_contour("contour", z, self._rendered_mask[z])
        self.session.check_anatomy()
        self.changed.emit("mask")

    def _hook_history(self, lab) -> None:
        """napari's undo/redo (Ctrl+Z, the panel's buttons) write the array without an event: re-render after them."""
        undo, redo = lab.undo, lab.redo

        def after(fn):
            def run():
                fn()
                self._stroking = False
                self.session.mask_edited()
            return run

        lab.undo, lab.redo = after(undo), after(redo)

    # -- session -> layers -----------------------------------------------------------------------------
    def _on_case(self) -> None:
        s, v = self.session, self.viewer
        case = s.case
        self._building = True
        self._submitted.clear()
        self._rendered_mask.clear()
        self._auto_contrast = {}
        self._hq_contour_shown.clear()
        self._stroking = False
        for layer in list(self.layers.values()):
            self._disconnect(layer)
        if not self._replace and self.owns_viewer:
            v.layers.clear()
        else:
            for layer in list(self.layers.values()) + self._replace:
                if layer in v.layers:
                    v.layers.remove(layer)
        self._replace = []
        self.layers = {}
        scale = case.spacing or (1.0, 1.0, 1.0)
        cid = case.case_id
        if case.image is not None:
            lo, hi = np.percentile(case.image, (0.5, 99.5))
            scan = v.add_image(case.image, name=f"{cid} scan", scale=scale, contrast_limits=(float(lo), float(max(hi, lo + 1))),
                               metadata={"cmrstudio": case.describe()})
        else:  # keeps the side-by-side cells in place
            scan = v.add_image(np.zeros(case.shape, np.float32), name=f"{cid} (no scan)", scale=scale, contrast_limits=(0, 1))
        lab = v.add_labels(s.mask, name=f"{cid} mask (paint here)", scale=scale, colormap=label_colormap(), opacity=0.45)
        synth = v.add_image(np.zeros(case.shape, np.uint8), name="live synthetic", scale=scale, contrast_limits=(0, 255))
        # the contour shows the mask the synthetic slice was rendered from (updated with each frame)
        contour = v.add_labels(np.array(s.mask, copy=True), name="mask contour (live)", scale=scale, colormap=label_colormap(), opacity=0.9)
        contour.contour = 1
        contour.editable = False
        self.layers = {"scan": scan, "mask": lab, "synthetic": synth, "contour": contour}
        lab.events.labels_update.connect(self._on_labels_update)
        lab.events.paint.connect(self._on_paint)
        self._hook_history(lab)
        v.layers.selection.active = lab
        lab.mode = "paint"
        lab.selected_label = 1
        lab.brush_size = max(3, int(round(10.0 / (scale[1] or 1.0))))
        v.canvas.grid.stride = 2
        v.canvas.grid.shape = (1, -1)
        v.canvas.grid.enabled = True
        self._set_contour_opacity()
        if case.shape[0] > 1:
            v.dims.set_current_step(0, s.z)
        self._building = False
        v.reset_view()
        self.fit_heart()
        self._title()
        self.changed.emit("case")
        self.changed.emit("hq")  # the HQ panel forgets the previous case's job

    def _on_mask(self) -> None:
        self._stroking = False  # a panel edit or undo, not a brush stroke: the contour follows the next frame
        layer = self.mask_layer
        if layer is not None:
            _light_refresh(layer)
        if not self.session.live_on:  # with live on, the contour follows the next rendered frame
            self._show_contour("contour", self.session.z, self.session.mask[self.session.z])
        self.changed.emit("mask")

    def _on_slice(self) -> None:
        z = self.session.z
        if int(self.viewer.dims.current_step[0]) != z:
            self.viewer.dims.set_current_step(0, z)
        self.changed.emit("slice")

    def _on_live(self, res) -> None:
        t0 = self._submitted.pop(res.request_id, None)
        for rid in [r for r in self._submitted if r < res.request_id]:  # dropped (latest-wins): this frame includes them
            del self._submitted[rid]
        z = res.tag[1]
        layer = self.layers.get("synthetic")
        if layer is None:
            return
        lo, hi = res.frame.intensity if res.frame is not None and res.frame.intensity else (0.0, 1.0)
        layer.data[z] = to_display((np.asarray(res.image, np.float32) - lo) / max(hi - lo, 1e-6))
        if not self._auto_contrast.get("synthetic") and res.framed is not None:
            # a window/level like the scan's (robust percentiles of the first frame); the user can change it
            lo, hi = np.percentile(res.framed, (0.5, 99.5)) * 255.0
            layer.contrast_limits = (float(lo), float(max(hi, lo + 1.0)))
            self._auto_contrast["synthetic"] = True
        _light_refresh(layer)
        self._rendered_mask[z] = res.mask
        if not self._stroking:  # during a stroke the contour waits for the release (one texture upload less per frame)
            self._show_contour("contour", z, res.mask)
        if t0 is not None:
            self._awaiting_draw.append(t0)
        self.changed.emit("live")

    def _on_live_model(self) -> None:
        self._submitted.clear()  # request ids restart with each engine
        self.fit_heart()
        self.changed.emit("live_model")

    def _on_hq(self, job, step, preview) -> None:
        token, z = job.tag
        if token == self.session.token:
            self._ensure_hq_layers()
            if preview is not None:
                self._hq_preview(job, z, preview)
                if z not in self._hq_contour_shown:
                    self._show_contour("hq_contour", z, job.mask)
                    self._hq_contour_shown.add(z)
        self.changed.emit("hq")

    def _hq_preview(self, job, z: int, preview) -> None:
        """A step's preview in the HQ cell: the framed preview put back into the scan's grid (in this patient: over the scan)."""
        img = from_frame(preview, job.frame, kind="image")
        if job.context is not None and job.context.mode == "in-patient":
            ctx = np.asarray(job.context.image, np.float32)
            inside = from_frame(np.ones_like(preview), job.frame, kind="image") > 0
            img = np.where(inside, img, ctx)
        self.layers["hq"].data[z] = img
        _light_refresh(self.layers["hq"])

    def _on_hq_done(self, job) -> None:
        token, z = job.tag
        if token == self.session.token and job.status == "done":
            self._ensure_hq_layers()
            self.layers["hq"].data[z] = job.result.image
            if not self._auto_contrast.get("hq") and job.result.framed is not None:
                img = job.result.image
                lo, hi = np.percentile(img, (0.5, 99.5))
                self.layers["hq"].contrast_limits = (float(lo), float(max(hi, lo + 1e-3)))
                self._auto_contrast["hq"] = True
            _light_refresh(self.layers["hq"])
            self._show_contour("hq_contour", z, job.mask)
        self.changed.emit("hq")

    def _ensure_hq_layers(self) -> None:
        if "hq" in self.layers or self.session.case is None:
            return
        v, c = self.viewer, self.session.case
        scale = c.spacing or (1.0, 1.0, 1.0)
        hq = v.add_image(np.zeros(c.shape, np.float32), name="HQ render", scale=scale, contrast_limits=(0.0, 1.0))
        hc = v.add_labels(np.zeros(c.shape, np.uint8), name="mask contour (HQ)", scale=scale, colormap=label_colormap(), opacity=0.9)
        hc.contour = 1
        hc.editable = False
        self.layers.update(hq=hq, hq_contour=hc)
        self._set_contour_opacity()
        v.layers.selection.active = self.mask_layer
        self.fit_heart()

    def _show_contour(self, key: str, z: int, mask2d) -> None:
        layer = self.layers.get(key)
        if layer is not None and mask2d is not None:
            layer.data[z] = mask2d
            _light_refresh(layer)

    def _set_contour_opacity(self) -> None:
        # opacity, not visibility: a hidden layer would leave its grid cell and move the others
        for key in ("contour", "hq_contour"):
            if key in self.layers:
                self.layers[key].opacity = 0.9 if self.contours_on else 0.0

    def _disconnect(self, layer) -> None:
        for ev, cb in (("labels_update", self._on_labels_update), ("paint", self._on_paint)):
            try:
                getattr(layer.events, ev).disconnect(cb)
            except (AttributeError, TypeError, ValueError, RuntimeError):
                pass

    def _title(self) -> None:
        s = self.session
        c = s.case
        if c is None:
            return
        where = s.opened.path or "built-in sample"
        self.viewer.title = f"cmrstudio {__version__} — {c.case_id} ({c.phase or 'phase ?'}, {c.vendor}) — {where}"
        sp = "×".join(f"{v:.3g}" for v in c.spacing) + " mm" if c.spacing else "spacing unknown"
        text = self.viewer.canvas.overlays["text"]
        text.text = f"{c.case_id} · {c.phase or '-'} · {c.vendor} · {'×'.join(map(str, c.shape))} · {sp}"
        text.position = "top_left"
        text.visible = True
        text.font_size = 10

    def fit_heart(self) -> None:
        """Zoom every cell to the heart: the synthesis frame's field of view, centred (the cells share one camera)."""
        s = self.session
        c, fr = s.case, s.frame
        if c is None:
            return
        sp = c.spacing or (1.0, 1.0, 1.0)
        centre = s.centre or ((c.shape[1] - 1) / 2, (c.shape[2] - 1) / 2)
        fov = fr.size * max(fr.step) * max(sp[1], sp[2]) if fr is not None else 0.6 * max(c.shape[1] * sp[1], c.shape[2] * sp[2])
        try:
            w, h = self.viewer.window._qt_viewer.canvas._scene_canvas.size
        except AttributeError:
            return
        cells = 3 if "hq" in self.layers else 2
        cam = self.viewer.camera
        cam.center = (centre[0] * sp[1], centre[1] * sp[2])
        cam.zoom = 0.95 * min(w / cells, h) / (1.1 * fov)

    # -- timing ----------------------------------------------------------------------------------------
    def _on_draw(self, event=None) -> None:
        if self._awaiting_draw:
            now = time.perf_counter()
            for t0 in self._awaiting_draw:
                self.frame_ms.append(1000.0 * (now - t0))
            del self.frame_ms[:-500]
            self._awaiting_draw.clear()

    def frame_stats(self, last: int = 30) -> dict:
        s = self.session
        f = self.frame_ms[-last:]
        r = list(s.render_ms)[-last:]
        return {"frame_p50_ms": float(np.median(f)) if f else None, "render_p50_ms": float(np.median(r)) if r else None,
                "dropped": s.engine.dropped if s.engine else 0, "rendered": s.engine.rendered if s.engine else 0}

    # -- shutdown --------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.session.close()
        # Break the reference cycles that run through Qt's C++ side (signal connections to panels
        # and the window), so the viewer can be garbage collected once napari closes it.
        for sig in (self._call, self.changed, self.message):
            try:
                sig.disconnect()
            except (RuntimeError, TypeError):
                pass
        try:
            self.viewer.dims.events.current_step.disconnect(self._on_step)
            self.viewer.window._qt_viewer.canvas._scene_canvas.events.draw.disconnect(self._on_draw)
        except (AttributeError, RuntimeError, TypeError, ValueError):
            pass
        for layer in list(self.layers.values()):
            self._disconnect(layer)
            for attr in ("undo", "redo"):
                layer.__dict__.pop(attr, None)
        self.layers = {}


def to_display(image01: np.ndarray) -> np.ndarray:
    """A [0, 1] synthetic slice as 8-bit for the canvas (a quarter of the texture upload of float32)."""
    return np.clip(np.asarray(image01) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _light_refresh(layer) -> None:
    """Re-slice a layer whose data changed in place, without recomputing its thumbnail or extent."""
    try:
        layer.refresh(thumbnail=False, extent=False, highlight=False)
    except TypeError:  # an older napari without the keywords
        layer.refresh()
