"""The studio's one state object: what is open, the painted mask, the renderers, the project.

Panels observe it (its Qt signals) and call its actions; it owns the napari layers:

    cell 1: the real scan + the painted mask        (labels layer, the one you paint)
    cell 2: the live synthetic slice + mask contour (SPADE, re-rendered on every brush dab)
    cell 3: the HQ render + mask contour            (diffusion / flow, on demand)

napari's grid mode puts the cells side by side with one camera (zoom and pan are linked) and
one set of dims (the slice is linked). Rendering happens on worker threads (the live engine,
latest-wins, and the HQ job queue); results come back through queued Qt signals, so layers are
only touched on the GUI thread.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from qtpy.QtCore import QObject, Signal

from cmrstudio import __version__
from cmrstudio.anatomy import check_mask
from cmrstudio.case import Case
from cmrstudio.data.frame import Frame, from_frame
from cmrstudio.errors import CmrError
from cmrstudio.gui.layers import label_colormap
from cmrstudio.settings import Settings, load_settings, save_settings

START_KINDS = {
    "scan": "the scan's own segmentation",
    "segment": "segment the scan (seg-cmr)",
    "template": "parametric template",
    "phantom": "phantom",
    "empty": "empty",
}


@dataclass
class Opened:
    """Where the open case came from, for the case and phase pickers."""

    path: Path | None  # None: the built-in sample
    refs: list  # CaseRef list (may be empty for a single file)
    index: int  # which ref is open (-1: a single file)


def live_threads() -> int | None:
    """Torch threads for the live path: all cores but one, so the GUI thread (and the software
    OpenGL of a remote or virtual display) always has a core. None: torch's default.
    ``$CMRSTUDIO_LIVE_THREADS`` overrides."""
    import os

    env = os.environ.get("CMRSTUDIO_LIVE_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    n = os.cpu_count() or 1
    return max(1, n - 1) if n <= 8 else None


def _base_id(ref) -> str:
    """A case's id without its phase or frame suffix (``_ED``, ``_frame01``): one patient's phases group together."""
    return re.sub(r"(_(ed|es)|_frame\d+)$", "", ref.case_id, flags=re.IGNORECASE) or ref.case_id


def _ref_of_file(path: Path):
    """(the case ref that ``path`` belongs to, all refs of its folder), or (None, []) when none does."""
    from cmrstudio.io import scan

    try:
        refs = scan(path.parent)
    except Exception:  # an unreadable neighbour must not stop the file itself from opening
        return None, []
    want = path.resolve()
    for r in refs:
        if any(f is not None and Path(f).resolve() == want for f in (r.image, r.mask)):
            return r, refs
    return None, []


def _err(exc: BaseException) -> str:
    return exc.message if isinstance(exc, CmrError) else f"{type(exc).__name__}: {exc}"


class Studio(QObject):
    live_result = Signal(object)  # RenderResult, from the live worker
    hq_progress = Signal(object)  # Job, from the HQ worker
    hq_finished = Signal(object)  # Job, from the HQ worker (or the thread that cancelled it)
    live_loaded = Signal(object, object, str, int)  # (renderer or None, name, error, load number) from the loading thread
    changed = Signal(str)  # "case", "mask", "live", "live_model", "hq", "project", "gallery", "settings"
    message = Signal(str, str)  # level (info, warning, error), one sentence

    def __init__(self, viewer, settings: Settings | None = None, project=None, live_model: str | None = None,
                 device: str | None = None, load_async: bool = False):
        super().__init__()
        self.viewer = viewer
        warn = None
        if settings is None:
            settings, warn = load_settings()
        self.settings = settings
        self.remember = True  # save settings on change and close (off for screenshots and benchmarks)
        self.owns_viewer = True  # False inside plain napari: the user's other layers are left alone
        self.device = device or (None if settings.device in (None, "", "auto") else settings.device)
        self.live_threads = live_threads()
        self.case: Case | None = None
        self.opened = Opened(None, [], -1)
        self.frame: Frame | None = None
        self.centre: tuple[float, float] | None = None
        self.token = 0  # bumps with every case; stale results are dropped
        self.layers: dict[str, object] = {}
        self.vendor = settings.vendor or "unknown"
        self.seed = 0
        self.live_on = True
        self.contours_on = True
        self.renderer = None
        self.engine = None
        self.hq_renderers: dict[str, object] = {}
        self.queue = None
        self.hq_job = None  # the latest HQ Job
        self.hq_results: dict[int, object] = {}  # slice -> JobResult
        self.live_shown: dict[int, object] = {}  # slice -> RenderResult on screen
        self.frame_ms: deque[float] = deque(maxlen=500)  # dab -> synthetic layer drawn
        self.render_ms: deque[float] = deque(maxlen=500)
        self._submitted: dict[int, float] = {}
        self._load_seq = 0  # the newest model load wins; a slower, older one is discarded
        self._awaiting_draw: list[float] = []
        self._z = None
        self._building = False
        self._stroking = False
        self._rendered_mask: dict[int, np.ndarray] = {}
        self._auto_contrast: dict[str, bool] = {}
        self._hq_contour_shown: set[int] = set()
        self.hq_step = 0
        self._closed = False
        self.findings: list = []
        self.project = project
        self.messages: list[tuple[str, str]] = []
        self.message.connect(lambda lvl, text: self.messages.append((lvl, text)))
        self.live_result.connect(self._on_live_result)
        self.hq_progress.connect(self._on_hq_progress)
        self.hq_finished.connect(self._on_hq_finished)
        viewer.dims.events.current_step.connect(self._on_step)
        try:  # the moment the canvas has drawn: the end of the dab -> screen latency
            viewer.window._qt_viewer.canvas._scene_canvas.events.draw.connect(self._on_draw)
        except AttributeError:
            pass
        self.live_loaded.connect(self._on_live_loaded)
        if warn:
            self.say("warning", warn)
        if load_async:  # the window opens first (the event loop is running), then torch and the model load beside it
            from qtpy.QtCore import QTimer

            name = live_model or settings.live_model
            QTimer.singleShot(0, lambda: self.load_live_model_async(name))
        else:
            self.set_live_model(live_model or settings.live_model, quiet=False)

    # -- messages ------------------------------------------------------------------------------
    def say(self, level: str, text: str) -> None:
        self.message.emit(level, text)

    # -- opening -------------------------------------------------------------------------------
    def open_path(self, path: str | Path | None, case: str | None = None, phase: str | None = None) -> bool:
        """Open a scan file, a dataset folder (its first case, or ``case``) or, with None, the sample.

        Bad input gets a message; what is open stays open.
        """
        from cmrstudio.io import read_case, scan, select_refs
        from cmrstudio.resources import sample_dir

        try:
            p = Path(path).expanduser() if path is not None else None
            folder = sample_dir() if p is None else p
            if p is not None and not p.exists():
                raise CmrError(f"{p} does not exist; check the path.")
            if folder.is_dir():
                refs = scan(folder)
                if not refs:
                    raise CmrError(f"{folder} holds no case cmrstudio can read; open a scan file or a dataset folder.")
                pick = select_refs(refs, case) if case else refs
                if not pick:
                    raise CmrError(f"{folder} has no case {case!r}; its cases are {', '.join(sorted({r.case_id for r in refs})[:8])}.")
                same = [r for r in pick if _base_id(r) == _base_id(pick[0])]
                want = phase or ("ED" if any(r.phase == "ED" for r in same) else None)
                ref = next((r for r in same if r.phase == want), same[0])
                c = ref.load()
                opened = Opened(p, refs, refs.index(ref))
            else:
                ref, refs = _ref_of_file(p)
                if ref is not None:  # a file of a known layout: its mask and its other phases come along
                    c = ref.load()
                    opened = Opened(p, refs, refs.index(ref))
                else:
                    c = read_case(p, case=case)
                    opened = Opened(p, [], -1)
        except Exception as exc:  # unreadable file, damaged archive, ...
            what = str(path) if path is not None else "the sample case"
            text = _err(exc)
            self.say("error", text if what in text else f"{what} could not be opened: {text}")
            return False
        self.opened = opened
        self.set_case(c)
        if p is not None:
            self.settings.last_folder = str(p if p.is_dir() else p.parent)
            self.settings.add_recent(str(p))
            self.save_settings()
        return True

    def open_ref(self, index: int) -> bool:
        """Another case or phase from the open dataset folder."""
        refs = self.opened.refs
        if not 0 <= index < len(refs):
            return False
        try:
            c = refs[index].load()
        except Exception as exc:
            self.say("error", f"{refs[index].case_id} could not be opened: {_err(exc)}")
            return False
        self.opened = Opened(self.opened.path, refs, index)
        self.set_case(c)
        return True

    def phases(self) -> list[tuple[str, int]]:
        """(phase, ref index) for the open case's phases."""
        o = self.opened
        if o.index < 0:
            return [(self.case.phase or "-", -1)] if self.case else []
        cid = _base_id(o.refs[o.index])
        return [(r.phase or "-", i) for i, r in enumerate(o.refs) if _base_id(r) == cid]

    def case_ids(self) -> list[str]:
        seen: list[str] = []
        for r in self.opened.refs:
            if _base_id(r) not in seen:
                seen.append(_base_id(r))
        return seen

    def open_case_id(self, case_id: str) -> bool:
        for i, r in enumerate(self.opened.refs):
            if _base_id(r) == case_id:
                phase = self.case.phase if self.case else None
                same = [j for j, s in enumerate(self.opened.refs) if _base_id(s) == case_id and s.phase == phase]
                return self.open_ref(same[0] if same else i)
        return False

    # -- the case and its layers -----------------------------------------------------------------
    def set_case(self, case: Case, replace: list | None = None) -> None:
        """Show ``case``. The studio owns the viewer: every layer goes, unless ``replace`` names the
        layers to take over (plain napari, the npe2 widget): then only those and the studio's own go."""
        v = self.viewer
        self.token += 1
        self._building = True
        if self.queue is not None:
            self.queue.cancel_all()
        self.case = case
        self.hq_results.clear()
        self._hq_contour_shown.clear()
        self.hq_step = 0
        self.live_shown.clear()
        self._rendered_mask.clear()
        self._auto_contrast = {}
        self._stroking = False
        self.centre = None  # the new case's heart, not the previous one's
        self.hq_job = None
        for layer in list(self.layers.values()):
            self._disconnect(layer)
        if replace is None and self.owns_viewer:
            v.layers.clear()
        else:
            for layer in list(self.layers.values()) + list(replace or []):
                if layer in v.layers:
                    v.layers.remove(layer)
        self.layers = {}
        scale = case.spacing or (1.0, 1.0, 1.0)
        cid = case.case_id
        if case.image is not None:
            lo, hi = np.percentile(case.image, (0.5, 99.5))
            scan = v.add_image(case.image, name=f"{cid} scan", scale=scale, contrast_limits=(float(lo), float(max(hi, lo + 1))),
                               metadata={"cmrstudio": case.describe()})
        else:  # keeps the side-by-side cells in place
            scan = v.add_image(np.zeros(case.shape, np.float32), name=f"{cid} (no scan)", scale=scale, contrast_limits=(0, 1))
        mask = np.array(case.mask, dtype=np.uint8, copy=True) if case.mask is not None else np.zeros(case.shape, np.uint8)
        lab = v.add_labels(mask, name=f"{cid} mask (paint here)", scale=scale, colormap=label_colormap(), opacity=0.45)
        synth = v.add_image(np.zeros(case.shape, np.uint8), name="live synthetic", scale=scale, contrast_limits=(0, 255))
        # the contour shows the mask the synthetic slice was rendered from (updated with each frame)
        contour = v.add_labels(np.array(mask, copy=True), name="mask contour (live)", scale=scale, colormap=label_colormap(), opacity=0.9)
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
        self._z = None
        if case.shape[0] > 1:
            v.dims.set_current_step(0, case.shape[0] // 2)
        self._building = False
        self._z = self.current_z()
        v.reset_view()
        self.reset_frame()
        self.fit_heart()
        self._title()
        self.check_anatomy()
        self.changed.emit("case")
        self.changed.emit("hq")  # the HQ panel forgets the previous case's job
        self.request_live()

    def _hook_history(self, lab) -> None:
        """napari's undo/redo (Ctrl+Z, the panel's buttons) write the array without an event: re-render after them."""
        undo, redo = lab.undo, lab.redo

        def after(fn):
            def run():
                fn()
                self._mask_edited()
            return run

        lab.undo, lab.redo = after(undo), after(redo)

    def _mask_edited(self) -> None:
        self._stroking = False  # a panel edit or undo is not a brush stroke: the contour follows the next frame
        if not self.live_on:  # with live on, the contour follows the next rendered frame
            self._show_contour("contour", self.current_z(), self.mask_layer.data[self.current_z()])
        self.check_anatomy()
        self.changed.emit("mask")
        self.request_live()

    def _disconnect(self, layer) -> None:
        for ev, cb in (("labels_update", self._on_labels_update), ("paint", self._on_paint)):
            try:
                getattr(layer.events, ev).disconnect(cb)
            except (AttributeError, TypeError, ValueError, RuntimeError):
                pass

    def _title(self) -> None:
        c = self.case
        if c is None:
            return
        where = self.opened.path or "built-in sample"
        self.viewer.title = f"cmrstudio {__version__} — {c.case_id} ({c.phase or 'phase ?'}, {c.vendor}) — {where}"
        sp = "×".join(f"{v:.3g}" for v in c.spacing) + " mm" if c.spacing else "spacing unknown"
        text = self.viewer.canvas.overlays["text"]
        text.text = f"{c.case_id} · {c.phase or '-'} · {c.vendor} · {'×'.join(map(str, c.shape))} · {sp}"
        text.position = "top_left"
        text.visible = True
        text.font_size = 10

    def status_line(self) -> str:
        c = self.case
        if c is None:
            return "nothing open"
        where = str(self.opened.path) if self.opened.path else "built-in sample (Sunnybrook, CC0)"
        model = self.renderer.name if self.renderer else "no live model"
        proj = f" · project {self.project.name}" if self.project else ""
        return f"{c.case_id} {c.phase or ''} · slice {self.current_z() + 1}/{c.shape[0]} · {where} · live: {model}{proj}"

    @property
    def mask_layer(self):
        return self.layers.get("mask")

    def current_z(self) -> int:
        if self.case is None:
            return 0
        return int(np.clip(self.viewer.dims.current_step[0], 0, self.case.shape[0] - 1))

    def spacing_yx(self) -> tuple[float, float] | None:
        sp = self.case.spacing if self.case else None
        return (sp[1], sp[2]) if sp else None

    # -- the synthesis frame -------------------------------------------------------------------
    def reset_frame(self) -> None:
        """One frame per case (and per start mask), so the picture does not jump while painting."""
        if self.case is None or self.renderer is None:
            self.frame = None
            return
        m = self.mask_layer.data
        self.frame = self.renderer.frame_for(m, self.case.spacing, centre=self.centre if not m.any() else None)
        self.centre = tuple(self.frame.extra.get("centre", self.centre or (0, 0)))

    def fit_heart(self) -> None:
        """Zoom every cell to the heart: the synthesis frame's field of view, centred (the cells share one camera)."""
        c, fr = self.case, self.frame
        if c is None:
            return
        sp = c.spacing or (1.0, 1.0, 1.0)
        centre = self.centre or ((c.shape[1] - 1) / 2, (c.shape[2] - 1) / 2)
        fov = fr.size * max(fr.step) * max(sp[1], sp[2]) if fr is not None else 0.6 * max(c.shape[1] * sp[1], c.shape[2] * sp[2])
        try:
            w, h = self.viewer.window._qt_viewer.canvas._scene_canvas.size
        except AttributeError:
            return
        cells = 3 if "hq" in self.layers else 2
        cam = self.viewer.scene.camera if hasattr(self.viewer, "scene") else self.viewer.camera
        cam.center = (centre[0] * sp[1], centre[1] * sp[2])
        cam.zoom = 0.95 * min(w / cells, h) / (1.1 * fov)

    def frame_for(self, renderer) -> Frame:
        if self.renderer is not None and renderer.size == self.renderer.size and renderer.spacing_mm == self.renderer.spacing_mm:
            return self.frame
        return renderer.frame_for(self.mask_layer.data, self.case.spacing, centre=self.centre)

    # -- live synthesis ------------------------------------------------------------------------
    def set_live_model(self, name: str | None, quiet: bool = True) -> bool:
        """Load a SPADE model for the live path; on failure the current one stays."""
        self._load_seq += 1
        try:
            from cmrstudio.engine.live import Renderer

            r = Renderer(name, device=self.device, threads=self.live_threads, bf16=None)
        except Exception as exc:
            self._live_failed(name, _err(exc))
            return False
        self._use_renderer(r, name, quiet)
        return True

    def load_live_model_async(self, name: str | None) -> threading.Thread:
        """Load the live model on a thread (importing torch takes a second or two); it takes over when ready."""
        self._load_seq += 1
        seq = self._load_seq

        def work():
            try:
                from cmrstudio.engine.live import Renderer

                r, err = Renderer(name, device=self.device, threads=self.live_threads, bf16=None), ""
            except Exception as exc:
                r, err = None, _err(exc)
            self.live_loaded.emit(r, name, err, seq)

        self.say("info", "Loading the live model…")
        t = threading.Thread(target=work, name="cmrstudio-load", daemon=True)
        t.start()
        return t

    def _on_live_loaded(self, r, name, err: str, seq: int) -> None:
        if self._closed or seq != self._load_seq:  # closed, or the user picked another model meanwhile
            return
        if r is None:
            self._live_failed(name, err)
        else:
            self._use_renderer(r, name, quiet=False)
            self.say("info", f"Live model {r.name} ready: paint on the scan.")

    def _live_failed(self, name, err: str) -> None:
        keep = f"; still using '{self.renderer.name}'" if self.renderer else "; live synthesis is off until a model loads"
        self.say("error", f"The live model {name or '(default)'} could not be loaded: {err}{keep}.")

    def _use_renderer(self, r, name: str | None, quiet: bool) -> None:
        from cmrstudio.engine.live import LiveEngine

        old = self.engine
        self.renderer = r
        self._submitted.clear()  # request ids restart with each engine
        self.engine = LiveEngine(r, on_ready=self.live_result.emit)
        if old is not None:
            old.close()
        if name:
            self.settings.live_model = name
        if self.case is not None:
            first = self.frame is None
            self.reset_frame()
            if first:
                self.fit_heart()
            self.request_live()
        if quiet:
            self.say("info", f"Live model: {r.name}.")
        self.changed.emit("live_model")

    def set_vendor(self, vendor: str) -> None:
        self.vendor = vendor
        self.settings.vendor = vendor
        self.request_live()

    def set_seed(self, seed: int | None = None) -> int:
        self.seed = int(random.randrange(0, 2**31 - 1) if seed is None else seed)
        self.request_live()
        self.changed.emit("seed")
        return self.seed

    def set_live(self, on: bool) -> None:
        self.live_on = bool(on)
        if on:
            self.request_live()

    def set_contours(self, on: bool) -> None:
        self.contours_on = bool(on)
        self._set_contour_opacity()

    def _set_contour_opacity(self) -> None:
        # opacity, not visibility: a hidden layer would leave its grid cell and move the others
        for key in ("contour", "hq_contour"):
            if key in self.layers:
                self.layers[key].opacity = 0.9 if self.contours_on else 0.0

    def request_live(self) -> int | None:
        if not self.live_on or self.engine is None or self.case is None or self.frame is None or self._closed:
            return None
        z = self.current_z()
        rid = self.engine.submit(self.mask_layer.data[z], self.frame, self.vendor, self.seed, tag=(self.token, z))
        self._submitted[rid] = time.perf_counter()
        return rid

    def _on_labels_update(self, event=None) -> None:
        # every brush dab: nothing but a (latest-wins) render request on the GUI thread
        self._stroking = True
        self.request_live()

    def _show_contour(self, key: str, z: int, mask2d) -> None:
        layer = self.layers.get(key)
        if layer is not None and mask2d is not None:
            layer.data[z] = mask2d
            _light_refresh(layer)

    def _on_paint(self, event=None) -> None:
        self._stroking = False  # the stroke ended: the contour catches up with the latest rendered mask
        z = self.current_z()
        if self.live_on and z in self._rendered_mask:
            self._show_contour("contour", z, self._rendered_mask[z])
        self.check_anatomy()
        self.changed.emit("mask")

    def _on_step(self, event=None) -> None:
        if self._building or self.case is None:
            return
        z = self.current_z()
        if z != self._z:
            self._z = z
            self.request_live()
            self.check_anatomy()
            self.changed.emit("slice")

    def _on_live_result(self, res) -> None:
        t0 = self._submitted.pop(res.request_id, None)
        for rid in [r for r in self._submitted if r < res.request_id]:  # dropped (latest-wins): this frame includes them
            del self._submitted[rid]
        token, z = res.tag
        if token != self.token or self.case is None:
            return
        if res.error:
            self.say("error", res.error)
            return
        layer = self.layers["synthetic"]
        layer.data[z] = to_display(res.image)
        if not self._auto_contrast.get("synthetic") and res.framed is not None:
            # a window/level like the scan's (robust percentiles of the first frame); the user can change it
            lo, hi = np.percentile(res.framed, (0.5, 99.5)) * 255.0
            layer.contrast_limits = (float(lo), float(max(hi, lo + 1.0)))
            self._auto_contrast["synthetic"] = True
        _light_refresh(layer)
        self._rendered_mask[z] = res.mask
        if not self._stroking:  # during a stroke the contour waits for the release (one texture upload less per frame)
            self._show_contour("contour", z, res.mask)
        self.live_shown[z] = res
        self.render_ms.append(res.render_ms)
        if t0 is not None:
            self._awaiting_draw.append(t0)
        if res.note and res.note not in (m for _, m in self.messages[-5:]):
            self.say("warning", res.note)
        self.changed.emit("live")

    def _on_draw(self, event=None) -> None:
        if self._awaiting_draw:
            now = time.perf_counter()
            for t0 in self._awaiting_draw:
                self.frame_ms.append(1000.0 * (now - t0))
            self._awaiting_draw.clear()

    def frame_stats(self, last: int = 30) -> dict:
        f = list(self.frame_ms)[-last:]
        r = list(self.render_ms)[-last:]
        return {"frame_p50_ms": float(np.median(f)) if f else None, "render_p50_ms": float(np.median(r)) if r else None,
                "dropped": self.engine.dropped if self.engine else 0, "rendered": self.engine.rendered if self.engine else 0}

    # -- mask edits ----------------------------------------------------------------------------
    def apply_mask(self, new: np.ndarray, z: int | None = None) -> int:
        """Replace the mask (volume) or one slice through the labels layer's history, so undo restores it."""
        lab = self.mask_layer
        old = lab.data if z is None else lab.data[z]
        new = np.asarray(new, dtype=np.uint8)
        if new.shape != old.shape:
            raise CmrError(f"The new mask is {new.shape}, but the painted mask is {old.shape}.")
        idx = np.nonzero(new != old)
        if z is not None:
            idx = (np.full(idx[0].shape, z, dtype=idx[0].dtype),) + idx
        n = int(idx[0].size)
        if n:
            lab.data_setitem(idx, new[idx[1:]] if z is not None else new[idx])
        self._mask_edited()
        return n

    def start_mask(self, kind: str, scope: str = "slice", **template) -> bool:
        """Start the mask from the scan's segmentation, the segmenter, a template, a phantom, or empty."""
        from cmrstudio import edits

        if self.case is None:
            return False
        c, z = self.case, self.current_z()
        zs = [z] if scope == "slice" else list(range(c.shape[0]))
        sp = self.spacing_yx()
        try:
            vol = np.array(self.mask_layer.data, copy=True)
            if kind == "scan":
                if c.mask is None:
                    raise CmrError(f"{c.case_id} came without a segmentation; try 'segment the scan' or a template.")
                vol[zs] = c.mask[zs]
            elif kind == "segment":
                from cmrstudio.engine.segment import segment_scan

                vol[zs] = segment_scan(c, device=self.device, slices=zs, centre=self.centre)[zs]
            elif kind == "template":
                if scope == "slice":
                    from cmrstudio.anatomy import template_mask

                    vol[z] = template_mask(c.shape[1:], float(np.mean(sp)) if sp else 1.0, centre=self.centre, **template)
                else:
                    vol[:] = edits.template_volume(c.shape, c.spacing, centre=self.centre, **template)
            elif kind == "phantom":
                pm = edits.phantom_mask(c.shape[1:], sp, phase=c.phase or "ED", seed=self.seed)
                pm = _recentre(pm, self.centre)
                vol[zs] = pm
            elif kind == "empty":
                vol[zs] = 0
            else:
                raise CmrError(f"Unknown start mask {kind!r}; use one of {', '.join(START_KINDS)}.")
        except Exception as exc:
            self.say("error", _err(exc))
            return False
        self.apply_mask(vol)
        return True

    def change_structure(self, label: int, mm: float, scope: str = "slice") -> bool:
        from cmrstudio import edits

        z = self.current_z()
        try:
            if scope == "slice":
                self.apply_mask(edits.change_structure(self.mask_layer.data[z], label, mm, self.spacing_yx()), z)
            else:
                self.apply_mask(edits.change_volume(self.mask_layer.data, label, mm, self.case.spacing))
        except Exception as exc:
            self.say("error", _err(exc))
            return False
        return True

    def copy_from_neighbour(self, offset: int) -> bool:
        z = self.current_z()
        src = z + offset
        if not 0 <= src < self.case.shape[0]:
            self.say("warning", f"There is no slice {src + 1}; the volume has slices 1–{self.case.shape[0]}.")
            return False
        self.apply_mask(self.mask_layer.data[src], z)
        return True

    def check_anatomy(self) -> list:
        """The foundation's anatomy checks on the current slice, as gentle warnings."""
        if self.case is None:
            self.findings = []
            return []
        z = self.current_z()
        sl = self.mask_layer.data[z]
        fs = check_mask(sl[None], self.case.spacing) if sl.any() else []
        self.findings = [f for f in fs if f.severity != "info"]
        self.changed.emit("anatomy")
        return self.findings

    # -- HQ ------------------------------------------------------------------------------------
    def hq_renderer(self, model: str = "diffusion"):
        from cmrstudio.engine.hq import HQRenderer

        if model not in self.hq_renderers:
            self.hq_renderers[model] = HQRenderer(model, device=self.device)
        return self.hq_renderers[model]

    def render_hq(self, model: str = "diffusion", steps: int | None = None, guidance: float | None = None,
                  solver: str | None = None) -> int | None:
        """Queue an HQ render of the current slice; progress, previews and the result arrive as signals."""
        from cmrstudio.engine.hq import JobQueue

        if self.case is None:
            return None
        try:
            r = self.hq_renderer(model)
            if self.queue is None or self.queue.renderer is not r:
                if self.queue is not None:
                    self.queue.close()
                live = self
                self.queue = JobQueue(r, on_progress=lambda job: self.hq_progress.emit((job, job.step, job.preview)),
                                      on_done=self.hq_finished.emit,
                                      yield_to=lambda: live.engine is not None and live.engine.busy)
            z = self.current_z()
            jid = self.queue.submit(self.mask_layer.data[z], self.frame_for(r), self.vendor, self.seed, steps, guidance, solver,
                                    tag=(self.token, z))
        except Exception as exc:
            self.say("error", f"HQ rendering with '{model}' could not start: {_err(exc)}")
            return None
        self.hq_job = self.queue.job(jid)
        self.hq_step = 0
        self._hq_contour_shown.discard(z)
        self._ensure_hq_layers()
        self.changed.emit("hq")
        return jid

    def cancel_hq(self) -> None:
        if self.queue is not None and self.hq_job is not None:
            self.queue.cancel(self.hq_job.id)

    def _ensure_hq_layers(self) -> None:
        if "hq" in self.layers:
            return
        v, c = self.viewer, self.case
        scale = c.spacing or (1.0, 1.0, 1.0)
        hq = v.add_image(np.zeros(c.shape, np.float32), name="HQ render", scale=scale, contrast_limits=(0.0, 1.0))
        hc = v.add_labels(np.zeros(c.shape, np.uint8), name="mask contour (HQ)", scale=scale, colormap=label_colormap(), opacity=0.9)
        hc.contour = 1
        hc.editable = False
        self.layers.update(hq=hq, hq_contour=hc)
        self._set_contour_opacity()
        v.layers.selection.active = self.mask_layer
        self.fit_heart()

    def _on_hq_progress(self, snap) -> None:
        job, step, preview = snap  # step and preview as they were when the worker reported them
        token, z = job.tag
        if token != self.token or preview is None or "hq" not in self.layers:
            return
        self.layers["hq"].data[z] = from_frame(preview, job.frame, kind="image")
        _light_refresh(self.layers["hq"])
        if z not in self._hq_contour_shown:
            self._show_contour("hq_contour", z, job.mask)
            self._hq_contour_shown.add(z)
        self.hq_step = step
        self.changed.emit("hq")

    def _on_hq_finished(self, job) -> None:
        token, z = job.tag
        if token != self.token:
            return
        if job.status == "done":
            self.hq_step = job.step
            self.layers["hq"].data[z] = job.result.image
            if not self._auto_contrast.get("hq") and job.result.framed is not None:
                lo, hi = np.percentile(job.result.framed, (0.5, 99.5))
                self.layers["hq"].contrast_limits = (float(lo), float(max(hi, lo + 1e-3)))
                self._auto_contrast["hq"] = True
            _light_refresh(self.layers["hq"])
            self._show_contour("hq_contour", z, job.mask)
            self.hq_results[z] = job.result
            self.say("info", f"HQ render of slice {z + 1} done: {job.result.params['kind']} {job.steps} steps in {job.seconds:.1f} s.")
        elif job.status == "cancelled":
            self.say("info", f"HQ render of slice {z + 1} cancelled after {job.step} of {job.steps} steps.")
        else:
            self.say("error", job.error or "The HQ render failed.")
        self.changed.emit("hq")

    # -- keep (the gallery) ----------------------------------------------------------------------
    def set_project(self, project) -> None:
        self.project = project
        self.settings.last_project = str(project.folder)
        self.save_settings()
        self.changed.emit("project")

    def _source(self, z: int) -> dict:
        c = self.case
        return {"case_id": c.case_id, "phase": c.phase, "slice": z, "vendor": c.vendor, "dataset": c.source.get("dataset"),
                "path": str(self.opened.path) if self.opened.path else "built-in sample"}

    def _slice_affine(self, z: int):
        a = self.case.affine
        if a is None:
            return None
        a = np.array(a, dtype=float)
        a[:3, 3] = a[:3, 3] + a[:3, 0] * z
        return a

    def _live_record(self, r, z: int):
        """The live render of slice ``z`` as a record: the frame on screen when it shows the current mask
        (and seed, vendor, model), else a fresh render of the current mask (live off, or mid-stroke)."""
        from cmrstudio.engine.hq import JobResult

        mask = np.array(self.mask_layer.data[z], copy=True)
        res = self.live_shown.get(z)
        _, vendor, _ = r.resolve_vendor(self.vendor)
        if (res is not None and res.mask is not None and res.framed is not None and np.array_equal(res.mask, mask)
                and res.seed == self.seed and res.vendor == vendor and res.model == r.name):
            image, framed, seconds = res.image, res.framed, res.render_ms / 1000.0
        else:
            t0 = time.perf_counter()
            image, framed = r.render_slice(mask, self.frame, self.vendor, self.seed)
            seconds = time.perf_counter() - t0
        params = {"model": r.name, "model_sha256": r.info.card.get("sha256"), "kind": r.kind, "sampler": "spade", "steps": 1,
                  "guidance": None, "seed": self.seed, "vendor": vendor, "seconds": round(seconds, 3),
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        return JobResult(image, framed, mask, self.frame, params)

    def keep(self, which: str = "live", note: str = "", rating: int | None = None):
        """Keep the live or HQ render of the current slice in the project's gallery."""
        if self.project is None:
            self.say("error", "No project is open; open or create one (Studio ▸ Open project) to keep renders.")
            return None
        z = self.current_z()
        try:
            if which == "hq":
                res = self.hq_results.get(z)
                if res is None:
                    raise CmrError(f"Slice {z + 1} has no finished HQ render yet; press Render HQ first.")
            else:
                r = self.renderer
                if r is None:
                    raise CmrError("No live model is loaded.")
                res = self._live_record(r, z)
            item = self.project.add(res, self._source(z), note=note, rating=rating, affine=self._slice_affine(z))
        except Exception as exc:
            self.say("error", f"The render could not be kept: {_err(exc)}")
            return None
        self.say("info", f"Kept {item.id} ({item.kind}, seed {item.seed}) in {self.project.folder}.")
        self.changed.emit("gallery")
        return item

    # -- settings and shutdown -----------------------------------------------------------------
    def save_settings(self) -> None:
        if not self.remember:
            return
        try:
            save_settings(self.settings)
        except Exception as exc:
            self.say("warning", f"Settings could not be saved: {_err(exc)}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.save_settings()
        if self.engine is not None:
            self.engine.close()
        if self.queue is not None:
            self.queue.close()
        # Break the reference cycles that run through Qt's C++ side (signal connections to panels
        # and the window), so the viewer can be garbage collected once napari closes it.
        for sig in (self.live_result, self.hq_progress, self.hq_finished, self.changed, self.message):
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
        self.case = None
        self.layers = {}
        self.engine = self.queue = self.renderer = None
        self.hq_renderers.clear()


def to_display(image01: np.ndarray) -> np.ndarray:
    """A [0, 1] synthetic slice as 8-bit for the canvas (a quarter of the texture upload of float32)."""
    return np.clip(np.asarray(image01) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _light_refresh(layer) -> None:
    """Re-slice a layer whose data changed in place, without recomputing its thumbnail or extent."""
    try:
        layer.refresh(thumbnail=False, extent=False, highlight=False)
    except TypeError:  # an older napari without the keywords
        layer.refresh()


def _recentre(mask2d: np.ndarray, centre) -> np.ndarray:
    """Move a mask so its heart sits on ``centre`` (whole pixels, nearest neighbour)."""
    from cmrstudio.data.frame import heart_centre

    if centre is None or not mask2d.any():
        return mask2d
    c = heart_centre(mask2d[None])
    dy, dx = int(round(centre[0] - c[0])), int(round(centre[1] - c[1]))
    out = np.zeros_like(mask2d)
    h, w = mask2d.shape
    ys, xs = np.nonzero(mask2d)
    ny, nx = ys + dy, xs + dx
    ok = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    out[ny[ok], nx[ok]] = mask2d[ys[ok], xs[ok]]
    return out
