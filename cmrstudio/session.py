"""The studio's one state object, free of Qt: what is open, the painted mask, the renderers, the project.

A :class:`StudioSession` holds the open case, the painted mask (an array the GUI's labels layer
paints into directly), the synthesis frame, vendor style, seed and render mode, the live engine and
the HQ job queue, the project and its ``keep()``. Everything it does is also reachable from
Python and the CLI; the GUI (:mod:`cmrstudio.gui.studio`) only mirrors it into napari layers.

Observers subscribe to :attr:`StudioSession.events` (``connect(name, callback)``); names:

``message`` (level, text) · ``case`` · ``mask`` · ``slice`` · ``anatomy`` · ``live`` (RenderResult) ·
``live_model`` · ``hq`` (job, step, preview) · ``hq_done`` (job) · ``project`` · ``gallery`` (item) ·
``seed`` · ``vendor`` · ``mode`` · ``settings`` · ``edits`` (the unsaved-edits state changed) · ``faith`` (the
faithfulness read-out of the current slice, a dict, or None) · ``hq_loading`` (the HQ model's name while it loads
off the session's thread, then None) · ``backend`` (where frames render changed: this machine, a server, or the server was lost)

Never losing work: every change to the painted mask marks it *dirty* (not yet saved to a file) and
records which slices the painter edited. :meth:`StudioSession.save_mask` writes the mask as NIfTI in
the scan's own geometry (canonical labels, a JSON sidecar; temporary file, then rename).
:meth:`StudioSession.autosave` keeps the working mask of each case in the project
(``autosave/<case key>_mask.nii.gz`` + ``.json``); when the same case opens again, the mask comes back.

Faithfulness: each live render of the current slice is segmented by the bundled segmenter on a
worker thread (latest wins, at most a few a second) and its Dice against the painted mask is
reported as the ``faith`` event.

Threads: renders finish on worker threads. The session hands their results to ``call_soon``
(given at construction) to be handled on the thread the session lives on; without one they are
handled at once, on the worker thread, under the session's lock; switching cases holds that lock too, so
such a call never sees a new case with the old mask, slice or frame. The GUI passes a function that
queues the call onto the Qt main thread, so events reach widgets on the thread that owns them.

Backends: frames render on this machine (``settings.backend == "local"``) or on a ``cmrstudio serve`` server
(a URL, with its token in ``settings.backend_token_file``). The local model is always loaded too: it sets the
synthesis frame and takes over, in one sentence, when the server goes away (nothing painted lives on the server);
a probe thread reconnects when the server is back.

Render modes: ``in-patient`` (the default when the open case has an image): the painted heart is
rendered into the patient's own slice, the patient's pixels kept outside a margin around the old
and new heart; ``synthetic``: the whole slice is the model's (no real pixel), its surroundings
made once per slice and seed and kept while the painter works.
"""

from __future__ import annotations

