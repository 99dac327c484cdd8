"""The live rendering engine: a generator loaded once, masks in, images out.

:class:`Renderer` does the work synchronously and is thread-safe (one lock around the
network): a native mask slice is resampled into the synthesis frame (nearest
neighbour), rendered, and put back into the scan's own pixel grid (linear). One
:class:`~cmrstudio.data.frame.Frame` is used for a whole volume or painting session,
so the picture does not jump as the mask changes.

:class:`LiveEngine` serves a stream of edits, latest-wins: ``submit`` replaces any
request still waiting (the replaced one is counted as dropped and never rendered);
a worker thread renders the newest request and calls ``on_ready`` with the result,
in the worker thread (a GUI marshals it to its own thread). Results arrive in
submission order; a request already being rendered when a newer one arrives is
finished and delivered, so a continuous stroke still shows progress.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from cmrstudio.anatomy import LABELS, VENDORS
from cmrstudio.case import Case
from cmrstudio.data.frame import Frame, frame_mask, from_frame, make_frame
from cmrstudio.errors import CmrError
from cmrstudio.models.checkpoint import ModelInfo
from cmrstudio.models.registry import build_model, get_model
from cmrstudio.models.spade import onehot
from cmrstudio.engine.device import pick_device


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


class GeneratorFront:
    """What every mask-to-image model shares: loading, input checks, vendors, frames, volumes.

    A subclass implements ``_generate(framed, vendor_index, seed)`` for checked framed masks
    (B, N, N) -> images (B, N, N) in [0, 1]. Thread-safe: one lock around the network.
    """

    kinds: tuple[str, ...] = ()

    def __init__(self, model: str | ModelInfo | None = None, device: str | None = None, threads: int | None = None):
        self.info = model if isinstance(model, ModelInfo) else get_model(model, kind=self.kinds)
        if self.info.kind not in self.kinds:
            raise CmrError(f"The model '{self.info.name}' is a {self.info.kind} model, not a {' or '.join(self.kinds)} model.")
        if threads:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        self.net = build_model(self.info, self.device)
        cfg = self.net.cfg
        self.n_labels = cfg.n_labels
        frame = self.info.card.get("frame", {})
        self.size = int(frame.get("size", cfg.size))
        self.spacing_mm = frame.get("spacing_mm")
        self.vendors_trained = self.info.vendors_trained or list(VENDORS)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def kind(self) -> str:
        return self.info.kind

    def describe(self) -> dict:
        """What renders: for result records and measured figures."""
        return {"model": self.name, "kind": self.kind}

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

    def frame_for(self, mask: np.ndarray, spacing: tuple[float, ...] | None = None, centre=None) -> Frame:
        """The synthesis frame for a mask volume (Z, Y, X) or slice (Y, X).

        ``spacing`` is (z, y, x) or (y, x) in mm; without it the frame is sized to the heart.
        """
        m = np.asarray(mask)
        if m.ndim == 2:
            m = m[None]
        affine = None
        if spacing is not None:
            sp = tuple(float(s) for s in spacing)
            sp = (1.0,) + sp if len(sp) == 2 else sp
            affine = np.diag([sp[0], sp[1], sp[2], 1.0])
        case = Case(None, self.check_mask(m), affine)
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

    def render_framed(self, masks: np.ndarray, vendor: str | None = "unknown", seed: int | Sequence[int] = 0) -> np.ndarray:
        """Framed masks (N, N) or (B, N, N) -> images in [0, 1], same shape.

        One seed: one latent for the whole batch (the slices of one volume look alike); a list of
        seeds, one per mask: independent samples (what distribution metrics need).
        """
        m = self.check_framed(masks)
        if not np.isscalar(seed) and len(seed) != len(m):
            raise CmrError(f"{len(seed)} seeds were given for {len(m)} masks; give one seed, or one per mask.")
        img = self._generate(m, self.resolve_vendor(vendor)[0], seed)
        return img[0] if np.asarray(masks).ndim == 2 else img

    def render_slice(self, mask2d: np.ndarray, frame: Frame, vendor: str | None = "unknown", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Native mask slice -> (native image slice, framed image). The live path: one check, one vendor lookup."""
        vi = self.resolve_vendor(vendor)[0]
        framed = self._generate(frame_mask(self.check_mask(mask2d), frame)[None], vi, seed)[0]
        return from_frame(framed, frame, kind="image"), framed

    def render_volume(self, mask: np.ndarray, spacing: tuple[float, float, float] | None = None, vendor: str | None = "unknown",
                      seed: int = 0, batch: int = 16) -> tuple[np.ndarray, Frame]:
        """Every slice of a (Z, Y, X) mask, one frame and one latent for the volume -> (Z, Y, X) image."""
        m = self.check_mask(mask)
        if m.ndim == 2:
            m = m[None]
        vi = self.resolve_vendor(vendor)[0]
        frame = self.frame_for(m, spacing)
        framed = frame_mask(m, frame)
        imgs = np.concatenate([self._generate(framed[i:i + batch], vi, seed) for i in range(0, len(framed), batch)])
        return from_frame(imgs, frame, kind="image"), frame

    def to_frame(self, mask2d: np.ndarray, frame: Frame) -> np.ndarray:
        """A checked native mask slice in the synthesis frame."""
        return frame_mask(self.check_mask(mask2d), frame)


