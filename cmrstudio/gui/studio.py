"""The studio's napari mirror: a :class:`~cmrstudio.session.StudioSession` shown as layers.

All state and every action live in the Qt-free session; this object only

* lays the session out in the viewer: three linked views in napari's grid (one camera, one
  slice; layout, captions, cursor echo and window/level in :mod:`cmrstudio.gui.views`)::

      real:  the scan + the painted mask          (labels layer: it paints into session.mask itself)
      live:  the live render + mask contour        (re-rendered on every brush dab)
      HQ:    the HQ render + mask contour          (diffusion / flow, on demand; empty until asked)

  each with a cross that echoes the mouse position seen in the other views (:mod:`cmrstudio.gui.views`);
* forwards what the painter does (brush dabs, stroke ends, undo, the slice slider, the studio keys
  of :mod:`cmrstudio.gui.keys`) to the session;
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
from cmrstudio.errors import CmrError
from cmrstudio.gui.layers import label_colormap
from cmrstudio.gui.views import PATIENT_COLOUR, REAL_COLOUR, SYNTHETIC_COLOUR, Views
from cmrstudio.session import START_KINDS, StudioSession, base_id  # noqa: F401  (START_KINDS for the panels)

STRIDE = 2  # layers per grid cell: image, mask or contour


class Studio(QObject):
    _call = Signal(object, object)  # (function, args): run on the GUI thread
    changed = Signal(str)  # "case", "mask", "slice", "anatomy", "live", "live_model", "hq", "project", "gallery", "seed", "vendor",
    # "mode", "settings", "edits", "faith", "hq_loading", "tool", "window_level"
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
        self._applying = False  # a session edit is being written through the labels layer
        self._caption_due = False
        self.on_close: list = []  # the window's own clean-up (its timers and filters), run by close()
        self._closed = False
        self.preserve_default = True  # preserve labels while painting over anatomy (paint only over background)
        s = session or StudioSession(settings, project, live_model, device, call_soon=lambda fn, *a: self._call.emit(fn, a), load="none")
        self.session = s
        for name, handler in (("case", self._on_case), ("mask", self._on_mask), ("slice", self._on_slice), ("live", self._on_live),
                              ("live_model", self._on_live_model), ("hq", self._on_hq), ("hq_done", self._on_hq_done),
                              ("message", self.message.emit)):
            s.events.connect(name, handler)
        for name in ("anatomy", "project", "gallery", "seed", "vendor", "mode", "settings", "edits", "faith", "hq_loading", "backend", "margin"):
            s.events.connect(name, lambda *_a, name=name: self.changed.emit(name))
        for name in ("faith", "mode", "live_model", "anatomy", "vendor", "hq_loading"):
            s.events.connect(name, lambda *_a: self.update_captions())
        s.events.connect("edits", lambda: self._title())
        s.edit_sink = self._edit
        self.views = Views(self)
        from qtpy.QtCore import QTimer

        self._caption_timer = QTimer(self)  # live frames come fast; their captions at most four times a second
        self._caption_timer.timeout.connect(lambda: self._caption_due and self.update_captions())
        self._caption_timer.start(250)
        viewer.dims.events.current_step.connect(self._on_step)
        viewer.layers.selection.events.active.connect(self._on_active)
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
        if self.contours_on != bool(on):
            self.contours_on = bool(on)
            self._set_contour_opacity()
            self.changed.emit("tool")

    # -- painter -> session ----------------------------------------------------------------------------
    def _edit(self, idx, vals) -> None:
        """Session edits go through the labels layer, so napari's undo covers them."""
        self._applying = True
        try:
            self.mask_layer.data_setitem(idx, vals)
        finally:
            self._applying = False

    # -- the painter's tools (the studio keys, the tool strip) ------------------------------------------
    def pick_label(self, lab: int) -> None:
        """Paint with label ``lab`` (1 LV, 2 MYO, 3 RV): the brush, on the mask."""
        layer = self.mask_layer
        if layer is None:
            return
        self.viewer.layers.selection.active = layer
        layer.selected_label = int(lab)
        if layer.mode not in ("paint", "fill"):
            layer.mode = "paint"
        self.changed.emit("tool")

    def set_tool(self, mode: str) -> None:
        """``paint`` (brush), ``erase`` or ``fill``."""
        layer = self.mask_layer
        if layer is None:
            return
        self.viewer.layers.selection.active = layer
        layer.mode = mode
        self.changed.emit("tool")

    def brush_step(self, sign: int) -> None:
        layer = self.mask_layer
        if layer is not None:
            size = int(layer.brush_size)
            layer.brush_size = int(np.clip(size + sign * max(1, round(size * 0.15)), 1, 80))

    def toggle_preserve(self) -> None:
        layer = self.mask_layer
        if layer is not None:
            layer.preserve_labels = not layer.preserve_labels
            self.changed.emit("tool")

    def interpolate(self) -> list[int]:
        return self.session.interpolate()

    def toggle_phase(self) -> bool:
        return self.session.toggle_phase()

    def step_slice(self, d: int) -> None:
        self.session.set_slice(self.session.z + int(d))

    def render_hq(self) -> None:
        self.changed.emit("render_hq")  # the synthesis panel knows the model and steps

    def keep_live(self) -> None:
        self.session.keep("live")

    def undo(self) -> None:
        if self.mask_layer is not None:
            self.mask_layer.undo()

    def redo(self) -> None:
        if self.mask_layer is not None:
            self.mask_layer.redo()

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
        if self._applying:  # a session edit: the session has counted it already
            return
        self._stroking = False  # the stroke ended: the contour catches up with the latest rendered mask
        z = self.session.z
        if self.session.live_on and z in self._rendered_mask:
            self._show_contour("contour", z, self._rendered_mask[z])
        self.session.painted(z)
        self.update_captions()
        self.changed.emit("mask")

    def _on_active(self, event=None) -> None:
        """Painting must never silently do nothing: a click on a contour layer gives the mask back."""
        active = self.viewer.layers.selection.active
        mask = self.mask_layer
        ours = [v for k, v in self.layers.items() if k in ("contour", "hq_contour")]
        if mask is not None and active is not None and any(active is layer for layer in ours):
            self.viewer.layers.selection.active = mask

    def _on_label(self, event=None) -> None:
        layer = self.mask_layer
        if layer is not None and int(layer.selected_label) > 3:  # napari's "+"/M keys reach labels the studio does not know
            layer.selected_label = 3
        self.changed.emit("tool")

    def _hook_history(self, lab) -> None:
        """napari's undo/redo (Ctrl+Z, the panel's buttons) write the array without an event: re-render after them."""
        undo, redo = lab.undo, lab.redo

        def after(fn):
            def run():
                fn()
                self._stroking = False
                self.session.mask_edited()
                self.update_captions()
            return run

        lab.undo, lab.redo = after(undo), after(redo)

    # -- session -> layers -----------------------------------------------------------------------------
    def _on_case(self) -> None:
        # no canvas draw while the layers are rebuilt: a draw of the half-built scene can crash a software GL driver
        try:
            native = self.viewer.window._qt_viewer.canvas.native
        except AttributeError:
            native = None
        if native is not None:
            native.setUpdatesEnabled(False)
        try:
            self._build_case()
        finally:
            if native is not None:
                native.setUpdatesEnabled(True)
                native.update()
        self._title()
        self.update_captions()
        self.changed.emit("case")
        self.changed.emit("hq")  # the HQ panel forgets the previous case's job

    def _build_case(self) -> None:
        s, v = self.session, self.viewer
        case = s.case
        self._building = True
        self._submitted.clear()
        self._rendered_mask.clear()
        self._auto_contrast = {}
        self._hq_contour_shown.clear()
        self._stroking = False
        old = self.mask_layer
        tool = None
        if old is not None:  # the painter's tool carries over to the next case
            tool = (int(old.selected_label), str(old.mode), int(old.brush_size), bool(old.preserve_labels))
            old.mode = "pan_zoom"  # the old layer leaves in a neutral mode (no brush or fill overlay)
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
            scan = v.add_image(case.image, name=f"REAL · {cid}", scale=scale, contrast_limits=(float(lo), float(max(hi, lo + 1))),
                               metadata={"cmrstudio": case.describe()})
        else:  # keeps the side-by-side cells in place
            scan = v.add_image(np.zeros(case.shape, np.float32), name=f"REAL · {cid} (no scan)", scale=scale, contrast_limits=(0, 1))
        lab = v.add_labels(s.mask, name=f"{cid} mask (paint here)", scale=scale, colormap=label_colormap(), opacity=0.45)
        synth = v.add_image(np.zeros(case.shape, np.uint8), name="LIVE", scale=scale, contrast_limits=(0, 255))
        # the contour shows the mask the synthetic slice was rendered from (updated with each frame)
        contour = v.add_labels(np.array(s.mask, copy=True), name="mask contour (live)", scale=scale, colormap=label_colormap(), opacity=0.9)
        contour.contour = 1
        contour.editable = False
        hq = v.add_image(np.zeros(case.shape, np.float32), name="HQ", scale=scale, contrast_limits=scan.contrast_limits)
        hc = v.add_labels(np.zeros(case.shape, np.uint8), name="mask contour (HQ)", scale=scale, colormap=label_colormap(), opacity=0.9)
        hc.contour = 1
        hc.editable = False
        order = [scan, lab, synth, contour, hq, hc]
        for i, layer in enumerate(order):  # the studio's cells first (plain napari: the user's layers come after)
            j = v.layers.index(layer)
            if j != i:
                v.layers.move(j, i)
        self.layers = {"scan": scan, "mask": lab, "synthetic": synth, "contour": contour, "hq": hq, "hq_contour": hc}
        for layer in order:
            _bind_keys(self, layer)
        lab.events.labels_update.connect(self._on_labels_update)
        lab.events.paint.connect(self._on_paint)
        lab.events.selected_label.connect(self._on_label)
        for ev in ("mode", "preserve_labels", "brush_size"):
            getattr(lab.events, ev).connect(self._on_tool_event)
        self._hook_history(lab)
        v.layers.selection.active = lab
        if tool is None:
            lab.mode = "paint"
            lab.selected_label = 1
            lab.preserve_labels = self.preserve_default
            lab.brush_size = max(3, int(round(10.0 / (scale[1] or 1.0))))
        else:
            lab.selected_label, lab.brush_size, lab.preserve_labels = tool[0], tool[2], tool[3]
            lab.mode = tool[1] if tool[1] in ("paint", "erase", "fill") else "paint"
        v.canvas.grid.stride = STRIDE
        v.canvas.grid.shape = self.views.shape
        v.canvas.grid.enabled = True
        self._set_contour_opacity()
        if case.shape[0] > 1:
            v.dims.set_current_step(0, s.z)
        self._building = False
        v.reset_view()
        if case.image is not None:
            self.views.preset("auto")  # one window/level for real, live and HQ (sync W/L)
        self.views.layout()

    def _on_tool_event(self, event=None) -> None:
        self.changed.emit("tool")

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
        self.update_captions()
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
        if not self._auto_contrast.get("synthetic") and res.framed is not None and (
                not self.views.sync_wl or self.session.case.image is None):
            # unsynced (or nothing to sync with): a window/level of its own, robust percentiles of the first frame
            lo, hi = np.percentile(res.framed, (0.5, 99.5)) * 255.0
            self.views.set_window_level("live", float(lo), float(max(hi, lo + 1.0)), sync=False)
            self._auto_contrast["synthetic"] = True
        _light_refresh(layer)
        self._rendered_mask[z] = res.mask
        if not self._stroking:  # during a stroke the contour waits for the release (one texture upload less per frame)
            self._show_contour("contour", z, res.mask)
        if t0 is not None:
            self._awaiting_draw.append(t0)
        self._caption_due = True
        self.changed.emit("live")

    def _on_live_model(self) -> None:
        self._submitted.clear()  # request ids restart with each engine
        self.fit_heart()
        self.changed.emit("live_model")

    def _on_hq(self, job, step, preview) -> None:
        token, z = job.tag
        if token == self.session.token:
            if preview is not None:
                self._hq_preview(job, z, preview)
                if z not in self._hq_contour_shown:
                    self._show_contour("hq_contour", z, job.mask)
                    self._hq_contour_shown.add(z)
        self.update_captions()
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
            self.layers["hq"].data[z] = job.result.image
            if not self._auto_contrast.get("hq") and job.result.framed is not None and (
                    not self.views.sync_wl or self.session.case.image is None):
                img = job.result.image
                lo, hi = np.percentile(img, (0.5, 99.5))
                self.views.set_window_level("hq", float(lo), float(max(hi, lo + 1e-3)), sync=False)
                self._auto_contrast["hq"] = True
            _light_refresh(self.layers["hq"])
            self._show_contour("hq_contour", z, job.mask)
        self.update_captions()
        self.changed.emit("hq")

    # -- captions: what each view shows ------------------------------------------------------------------
    def update_captions(self) -> None:
        """Each cell says what it shows: the case and slice with the anatomy read-out; the live model, in this
        patient ℗ (amber) or fully synthetic (cyan), and its faithfulness; the HQ render and its progress."""
        s = self.session
        c = s.case
        if c is None or "scan" not in self.layers or self._closed:
            return
        self._caption_due = False
        z, n = s.z, c.shape[0]
        self.views.caption("real", f"REAL · {c.case_id} · slice {z + 1}/{n}\n{self.sizes_text()}", REAL_COLOUR)
        patient = s.mode == "in-patient"
        colour = PATIENT_COLOUR if patient else SYNTHETIC_COLOUR
        where = "℗ in this patient" if patient else "fully synthetic"
        r = s.renderer
        res = s.live_shown.get(z)
        parts = [r.name if r is not None else ("loading the live model…" if s._live_loading else "no live model")]
        body = where
        if not patient and r is not None and getattr(r, "layout_choice", None):
            try:  # a body layout other than the model's own (Settings ▸ Body layout): the cell names it
                body += f" · body {r.layout_prior_name()}"
            except CmrError:  # a caption never fails; the status line has said why the choice was refused
                pass
        if r is not None and not s.live_on:
            parts.append("live off")
        elif r is not None:
            f = s.faith if s.faith is not None and s.faith.get("z") == z else None
            if f is not None and f.get("mean") is not None:
                parts.append(f"Dice {f['mean']:.2f}")
            if res is not None:
                parts.append(f"{res.render_ms:.0f} ms")
        self.views.caption("live", f"LIVE · {body}\n{' · '.join(parts)}", colour)
        job, hq_res = s.hq_job, s.hq_results.get(z)
        if s.hq_loading:
            hq = f"HQ · {where}\nloading {s.hq_loading}…"
        elif job is not None and not job.finished and job.tag[1] == z:
            name = s.queue.renderer.name if s.queue is not None else "HQ"
            hq = f"HQ · {where}\n{name} · step {s.hq_step}/{job.steps}…"
        elif hq_res is not None:
            rec = hq_res.record
            colour = PATIENT_COLOUR if rec.derived_from_patient else SYNTHETIC_COLOUR
            hwhere = "℗ in this patient" if rec.derived_from_patient else "fully synthetic"
            hq = f"HQ · {hwhere}\n{rec.model} · {rec.steps} steps · {rec.seconds or 0:.1f} s"
        else:
            hq, colour = "HQ · none for this slice\nRender HQ: H", REAL_COLOUR
        self.views.caption("hq", hq, colour)

    def sizes_text(self) -> str:
        """LV diameter, wall thickness and RV area of the current slice, e.g. ``LV ⌀ 52 mm · wall 9.1 mm · RV 14.2 cm²``."""
        from cmrstudio import edits

        s = self.session
        try:
            sz = edits.structure_sizes(s.mask[s.z], s.spacing_yx())
        except Exception:  # a read-out only (an unknown label painted: the next stroke fixes it)
            return ""
        unit = sz.get("unit", "px")
        parts = []
        if sz.get("lv_diameter") is not None:
            parts.append(f"LV ⌀ {sz['lv_diameter']:.0f} {unit}")
        if sz.get("wall_thickness") is not None:
            parts.append(f"wall {sz['wall_thickness']:.1f} {unit}")
        if sz.get("rv_area") is not None:
            parts.append(f"RV {sz['rv_area'] / 100:.1f} cm²" if unit == "mm" else f"RV {sz['rv_area']:.0f} px²")
        return " · ".join(parts) if parts else "no heart painted on this slice"

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
        for ev, cb in (("labels_update", self._on_labels_update), ("paint", self._on_paint), ("selected_label", self._on_label),
                       ("mode", self._on_tool_event), ("preserve_labels", self._on_tool_event), ("brush_size", self._on_tool_event)):
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
        sp = "×".join(f"{v:.3g}" for v in c.spacing) + " mm" if c.spacing else "spacing unknown"
        star = " • unsaved edits" if s.dirty else ""
        self.viewer.title = (f"cmrstudio {__version__} — {c.case_id} ({c.phase or 'phase ?'}, {c.vendor}, "
                             f"{'×'.join(map(str, c.shape))}, {sp}) — {where}{star}")

    def fit_heart(self) -> None:
        """The grid shape for the canvas, then every cell zoomed to the heart (the cells share one camera)."""
        self.views.layout()

    # -- timing ----------------------------------------------------------------------------------------
    def _on_draw(self, event=None) -> None:
        if self._awaiting_draw:
            now = time.perf_counter()
            for t0 in self._awaiting_draw:
                self.frame_ms.append(1000.0 * (now - t0))
            del self.frame_ms[:-500]
            self._awaiting_draw.clear()

    def backend_dialog(self) -> None:
        """Settings ▸ Backend: this machine or a cmrstudio serve server."""
        from cmrstudio.gui.app import BackendDialog

        BackendDialog(self, self.viewer.window._qt_window).exec()

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
        self._caption_timer.stop()
        try:
            self._caption_timer.timeout.disconnect()
        except (RuntimeError, TypeError):
            pass
        for fn in list(getattr(self, "on_close", [])):
            try:
                fn()
            except Exception:  # noqa: BLE001  (a clean-up must not stop the others)
                pass
        self.session.close()
        # Break the reference cycles that run through Qt's C++ side (signal connections to panels
        # and the window), so the viewer can be garbage collected once napari closes it.
        for sig in (self._call, self.changed, self.message):
            try:
                sig.disconnect()
            except (RuntimeError, TypeError):
                pass
        self.views.close()
        try:
            self.viewer.dims.events.current_step.disconnect(self._on_step)
            self.viewer.layers.selection.events.active.disconnect(self._on_active)
            self.viewer.window._qt_viewer.canvas._scene_canvas.events.draw.disconnect(self._on_draw)
        except (AttributeError, RuntimeError, TypeError, ValueError):
            pass
        for layer in list(self.layers.values()):
            self._disconnect(layer)
            for attr in ("undo", "redo"):
                layer.__dict__.pop(attr, None)
        self.layers = {}


def _bind_keys(studio, layer) -> None:
    from cmrstudio.gui.keys import bind_studio_keys

    bind_studio_keys(studio, layer)


def to_display(image01: np.ndarray) -> np.ndarray:
    """A [0, 1] synthetic slice as 8-bit for the canvas (a quarter of the texture upload of float32)."""
    return np.clip(np.asarray(image01) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _light_refresh(layer) -> None:
    """Re-slice a layer whose data changed in place, without recomputing its thumbnail or extent."""
    try:
        layer.refresh(thumbnail=False, extent=False, highlight=False)
    except TypeError:  # an older napari without the keywords
        layer.refresh()
