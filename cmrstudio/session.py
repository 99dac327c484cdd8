"""The studio's one state object, free of Qt: what is open, the painted mask, the renderers, the project.

A :class:`StudioSession` holds the open case, the painted mask (an array the GUI's labels layer
paints into directly), the synthesis frame, vendor style, seed and render mode, the live engine and
the HQ job queue, the project and its ``keep()``. Everything it does is also reachable from
Python and the CLI; the GUI (:mod:`cmrstudio.gui.studio`) only mirrors it into napari layers.

Observers subscribe to :attr:`StudioSession.events` (``connect(name, callback)``); names:

``message`` (level, text) · ``case`` · ``mask`` · ``slice`` · ``anatomy`` · ``live`` (RenderResult) ·
``live_model`` · ``hq`` (job, step, preview) · ``hq_done`` (job) · ``project`` · ``gallery`` (item) ·
``seed`` · ``vendor`` · ``mode`` · ``settings``

Threads: renders finish on worker threads. The session hands their results to ``call_soon``
(given at construction) to be handled on the thread the session lives on; without one they are
handled at once, on the worker thread, under the session's lock. The GUI passes a function that
queues the call onto the Qt main thread, so events reach widgets on the thread that owns them.

Render modes: ``in-patient`` (the default when the open case has an image): the painted heart is
rendered into the patient's own slice, the patient's pixels kept outside a margin around the old
and new heart; ``synthetic``: the whole slice is the model's (no real pixel), its surroundings
made once per slice and seed and kept while the painter works.
"""

from __future__ import annotations

import random
import re
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cmrstudio.anatomy import check_mask
from cmrstudio.case import Case
from cmrstudio.data.frame import Frame
from cmrstudio.errors import CmrError
from cmrstudio.settings import Settings, load_settings, save_settings

START_KINDS = {
    "scan": "the scan's own segmentation",
    "segment": "segment the scan (seg-cmr)",
    "template": "parametric template",
    "phantom": "phantom",
    "empty": "empty",
}
MODES = {"in-patient": "in this patient (its own surroundings)", "synthetic": "fully synthetic (no real pixel)"}


class Events:
    """A minimal observer list: ``connect(name, cb)``, ``disconnect(name, cb)``, ``emit(name, *args)``.
    A failing observer is reported (warning) and does not stop the others."""

    def __init__(self):
        self._subs: dict[str, list[Callable]] = {}

    def connect(self, name: str, cb: Callable) -> Callable:
        self._subs.setdefault(name, []).append(cb)
        return cb

    def disconnect(self, name: str | None = None, cb: Callable | None = None) -> None:
        if name is None:
            self._subs.clear()
        elif cb is None:
            self._subs.pop(name, None)
        elif cb in self._subs.get(name, []):
            self._subs[name].remove(cb)

    def emit(self, name: str, *args) -> None:
        for cb in list(self._subs.get(name, [])):
            try:
                cb(*args)
            except Exception as exc:
                warnings.warn(f"A studio observer of '{name}' failed ({type(exc).__name__}: {exc}).")


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


def base_id(ref) -> str:
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


def err_text(exc: BaseException) -> str:
    return exc.message if isinstance(exc, CmrError) else f"{type(exc).__name__}: {exc}"