class Renderer(GeneratorFront):
    """A loaded SPADE generator: the live path (one network call a frame).

    ``bf16``: bfloat16 autocast, about twice as fast on CPUs with native bf16 (AMX, AVX512-BF16);
    images differ from fp32 by about 0.004 on average (of 1). Off by default, so batch renders
    and figures are fp32; the studio's live path turns it on where it is native (None: auto).
    """

    kinds = ("spade",)

    def __init__(self, model: str | ModelInfo | None = None, device: str | None = None, threads: int | None = None,
                 bf16: bool | None = False):
        from cmrstudio.engine.device import bf16_native

        super().__init__(model, device, threads)
        self.z_dim = self.net.cfg.z_dim
        self.bf16 = bf16_native(self.device) if bf16 is None else bool(bf16)
        self._live_net = None

    def latent(self, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(seed))
        return torch.randn(1, self.z_dim, generator=g)

    @torch.inference_mode()
    def _generate(self, framed: np.ndarray, vendor_index: int, seed: int, live: bool = False) -> np.ndarray:
        """Checked framed masks (B, N, N) -> images (B, N, N) in [0, 1]; one latent for the batch.

        ``live`` (one slice): the TorchScript-frozen network, which runs without holding Python's
        GIL, so a busy GUI thread cannot starve it (eager mode waits for the GIL between ops).
        """
        oh = onehot(torch.from_numpy(framed.astype(np.int64))).to(self.device)
        v = torch.full((framed.shape[0],), vendor_index, dtype=torch.long, device=self.device)
        if np.isscalar(seed):
            z = self.latent(seed).expand(framed.shape[0], -1).to(self.device)
        else:
            z = torch.cat([self.latent(s) for s in seed]).to(self.device)
        with self._lock, torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            net = self._frozen(oh, v, z) if live and framed.shape[0] == 1 else self.net
            out = net(oh, v, z)
        return ((out[:, 0].float().cpu().numpy() + 1.0) / 2.0).clip(0, 1).astype(np.float32)

    def _frozen(self, oh, v, z):
        """The network traced and frozen for one slice (built on first use, about 0.2 s); eager if tracing fails."""
        if self._live_net is None:
            from cmrstudio.models.spade import SpadeGenerator

            self._live_net = self.net
            if type(self.net) is SpadeGenerator:  # our own architecture, known to trace; plugins' networks run eagerly
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        traced = torch.jit.freeze(torch.jit.trace(self.net.eval(), (oh, v, z), check_trace=False))
                    # torch's own shape checks (InstanceNorm) warn harmlessly; a warning from the model's code
                    # would mean a value-dependent branch was baked in
                    torch_dir = os.path.dirname(torch.__file__)
                    if not any(issubclass(w.category, torch.jit.TracerWarning) and not str(w.filename).startswith(torch_dir)
                               for w in caught):
                        self._live_net = traced
                except Exception as exc:
                    warnings.warn(f"The live network could not be traced ({type(exc).__name__}: {exc}); using eager mode.")
        return self._live_net

    def render_slice(self, mask2d: np.ndarray, frame: Frame, vendor: str | None = "unknown", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        vi = self.resolve_vendor(vendor)[0]
        framed = self._generate(frame_mask(self.check_mask(mask2d), frame)[None], vi, seed, live=True)[0]
        return from_frame(framed, frame, kind="image"), framed

    def describe(self) -> dict:
        return {**super().describe(), **({"bf16": True} if self.bf16 else {})}


def open_renderer(model: str | ModelInfo | None = None, device: str | None = None, threads: int | None = None, **hq) -> GeneratorFront:
    """A renderer for any generator: SPADE -> :class:`Renderer`, diffusion/flow -> :class:`~cmrstudio.engine.hq.HQRenderer`.

    ``hq`` (steps, guidance, solver) applies to diffusion and flow models only.
    """
    from cmrstudio.models.registry import GENERATOR_KINDS

    info = model if isinstance(model, ModelInfo) else get_model(model, kind=GENERATOR_KINDS)
    if info.kind == "spade":
        given = [k for k, v in hq.items() if v is not None]
        if given:
            raise CmrError(f"--{'/--'.join(given)} applies to diffusion and flow models; '{info.name}' is a SPADE model (one step, no guidance).")
        return Renderer(info, device=device, threads=threads)
    from cmrstudio.engine.hq import HQRenderer

    return HQRenderer(info, device=device, threads=threads, **hq)


@dataclass
class _Request:
    id: int
    mask: np.ndarray
    frame: Frame
    vendor: str | None
    seed: int
    tag: Any
    submitted: float = field(default_factory=time.perf_counter)


class LiveEngine:
    """Latest-wins rendering of a stream of mask edits on a worker thread."""

    def __init__(self, renderer: Renderer, on_ready: Callable[[RenderResult], None] | None = None):
        self.renderer = renderer
        self.on_ready = on_ready
        self._cond = threading.Condition()
        self._pending: _Request | None = None
        self._busy = False
        self._closed = False
        self._next_id = 0
        self.submitted = 0
        self.rendered = 0  # rendered without error
        self.failed = 0  # rendered with an error (reported in the result)
        self.dropped = 0  # replaced by a newer edit before rendering began
        self.callback_errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="cmrstudio-live", daemon=True)
        self._thread.start()

    def submit(self, mask2d: np.ndarray, frame: Frame, vendor: str | None = "unknown", seed: int = 0, tag: Any = None) -> int:
        """Queue a render of this mask slice (copied); a request still waiting is dropped. Returns its id."""
        req_mask = np.array(mask2d, copy=True)
        with self._cond:
            if self._closed:
                raise CmrError("The live engine was closed; start a new one.")
            self._next_id += 1
            if self._pending is not None:
                self.dropped += 1
            self._pending = _Request(self._next_id, req_mask, frame, vendor, int(seed), tag)
            self.submitted += 1
            self._cond.notify_all()
            return self._next_id

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                req, self._pending = self._pending, None
                self._busy = True
            try:
                result = self._render(req)
                with self._cond:
                    if result.error is None:
                        self.rendered += 1
                    else:
                        self.failed += 1
                    closed = self._closed
                if self.on_ready is not None and not closed:
                    self.on_ready(result)
            except Exception as exc:  # a failing callback must not stop the engine
                self.callback_errors.append(f"{type(exc).__name__}: {exc}")
                warnings.warn(f"The live engine's on_ready callback failed ({type(exc).__name__}: {exc}); rendering goes on.")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _render(self, req: _Request) -> RenderResult:
        r = self.renderer
        t0 = time.perf_counter()
        image = framed = None
        vendor, note, err = str(req.vendor), None, None
        try:
            _, vendor, note = r.resolve_vendor(req.vendor)
            image, framed = r.render_slice(req.mask, req.frame, req.vendor, req.seed)
        except CmrError as exc:
            err = exc.message
        except Exception as exc:  # torch / scipy / out of memory: reported in the result, engine stays up
            err = f"Rendering failed ({type(exc).__name__}: {exc})."
        t1 = time.perf_counter()
        return RenderResult(req.id, image, framed, req.frame, vendor, req.seed, r.name, 1000 * (t1 - t0),
                            1000 * (t1 - req.submitted), req.tag, note, err, req.mask)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is waiting or rendering; False on timeout."""
        if threading.current_thread() is self._thread:
            raise CmrError("wait_idle() was called from the engine's own callback; it would wait for itself.")
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    @property
    def busy(self) -> bool:
        """True while an edit is waiting or being rendered (HQ jobs give way to it)."""
        with self._cond:
            return self._pending is not None or self._busy

    @property
    def latest_id(self) -> int:
        return self._next_id

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            if self._pending is not None:
                self.dropped += 1
            self._pending = None
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> "LiveEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
