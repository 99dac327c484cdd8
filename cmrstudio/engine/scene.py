"""Rendering whole slices with scene models: in this patient, or fully synthetic.

A *scene model* (card ``conditioning.scheme == "scene-v1"``) is fully convolutional and reads
the heart one-hot, background tissue-class fractions and a context image (see
:mod:`cmrstudio.data.scene`). This module turns a painted native mask slice into a render of the
scan's whole field of view:

* **in this patient** (:class:`SliceContext` with the scan's own image): the real slice is the
  context outside the repainted region (:func:`~cmrstudio.data.scene.edit_region`): the margin,
  :data:`~cmrstudio.settings.DEFAULT_MARGIN_MM` unless chosen, around every label the painter changed,
  :data:`~cmrstudio.settings.UNCHANGED_MARGIN_MM` around the outline left as the scan's own labels
  had it (the whole margin around the painted heart when the scan has no labels); only that region
  is rendered, in a window around it, and put back into the real slice. Everything else is the
  patient's own pixels. Derived from a patient scan.
* **fully synthetic** (no real pixel): the tissue-class prior samples where body, lung, liver
  and fat are, given the painted heart; the model renders the whole scene. For a stream of edits
  (the live path) that scene is made once per slice, seed and vendor and kept; each edit then
  repaints the heart region inside it, exactly as in a patient, but with synthetic surroundings.

Seeds fix everything random: the tissue classes, the latent and one noise field the size of the
scene, which a window takes its part of, so a window render continues its scene seamlessly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from contextlib import contextmanager
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Hashable, Iterator

import numpy as np
import torch

from cmrstudio.data.frame import Frame, frame_mask, from_frame, from_frame_box, to_frame
from cmrstudio.data.scene import (DEFAULT_MARGIN_MM, LAYOUT_FACTOR, UNCHANGED_MARGIN_MM, Scene, condition, edit_region,
                                  repaint_region, scene_for)
from cmrstudio.errors import CmrError
from cmrstudio.settings import band_mm

MODES = ("in-patient", "synthetic")
WINDOW_MULTIPLE = 16  # window sizes: the networks halve them up to four times
DEFAULT_CANVAS = 256  # fully synthetic renders of a heart frame alone: a 320 mm square scene around it


@dataclass
class SliceContext:
    """What a render of one slice may use besides the painted mask.

    ``mode`` "in-patient": ``image`` is the scan's own slice (its own intensities) and ``heart`` the
    scan's own heart labels on it (repainted too, so the old heart leaves no trace); ``margin_mm``
    around what the painting changed is repainted, and UNCHANGED_MARGIN_MM around the rest of both
    hearts. "synthetic": no real pixel; ``key`` names the slice so that its synthetic surroundings
    are made once and kept while the painter works.
    """

    mode: str = "synthetic"
    image: np.ndarray | None = None
    heart: np.ndarray | None = None
    margin_mm: float = DEFAULT_MARGIN_MM
    key: Hashable = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise CmrError(f"Render mode {self.mode!r} is not known; use 'in-patient' (the scan's own surroundings) or 'synthetic'.")
        if self.mode == "in-patient" and self.image is None:
            raise CmrError("Rendering in this patient needs the scan's own image; open a scan, or render fully synthetic.")
        from cmrstudio.settings import check_margin

        check_margin(self.margin_mm)

    @property
    def derived_from_patient(self) -> bool:
        return self.mode == "in-patient"


@dataclass
class Plan:
    """One render of one slice, in its scene: the masks, context and the window to run the network on."""

    scene: Scene
    mask: np.ndarray  # (S, S) painted labels
    context: np.ndarray | None  # (S, S) in [0, 1]: real (in patient) or earlier synthetic surroundings
    hole: np.ndarray | None  # (S, S) bool: repainted region (None: the whole scene is made)
    window: tuple[int, int, int]  # (row, col, size) in the scene
    layout: np.ndarray | None = None  # (N_LAYOUT, S/f, S/f) tissue fractions for a whole-scene render
    keep_as: Hashable = None  # a whole synthetic scene to keep, when done, as the surroundings of later edits
    context_key: Hashable = None  # the kept synthetic surroundings this render repaints (fully synthetic edits)
    hide_layout_px: float = 0.0  # no tissue classes this near the heart (the model's card: layout_hidden_near_heart_mm)

    def cond(self) -> np.ndarray:
        r, c, n = self.window
        sl = np.s_[r:r + n, c:c + n]
        if self.hole is None:
            f = LAYOUT_FACTOR if self.layout is None else self.mask.shape[-1] // self.layout.shape[-1]
            lay = None if self.layout is None else self.layout[:, r // f:(r + n) // f, c // f:(c + n) // f]
            return condition(self.mask[sl], lay, hide_layout_px=self.hide_layout_px)
        return condition(self.mask[sl], None, self.context[sl], ~self.hole[sl])


def window_around(region: np.ndarray, at_least: tuple[int, int, int], size: int) -> tuple[int, int, int]:
    """The smallest square window (multiple of WINDOW_MULTIPLE, inside the scene) holding ``region`` and
    the window ``at_least`` (row, col, n)."""
    r0, c0, n0 = at_least
    rows, cols = np.nonzero(region)
    lo_r, hi_r, lo_c, hi_c = r0, r0 + n0, c0, c0 + n0
    if rows.size:
        lo_r, hi_r = min(lo_r, rows.min() - 4), max(hi_r, rows.max() + 5)
        lo_c, hi_c = min(lo_c, cols.min() - 4), max(hi_c, cols.max() + 5)
    n = int(np.ceil(max(hi_r - lo_r, hi_c - lo_c) / WINDOW_MULTIPLE) * WINDOW_MULTIPLE)
    n = min(n, size)
    r = int(np.clip((lo_r + hi_r - n) // 2, 0, size - n))
    c = int(np.clip((lo_c + hi_c - n) // 2, 0, size - n))
    return r, c, n


class Kept:
    """The last few values by key, the least recently used dropped first; safe to share between threads. ``limit`` (an
    int, or a callable giving one) is read at every ``put``, so an owner whose size is a class attribute may change it."""

    def __init__(self, limit):
        self._limit = limit
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable):
        with self._lock:
            hit = self._d.get(key)
            if hit is not None:
                self._d.move_to_end(key)
            return hit

    def put(self, key: Hashable, value) -> None:
        limit = self._limit() if callable(self._limit) else self._limit
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > limit:
                self._d.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()

    def __len__(self) -> int:
        return len(self._d)


class LayoutPrior:
    """The tissue-class prior a scene model was trained with (:mod:`cmrstudio.models.layout`): where body, lung,
    liver and fat are, sampled for each seed given the painted heart and the scan's extent."""

    kept_samples = 8  # the last few samples, shared by every renderer on this prior (the live model and the HQ model)

    def __init__(self, model=None, sha256: str | None = None):
        from cmrstudio.models.layout import installed_prior, load_layout

        self.info = installed_prior(model, sha256, "the model")
        self.model = load_layout(self.info)  # the PCA, or a fine prior refining the PCA's sample
        self.factor = self.model.factor
        self._kept = Kept(lambda: self.kept_samples)
        self.sampled = 0  # samples drawn (not taken from the kept ones)

    def sample(self, mask: np.ndarray, inside: np.ndarray, vendor_index: int, seed: int) -> np.ndarray:
        """(S, S) labels and scan extent -> (N_LAYOUT, S/f, S/f) class fractions (each cell sums to 1).

        The same labels, extent, vendor and seed give the same sample, so the last few are kept: an HQ render of a mask the
        live model has drawn whole for the same seed (a slice not edited since) takes its tissue classes from there instead
        of sampling them again (the fine prior's sample is about 0.5 s on a 2-core CPU)."""
        key = (_digest(mask, np.int16), _digest(inside, bool), int(vendor_index), int(seed), getattr(self.model, "leave_out", None))
        hit = self._kept.get(key)
        if hit is not None:
            return hit.copy()
        lay = self.model.scene_sample(mask, inside, vendor_index, seed)
        self.sampled += 1
        self._kept.put(key, lay.copy())
        return lay


