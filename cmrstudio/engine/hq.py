"""On-demand high-fidelity rendering: diffusion and flow-matching models, and a job queue.

:class:`HQRenderer` is a :class:`~cmrstudio.engine.live.GeneratorFront` for ``diffusion``
and ``flow`` models: the same mask checks, vendors, frames and volume rendering as the live
renderer, plus :meth:`HQRenderer.sample_framed`, a generator that yields every sampling step
with a preview of the predicted clean image.

:class:`JobQueue` runs render jobs (mask slice, frame, vendor, seed, steps, guidance) one
after another on a worker thread: every step is reported (``on_progress``) with its
preview, a job can be cancelled (it stops before its next step), and the finished result
(a :class:`~cmrstudio.record.Render`) can be saved as a case (NIfTI image + mask + JSON) and read back.
While ``yield_to()`` is true (for example, the live engine is rendering a brush dab), the
worker waits between steps, so the live path is never queued behind a long HQ render.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from cmrstudio.data.frame import Frame, frame_mask, from_frame
from cmrstudio.data.scene import LAYOUT_CHANNELS
from cmrstudio.engine.device import autocast_weights, bf16_native
from cmrstudio.engine.base import GeneratorFront, JobBook, join_worker
from cmrstudio.engine.scene import SceneMixin, SliceContext
from cmrstudio.errors import CmrError
from cmrstudio.record import Render, make_record, sampler_of
from cmrstudio.models.checkpoint import ModelInfo
from cmrstudio.models.diffusion import CondUNet
from cmrstudio.models.sampling import (DEFAULT_GUIDANCE, DEFAULT_STEPS, SOLVERS, Cancelled, Step, check_guidance, check_steps,
                                       noise_for, run_to_end, sample, valid_shifts, valid_time_shift)
from cmrstudio.models.spade import onehot
from cmrstudio.models.spectrum import apply_gain, check_gain

class HQRenderer(GeneratorFront):
    """A loaded diffusion or flow model. ``steps``/``guidance``/``solver`` default to the card's."""

    kinds = ("diffusion", "flow")
    still: slice | None = None  # conditioning channels the shifts hold still (a scene's tissue classes; models.sampling._Spin)

    def __init__(self, model: str | ModelInfo | None = None, device: str | None = None, threads: int | None = None,
                 steps: int | None = None, guidance: float | None = None, solver: str | None = None, bf16: bool | None = None,
                 shifts: int | None = None, spectrum_gain: bool | None = None):
        super().__init__(model, device, threads)
        card = self.info.card.get("sampling", {})
        self.steps = card.get("steps", DEFAULT_STEPS[self.kind])  # the card's defaults, checked below with the arguments
        self.guidance = card.get("guidance", DEFAULT_GUIDANCE)
        self.solver = card.get("solver") or SOLVERS[self.kind][0]
        self.time_shift = valid_time_shift(card.get("time_shift", 1.0))  # the model's own time grid (see models.sampling)
        if self.time_shift is None:
            raise CmrError(f"The card {self.info.card_path} names sampling.time_shift {card.get('time_shift')!r}; it must be a number above 0 "
                           "and at most 100 (1 = uniform steps): correct it or remove it from the card.")
        self.shifts = valid_shifts(card.get("shifts", 1) if shifts is None else shifts)  # 4: averaged over the patch grid's offsets
        if self.shifts is None:
            what = "1 (one pass a step) or 4 (each step averaged over the 4 offsets of the network's 2-px patch grid)"
            raise CmrError(f"--shifts {shifts!r} must be {what}." if shifts is not None else
                           f"The card {self.info.card_path} names sampling.shifts {card.get('shifts')!r}; it must be {what}: "
                           "correct it or remove it from the card.")
        if self.shifts > 1 and not getattr(self.net, "size_unit", None):
            raise CmrError(f"The model '{self.name}' cannot average its steps over shifts (its network does not say its size unit); "
                           "render it with shifts 1.")
        # the finished image through the card's radial gain (models.spectrum); False: without it
        self.spectrum = check_gain(card.get("spectrum_gain"), f"The card {self.info.card_path}") if spectrum_gain is not False else None
        if spectrum_gain and self.spectrum is None:
            raise CmrError(f"The model '{self.name}' has no spectrum gain in its card; fit one with `cmrstudio train spectrum-gain`, "
                           "or render without it.")
        self.steps, self.guidance, self.solver = self.sampling(steps, guidance, solver)
        self.bf16 = bf16_native(self.device) if bf16 is None else bool(bf16)
        if self.bf16 and self.device.type == "cpu" and type(self.net) is CondUNet:  # our own network: every call is under autocast
            autocast_weights(self.net)

    def describe(self) -> dict:
        return {**super().describe(), "steps": self.steps, "guidance": self.guidance, "solver": self.solver,
                "time_shift": self.time_shift, "shifts": self.shifts, "spectrum_gain": self.spectrum is not None,
                "tissue_held": self.tissue_held, "sampler": sampler_of(self)}

    @property
    def tissue_held(self) -> bool:
        """Whether the shifts hold conditioning channels still (a scene's tissue classes): as the record names the sampler."""
        return self.shifts > 1 and self.still is not None

    def sampling(self, steps=None, guidance=None, solver=None) -> tuple[int, float, str]:
        """Checked (steps, guidance, solver); each one not given is this renderer's default."""
        steps_i = check_steps(self.steps if steps is None else steps)
        g = check_guidance(self.guidance if guidance is None else guidance)
        solver = solver or self.solver
        if solver not in SOLVERS[self.kind]:
            raise CmrError(f"--solver {solver!r} does not fit the {self.kind} model '{self.name}'; use {', '.join(SOLVERS[self.kind])}.")
        return steps_i, g, solver

    def sample_framed(self, masks: np.ndarray, vendor: str | None = "unknown", seed: int = 0, steps: int | None = None,
                      guidance: float | None = None, solver: str | None = None,
                      cancel: threading.Event | None = None) -> Iterator[Step]:
        """Framed masks (N, N) or (B, N, N) -> a step-by-step render; the last Step has ``done`` and the image.

        One starting noise per call (the seed's), shared by every mask in the batch.
        """
        m = self.check_framed(masks)
        steps, guidance, solver = self.sampling(steps, guidance, solver)
        return self._sample(m, self.resolve_vendor(vendor)[0], seed, steps, guidance, solver, cancel)

    def _sample(self, framed: np.ndarray, vendor_index: int, seed: int, steps: int, guidance: float, solver: str,
                cancel: threading.Event | None) -> Iterator[Step]:
        oh = onehot(torch.from_numpy(framed.astype(np.int64))).to(self.device)
        v = torch.full((framed.shape[0],), vendor_index, dtype=torch.long, device=self.device)
        if np.isscalar(seed):
            noise = noise_for(seed, self.size, framed.shape[0]).to(self.device)
        else:
            noise = torch.cat([noise_for(s, self.size) for s in seed]).to(self.device)
        it = sample(self.net, self.kind, oh, v, noise, steps, guidance, solver, bf16=self.bf16, cancel=cancel, time_shift=self.time_shift,
                    shifts=self.shifts, still=self.still)
        while True:
            with self._lock:  # one step at a time holds the network
                try:
                    st = next(it)
                except StopIteration:
                    return
            if st.done and self.spectrum is not None:  # the finished images through the card's radial gain
                st = dataclasses.replace(st, preview=np.stack([apply_gain(x, self.spectrum) for x in st.preview]))
            yield st

    def _generate(self, framed: np.ndarray, vendor_index: int, seed: int) -> np.ndarray:
        return run_to_end(self._sample(framed, vendor_index, seed, self.steps, self.guidance, self.solver, None))

    def _conditioning(self, masks: np.ndarray, images01: np.ndarray) -> torch.Tensor:
        return onehot(torch.from_numpy(np.asarray(masks).astype(np.int64))).to(self.device)

    @torch.inference_mode()
    def denoising_loss(self, masks: np.ndarray, images01: np.ndarray, vendor_indices, t: float, noise: torch.Tensor) -> np.ndarray:
        """The training objective's loss of each real framed image (B, N, N) given its mask, at time ``t`` with ``noise``
        (B, 1, N, N): what a membership-inference attack on a step-wise model reads."""
        from cmrstudio.models.sampling import training_loss

        x0 = torch.from_numpy(np.asarray(images01, np.float32) * 2 - 1)[:, None].to(self.device)
        cond = self._conditioning(masks, images01)
        v = torch.as_tensor(list(vendor_indices), dtype=torch.long, device=self.device)
        tt = torch.full((len(x0),), float(t), device=self.device)
        with self._lock, torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16 and self.device.type == "cpu"):
            return training_loss(self.net, self.kind, x0, cond, v, tt, noise.to(self.device), per_sample=True).float().cpu().numpy()