class StudioSession:
    """The open case, the painted mask, renderers, jobs and the project (see the module notes)."""

    def __init__(self, settings: Settings | None = None, project=None, live_model: str | None = None, device: str | None = None,
                 call_soon: Callable[..., None] | None = None, load: str = "now"):
        """``load``: "now" loads the live model here, "async" on a thread, "none" not at all (call set_live_model)."""
        self.events = Events()
        self._call_soon = call_soon
        self._lock = threading.RLock()
        warn = None
        if settings is None:
            settings, warn = load_settings()
        self.settings = settings
        self.remember = True  # save settings on change and close (off for screenshots, benchmarks and tests)
        self.device = device or (None if settings.device in (None, "", "auto") else settings.device)
        self.live_threads = live_threads()
        self.case: Case | None = None
        self.mask: np.ndarray | None = None  # (Z, Y, X) uint8: the painted mask (the GUI's labels layer paints into it)
        self.opened = Opened(None, [], -1)
        self.frame: Frame | None = None
        self.centre: tuple[float, float] | None = None
        self.z = 0
        self.token = 0  # bumps with every case; stale results are dropped
        self.vendor = settings.vendor or "unknown"
        self.vendor_auto = True  # the style follows the scan's vendor until the user picks one
        self.seed = 0
        self.mode_choice = "in-patient"  # the painter's pick; fully synthetic whenever no scan image is open
        self.margin_mm = 10.0
        self.live_on = True
        self.renderer = None
        self.engine = None
        self.hq_renderers: dict[str, Any] = {}
        self.queue = None
        self.hq_job = None
        self.hq_step = 0
        self.hq_results: dict[int, Any] = {}  # slice -> Render
        self.live_shown: dict[int, Any] = {}  # slice -> RenderResult delivered
        self.render_ms: deque[float] = deque(maxlen=500)
        self.findings: list = []
        self.messages: list[tuple[str, str]] = []
        self.project = project
        self.edit_sink: Callable[[tuple, np.ndarray], None] | None = None  # the GUI routes edits through its undo history
        self._load_seq = 0
        self._closed = False
        if warn:
            self.say("warning", warn)
        if load == "now":
            self.set_live_model(live_model or settings.live_model, quiet=False)
        elif load == "async":
            self.load_live_model_async(live_model or settings.live_model)

    # -- threads and messages ----------------------------------------------------------------------
    def call_soon(self, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` on the session's own thread (the GUI's), or at once under the lock without one."""
        if self._call_soon is not None:
            self._call_soon(fn, *args)
        else:
            with self._lock:
                fn(*args)

    def say(self, level: str, text: str) -> None:
        self.messages.append((level, text))
        self.events.emit("message", level, text)

    # -- opening -----------------------------------------------------------------------------------
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
                same = [r for r in pick if base_id(r) == base_id(pick[0])]
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
            text = err_text(exc)
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
            self.say("error", f"{refs[index].case_id} could not be opened: {err_text(exc)}")
            return False
        self.opened = Opened(self.opened.path, refs, index)
        self.set_case(c)
        return True

    def phases(self) -> list[tuple[str, int]]:
        """(phase, ref index) for the open case's phases."""
        o = self.opened
        if o.index < 0:
            return [(self.case.phase or "-", -1)] if self.case else []
        cid = base_id(o.refs[o.index])
        return [(r.phase or "-", i) for i, r in enumerate(o.refs) if base_id(r) == cid]

    def case_ids(self) -> list[str]:
        seen: list[str] = []
        for r in self.opened.refs:
            if base_id(r) not in seen:
                seen.append(base_id(r))
        return seen

    def open_case_id(self, case_id: str) -> bool:
        for i, r in enumerate(self.opened.refs):
            if base_id(r) == case_id:
                phase = self.case.phase if self.case else None
                same = [j for j, s in enumerate(self.opened.refs) if base_id(s) == case_id and s.phase == phase]
                return self.open_ref(same[0] if same else i)
        return False

    def set_case(self, case: Case) -> None:
        """Make ``case`` the open one: a fresh painted mask (its own segmentation, or empty), a new frame."""
        self.token += 1
        if self.queue is not None:
            self.queue.cancel_all()
        for r in [self.renderer, *self.hq_renderers.values()]:
            if r is not None and hasattr(r, "forget_scenes"):
                r.forget_scenes()
        self.case = case
        self.mask = np.array(case.mask, dtype=np.uint8, copy=True) if case.mask is not None else np.zeros(case.shape, np.uint8)
        self.hq_results.clear()
        self.hq_step = 0
        self.hq_job = None
        self.live_shown.clear()
        self.centre = None  # the new case's heart, not the previous one's
        self.z = case.shape[0] // 2 if case.shape[0] > 1 else 0
        if self.vendor_auto and case.vendor in ("siemens", "philips", "ge", "canon"):
            self.vendor = case.vendor
        self.reset_frame()
        self.check_anatomy(emit=False)
        self.events.emit("case")
        self.request_live()

    # -- where we are --------------------------------------------------------------------------------
    def set_slice(self, z: int) -> None:
        if self.case is None:
            return
        z = int(np.clip(z, 0, self.case.shape[0] - 1))
        if z != self.z:
            self.z = z
            self.check_anatomy()
            self.events.emit("slice")
            self.request_live()

    def current_z(self) -> int:
        return self.z

    def spacing_yx(self) -> tuple[float, float] | None:
        sp = self.case.spacing if self.case else None
        return (sp[1], sp[2]) if sp else None

    def status_line(self) -> str:
        c = self.case
        if c is None:
            return "nothing open"
        where = str(self.opened.path) if self.opened.path else "built-in sample (Sunnybrook, CC0)"
        model = self.renderer.name if self.renderer else "no live model"
        proj = f" · project {self.project.name}" if self.project else ""
        return (f"{c.case_id} {c.phase or ''} · slice {self.z + 1}/{c.shape[0]} · {where} · live: {model} "
                f"({'in this patient' if self.mode == 'in-patient' else 'fully synthetic'}){proj}")

    # -- the synthesis frame -------------------------------------------------------------------------
    def reset_frame(self) -> None:
        """One frame per case (and per start mask), so the picture does not jump while painting."""
        if self.case is None or self.renderer is None:
            self.frame = None
            return
        m = self.mask
        self.frame = self.renderer.frame_for(m, self.case.spacing, centre=self.centre if not m.any() else None, image=self.case.image)
        self.centre = tuple(self.frame.extra.get("centre", self.centre or (0, 0)))

    def frame_for(self, renderer) -> Frame:
        if self.renderer is not None and renderer.size == self.renderer.size and renderer.spacing_mm == self.renderer.spacing_mm:
            return self.frame
        return renderer.frame_for(self.mask, self.case.spacing, centre=self.centre, image=self.case.image)

    # -- render mode ---------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """``in-patient`` or ``synthetic`` (always synthetic when the open case has no scan image)."""
        return "synthetic" if self.case is not None and self.case.image is None else self.mode_choice

    def set_mode(self, mode: str) -> bool:
        """``in-patient`` (the scan's own surroundings; needs a scan and a scene model) or ``synthetic``."""
        if mode not in MODES:
            self.say("error", f"Render mode {mode!r} is not known; use one of {', '.join(MODES)}.")
            return False
        if mode == "in-patient" and self.case is not None and self.case.image is None:
            self.say("error", f"{self.case.case_id} has no scan image to render into; only fully synthetic renders are possible.")
            return False
        self.mode_choice = mode
        self.live_shown.clear()
        self.events.emit("mode")
        self.request_live()
        return True

    def slice_context(self, z: int | None = None, renderer=None):
        """What a render of slice ``z`` may use: the scan's own slice and heart (in this patient), or nothing real.

        A heart-crop model cannot render into a patient's slice: its renders are fully synthetic (None).
        """
        from cmrstudio.engine.scene import SliceContext

        z = self.z if z is None else int(z)
        r = renderer or self.renderer
        if r is None or not getattr(r, "scene", False):
            return None
        if self.mode == "in-patient" and self.case is not None and self.case.image is not None:
            own = self.case.mask[z] if self.case.mask is not None else self._own_heart(z)
            return SliceContext("in-patient", self.case.image[z], own, self.margin_mm)
        return SliceContext("synthetic", margin_mm=self.margin_mm, key=(self.token, z))

    def _own_heart(self, z: int):
        """The scan's own heart on slice ``z`` when it came without a segmentation: found once by the segmenter."""
        cache = getattr(self, "_own_hearts", None)
        if cache is None or cache[0] != self.token:
            cache = self._own_hearts = (self.token, {})
        if z not in cache[1]:
            try:
                from cmrstudio.engine.segment import segment_scan

                cache[1][z] = segment_scan(Case(self.case.image, self.mask, self.case.affine), device=self.device, slices=[z],
                                           centre=self.centre)[z]
            except Exception as exc:
                self.say("warning", f"The scan's own heart could not be found ({err_text(exc)}); only the painted heart is repainted.")
                cache[1][z] = None
        return cache[1][z]

    # -- live synthesis --------------------------------------------------------------------------------
    def _make_live(self, name: str | None):
        from cmrstudio.engine.factory import open_renderer

        return open_renderer(name, device=self.device, threads=self.live_threads, bf16=None)

    def set_live_model(self, name: str | None, quiet: bool = True) -> bool:
        """Load a one-step model for the live path; on failure the current one stays."""
        self._load_seq += 1
        try:
            r = self._make_live(name)
            if not r.one_step:
                raise CmrError(f"The model '{r.name}' is a {r.kind} model that renders step by step; the live path needs a one-step "
                               "model (spade-cmr); render it with HQ instead.")
        except Exception as exc:
            self._live_failed(name, err_text(exc))
            return False
        self._use_renderer(r, name, quiet)
        return True

    def load_live_model_async(self, name: str | None) -> threading.Thread:
        """Load the live model on a thread (importing torch takes a second or two); it takes over when ready."""
        self._load_seq += 1
        seq = self._load_seq

        def work():
            try:
                r, err = self._make_live(name), ""
            except Exception as exc:
                r, err = None, err_text(exc)
            self.call_soon(self._on_live_loaded, r, name, err, seq)

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
        self.engine = LiveEngine(r, on_ready=lambda res: self.call_soon(self._on_live_result, res))
        if old is not None:
            old.close()
        if name:
            self.settings.live_model = name
        if self.case is not None:
            self.reset_frame()
            self.request_live()
        if quiet:
            self.say("info", f"Live model: {r.name}.")
        self.events.emit("live_model")

    def set_vendor(self, vendor: str) -> None:
        self.vendor = vendor
        self.vendor_auto = False
        self.settings.vendor = vendor
        self.events.emit("vendor")
        self.request_live()

    def set_seed(self, seed: int | None = None) -> int:
        self.seed = int(random.randrange(0, 2**31 - 1) if seed is None else seed)
        self.events.emit("seed")
        self.request_live()
        return self.seed

    def set_live(self, on: bool) -> None:
        self.live_on = bool(on)
        if on:
            self.request_live()

    def request_live(self, z: int | None = None) -> int | None:
        """Queue a live render of slice ``z`` (the current one) as painted now; latest wins."""
        if not self.live_on or self.engine is None or self.case is None or self.frame is None or self._closed:
            return None
        z = self.z if z is None else int(z)
        return self.engine.submit(self.mask[z], self.frame, self.vendor, self.seed, tag=(self.token, z),
                                  context=self.slice_context(z))

    def _on_live_result(self, res) -> None:
        token, z = res.tag
        if token != self.token or self.case is None:
            return
        if res.error:
            self.say("error", res.error)
            return
        self.live_shown[z] = res
        self.render_ms.append(res.render_ms)
        if res.note and res.note not in (m for _, m in self.messages[-5:]):
            self.say("warning", res.note)
        self.events.emit("live", res)

    def wait_live(self, timeout: float = 30.0) -> bool:
        """Block until the live engine is idle and its last result handled (headless use and tests)."""
        return self.engine is not None and self.engine.wait_idle(timeout)

    # -- mask edits ------------------------------------------------------------------------------------
    def mask_edited(self) -> None:
        """The painted mask changed (a stroke ended, a panel edit, undo): checks and a new live frame."""
        self.check_anatomy()
        self.events.emit("mask")
        self.request_live()

    def apply_mask(self, new: np.ndarray, z: int | None = None) -> int:
        """Replace the mask (volume) or one slice; through ``edit_sink`` (the GUI's undo history) when set."""
        old = self.mask if z is None else self.mask[z]
        new = np.asarray(new, dtype=np.uint8)
        if new.shape != old.shape:
            raise CmrError(f"The new mask is {new.shape}, but the painted mask is {old.shape}.")
        idx = np.nonzero(new != old)
        vals = new[idx]
        if z is not None:
            idx = (np.full(idx[0].shape, z, dtype=idx[0].dtype),) + idx
        n = int(idx[0].size)
        if n:
            if self.edit_sink is not None:
                self.edit_sink(idx, vals)
            else:
                self.mask[idx] = vals
        self.mask_edited()
        return n

    def start_mask(self, kind: str, scope: str = "slice", **template) -> bool:
        """Start the mask from the scan's segmentation, the segmenter, a template, a phantom, or empty."""
        from cmrstudio import edits

        if self.case is None:
            return False
        c, z = self.case, self.z
        zs = [z] if scope == "slice" else list(range(c.shape[0]))
        sp = self.spacing_yx()
        try:
            vol = np.array(self.mask, copy=True)
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
                vol[zs] = recentre(pm, self.centre)
            elif kind == "empty":
                vol[zs] = 0
            else:
                raise CmrError(f"Unknown start mask {kind!r}; use one of {', '.join(START_KINDS)}.")
        except Exception as exc:
            self.say("error", err_text(exc))
            return False
        self.apply_mask(vol)
        return True

    def change_structure(self, label: int, mm: float, scope: str = "slice") -> bool:
        from cmrstudio import edits

        try:
            if scope == "slice":
                self.apply_mask(edits.change_structure(self.mask[self.z], label, mm, self.spacing_yx()), self.z)
            else:
                self.apply_mask(edits.change_volume(self.mask, label, mm, self.case.spacing))
        except Exception as exc:
            self.say("error", err_text(exc))
            return False
        return True

    def copy_from_neighbour(self, offset: int) -> bool:
        src = self.z + offset
        if not 0 <= src < self.case.shape[0]:
            self.say("warning", f"There is no slice {src + 1}; the volume has slices 1–{self.case.shape[0]}.")
            return False
        self.apply_mask(self.mask[src], self.z)
        return True

    def check_anatomy(self, emit: bool = True) -> list:
        """The foundation's anatomy checks on the current slice, as gentle warnings."""
        if self.case is None:
            self.findings = []
            return []
        sl = self.mask[self.z]
        fs = check_mask(sl[None], self.case.spacing) if sl.any() else []
        self.findings = [f for f in fs if f.severity != "info"]
        if emit:
            self.events.emit("anatomy")
        return self.findings

    # -- HQ --------------------------------------------------------------------------------------------
    def hq_renderer(self, model: str = "flow"):
        from cmrstudio.engine.factory import open_renderer

        if model not in self.hq_renderers:
            self.hq_renderers[model] = open_renderer(model, device=self.device)
        return self.hq_renderers[model]

    def render_hq(self, model: str = "flow", steps: int | None = None, guidance: float | None = None,
                  solver: str | None = None) -> int | None:
        """Queue an HQ render of the current slice; progress (``hq``) and the result (``hq_done``) arrive as events."""
        from cmrstudio.engine.hq import JobQueue

        if self.case is None:
            return None
        try:
            r = self.hq_renderer(model)
            if self.queue is None or self.queue.renderer is not r:
                if self.queue is not None:
                    self.queue.close()
                self.queue = JobQueue(r, on_progress=lambda job: self.call_soon(self._on_hq_progress, job, job.step, job.preview),
                                      on_done=lambda job: self.call_soon(self._on_hq_done, job),
                                      yield_to=lambda: self.engine is not None and self.engine.busy)
            z = self.z
            jid = self.queue.submit(self.mask[z], self.frame_for(r), self.vendor, self.seed, steps, guidance, solver,
                                    tag=(self.token, z), context=self.slice_context(z, r))
        except Exception as exc:
            self.say("error", f"HQ rendering with '{model}' could not start: {err_text(exc)}")
            return None
        self.hq_job = self.queue.job(jid)
        self.hq_step = 0
        self.events.emit("hq", self.hq_job, 0, None)
        return jid

    def cancel_hq(self) -> None:
        if self.queue is not None and self.hq_job is not None:
            self.queue.cancel(self.hq_job.id)

    def _on_hq_progress(self, job, step: int, preview) -> None:
        if job.tag[0] != self.token:
            return
        self.hq_step = step
        self.events.emit("hq", job, step, preview)

    def _on_hq_done(self, job) -> None:
        token, z = job.tag
        if token != self.token:
            return
        if job.status == "done":
            self.hq_step = job.step
            self.hq_results[z] = job.result
            self.say("info", f"HQ render of slice {z + 1} done: {job.result.record.kind} {job.steps} steps in {job.seconds:.1f} s.")
        elif job.status == "cancelled":
            self.say("info", f"HQ render of slice {z + 1} cancelled after {job.step} of {job.steps} steps.")
        else:
            self.say("error", job.error or "The HQ render failed.")
        self.events.emit("hq_done", job)

    def wait_hq(self, timeout: float = 120.0) -> bool:
        return self.queue is not None and self.queue.wait_idle(timeout)

    # -- keep (the gallery) ----------------------------------------------------------------------------
    def set_project(self, project) -> None:
        self.project = project
        self.settings.last_project = str(project.folder)
        self.save_settings()
        self.events.emit("project")

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

    def live_render(self, z: int | None = None):
        """The live render of slice ``z`` as a :class:`~cmrstudio.record.Render`: the frame delivered when it shows the
        current mask (and seed, vendor, model, mode), else a fresh render of the current mask."""
        from cmrstudio.record import Render, make_record

        r = self.renderer
        if r is None:
            raise CmrError("No live model is loaded.")
        z = self.z if z is None else int(z)
        mask = np.array(self.mask[z], copy=True)
        res = self.live_shown.get(z)
        _, vendor, _ = r.resolve_vendor(self.vendor)
        ctx = self.slice_context(z)
        if (res is not None and res.mask is not None and res.framed is not None and np.array_equal(res.mask, mask) and res.record is not None
                and res.record.seed == self.seed and res.record.vendor == vendor and res.model == r.name
                and res.record.mode == (ctx.mode if ctx is not None else "synthetic")):
            return Render(res.image, res.framed, mask, self.frame, res.record)
        t0 = time.perf_counter()
        image, framed = r.render_slice(mask, self.frame, self.vendor, self.seed, ctx)
        return Render(image, framed, mask, self.frame, make_record(r, self.seed, vendor, ctx, seconds=time.perf_counter() - t0))

    def keep(self, which: str = "live", note: str = "", rating: int | None = None):
        """Keep the live or HQ render of the current slice in the project's gallery."""
        if self.project is None:
            self.say("error", "No project is open; open or create one (Studio ▸ Open project) to keep renders.")
            return None
        z = self.z
        try:
            if which == "hq":
                res = self.hq_results.get(z)
                if res is None:
                    raise CmrError(f"Slice {z + 1} has no finished HQ render yet; press Render HQ first.")
            else:
                res = self.live_render(z)
            item = self.project.add(res, self._source(z), note=note, rating=rating, affine=self._slice_affine(z))
        except Exception as exc:
            self.say("error", f"The render could not be kept: {err_text(exc)}")
            return None
        where = "in this patient" if item.derived_from_patient else "fully synthetic"
        self.say("info", f"Kept {item.id} ({item.kind}, {where}, seed {item.seed}) in {self.project.folder}.")
        self.events.emit("gallery", item)
        return item

    # -- settings and shutdown -------------------------------------------------------------------------
    def save_settings(self) -> None:
        if not self.remember:
            return
        try:
            save_settings(self.settings)
        except Exception as exc:
            self.say("warning", f"Settings could not be saved: {err_text(exc)}")

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.save_settings()
        if self.engine is not None:
            self.engine.close()
        if self.queue is not None:
            self.queue.close()
        self.events.disconnect()
        self.engine = self.queue = self.renderer = None
        self.hq_renderers.clear()


def recentre(mask2d: np.ndarray, centre) -> np.ndarray:
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