def _digest(a: np.ndarray, dtype) -> tuple:
    a = np.ascontiguousarray(a, dtype=dtype)
    return a.shape, hashlib.blake2b(a.tobytes(), digest_size=16).digest()


_PRIORS: dict = {}
_PRIORS_LOCK = threading.Lock()


def layout_prior(name: str | None = None, sha256: str | None = None) -> LayoutPrior:
    """A tissue-class prior, loaded once."""
    key = (name, sha256)
    with _PRIORS_LOCK:
        if key not in _PRIORS:
            _PRIORS[key] = LayoutPrior(name, sha256)
        return _PRIORS[key]


@dataclass
class _Cached:
    image: np.ndarray  # (S, S) synthetic scene in [0, 1]
    mask: np.ndarray  # (S, S) the labels it was made for
    native: np.ndarray  # the scene put back into the scan's grid
    native_intensity: tuple | None  # the intensity range ``native`` was put back with


class SceneMixin:
    """Scene rendering for a :class:`~cmrstudio.engine.base.GeneratorFront` whose network is a scene model.

    A subclass provides ``_window_steps(cond, vendor_index, seed, noise, **kw)``: an iterator of
    (step, total, image in [0, 1]) for one conditioning window (1, C, n, n), its noise field (1, 1, n, n)."""

    scene_cache_size = 16
    framed_kw: dict = {}  # what whole-batch renders (render_framed) pass on to _window_steps

    def _init_scene(self) -> None:
        self._scenes = Kept(lambda: self.scene_cache_size)  # synthetic surroundings: (key, vendor, seed, frame) -> _Cached
        self._contexts = Kept(lambda: self.scene_cache_size)  # in-patient context in the scene: (id(image), frame) -> (image, (S, S))
        self._timing = threading.local()  # this thread's last render: time in the network, window size

    def last_network(self) -> tuple[float, int] | None:
        """(milliseconds in the network, window size) of this thread's last slice render: what the rest of the
        live path costs is the render's time less this."""
        return getattr(self._timing, "last", None)

    # -- seeds -------------------------------------------------------------------------------------
    @staticmethod
    def noise_field(seed: int, size: int) -> torch.Tensor:
        """The scene's noise (1, 1, size, size) for a seed: made once and kept (every edit of a painting session takes its
        window of the same field). Shared: take a copy before changing it in place."""
        return _noise_field(int(seed), int(size))

    def use_layout_prior(self, name: str | None) -> None:
        """Fully synthetic renders take their tissue classes from ``name`` (a layout model's name or card: a fine prior, or a
        layout bank built from a site's own scans) instead of the one the card names; None: the card's again. Refused in one
        sentence when its cells are not this model's (the choice before stays); kept surroundings are forgotten."""
        before = getattr(self, "layout_choice", None)
        self.layout_choice = None if name is None else str(name)
        try:
            self._prior()
        except CmrError:
            self.layout_choice = before
            raise
        self.forget_scenes()

    @contextmanager
    def leaving_out(self, case_id: str | None):
        """Within this block, a layout bank does not pick the scans of ``case_id``'s patient: an evaluation that renders the
        masks of patients the bank holds (the machine reader's training renders) then sees what a new heart gets."""
        from cmrstudio.case import patient_of

        model = self._prior().model if getattr(self, "layout_choice", None) else None
        if not hasattr(model, "leave_out") or case_id is None:
            yield
            return
        model.leave_out = patient_of(case_id)
        try:
            yield
        finally:
            model.leave_out = None

    def describe(self) -> dict:
        d = super().describe()
        return {**d, "layout_prior": self.layout_prior_name()} if getattr(self, "layout_choice", None) else d

    def layout_prior_name(self) -> str:
        """The name of the layout model fully synthetic renders take their tissue classes from."""
        return self._prior().info.name

    def _prior(self) -> LayoutPrior:
        cond = self.info.card.get("conditioning") or {}
        lp = cond.get("layout_prior") or {}
        choice = getattr(self, "layout_choice", None)
        prior = layout_prior(lp.get("name"), lp.get("sha256")) if choice is None else layout_prior(choice)
        factor = int(cond.get("layout_factor", LAYOUT_FACTOR))
        if prior.factor != factor:
            fix = ("give a layout model of that cell size, or leave the model its own prior" if choice is not None else
                   "name a prior of its cell size in its card, or retrain it with this prior")
            raise CmrError(f"The tissue-class prior '{prior.info.name}' makes cells of {prior.factor} px, but '{self.info.name}' was trained "
                           f"on cells of {factor} px; {fix}.")
        return prior

    # -- planning ----------------------------------------------------------------------------------
    def scene_of(self, frame: Frame) -> Scene:
        if frame.extra.get("scene"):
            raise CmrError("Give the heart frame, not a scene frame, to render a slice.")
        return scene_for(frame)

    def _margin_px(self, frame: Frame, margin_mm: float) -> float:
        return float(margin_mm / frame.spacing_mm) if frame.spacing_mm else float(margin_mm / 1.25)

    def _hidden_px(self, frame: Frame) -> float:
        """How near the heart (px of ``frame``) this model was trained without tissue classes, and so renders without them."""
        return self._margin_px(frame, float((self.info.card.get("conditioning") or {}).get("layout_hidden_near_heart_mm", 0.0)))

    def _context_scene(self, image: np.ndarray, scene: Scene) -> np.ndarray:
        key = (id(image), scene.frame.origin, scene.frame.step, scene.frame.size, scene.frame.intensity)
        hit = self._contexts.get(key)
        if hit is not None and hit[0] is image:
            return hit[1]
        from cmrstudio.case import Case

        fc = to_frame(Case(np.asarray(image, np.float32)[None]), scene.frame)
        out = fc.image[0]
        self._contexts.put(key, (image, out))
        return out

    def plan(self, mask2d: np.ndarray, frame: Frame, context: SliceContext, vendor_index: int, seed: int) -> Plan:
        """Everything one slice render needs. Fully synthetic without kept surroundings: the whole scene is the render
        (and is kept as the surroundings of later edits of the same slice, seed and vendor)."""
        scene = self.scene_of(frame)
        m = frame_mask(self.check_mask(mask2d), scene.frame)
        heart_window = (*scene.window, scene.heart_size)
        margin, band = self._margin_px(frame, context.margin_mm), self._margin_px(frame, band_mm(context.margin_mm))
        if context.mode == "in-patient":
            ctx = self._context_scene(context.image, scene)
            own = None if context.heart is None else frame_mask(self.check_mask(context.heart), scene.frame)
            hole = edit_region(m, own, margin, band)
        else:
            ck = self._scene_key(scene, vendor_index, seed, context.key)
            cached = self._scenes.get(ck) if ck is not None else None
            if cached is None:
                return self._whole_scene_plan(scene, m, vendor_index, seed, keep_as=ck)
            ctx = cached.image
            hole = edit_region(m, cached.mask, margin, band)
        if not hole.any():  # nothing painted and no heart of its own: a plain copy of the context
            hole = np.zeros_like(hole)
        return Plan(scene, m, ctx, hole, window_around(hole, heart_window, scene.frame.size),
                    context_key=None if context.mode == "in-patient" else ck)

    @staticmethod
    def _scene_key(scene: Scene, vendor_index: int, seed: int, key) -> Hashable:
        return None if key is None else (key, vendor_index, int(seed), scene.frame.origin, scene.frame.step, scene.frame.size)

    def _keep_scene(self, plan: Plan, image: np.ndarray, native: np.ndarray) -> None:
        """Keep a whole synthetic scene, and the same put back into the scan (a copy: the caller may change its own)."""
        if plan.keep_as is not None:
            self._scenes.put(plan.keep_as, _Cached(image, plan.mask, native.copy(), _intensity(plan.scene)))

    def forget_scenes(self) -> None:
        """Drop kept synthetic surroundings (a new case, or the painter asked for new ones)."""
        self._scenes.clear()
        self._contexts.clear()

    # -- rendering ---------------------------------------------------------------------------------
    def render_scene(self, scene: Scene, mask: np.ndarray, vendor_index: int, seed: int) -> np.ndarray:
        """A whole fully synthetic scene (S, S) in [0, 1] for labels (S, S)."""
        last = None
        for last in self.scene_steps(scene, mask, vendor_index, seed):
            pass
        return last[2]

    def scene_steps(self, scene: Scene, mask: np.ndarray, vendor_index: int, seed: int, cancel=None, **kw):
        yield from self._run(self._whole_scene_plan(scene, mask, vendor_index, seed), vendor_index, seed, cancel, **kw)

    def _whole_scene_plan(self, scene: Scene, mask: np.ndarray, vendor_index: int, seed: int, keep_as: Hashable = None) -> Plan:
        """A fully synthetic render of the whole scene: the prior's tissue classes for this seed, none where the card hides them."""
        layout = self._prior().sample(mask, scene.inside_scan(), vendor_index, seed)
        return Plan(scene, mask, None, None, (0, 0, scene.frame.size), layout, keep_as=keep_as,
                    hide_layout_px=self._hidden_px(scene.frame))

    def _run(self, plan: Plan, vendor_index: int, seed: int, cancel=None, **kw) -> Iterator[tuple[int, int, np.ndarray]]:
        """(step, total, window image in [0, 1], composited with the context) for a plan."""
        from cmrstudio.models.sampling import Cancelled

        r, c, n = plan.window
        cond = torch.from_numpy(plan.cond())[None].to(self.device)
        noise = self.noise_field(seed, plan.scene.frame.size)[..., r:r + n, c:c + n].to(self.device, copy=True)
        steps = self._window_steps(cond, vendor_index, seed, noise, cancel=cancel, **kw)
        in_net = 0.0
        while True:
            t0 = time.perf_counter()
            try:
                step, total, img = next(steps)
            except StopIteration:
                break
            in_net += time.perf_counter() - t0
            self._timing.last = (1000.0 * in_net, n)
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            if plan.hole is not None:
                keep = ~plan.hole[r:r + n, c:c + n]
                img = np.where(keep, plan.context[r:r + n, c:c + n], img).astype(np.float32)
            yield step, total, img

    def _window_steps(self, cond, vendor_index, seed, noise, cancel=None, **kw):
        raise NotImplementedError

    def assemble(self, plan: Plan, window_img: np.ndarray, frame: Frame, context: SliceContext) -> tuple[np.ndarray, np.ndarray]:
        """(native image slice, framed heart window in [0, 1]) from a finished window render.

        A window render changes only the native pixels under its window: those are resampled back, the rest is the
        context's own (the patient's pixels, or the kept synthetic surroundings as they were put into the scan)."""
        scene = plan.scene
        r, c, n = plan.window
        full = _full(plan, window_img)
        framed = scene.crop(full).astype(np.float32)
        if plan.hole is None:  # a whole scene
            return from_frame(full, scene.frame, kind="image").astype(np.float32), framed
        box = (r, r + n, c, c + n)
        base = np.asarray(context.image, np.float32) if context.mode == "in-patient" else self._kept_native(plan, scene)
        (rows, cols), rendered = from_frame_box(full, scene.frame, box)
        if context.mode == "in-patient":
            # the patient's own pixels, untouched, outside the repainted region; rendered pixels inside it
            weight = from_frame_box(plan.hole.astype(np.float32), dataclasses.replace(scene.frame, intensity=None), box)[1]
            weight = np.clip(weight, 0.0, 1.0)
            rendered = base[rows, cols] * (1 - weight) + rendered * weight
        native = base.copy()
        native[rows, cols] = rendered
        return native, framed

    def _kept_native(self, plan: Plan, scene: Scene) -> np.ndarray:
        """The kept synthetic surroundings in the scan's grid (put back when they were made, reused by every edit)."""
        kept = self._scenes.get(plan.context_key) if plan.context_key is not None else None
        if kept is not None and kept.image is plan.context and kept.native_intensity == _intensity(scene):
            return kept.native
        return from_frame(plan.context, scene.frame, kind="image").astype(np.float32)

    def slice_steps(self, mask2d: np.ndarray, frame: Frame, vendor: str | None = "unknown", seed: int = 0,
                    context: SliceContext | None = None, cancel=None, **kw):
        """A slice render step by step: (step, total, framed preview in [0, 1]); the last one also carries
        the native image as a fourth item."""
        context = context or SliceContext()
        vi = self.resolve_vendor(vendor)[0]
        plan = self.plan(mask2d, frame, context, vi, seed)
        last = None
        for last in self._run(plan, vi, seed, cancel, **kw):
            step, total, img = last
            if step < total:
                yield step, total, plan.scene.crop(_full(plan, img))
        native, framed = self.assemble(plan, last[2], frame, context)
        self._keep_scene(plan, last[2], native)
        yield last[0], last[1], framed, native

    def render_slice_ctx(self, mask2d, frame, vendor="unknown", seed=0, context: SliceContext | None = None, **kw):
        last = None
        for last in self.slice_steps(mask2d, frame, vendor, seed, context, **kw):
            pass
        return last[3], last[2]

    def render_volume_scene(self, mask, spacing=None, vendor="unknown", seed=0, image=None, heart=None, margin_mm=None):
        """Every slice of a (Z, Y, X) mask as a whole-slice render -> ((Z, Y, X) image, heart frame).

        With ``image`` (the scan, same shape): in this patient, repainting within ``margin_mm`` of ``heart``
        (the scan's own heart labels, when known) and of the painted heart. Without it: fully synthetic.
        """
        m = self.check_mask(mask)
        m = m[None] if m.ndim == 2 else m
        if image is not None:
            image = np.asarray(image, np.float32).reshape(m.shape)
        if heart is not None:
            heart = self.check_mask(heart).reshape(m.shape)
        frame = self.frame_for(m, spacing, image=image)
        margin = DEFAULT_MARGIN_MM if margin_mm is None else float(margin_mm)
        out = []
        for z in range(m.shape[0]):
            if image is not None:
                ctx = SliceContext("in-patient", image[z], None if heart is None else heart[z], margin)
            else:
                ctx = SliceContext("synthetic", margin_mm=margin)
            native, _ = self.render_slice_ctx(m[z], frame, vendor, seed, ctx, live=False)
            out.append(native)
        return np.stack(out).astype(np.float32), frame

    def _render_framed(self, masks, vendor_index, seed, context, margin_mm: float | None = None, own=None):
        seeds = [int(seed)] * len(masks) if np.isscalar(seed) else [int(s) for s in seed]
        if margin_mm is None:
            margin_mm = UNCHANGED_MARGIN_MM if own is None else DEFAULT_MARGIN_MM
        return self.render_framed_scene(masks, vendor_index, seeds, context, margin_mm, spacing_mm=self.spacing_mm, own=own,
                                        **self.framed_kw)

    def render_framed_scene(self, masks: np.ndarray, vendor_index: int, seeds: list[int], context01: np.ndarray | None = None,
                            margin_mm: float = UNCHANGED_MARGIN_MM, spacing_mm: float | None = 1.25, own: np.ndarray | None = None,
                            **kw) -> np.ndarray:
        """Heart-frame masks (B, N, N) -> renders (B, N, N) in [0, 1].

        Fully synthetic (no ``context01``): each mask is put at the centre of a DEFAULT_CANVAS scene whose
        tissue classes the prior samples, the scene is rendered and the heart window cut out.
        In this patient: ``context01`` (B, N, N) holds the real framed images and the masks are their own labels: the
        heart and ``margin_mm`` around it are repainted, the rest is theirs. The default is the band a labelled scan
        rendered with its own outline gets in the studio (UNCHANGED_MARGIN_MM; :func:`edit_region`). With ``own`` (B, N, N),
        the images' own labels of which the masks are an edit: ``margin_mm`` around what changed and the band around the rest.
        """
        out = []
        n = masks.shape[-1]
        for i, (m, seed) in enumerate(zip(masks, seeds)):
            if context01 is None:
                size = max(DEFAULT_CANVAS, int(np.ceil(2 * n / WINDOW_MULTIPLE)) * WINDOW_MULTIPLE)
                off = (size - n) // 2
                fr = Frame(size, (size, size), (0.0, 0.0), (1.0, 1.0), spacing_mm, None, {"scene": True})
                sc = Scene(fr, (off, off), n)
                canvas = np.zeros((size, size), np.uint8)
                canvas[off:off + n, off:off + n] = m
                full = self.render_scene(sc, canvas, vendor_index, seed)
                out.append(sc.crop(full))
            else:
                mm_px = spacing_mm or 1.25
                hole = (repaint_region([m], margin_mm / mm_px) if own is None
                        else edit_region(m, own[i], margin_mm / mm_px, band_mm(margin_mm) / mm_px))
                fr = Frame(n, (n, n), (0.0, 0.0), (1.0, 1.0), spacing_mm, None, {"scene": True})
                plan = Plan(Scene(fr, (0, 0), n), m, np.asarray(context01[i], np.float32), hole, (0, 0, n))
                last = None
                for last in self._run(plan, vendor_index, seed, **kw):
                    pass
                out.append(last[2])
        return np.stack(out).astype(np.float32)