import hashlib
import json
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
        self.margin_mm = float(settings.margin_mm)  # in this patient: repainted around what the painting changed (edit_region)
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
        # unsaved work: edits since the last save to a file, the slices edited since the case opened, autosave state
        self.dirty = False
        self.edited: set[int] = set()
        self.saved_path: Path | None = None
        self.autosave_delay_s = 2.0
        self._edit_gen = 0
        self._autosaved_gen = 0
        self._edited_at = 0.0
        self._case_key: str | None = None
        # faithfulness of the live render (the segmenter's Dice against the painted mask), off this thread
        self.faith_on = True
        self.faith: dict | None = None
        self.faith_interval_s = 0.4
        self._faith_cv = threading.Condition()
        self._faith_job = None
        self._faith_thread: threading.Thread | None = None
        self._faith_busy = False
        # an HQ model loading on a thread (the GUI's Render HQ): its name, and whether the render was cancelled meanwhile
        self.hq_loading: str | None = None
        self._hq_loader: threading.Thread | None = None
        self._hq_load_cancel = False
        self._load_seq = 0
        self._live_loading = False
        self._closed = False
        # a render server (cmrstudio serve): the backend, its live engine while connected, the local engine to fall back to
        self.remote = None
        self.remote_engine = None
        self.local_engine = None
        self.backend_state = "local"  # local | connecting | remote | lost
        self.probe_interval_s = 2.0
        self._backend_gen = 0
        self._backend_ready = threading.Event()
        if warn:
            self.say("warning", warn)
        if load == "now":
            self.set_live_model(live_model or settings.live_model, quiet=False)
        elif load == "async":
            self.load_live_model_async(live_model or settings.live_model)
        if settings.backend and settings.backend != "local":
            self.set_backend(settings.backend, token_file=settings.backend_token_file, save=False)

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
        with self._lock:  # a model or render finishing on a thread (no GUI) sees the old case or the new, never half of each
            self.autosave()  # the outgoing case's edits are kept before anything changes
            self.token += 1
            if self.queue is not None:
                self.queue.cancel_all()
            self._hq_load_cancel = True
            for r in [self.renderer, *self.hq_renderers.values()]:
                if r is not None and hasattr(r, "forget_scenes"):
                    r.forget_scenes()
            self.case = case
            self.mask = np.array(case.mask, dtype=np.uint8, copy=True) if case.mask is not None else np.zeros(case.shape, np.uint8)
            self.hq_results.clear()
            self.hq_step = 0
            self.hq_job = None
            self.live_shown.clear()
            self.faith = None
            self.dirty = False
            self.edited = set()
            self.saved_path = None
            self._edit_gen = self._autosaved_gen = 0
            self._case_key = None
            self._restore_autosave()
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

    def render_line(self, frame_ms: float | None = None) -> str:
        """What is being rendered and where, e.g. ``live: spade-cmr, in this patient, slice 5/9, 34 ms``.

        ``frame_ms``: the GUI's own dab-to-screen time; without it, the model's time for the frame on show.
        """
        c = self.case
        if c is None:
            return "nothing open"
        where = "in this patient" if self.mode == "in-patient" else "fully synthetic"
        if self.renderer is None:
            head = "live: loading the model…" if self._live_loading else "live: no model"
        else:
            head = f"live: {self.renderer.name}" if self.live_on else f"live off ({self.renderer.name})"
        parts = [head, where, f"slice {self.z + 1}/{c.shape[0]}"]
        res = self.live_shown.get(self.z)
        ms = frame_ms if frame_ms is not None else (res.render_ms if res is not None else None)
        if ms is not None and self.renderer is not None and self.live_on:
            parts.append(f"{ms:.0f} ms")
        where_line = self.backend_line()
        if where_line:
            parts.append(where_line)
        line = ", ".join(parts)
        if self.faith is not None and self.faith.get("mean") is not None:
            line += f" · Dice {self.faith['mean']:.2f}"
        job = self.hq_job
        if self.hq_loading:
            line += f" · HQ: loading {self.hq_loading}…"
        elif job is not None and not job.finished:
            name = self.queue.renderer.name if self.queue is not None else "HQ"
            line += f" · HQ: {name} step {self.hq_step}/{job.steps}"
        return line

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

        return self._with_layout(open_renderer(name, device=self.device, threads=self.live_threads, bf16=None))

    def _with_layout(self, r):
        """``r`` with the body layout the settings name for fully synthetic renders (scene models); when that layout model
        cannot serve ``r``, its card's own, and a warning saying so."""
        from cmrstudio.engine.scene import offer_layout_prior

        name = self.settings.layout_prior
        why = offer_layout_prior(r, name)
        if why:
            self.call_soon(self.say, "warning", f"The body layout '{name}' is not used with {r.name} ({why}); its own tissue-class prior is.")
        return r

    def set_layout_prior(self, name: str | None) -> bool:
        """Fully synthetic renders take their body layout (tissue classes) from ``name`` (a layout model: a bank of this site's
        scans, or a fine prior), or from each model's own prior (None). The live model must take it (else one sentence and
        nothing changes); an HQ model whose cells differ keeps its own prior, and a warning says so. Remembered."""
        from cmrstudio.models.layout import installed_prior

        name = name or None
        live = self.renderer if getattr(self.renderer, "scene", False) else None
        try:
            if name is not None:
                installed_prior(name, None, "the studio")  # a name that is no layout model: refused before anything changes
            if live is not None:
                live.use_layout_prior(name)
        except CmrError as exc:
            self.say("error", exc.message)
            return False
        self.settings.layout_prior = name
        for r in self.hq_renderers.values():
            if getattr(r, "scene", False):
                r.use_layout_prior(None)
                self._with_layout(r)
        self.save_settings()
        self.say("info", f"Fully synthetic renders take their body layout from {name or 'each model’s own prior'}.")
        if self.case is not None and self.renderer is not None:
            self.request_live()
        return True

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

        self._live_loading = True
        self.say("info", "Loading the live model…")
        t = threading.Thread(target=work, name="cmrstudio-load", daemon=True)
        t.start()
        return t

    def _on_live_loaded(self, r, name, err: str, seq: int) -> None:
        if self._closed or seq != self._load_seq:  # closed, or the user picked another model meanwhile
            return
        self._live_loading = False
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

        old = self.local_engine
        self.renderer = r
        self.local_engine = LiveEngine(r, on_ready=lambda res: self.call_soon(self._on_live_result, res))
        self.engine = self.remote_engine if self.remote_engine is not None else self.local_engine
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

    def set_margin(self, mm) -> bool:
        """How far (mm) around the scan's own heart and the painted one renders repaint; the rest stays the scan's (in this
        patient) or the kept synthetic surroundings (fully synthetic edits). Remembered in the settings."""
        from cmrstudio.settings import check_margin

        try:
            mm = check_margin(mm)
        except CmrError as exc:
            self.say("error", exc.message)
            return False
        self.margin_mm = self.settings.margin_mm = mm
        self.live_shown.clear()
        self.events.emit("margin")
        self.request_live()
        return True

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
        try:
            return self.engine.submit(self.mask[z], self.frame, self.vendor, self.seed, tag=(self.token, z),
                                      context=self.slice_context(z))
        except CmrError as exc:
            if self.engine is not self.remote_engine or self.local_engine is None:
                raise
            self._remote_lost(exc.message, self._backend_gen)  # the server went away between two edits: render here
            return self.local_engine.submit(self.mask[z], self.frame, self.vendor, self.seed, tag=(self.token, z),
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
        if z == self.z:
            self._queue_faith(res)
        if res.note and res.note not in (m for _, m in self.messages[-5:]):
            self.say("warning", res.note)
        self.events.emit("live", res)

    def wait_live(self, timeout: float = 30.0) -> bool:
        """Block until the live engine is idle and its last result handled (headless use and tests)."""
        return self.engine is not None and self.engine.wait_idle(timeout)

    # -- the backend: this machine or a render server ----------------------------------------------------
    def set_backend(self, backend: str, token: str | None = None, token_file: str | None = None, save: bool = True) -> bool:
        """Render on this machine ("local") or on a ``cmrstudio serve`` server (its URL; the token given, or read from
        ``token_file``). Connecting happens on a thread; frames render here until the server answers."""
        from cmrstudio.serve.client import RemoteBackend, check_url

        try:
            if backend != "local":
                backend = check_url(backend)
                if token is None and token_file:
                    from cmrstudio.serve.security import read_token

                    token = read_token(token_file)
                remote = RemoteBackend(backend, token, timeout=3.0)
        except CmrError as exc:
            self.say("error", f"The render server cannot be used: {exc.message}")
            return False
        self._drop_remote()
        self.settings.backend = backend
        self.settings.backend_token_file = token_file if backend != "local" else self.settings.backend_token_file
        if save:
            self.save_settings()
        if backend == "local":
            self.backend_state = "local"
            self.say("info", "Frames are rendered on this machine.")
            self.events.emit("backend")
            return True
        self.remote = remote
        self.backend_state = "connecting"
        self.events.emit("backend")
        self._start_probe(self._backend_gen)
        return True

    def _drop_remote(self) -> None:
        self._backend_gen += 1
        self._backend_ready.clear()
        self._server_models = {}
        eng, self.remote_engine, self.remote = self.remote_engine, None, None
        if self.engine is eng and eng is not None:
            self.engine = self.local_engine
        if eng is not None:
            eng.close()
        from cmrstudio.serve.client import RemoteJobQueue

        if isinstance(self.queue, RemoteJobQueue):
            self.queue.close()
            self.queue = None

    def _start_probe(self, gen: int) -> None:
        """Try the server now and every ``probe_interval_s`` until it answers (or the backend changes)."""
        remote = self.remote

        def work():
            first = True
            while gen == self._backend_gen and not self._closed:
                try:
                    remote.health(timeout=2.0)
                    eng = remote.live(on_ready=lambda res: self.call_soon(self._on_live_result, res),
                                      on_lost=lambda text: self.call_soon(self._remote_lost, text, gen))
                except CmrError as exc:
                    if first:
                        self.call_soon(self._remote_unreachable, exc.message, gen)
                        first = False
                    time.sleep(self.probe_interval_s)
                    continue
                self.call_soon(self._remote_up, eng, gen)
                return

        threading.Thread(target=work, name="cmrstudio-backend-probe", daemon=True).start()

    def _remote_up(self, eng, gen: int) -> None:
        if gen != self._backend_gen or self._closed:
            eng.close()
            return
        was_lost = self.backend_state == "lost"
        self.remote_engine = eng
        self.engine = eng
        self.backend_state = "remote"
        model = eng.hello.get("model")
        same = self.renderer is None or model == self.renderer.name
        self.say("info", f"{'The render server is back: l' if was_lost else 'L'}ive frames are rendered on {eng.where} "
                         f"({model} on {eng.hello.get('device')}){'' if same else f'; this machine would use {self.renderer.name}'}.")
        self.events.emit("backend")
        self.live_shown.pop(self.z, None)
        try:
            self.request_live()
        except CmrError as exc:  # closed meanwhile
            self.say("warning", exc.message)
        self._backend_ready.set()

    def _remote_unreachable(self, text: str, gen: int) -> None:
        if gen != self._backend_gen or self._closed:
            return
        self.backend_state = "lost"
        self.say("warning", f"{text.rstrip('.')}; rendering on this machine until it answers.")
        self.events.emit("backend")

    def _remote_lost(self, text: str, gen: int) -> None:
        """The server went away: this machine renders from now on (the painted mask is the session's own), and a probe
        reconnects when the server is back."""
        if gen != self._backend_gen or self._closed or self.remote_engine is None:
            return
        eng, self.remote_engine = self.remote_engine, None
        self.engine = self.local_engine
        self.backend_state = "lost"
        self._backend_ready.clear()
        self._backend_gen += 1
        eng.close()
        self.say("warning", f"{text.rstrip('.')}; rendering on this machine until it is back.")
        self.events.emit("backend")
        self.request_live()
        self._start_probe(self._backend_gen)

    def wait_backend(self, timeout: float = 30.0) -> bool:
        """Block until the render server is connected (tests; the GUI listens to ``backend`` events)."""
        return self._backend_ready.wait(timeout)

    def backend_line(self) -> str:
        """Where frames render, for the live panel: '' on this machine by choice; the server and its round trip."""
        if self.backend_state == "local" or self.remote is None:
            return ""
        if self.backend_state == "remote" and self.remote_engine is not None:
            rtt = self.remote_engine.rtt_ms[-20:]
            return f"on {self.remote.where}" + (f" (round trip {float(np.median(rtt)):.0f} ms)" if rtt else "")
        if self.backend_state == "connecting":
            return f"on this machine (connecting to {self.remote.where}…)"
        return f"on this machine ({self.remote.where} is not answering)"

    # -- mask edits ------------------------------------------------------------------------------------
    def mask_edited(self, slices=None) -> None:
        """The painted mask changed (a panel edit, undo, redo): unsaved, checks and a new live frame.

        ``slices``: the slices that changed, when known (they count as edited for :meth:`interpolate`).
        """
        self._touch(slices)
        self.check_anatomy()
        self.events.emit("mask")
        self.request_live()

    def painted(self, z: int | None = None) -> None:
        """A brush stroke (or fill) on slice ``z`` (the current one) ended: the labels layer painted into ``mask`` itself."""
        self._touch([self.z if z is None else int(z)])
        self.check_anatomy()

    def _touch(self, slices=None) -> None:
        was = self.dirty
        self.dirty = True
        self._edit_gen += 1
        self._edited_at = time.monotonic()
        if slices is not None:
            self.edited.update(int(z) for z in slices)
        if not was:
            self.events.emit("edits")

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
        self.mask_edited(np.unique(idx[0]).tolist() if n else None)
        return n

    def interpolate(self, z0: int | None = None, z1: int | None = None) -> list[int]:
        """Fill the slices between two edited ones by shape-based interpolation (undoable; see
        :func:`cmrstudio.edits.interpolate_slices`). Without ``z0``/``z1``: every gap between the slices
        edited since the case opened. Returns the slices filled (empty, with a message, when there are none)."""
        from cmrstudio import edits

        if self.case is None:
            return []
        try:
            if z0 is not None and z1 is not None:
                vol = edits.interpolate_slices(self.mask, z0, z1, self.spacing_yx())
                lo, hi = sorted((int(z0), int(z1)))
                filled = list(range(lo + 1, hi))
            else:
                keys = sorted(z for z in self.edited if self.mask[z].any())
                vol, filled = edits.interpolate_between(self.mask, keys, self.spacing_yx())
        except Exception as exc:
            self.say("warning", err_text(exc))
            return []
        self.apply_mask(vol)
        self.say("info", f"Interpolated slice{'s' if len(filled) != 1 else ''} {_ranges(filled)} between the edited ones "
                         "(undo restores them).")
        return filled

    def toggle_phase(self) -> bool:
        """Open the other phase (ED <-> ES) of the open case; its edits are kept (autosave) first."""
        if self.case is None:
            return False
        others = [(ph, i) for ph, i in self.phases() if i >= 0 and ph != (self.case.phase or "-")]
        if not others:
            self.say("warning", f"{self.case.case_id} has no other phase to switch to; open a dataset folder that holds ED and ES.")
            return False
        return self.open_ref(others[0][1])

    # -- saving the mask, and autosave -------------------------------------------------------------------
    def suggest_mask_path(self) -> Path:
        """Where Save mask as… starts: beside the scan (not inside the built-in sample), else the last folder."""
        name = f"{_safe(self.case.case_id) if self.case else 'mask'}_mask_edited.nii.gz"
        if self.saved_path is not None:
            return self.saved_path
        p = self.opened.path
        if p is not None:
            return (p if p.is_dir() else p.parent) / name
        return Path(self.settings.last_folder or Path.home()) / name

    def save_mask(self, path: str | Path | None = None) -> Path | None:
        """Write the painted mask as NIfTI in the scan's geometry (canonical labels 0–3) with a JSON sidecar.

        ``path`` None: where it was last saved. Each file is written to a temporary name and renamed, so a
        failed save leaves what was there before. Returns the path, or None (with a message) on failure.
        """
        from cmrstudio import __version__
        from cmrstudio.anatomy import LABELS
        from cmrstudio.io import write_volume
        from cmrstudio.io.common import jsonable, write_text_atomic

        if self.case is None:
            self.say("error", "Nothing is open; open a scan before saving a mask.")
            return None
        p = Path(path).expanduser() if path is not None else self.saved_path
        if p is None:
            self.say("error", "This mask has not been saved yet; choose a file with Save mask as….")
            return None
        try:
            if p.is_dir():
                raise CmrError(f"{p} is a folder; give a file name ending in .nii.gz.")
            if not p.name.lower().endswith((".nii.gz", ".nii")):
                raise CmrError(f"{p.name} is not a NIfTI file name; end it with .nii.gz (or .nii).")
            top = int(self.mask.max()) if self.mask.size else 0
            if top > 3:
                raise CmrError(f"The mask holds label {top}, which is not one of 0–3 (background, LV, MYO, RV); "
                               "erase it or paint with 1–3 before saving.")
            write_volume(p, self.mask, self.case.affine, dtype=np.uint8)
            c = self.case
            side = {
                "case_id": c.case_id, "phase": c.phase, "vendor": c.vendor,
                "scan": str(self.opened.path) if self.opened.path else "built-in sample",
                "label_convention_written": "canonical",
                "labels": {str(k): v for k, v in LABELS.items()},
                "shape": list(self.mask.shape),
                "spacing_mm": list(c.spacing) if c.spacing else "unknown",
                "geometry": "the scan's own grid (its affine)" if c.affine is not None else "unknown (identity affine)",
                "edited_slices": sorted(z + 1 for z in self.edited),
                "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "written_by": f"cmrstudio {__version__}",
            }
            write_text_atomic(_sidecar(p), json.dumps(jsonable(side), indent=2, ensure_ascii=False) + "\n")
        except Exception as exc:
            self.say("error", f"The mask could not be saved to {p}: {err_text(exc)}")
            return None
        self.saved_path = p
        self.dirty = False
        self.autosave(force=True)  # the autosave now says the edits are in a file
        self.events.emit("edits")
        self.say("info", f"Saved the mask of {self.case.case_id} to {p} (canonical labels, the scan's geometry; sidecar {_sidecar(p).name}).")
        return p

    def save_mask_as(self, path: str | Path) -> Path | None:
        return self.save_mask(path)

    def autosave_dir(self) -> Path | None:
        return Path(self.project.folder) / "autosave" if self.project is not None else None

    def case_key(self) -> str | None:
        """A file-name-safe key of the open case: its id, phase and a digest of where it came from and of its pixels."""
        c = self.case
        if c is None:
            return None
        if self._case_key is None:
            h = hashlib.sha1()
            h.update(f"{self.opened.path or 'sample'}|{c.case_id}|{c.phase}|{c.shape}".encode())
            if c.image is not None:
                h.update(np.ascontiguousarray(c.image).tobytes())
            self._case_key = f"{_safe(c.case_id)}_{_safe(c.phase or 'x')}_{h.hexdigest()[:12]}"
        return self._case_key

    def autosave(self, force: bool = False) -> Path | None:
        """Keep the working mask of the open case in the project (when it changed since the last autosave).

        A mask back to the scan's own (no edits) removes the autosave. Returns the autosave file, or None.
        """
        d = self.autosave_dir()
        if d is None or self.case is None or self.mask is None or (not force and self._edit_gen == self._autosaved_gen):
            return None
        from cmrstudio.io import write_volume
        from cmrstudio.io.common import write_text_atomic

        key = self.case_key()
        img, side = d / f"{key}_mask.nii.gz", d / f"{key}.json"
        original = self.case.mask if self.case.mask is not None else np.zeros_like(self.mask)
        try:
            if np.array_equal(self.mask, original):
                for f in (side, img):
                    f.unlink(missing_ok=True)
                self._autosaved_gen = self._edit_gen
                return None
            d.mkdir(parents=True, exist_ok=True)
            write_volume(img, self.mask, self.case.affine, dtype=np.uint8)
            info = {"case_id": self.case.case_id, "phase": self.case.phase, "shape": list(self.mask.shape), "key": key,
                    "scan": str(self.opened.path) if self.opened.path else "built-in sample",
                    "edited_slices": sorted(self.edited), "saved_to": str(self.saved_path) if self.saved_path else None,
                    "unsaved": self.dirty, "autosaved": time.strftime("%Y-%m-%d %H:%M")}
            write_text_atomic(side, json.dumps(info, indent=2, ensure_ascii=False) + "\n")  # last: it vouches for the mask
        except Exception as exc:
            self.say("warning", f"The edits could not be autosaved in {d}: {err_text(exc)}; save the mask to a file.")
            return None
        self._autosaved_gen = self._edit_gen
        return img

    def autosave_if_due(self) -> Path | None:
        """Autosave once the painter has paused for ``autosave_delay_s`` (the GUI calls this on a timer)."""
        if self._edit_gen != self._autosaved_gen and time.monotonic() - self._edited_at >= self.autosave_delay_s:
            return self.autosave()
        return None

    def _restore_autosave(self) -> bool:
        """The open case's autosaved mask, if the project holds one for it (same case, same pixels)."""
        d = self.autosave_dir()
        if d is None or self.case is None:
            return False
        key = self.case_key()
        img, side = d / f"{key}_mask.nii.gz", d / f"{key}.json"
        if not side.is_file() or not img.is_file():
            return False
        from cmrstudio.io import read_volume

        try:
            info = json.loads(side.read_text(encoding="utf-8"))
            arr = np.asarray(read_volume(img, kind="mask")[0])
            if tuple(arr.shape) != tuple(self.mask.shape) or tuple(info.get("shape", ())) != tuple(self.mask.shape):
                raise CmrError(f"it is {arr.shape}, the scan {self.mask.shape}")
            if arr.min() < 0 or arr.max() > 3:
                raise CmrError("it holds labels other than 0–3")
        except Exception as exc:
            self.say("warning", f"The autosaved edits of {self.case.case_id} in {img} could not be restored ({err_text(exc)}); "
                                "the scan's own mask is open.")
            return False
        self.mask = arr.astype(np.uint8)
        self.edited = {int(z) for z in info.get("edited_slices", []) if 0 <= int(z) < self.mask.shape[0]}
        saved = info.get("saved_to")
        self.saved_path = Path(saved) if saved else None
        self.dirty = bool(info.get("unsaved", True))
        self.say("info", f"Restored your edits of {self.case.case_id} {self.case.phase or ''} from the autosave of "
                         f"{info.get('autosaved', '?')}" + ("." if not self.dirty else " (not yet saved to a file)."))
        return True

    def discard_autosave(self) -> None:
        """Forget the open case's autosave (the next edit makes a new one)."""
        d, key = self.autosave_dir(), self.case_key()
        if d is not None and key is not None:
            for f in (d / f"{key}.json", d / f"{key}_mask.nii.gz"):
                f.unlink(missing_ok=True)

    # -- faithfulness of the live render -------------------------------------------------------------------
    def _queue_faith(self, res) -> None:
        if not self.faith_on or self._closed or res.image is None or res.mask is None:
            return
        with self._faith_cv:
            self._faith_job = (self.token, res.tag[1], np.asarray(res.image, np.float32), np.array(res.mask, copy=True),
                               self.case.affine, res.request_id)
            if self._faith_thread is None:
                self._faith_thread = threading.Thread(target=self._faith_loop, name="cmrstudio-faith", daemon=True)
                self._faith_thread.start()
            self._faith_cv.notify()

    def _faith_loop(self) -> None:
        from cmrstudio.engine.segment import segment_scan
        from cmrstudio.metrics import dice_scores

        while True:
            with self._faith_cv:
                while self._faith_job is None and not self._closed:
                    self._faith_cv.wait()
                if self._closed:
                    return
                job, self._faith_job = self._faith_job, None
                self._faith_busy = True
            token, z, image, mask, affine, rid = job
            t0 = time.perf_counter()
            try:
                if mask.any():
                    pred = segment_scan(Case(image[None], mask[None], affine), device=self.device, slices=[0])[0]
                    scores = dice_scores(pred, mask)
                else:
                    scores = {"mean": None}
                out = {"z": z, "dice": scores, "mean": scores.get("mean"), "ms": 1000 * (time.perf_counter() - t0), "request_id": rid}
            except Exception as exc:
                out = {"z": z, "dice": {}, "mean": None, "error": err_text(exc), "ms": 0.0, "request_id": rid}
            if not self._closed:
                self.call_soon(self._on_faith, token, out)
            with self._faith_cv:
                self._faith_busy = False
                self._faith_cv.notify_all()
                # throttled: the segmenter must not take the live path's cores
                self._faith_cv.wait(max(self.faith_interval_s, 2 * out["ms"] / 1000))

    def _on_faith(self, token: int, out: dict) -> None:
        if token != self.token or out["z"] != self.z or self._closed:
            return
        self.faith = out
        self.events.emit("faith", out)

    def wait_faith(self, timeout: float = 30.0) -> bool:
        """Block until the faithfulness worker has nothing queued or running (headless use and tests)."""
        end = time.monotonic() + timeout
        with self._faith_cv:
            while self._faith_job is not None or getattr(self, "_faith_busy", False):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._faith_cv.wait(min(left, 0.05))
        return True

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
            self.hq_renderers[model] = self._with_layout(open_renderer(model, device=self.device))
        return self.hq_renderers[model]

    def render_hq(self, model: str = "flow", steps: int | None = None, guidance: float | None = None,
                  solver: str | None = None, background_load: bool = False) -> int | None:
        """Queue an HQ render of the current slice; progress (``hq``) and the result (``hq_done``) arrive as events.

        ``background_load``: a model not loaded yet loads on a thread (``hq_loading`` events; the GUI stays
        responsive and Cancel works meanwhile) and the render is queued once it is ready; returns -1 then.
        """
        from cmrstudio.engine.hq import JobQueue

        if self.case is None:
            return None
        if self.remote_engine is not None:
            return self._render_hq_remote(model, steps, guidance, solver)
        if background_load and model not in self.hq_renderers:
            return self._load_hq_then_render(model, steps, guidance, solver)
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

    def _render_hq_remote(self, model: str, steps, guidance, solver) -> int | None:
        """An HQ render on the server: the same events as a local one (``hq``, ``hq_done``)."""
        from cmrstudio.serve.client import RemoteJobQueue

        try:
            name = self._server_model_name(model)
            if not isinstance(self.queue, RemoteJobQueue) or self.queue.lost or self.queue.model != name:
                if self.queue is not None:
                    self.queue.close()
                self.queue = self.remote.jobs(on_progress=lambda job: self.call_soon(self._on_hq_progress, job, job.step, job.preview),
                                              on_done=lambda job: self.call_soon(self._on_hq_done, job), model=name)
            z = self.z
            fr = self._frame_of(self._server_models.get(name, {}).get("frame") or {})
            jid = self.queue.submit(self.mask[z], fr, self.vendor, self.seed, steps, guidance, solver, tag=(self.token, z),
                                    context=self.slice_context(z))
        except Exception as exc:
            self.say("error", f"HQ rendering with '{model}' on the server {self.remote.where if self.remote else ''} could not start: "
                              f"{err_text(exc)}")
            return None
        self.hq_job = self.queue.job(jid)
        self.hq_step = 0
        self.events.emit("hq", self.hq_job, 0, None)
        return jid

    def _server_model_name(self, model: str) -> str:
        """A model name or kind ("flow", "diffusion") as the server's installed name."""
        if not getattr(self, "_server_models", None):
            self._server_models = {m["name"]: m for m in self.remote.models()}
        if model in self._server_models:
            return model
        for name, m in self._server_models.items():
            if m["kind"] == model:
                return name
        raise CmrError(f"The server has no model '{model}' installed; it has {', '.join(sorted(self._server_models))}.")

    def _frame_of(self, card_frame: dict) -> Frame:
        """The synthesis frame a server model needs: this session's own when the sizes agree."""
        from types import SimpleNamespace

        from cmrstudio.engine.base import GeneratorFront

        size, spacing = card_frame.get("size"), card_frame.get("spacing_mm")
        r = self.renderer
        if size is None or (r is not None and size == r.size and spacing == r.spacing_mm):
            return self.frame
        shim = SimpleNamespace(size=int(size), spacing_mm=spacing, check_mask=lambda m: np.asarray(m, np.uint8))
        return GeneratorFront.frame_for(shim, self.mask, self.case.spacing, centre=self.centre, image=self.case.image)

    def _load_hq_then_render(self, model: str, steps, guidance, solver) -> int:
        if self._hq_loader is not None and self._hq_loader.is_alive():
            self.say("warning", f"The HQ model {self.hq_loading} is still loading; the render starts when it is ready.")
            return -1
        token = self.token
        self.hq_loading = model
        self._hq_load_cancel = False
        self.events.emit("hq_loading", model)

        def work():
            from cmrstudio.engine.factory import open_renderer

            try:
                r, err = self._with_layout(open_renderer(model, device=self.device)), ""
            except Exception as exc:
                r, err = None, err_text(exc)
            self.call_soon(self._on_hq_loaded, model, r, err, token, (steps, guidance, solver))

        self._hq_loader = threading.Thread(target=work, name="cmrstudio-hq-load", daemon=True)
        self._hq_loader.start()
        return -1

    def _on_hq_loaded(self, model: str, r, err: str, token: int, params) -> None:
        if self._closed:
            return
        self.hq_loading = None
        if r is not None:
            self.hq_renderers.setdefault(model, r)
        self.events.emit("hq_loading", None)
        if r is None:
            self.say("error", f"HQ rendering with '{model}' could not start: {err}")
        elif self._hq_load_cancel or token != self.token:
            self.say("info", f"The HQ render with {model} was cancelled before it started.")
        else:
            self.render_hq(model, *params)  # the slice on show now

    def cancel_hq(self) -> None:
        if self.hq_loading is not None:
            self._hq_load_cancel = True
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
        end = time.monotonic() + timeout
        if self._hq_loader is not None:
            self._hq_loader.join(timeout)
            if self.hq_loading is not None and self._call_soon is None:
                return False
        return self.queue is not None and self.queue.wait_idle(max(0.0, end - time.monotonic()))

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
        self.autosave()
        self._closed = True
        with self._faith_cv:
            self._faith_cv.notify_all()
        self.save_settings()
        self._backend_gen += 1  # stops the probe
        for e in {id(x): x for x in (self.engine, self.local_engine, self.remote_engine) if x is not None}.values():
            e.close()
        if self.queue is not None:
            self.queue.close()
        self.events.disconnect()
        self.engine = self.queue = self.renderer = self.local_engine = self.remote_engine = self.remote = None
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


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_") or "x"


def _sidecar(p: Path) -> Path:
    name = p.name
    for suf in (".nii.gz", ".nii"):
        if name.lower().endswith(suf):
            return p.with_name(name[: -len(suf)] + ".json")
    return p.with_name(name + ".json")


def _ranges(zs: list[int]) -> str:
    """1-based slice numbers as runs: [2, 3, 4, 7] -> '3–5, 8'."""
    out, zs = [], sorted(zs)
    i = 0
    while i < len(zs):
        j = i
        while j + 1 < len(zs) and zs[j + 1] == zs[j] + 1:
            j += 1
        out.append(f"{zs[i] + 1}" if i == j else f"{zs[i] + 1}–{zs[j] + 1}")
        i = j + 1
    return ", ".join(out)
