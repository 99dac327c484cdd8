"""What every renderer shares, and the generator protocol the rest of cmrstudio relies on.

A *renderer* wraps one loaded generator and is what the CLI, the studio, the evaluations and
the server call. Every renderer is a :class:`GeneratorFront`:

* ``info`` (its :class:`~cmrstudio.models.checkpoint.ModelInfo`: card, weights, sha256),
  ``name``, ``kind``, ``size`` and ``spacing_mm`` (its synthesis frame), ``n_labels`` (the
  canonical label scheme it reads), ``vendors_trained``;
* ``render_framed(masks, vendor, seed, context=None, margin_mm=None)``: framed masks (B, N, N) -> images in
  [0, 1]; one seed for the batch, or one per mask; ``context`` (B, N, N) real framed images
  renders *in this patient* where the model can (scene models): the masks are those images' own labels, and the heart
  and ``margin_mm`` around it are repainted (None: UNCHANGED_MARGIN_MM, the band around an outline left as it was);
* ``render_slice(mask2d, frame, vendor, seed, context=None)``: a native mask slice -> (native
  image, framed image): the live path; ``context`` is a :class:`~cmrstudio.engine.scene.SliceContext`;
* ``render_volume(mask, spacing, vendor, seed, ...)``: every slice of a volume;
* optionally ``slice_steps(...)``: the same as ``render_slice`` step by step with previews, and
  a ``cancel`` event checked between steps (diffusion and flow models);
* ``describe()``: what renders, for records and figures.

Which class serves which model kind is decided by :mod:`cmrstudio.engine.factory`, which
plugins extend through an entry-point group.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from cmrstudio.anatomy import LABELS, VENDORS
from cmrstudio.case import Case
from cmrstudio.data.frame import Frame, frame_mask, from_frame, make_frame
from cmrstudio.engine.device import pick_device
from cmrstudio.errors import CmrError
from cmrstudio.models.checkpoint import ModelInfo
from cmrstudio.models.registry import build_model, get_model


def describe_labels(n: int) -> str:
    return ", ".join(f"{i} {LABELS[i]}" for i in range(n))


@dataclass
class RenderResult:
    request_id: int
    image: np.ndarray | None  # native 2D slice, float32, [0, 1] unless the frame carries an intensity range
    framed: np.ndarray | None  # (N, N) float32 in [0, 1]
    frame: Frame | None
    vendor: str
    seed: int
    model: str
    render_ms: float  # model + resampling
    latency_ms: float  # submit -> ready
    tag: Any = None
    note: str | None = None
    error: str | None = None
    mask: np.ndarray | None = None  # the native mask slice that was rendered (the request's own copy)
    record: Any = None  # the RenderRecord (mode, seed, vendor, model and its sha256, ...)
    rtt_ms: float | None = None  # rendered on a server (cmrstudio serve): submit -> frame back here
    where: str | None = None  # None: this machine; else the server (host:port)


def join_worker(thread: threading.Thread | None, timeout: float) -> None:
    """Join a worker thread after it was told to stop, unless the caller is that thread (a callback closing its own engine)."""
    if thread is not None and threading.current_thread() is not thread:
        thread.join(timeout)


class JobBook:
    """The job bookkeeping a render queue shares with its remote twin: ``job`` / ``jobs`` / ``cancel_all`` / ``wait`` /
    ``wait_idle`` over ``self._jobs`` (id -> job with a ``finished`` property), guarded by ``self._cond``; the queue
    itself says how to ``cancel`` one job."""

    _jobs: dict
    _cond: threading.Condition

    def job(self, job_id: int):
        try:
            return self._jobs[job_id]
        except KeyError:
            raise CmrError(f"There is no render job {job_id}.") from None

    def jobs(self) -> list:
        return list(self._jobs.values())

    def cancel(self, job_id: int) -> None:
        raise NotImplementedError

    def cancel_all(self) -> None:
        for j in self.jobs():
            self.cancel(j.id)

    def wait(self, job_id: int, timeout: float | None = None):
        """Block until the job has finished (done, cancelled or failed) or ``timeout``; returns the job."""
        with self._cond:
            self._cond.wait_for(lambda: self.job(job_id).finished, timeout)
            return self.job(job_id)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every job has finished; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: all(j.finished for j in self._jobs.values()), timeout)


def _who(r) -> str:
    src = getattr(r, "source", "cmrstudio")
    return f"The model '{r.name}'" + ("" if src == "cmrstudio" else f" (from the plugin '{src}')")


def _check_image(r, img, shape: tuple[int, ...], what: str) -> None:
    if not isinstance(img, np.ndarray) or img.shape != tuple(shape):
        got = img.shape if isinstance(img, np.ndarray) else type(img).__name__
        raise CmrError(f"{_who(r)} returned {what} of shape {got} where {tuple(shape)} was asked for; it cannot be used.")
    if img.dtype.kind != "f" or not np.all(np.isfinite(img)):
        raise CmrError(f"{_who(r)} returned {what} with {'non-float' if img.dtype.kind != 'f' else 'NaN or infinite'} values; it cannot be used.")


def _checked(f, meth: str):
    """Wrap a render method: exceptions other than CmrError (and a cancel) become one sentence, outputs are checked."""
    import functools

    from cmrstudio.models.sampling import Cancelled

    @functools.wraps(f)
    def wrapper(self, *a, **kw):
        try:
            out = f(self, *a, **kw)
        except (CmrError, Cancelled):
            raise
        except Exception as exc:
            raise CmrError(f"{_who(self)} failed to render ({type(exc).__name__}: {exc}).") from exc
        mask = np.asarray(a[0] if a else kw.get("masks", kw.get("mask2d", kw.get("mask"))))
        if meth == "_generate":  # framed masks (B, N, N) -> images (B, N, N)
            _check_image(self, out, mask.shape, "images")
        elif meth == "render_framed":
            _check_image(self, out, mask.shape, "images")
        else:
            if not isinstance(out, tuple) or len(out) != 2:
                raise CmrError(f"{_who(self)} returned a {type(out).__name__} from {meth}, not a pair; it cannot be used.")
            if meth == "render_slice":
                _check_image(self, out[0], mask.shape, "a slice")
                _check_image(self, out[1], (self.size, self.size), "a framed slice")
            else:
                vol = out[0]
                want = (1, *mask.shape) if mask.ndim == 2 and isinstance(vol, np.ndarray) and vol.ndim == 3 else mask.shape
                _check_image(self, vol, want, "a volume")
        return out

    wrapper._checked = True
    return wrapper


class GeneratorFront:
    """What every mask-to-image model shares: loading, input checks, vendors, frames, volumes.

    A heart-crop model's subclass implements ``_generate(framed, vendor_index, seed)`` for checked
    framed masks (B, N, N) -> images (B, N, N) in [0, 1]; a scene model's renders whole slices
    (:class:`~cmrstudio.engine.scene.SceneMixin`). Thread-safe: one lock around the network.
    """

    kinds: tuple[str, ...] = ()
    source: str = "cmrstudio"  # the distribution whose renderer serves the model (set by open_renderer)
    scene: bool = False  # True: renders whole slices, in this patient or fully synthetic
    one_step: bool = False  # True: one network pass a render, fast enough for the live path

    def __init__(self, model: str | ModelInfo | None = None, device: str | None = None, threads: int | None = None):
        self.info = model if isinstance(model, ModelInfo) else get_model(model, kind=self.kinds)
        if self.info.kind not in self.kinds:
            raise CmrError(f"The model '{self.info.name}' is a {self.info.kind} model, not a {' or '.join(self.kinds)} model.")
        scene = (self.info.card.get("conditioning") or {}).get("scheme") == "scene-v1"
        if scene != self.scene:
            raise CmrError(f"The model '{self.info.name}' renders {'whole slices' if scene else 'the heart crop'}; "
                           "open it with cmrstudio.engine.factory.open_renderer, which picks the renderer that fits.")
        if threads:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        self.net = self.load_network()
        cfg = getattr(self.net, "cfg", None)
        labels = self.info.card.get("labels") or {}
        self.n_labels = int(getattr(cfg, "n_labels", 0) or len(labels) or len(LABELS))
        frame = self.info.card.get("frame", {})
        self.size = int(frame.get("size") or cfg.size)
        self.spacing_mm = frame.get("spacing_mm")
        self.vendors_trained = self.info.vendors_trained or list(VENDORS)
        self._lock = threading.Lock()

    def load_network(self):
        """Build the network and load its checked weights (a plugin's renderer overrides this for its own architecture)."""
        return build_model(self.info, self.device)

    def __init_subclass__(cls, **kw):
        """Every renderer's public render calls, built in or from a plugin, get the same output checks."""
        super().__init_subclass__(**kw)
        for meth in ("_generate", "render_framed", "render_slice", "render_volume"):
            f = cls.__dict__.get(meth)
            if f is not None and not getattr(f, "_checked", False):
                setattr(cls, meth, _checked(f, meth))

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def kind(self) -> str:
        return self.info.kind

    def describe(self) -> dict:
        """What renders: for result records and measured figures."""
        return {"model": self.name, "kind": self.kind}

    def _crop_only(self, context) -> None:
        """A heart-crop model cannot render in a patient's own slice: say so in one sentence."""
        if context is not None and getattr(context, "mode", "in-patient") == "in-patient":
            raise CmrError(f"The model '{self.name}' renders the heart crop only, not into a patient's own slice; "
                           "use a scene model (the shipped spade-cmr, flow-cmr-fine-2step or flow-cmr), or render fully synthetic.")

    # -- inputs --------------------------------------------------------------------------------
    def check_mask(self, mask: np.ndarray, where: str = "The mask") -> np.ndarray:
        m = np.asarray(mask)
        if m.dtype.kind == "f" and (not np.all(np.isfinite(m)) or np.any(m != np.round(m))):
            raise CmrError(f"{where} holds non-integer values; a label map must hold whole numbers 0–{self.n_labels - 1}.")
        if m.size and (m.min() < 0 or m.max() >= self.n_labels):
            bad = int(m.max()) if m.max() >= self.n_labels else int(m.min())
            raise CmrError(
                f"{where} holds label {bad}, which the model '{self.name}' does not know "
                f"(it knows {describe_labels(self.n_labels)}); remap it with --labels or clean the mask."
            )
        return m.astype(np.uint8, copy=False)

    def resolve_vendor(self, vendor: str | None) -> tuple[int, str, str | None]:
        v = (vendor or "unknown").lower()
        if v not in VENDORS:
            raise CmrError(f"Vendor {vendor!r} is not known; use one of {', '.join(VENDORS)}.")
        if v not in self.vendors_trained:
            note = (f"The model '{self.name}' saw no {v} images in training (it knows {', '.join(self.vendors_trained)}); "
                    "rendering in the 'unknown' (average) style instead.")
            return VENDORS.index("unknown"), "unknown", note
        return VENDORS.index(v), v, None

    def frame_for(self, mask: np.ndarray, spacing: tuple[float, ...] | None = None, centre=None, image: np.ndarray | None = None) -> Frame:
        """The synthesis frame for a mask volume (Z, Y, X) or slice (Y, X).

        ``spacing`` is (z, y, x) or (y, x) in mm; without it the frame is sized to the heart. ``image``
        (the scan itself, same shape) sets the intensity range, so renders come back in its units.
        """
        m = np.asarray(mask)
        if m.ndim == 2:
            m = m[None]
        affine = None
        if spacing is not None:
            sp = tuple(float(s) for s in spacing)
            sp = (1.0,) + sp if len(sp) == 2 else sp
            affine = np.diag([sp[0], sp[1], sp[2], 1.0])
        img = None if image is None else np.asarray(image, np.float32).reshape(m.shape)
        case = Case(img, self.check_mask(m), affine)
        return make_frame(case, size=self.size, spacing_mm=self.spacing_mm, centre=centre)

    # -- rendering -----------------------------------------------------------------------------
    def _generate(self, framed: np.ndarray, vendor_index: int, seed: int) -> np.ndarray:
        raise NotImplementedError

    def check_framed(self, masks: np.ndarray) -> np.ndarray:
        """Checked framed masks as (B, N, N)."""
        m = self.check_mask(masks)
        if m.ndim == 2:
            m = m[None]
        if m.shape[-2:] != (self.size, self.size):
            raise CmrError(f"Framed masks must be {self.size}×{self.size} for the model '{self.name}', not {m.shape[-2]}×{m.shape[-1]}.")
        return m

    def render_framed(self, masks: np.ndarray, vendor: str | None = "unknown", seed: int | Sequence[int] = 0,
                      context: np.ndarray | None = None, margin_mm: float | None = None,
                      own: np.ndarray | None = None) -> np.ndarray:
        """Framed masks (N, N) or (B, N, N) -> images in [0, 1], same shape.

        One seed: one latent for the whole batch (the slices of one volume look alike); a list of
        seeds, one per mask: independent samples (what distribution metrics need). ``context``: the
        real framed images of the same slices, to render in this patient (scene models only). Without ``own`` the masks
        are the images' own labels: the heart and ``margin_mm`` around it are repainted (None: UNCHANGED_MARGIN_MM, 5 mm,
        what the studio repaints around a scan's own outline left as it was). With ``own`` (the images' own labels, the
        masks an edit of them) the studio's rule: ``margin_mm`` (None: DEFAULT_MARGIN_MM) around every changed pixel and
        the band around the rest of either heart (:func:`cmrstudio.data.scene.edit_region`), so the old heart goes too.
        """
        m = self.check_framed(masks)
        if not np.isscalar(seed) and len(seed) != len(m):
            raise CmrError(f"{len(seed)} seeds were given for {len(m)} masks; give one seed, or one per mask.")
        if context is not None and np.asarray(context).reshape(-1, *m.shape[-2:]).shape != m.shape:
            raise CmrError(f"The context images have shape {np.shape(context)}; give one framed image per mask, like the masks {m.shape}.")
        extra = {}
        if margin_mm is not None:
            from cmrstudio.settings import check_margin

            if context is None:
                raise CmrError("A repaint margin applies only in this patient; give the context images, or leave the margin out.")
            extra["margin_mm"] = check_margin(margin_mm)
        if own is not None:
            if context is None:
                raise CmrError("The context's own labels apply only in this patient; give the context images with them.")
            extra["own"] = self.check_framed(own)
            if extra["own"].shape != m.shape:
                raise CmrError(f"The context's own labels have shape {np.shape(own)}; give one framed mask per mask, like the masks {m.shape}.")
        img = self._render_framed(m, self.resolve_vendor(vendor)[0], seed, context, **extra)
        return img[0] if np.asarray(masks).ndim == 2 else img

    def _render_framed(self, masks: np.ndarray, vendor_index: int, seed, context, margin_mm=None, own=None) -> np.ndarray:
        if context is not None:
            self._crop_only("in-patient")
        return self._generate(masks, vendor_index, seed)

    def render_slice(self, mask2d: np.ndarray, frame: Frame, vendor: str | None = "unknown", seed: int = 0,
                     context=None) -> tuple[np.ndarray, np.ndarray]:
        """Native mask slice -> (native image slice, framed image). The live path: one check, one vendor lookup.
        ``context``: a :class:`~cmrstudio.engine.scene.SliceContext` (in this patient, or fully synthetic)."""
        self._crop_only(context)
        vi = self.resolve_vendor(vendor)[0]
        framed = self._generate(frame_mask(self.check_mask(mask2d), frame)[None], vi, seed)[0]
        return from_frame(framed, frame, kind="image"), framed

    def render_volume(self, mask: np.ndarray, spacing: tuple[float, float, float] | None = None, vendor: str | None = "unknown",
                      seed: int = 0, batch: int = 16, image: np.ndarray | None = None, heart: np.ndarray | None = None,
                      margin_mm: float | None = None) -> tuple[np.ndarray, Frame]:
        """Every slice of a (Z, Y, X) mask, one frame and one latent for the volume -> (Z, Y, X) image.

        With ``image`` (the scan the mask was painted on, same shape) the render is made in this patient:
        the scan's own pixels outside a margin around ``heart`` (the scan's own heart labels) and the
        painted heart. Without it the render is fully synthetic.
        """
        m = self.check_mask(mask)
        if m.ndim == 2:
            m = m[None]
        if image is not None:
            self._crop_only("in-patient")
        vi = self.resolve_vendor(vendor)[0]
        frame = self.frame_for(m, spacing)
        framed = frame_mask(m, frame)
        imgs = np.concatenate([self._generate(framed[i:i + batch], vi, seed) for i in range(0, len(framed), batch)])
        return from_frame(imgs, frame, kind="image"), frame

    def to_frame(self, mask2d: np.ndarray, frame: Frame) -> np.ndarray:
        """A checked native mask slice in the synthesis frame."""
        return frame_mask(self.check_mask(mask2d), frame)