def offer_layout_prior(renderer, name: str | None) -> str | None:
    """Give a scene renderer the body layout ``name`` for its fully synthetic renders when its cells fit. None when it took
    it (or there is nothing to give: no name, not a scene model); else the sentence saying why it keeps its card's prior
    (the studio's and the server's HQ models: a layout model of other cells is no reason to refuse the render)."""
    if not name or not getattr(renderer, "scene", False) or not hasattr(renderer, "use_layout_prior"):
        return None
    try:
        renderer.use_layout_prior(name)
    except CmrError as exc:
        return exc.message
    return None


def leaving_out(renderer, case_id: str | None):
    """``renderer.leaving_out(case_id)`` for a scene model, a block that changes nothing for any other renderer: evaluations
    wrap each case's renders in it, so a layout bank never gives a patient's render that patient's own body."""
    from contextlib import nullcontext

    return renderer.leaving_out(case_id) if hasattr(renderer, "leaving_out") else nullcontext()


@lru_cache(maxsize=8)
def _noise_field(seed: int, size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 2 + 1)
    return torch.randn(1, 1, size, size, generator=g)


def _intensity(scene: Scene) -> tuple | None:
    return None if scene.frame.intensity is None else tuple(scene.frame.intensity)


def _full(plan: Plan, window_img: np.ndarray) -> np.ndarray:
    """The whole scene with a window render in place (a whole-scene render is already whole)."""
    if plan.hole is None:
        return window_img
    r, c, n = plan.window
    full = plan.context.copy()
    full[r:r + n, c:c + n] = window_img
    return full
