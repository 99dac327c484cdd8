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
from typing import Any, Callable

import numpy as np
import torch

from cmrstudio.data.frame import Frame, frame_mask, from_frame
from cmrstudio.engine.base import GeneratorFront, RenderResult, join_worker
from cmrstudio.engine.scene import SceneMixin, SliceContext
from cmrstudio.errors import CmrError
from cmrstudio.models.checkpoint import ModelInfo
from cmrstudio.models.spade import onehot
from cmrstudio.record import make_record


class Renderer(GeneratorFront):
    """A loaded SPADE generator: the live path (one network call a frame).

    ``bf16``: bfloat16 autocast, about twice as fast on CPUs with native bf16 (AMX, AVX512-BF16);
    images differ from fp32 by about 0.004 on average (of 1). Off by default, so batch renders
    and figures are fp32; the studio's live path turns it on where it is native (None: auto).
    """

    kinds = ("spade",)
    one_step = True

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

    def render_slice(self, mask2d: np.ndarray, frame: Frame, vendor: str | None = "unknown", seed: int = 0,
                     context: SliceContext | None = None) -> tuple[np.ndarray, np.ndarray]:
        self._crop_only(context)
        vi = self.resolve_vendor(vendor)[0]
        framed = self._generate(frame_mask(self.check_mask(mask2d), frame)[None], vi, seed, live=True)[0]
        return from_frame(framed, frame, kind="image"), framed

    def describe(self) -> dict:
        return {**super().describe(), **({"bf16": True} if self.bf16 else {})}


class SceneRenderer(SceneMixin, Renderer):
    """A SPADE scene model (fully convolutional, heart + tissue classes + context): whole slices in this
    patient or fully synthetic; one network call a render. Live edits repaint a window around the heart."""

    scene = True
    framed_kw = {"live": False}  # whole-batch renders are not the live path

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._init_scene()
        self._traced: dict = {}

    @torch.inference_mode()
    def _window_steps(self, cond, vendor_index, seed, noise, cancel=None, live: bool = True, **kw):
        v = torch.tensor([vendor_index], dtype=torch.long, device=self.device)
        z = self.latent(seed).to(self.device)
        with self._lock, torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            net = self._frozen_for(cond, v, z, noise) if live else self.net
            out = net(cond, v, z, noise)
        yield 1, 1, ((out[0, 0].float().cpu().numpy() + 1.0) / 2.0).clip(0, 1).astype(np.float32)

    def _frozen_for(self, cond, v, z, noise):
        """The network traced and frozen for this window size (live edits repeat a few sizes); eager if tracing fails."""
        key = tuple(cond.shape)
        net = self._traced.get(key)
        if net is None:
            net = self.net
            if len(self._traced) < 4:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        net = torch.jit.freeze(torch.jit.trace(self.net.eval(), (cond, v, z, noise), check_trace=False))
                except Exception as exc:
                    warnings.warn(f"The live network could not be traced ({type(exc).__name__}: {exc}); using eager mode.")
            self._traced[key] = net
        return net

    def render_slice(self, mask2d, frame, vendor="unknown", seed=0, context=None):
        return self.render_slice_ctx(mask2d, frame, vendor, seed, context)

    def render_volume(self, mask, spacing=None, vendor="unknown", seed=0, batch=16, image=None, heart=None, margin_mm=None):
        return self.render_volume_scene(mask, spacing, vendor, seed, image, heart, margin_mm)


@dataclass
class _Request:
    id: int
    mask: np.ndarray
    frame: Frame
    vendor: str | None
    seed: int
    tag: Any
    context: SliceContext | None = None
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

    def submit(self, mask2d: np.ndarray, frame: Frame, vendor: str | None = "unknown", seed: int = 0, tag: Any = None,
               context: SliceContext | None = None) -> int:
        """Queue a render of this mask slice (copied); a request still waiting is dropped. Returns its id.
        ``context``: in this patient or fully synthetic (scene models; see :class:`~cmrstudio.engine.scene.SliceContext`)."""
        req_mask = np.array(mask2d, copy=True)
        with self._cond:
            if self._closed:
                raise CmrError("The live engine was closed; start a new one.")
            self._next_id += 1
            if self._pending is not None:
                self.dropped += 1
            self._pending = _Request(self._next_id, req_mask, frame, vendor, int(seed), tag, context)
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
        image = framed = record = None
        vendor, note, err = str(req.vendor), None, None
        try:
            _, vendor, note = r.resolve_vendor(req.vendor)
            image, framed = r.render_slice(req.mask, req.frame, req.vendor, req.seed, req.context)
        except CmrError as exc:
            err = exc.message
        except Exception as exc:  # torch / scipy / out of memory: reported in the result, engine stays up
            err = f"Rendering failed ({type(exc).__name__}: {exc})."
        t1 = time.perf_counter()
        if err is None:
            record = make_record(r, req.seed, vendor, req.context, seconds=t1 - t0)
        return RenderResult(req.id, image, framed, req.frame, vendor, req.seed, r.name, 1000 * (t1 - t0),
                            1000 * (t1 - req.submitted), req.tag, note, err, req.mask, record)

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
        join_worker(self._thread, timeout)

    def __enter__(self) -> "LiveEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