class SceneHQRenderer(SceneMixin, HQRenderer):
    """A diffusion or flow scene model: whole slices in this patient or fully synthetic, step by step."""

    scene = True
    still = LAYOUT_CHANNELS  # the tissue classes' 2-px cells: their grid cancels over the shifts as the patch grid's does

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._init_scene()

    def _window_steps(self, cond, vendor_index, seed, noise, cancel=None, steps=None, solver=None, guidance=None, **kw):
        steps, guidance, solver = self.sampling(steps, guidance, solver)
        v = torch.tensor([vendor_index], dtype=torch.long, device=self.device)
        it = sample(self.net, self.kind, cond, v, noise, steps, guidance, solver, bf16=self.bf16, cancel=cancel, time_shift=self.time_shift,
                    shifts=self.shifts, still=self.still)
        while True:
            with self._lock:  # one step at a time holds the network
                try:
                    st = next(it)
                except StopIteration:
                    return
            img = st.preview[0]
            if st.done and self.spectrum is not None:  # the finished window (outside a patient's repainted region: not kept)
                img = apply_gain(img, self.spectrum)
            yield st.step, st.total, img

    def sample_framed(self, masks, vendor="unknown", seed=0, steps=None, guidance=None, solver=None, cancel=None):
        """Fully synthetic heart-frame renders step by step are not offered for scene models; render slices instead."""
        raise CmrError(f"The scene model '{self.name}' renders whole slices: use render_slice or slice_steps for step-by-step previews.")

    def render_slice(self, mask2d, frame, vendor="unknown", seed=0, context=None):
        return self.render_slice_ctx(mask2d, frame, vendor, seed, context)

    def _conditioning(self, masks: np.ndarray, images01: np.ndarray) -> torch.Tensor:
        """In this patient, as in training: each image itself is the context outside the margin around its heart."""
        from cmrstudio.data.scene import DEFAULT_MARGIN_MM, condition, repaint_region

        px = DEFAULT_MARGIN_MM / (self.spacing_mm or 1.25)
        conds = [condition(m, None, im, ~repaint_region([m], px)) for m, im in zip(masks, images01)]
        return torch.from_numpy(np.stack(conds)).to(self.device)

    def render_volume(self, mask, spacing=None, vendor="unknown", seed=0, batch=16, image=None, heart=None, margin_mm=None):
        return self.render_volume_scene(mask, spacing, vendor, seed, image, heart, margin_mm)


# -- jobs --------------------------------------------------------------------------------------

@dataclass(eq=False)  # a job is itself, not its fields
class Job:
    id: int
    mask: np.ndarray
    frame: Frame
    vendor: str | None
    seed: int
    steps: int
    guidance: float
    solver: str
    tag: Any = None
    context: SliceContext | None = None  # scene models: in this patient or fully synthetic
    status: str = "queued"  # queued, running, done, cancelled, failed
    step: int = 0  # steps done, of ``steps``
    preview: np.ndarray | None = None  # framed preview of the predicted clean image
    result: Render | None = None
    error: str | None = None
    seconds: float = 0.0
    submitted: float = field(default_factory=time.perf_counter)
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def finished(self) -> bool:
        return self.status in ("done", "cancelled", "failed")


class JobQueue(JobBook):
    """HQ render jobs, one after another on a worker thread; progress, previews, cancel.

    ``on_progress`` and ``on_done`` run on the worker thread, except ``on_done`` for a job
    cancelled while still queued, which runs on the thread that cancelled it (or closed the queue).
    """

    def __init__(self, renderer: HQRenderer, on_progress: Callable[[Job], None] | None = None,
                 on_done: Callable[[Job], None] | None = None, yield_to: Callable[[], bool] | None = None):
        self.renderer = renderer
        self.on_progress = on_progress
        self.on_done = on_done
        self.yield_to = yield_to
        self._cond = threading.Condition()
        self._queue: list[Job] = []
        self._jobs: dict[int, Job] = {}
        self._next = 0
        self._closed = False
        self.callback_errors: list[str] = []
        self.waited_s = 0.0  # time spent giving way to the live path
        self._thread = threading.Thread(target=self._run, name="cmrstudio-hq", daemon=True)
        self._thread.start()

    def submit(self, mask2d: np.ndarray, frame: Frame, vendor: str | None = "unknown", seed: int = 0, steps: int | None = None,
               guidance: float | None = None, solver: str | None = None, tag: Any = None, context: SliceContext | None = None) -> int:
        """Queue a render of a native mask slice in ``frame``; returns the job id. Bad options raise at once."""
        r = self.renderer
        steps_i, g, solver = r.sampling(steps, guidance, solver)
        r.resolve_vendor(vendor)
        if not r.scene:
            r._crop_only(context)
        m = r.check_mask(np.array(mask2d, copy=True))
        with self._cond:
            if self._closed:
                raise CmrError("The render queue was closed; start a new one.")
            self._next += 1
            job = Job(self._next, m, frame, vendor, int(seed), steps_i, g, solver, tag, context)
            self._jobs[job.id] = job
            self._queue.append(job)
            self._cond.notify_all()
            return job.id

    def cancel(self, job_id: int) -> None:
        """Cancel a queued job, or stop a running one before its next step."""
        with self._cond:
            job = self.job(job_id)
            if job.finished:
                return
            job.cancel_event.set()
            if job in self._queue:
                self._queue.remove(job)
                job.status = "cancelled"
                finished = True
            else:
                finished = False
            self._cond.notify_all()
        if finished:
            self._emit(self.on_done, job)

    def _emit(self, cb, job: Job) -> None:
        if cb is None:
            return
        try:
            cb(job)
        except Exception as exc:  # a failing callback must not stop the queue
            self.callback_errors.append(f"{type(exc).__name__}: {exc}")
            warnings.warn(f"A render-queue callback failed ({type(exc).__name__}: {exc}); rendering goes on.")

    def _give_way(self, job: Job) -> None:
        if self.yield_to is None:
            return
        t0 = time.perf_counter()
        while self.yield_to() and not job.cancel_event.is_set() and not self._closed:
            time.sleep(0.005)
        self.waited_s += time.perf_counter() - t0

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._queue.pop(0)
                job.status = "running"
            self._render(job)
            self._emit(self.on_done, job)  # before waiters wake: wait() returns after on_done has run
            with self._cond:
                self._cond.notify_all()

    def _render(self, job: Job) -> None:
        r = self.renderer
        t0 = time.perf_counter()
        try:
            vi, vendor, _ = r.resolve_vendor(job.vendor)
            if r.scene:
                it = r.slice_steps(job.mask, job.frame, job.vendor, job.seed, job.context, job.cancel_event,
                                   steps=job.steps, solver=job.solver, guidance=job.guidance)
            else:
                framed_mask = frame_mask(job.mask, job.frame)
                it = ((st.step, st.total, st.preview[0]) for st in
                      r._sample(framed_mask[None], vi, job.seed, job.steps, job.guidance, job.solver, job.cancel_event))
            last = None
            while True:
                self._give_way(job)
                try:
                    last = next(it)
                except StopIteration:
                    break
                job.step, job.preview = last[0], last[2]
                self._emit(self.on_progress, job)
            framed = last[2]
            native = last[3] if len(last) > 3 else from_frame(framed, job.frame, kind="image")
            job.seconds = time.perf_counter() - t0
            record = make_record(r, job.seed, vendor, job.context, job.steps, job.guidance, job.solver, job.seconds)
            job.result = Render(native, framed, job.mask, job.frame, record)
            job.status = "done"
        except Cancelled:
            job.status = "cancelled"
        except CmrError as exc:
            job.error = exc.message
            job.status = "failed"
        except Exception as exc:  # torch / out of memory: reported in the job, the queue stays up
            job.error = f"Rendering failed ({type(exc).__name__}: {exc})."
            job.status = "failed"
        job.seconds = time.perf_counter() - t0

    def close(self, timeout: float = 5.0) -> None:
        """Cancel everything (queued jobs are reported to ``on_done``) and stop the worker."""
        with self._cond:
            self._closed = True
            dropped = list(self._queue)
            for j in dropped:
                j.status = "cancelled"
            self._queue.clear()
            for j in self._jobs.values():
                j.cancel_event.set()
            self._cond.notify_all()
        for j in dropped:
            self._emit(self.on_done, j)
        join_worker(self._thread, timeout)

    def __enter__(self) -> "JobQueue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
