"""What ``cmrstudio serve`` holds: the loaded models, the live clients and the fair HQ queue. Torch-side, web-free.

Live: every WebSocket client gets its own :class:`~cmrstudio.engine.live.LiveEngine` on the one shared
live renderer, so latest-wins holds per client exactly as in the studio (a mask replaced while waiting
is dropped and counted, never rendered late).

HQ: jobs wait per client; one dispatcher thread takes them round-robin across clients (a client with
ten jobs does not starve one with one) and runs each on a :class:`~cmrstudio.engine.hq.JobQueue`,
whose ``yield_to`` is "any live client is busy", so live frames come before HQ steps as locally.
"""

from __future__ import annotations

import threading
import time
import uuid
import warnings
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from cmrstudio import __version__
from cmrstudio.errors import CmrError
from cmrstudio.models.registry import hq_model_name

MAX_FINISHED_JOBS = 64
MAX_QUEUED_PER_CLIENT = 16


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None  # None: no token (loopback only)
    live_model: str | None = None  # None: the default SPADE model
    hq_model: str | None = None  # the default HQ model (None: the default flow model); others installed may be asked for
    device: str | None = None
    threads: int | None = None
    bf16: bool | None = None  # the live renderer's bfloat16 (None: where the device has it natively)
    layout_prior: str | None = None  # fully synthetic bodies from this installed layout model (a site's layout bank); None: each model's own
    max_clients: int = 32
    max_request_bytes: int = 8 * 1024 * 1024
    live_rate: float = 240.0  # live masks a second per client (bursts of twice that)
    http_rate: float = 30.0  # HTTP requests a second per client
    tls_cert: str | None = None
    tls_key: str | None = None


@dataclass(eq=False)
class ServerJob:
    id: str
    client: str
    model: str
    mask: np.ndarray
    frame: Any
    vendor: str
    seed: int
    steps: int | None
    guidance: float | None
    solver: str | None
    context: Any = None
    status: str = "queued"  # queued, running, done, cancelled, failed
    step: int = 0
    total: int = 0
    error: str | None = None
    result: Any = None  # cmrstudio.record.Render
    seconds: float = 0.0
    created: float = field(default_factory=time.monotonic)
    listeners: list = field(default_factory=list)  # callables (event: dict, preview | None)
    queue_job: Any = None  # the JobQueue's Job while running
    cancel_asked: bool = False

    @property
    def finished(self) -> bool:
        return self.status in ("done", "cancelled", "failed")

    def summary(self) -> dict:
        return {"job": self.id, "model": self.model, "status": self.status, "step": self.step, "steps": self.total,
                "error": self.error, "seconds": round(self.seconds, 3)}


class ServerState:
    def __init__(self, cfg: ServeConfig):
        from cmrstudio.engine.device import pick_device
        from cmrstudio.engine.factory import open_renderer, generator_kinds
        from cmrstudio.models.registry import get_model

        self.cfg = cfg
        self.started = time.time()
        self.device = str(pick_device(cfg.device))
        kinds = generator_kinds()
        layout = self._installed(cfg.layout_prior, ("layout",)) if cfg.layout_prior is not None else None
        self.live = open_renderer(self._installed(cfg.live_model or get_model(None, kind="spade").name, kinds), device=cfg.device,
                                  threads=cfg.threads, bf16=cfg.bf16, layout_prior=layout)  # the live model must take it
        if not self.live.one_step:
            raise CmrError(f"--live-model {self.live.name} renders step by step; the live path needs a one-step model (spade-cmr).")
        self.hq_default = self._installed(cfg.hq_model, ("diffusion", "flow")) if cfg.hq_model else hq_model_name(None)
        self._hq: dict[str, Any] = {}
        self._hq_lock = threading.Lock()
        self.live_engines: set = set()
        self.clients = 0
        self._lock = threading.Condition()
        self._waiting: "OrderedDict[str, deque[ServerJob]]" = OrderedDict()
        self._jobs: "OrderedDict[str, ServerJob]" = OrderedDict()
        self._closed = False
        self._queues: dict[str, Any] = {}
        self.late_frames = 0  # a request rendered after a newer one of the same client arrived: must stay 0
        self._dispatcher = threading.Thread(target=self._dispatch, name="cmrstudio-serve-hq", daemon=True)
        self._dispatcher.start()

    # -- models ------------------------------------------------------------------------------------
    @staticmethod
    def installed() -> list:
        from cmrstudio.models.registry import list_models

        return list_models()

    def _installed(self, name: str | None, kinds: tuple[str, ...]) -> str:
        """A model name checked against the installed list: never a path."""
        names = {m.name: m.kind for m in self.installed() if m.kind in kinds}
        if not isinstance(name, str) or name not in names:
            shown = repr(name)[:80]
            raise CmrError(f"Model {shown} is not an installed {' or '.join(kinds)} model here; use one of "
                           f"{', '.join(sorted(names)) or '(none installed)'}.")
        return name

    def hq_renderer(self, name: str | None):
        from cmrstudio.engine.factory import open_renderer
        from cmrstudio.engine.scene import offer_layout_prior

        name = self._installed(name or self.hq_default, ("diffusion", "flow"))
        with self._hq_lock:
            if name not in self._hq:
                r = open_renderer(name, device=self.cfg.device, threads=self.cfg.threads)
                why = offer_layout_prior(r, self.cfg.layout_prior)  # an HQ model with other cells keeps its own, as in the studio
                if why:
                    warnings.warn(f"{why} The HQ model '{name}' keeps its own body layout.", stacklevel=2)
                self._hq[name] = r
            return self._hq[name]

    def models(self) -> list[dict]:
        out = []
        for m in self.installed():
            card = {k: v for k, v in m.card.items() if k not in ("weights", "path")}
            out.append({"name": m.name, "kind": m.kind, "sha256": m.card.get("sha256"), "origin": m.origin, "card": card,
                        "live": m.name == self.live.name, "loaded": m.name == self.live.name or m.name in self._hq,
                        "frame": m.card.get("frame", {})})
        return out

    def health(self) -> dict:
        return {"status": "ok", "version": __version__, "device": self.device, "uptime_s": round(time.time() - self.started, 1),
                "live_model": self.live.name, "live": self.live.describe(), "hq_model": self.hq_default,
                "layout_prior": self.live.layout_prior_name() if hasattr(self.live, "layout_prior_name") else None,
                "models_loaded": [self.live.name, *sorted(self._hq)], "clients": self.clients,
                "jobs_waiting": sum(len(q) for q in self._waiting.values()), "late_frames": self.late_frames,
                "tls": bool(self.cfg.tls_cert), "token": self.cfg.token is not None}

    # -- live --------------------------------------------------------------------------------------
    def live_engine(self, on_ready: Callable):
        from cmrstudio.engine.live import LiveEngine

        e = LiveEngine(self.live, on_ready=on_ready)
        self.live_engines.add(e)
        return e

    def drop_live(self, engine) -> None:
        self.live_engines.discard(engine)
        engine.close()

    def live_busy(self) -> bool:
        return any(e.busy for e in list(self.live_engines))

    # -- HQ jobs, round-robin across clients -------------------------------------------------------
    def submit(self, client: str, job: ServerJob) -> ServerJob:
        r = self.hq_renderer(job.model)
        job.model = r.name
        job.steps, job.guidance, job.solver = r.sampling(job.steps, job.guidance, job.solver)
        job.total = job.steps
        r.resolve_vendor(job.vendor)
        if not r.scene:
            r._crop_only(job.context)
        job.mask = r.check_mask(job.mask)
        with self._lock:
            if self._closed:
                raise CmrError("The server is shutting down; submit the job again when it is back.")
            q = self._waiting.setdefault(client, deque())
            if len(q) >= MAX_QUEUED_PER_CLIENT:
                raise CmrError(f"You have {len(q)} HQ jobs waiting already (at most {MAX_QUEUED_PER_CLIENT}); wait or cancel some.")
            q.append(job)
            self._jobs[job.id] = job
            self._forget_old()
            self._lock.notify_all()
        return job

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex[:16]

    def job(self, job_id: str) -> ServerJob:
        job = self._jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise KeyError(job_id)
        return job

    def position(self, job: ServerJob) -> int:
        """How many jobs run before this one (round-robin order)."""
        with self._lock:
            if job.status != "queued":
                return 0
            order = self._rr_order()
            return order.index(job) if job in order else 0

    def _rr_order(self) -> list:
        qs = [list(q) for q in self._waiting.values()]
        out, i = [], 0
        while any(i < len(q) for q in qs):
            out += [q[i] for q in qs if i < len(q)]
            i += 1
        return out

    def _forget_old(self) -> None:
        done = [j for j in self._jobs.values() if j.finished]
        for j in done[:max(0, len(done) - MAX_FINISHED_JOBS)]:
            del self._jobs[j.id]

    def cancel(self, job: ServerJob) -> None:
        with self._lock:
            if job.finished:
                return
            job.cancel_asked = True
            q = self._waiting.get(job.client)
            if q is not None and job in q:
                q.remove(job)
                job.status = "cancelled"
                self._lock.notify_all()
                finished = True
            else:
                finished = False
                qj = job.queue_job
        if finished:
            self._emit(job, {"type": "done", **job.summary()})
        elif qj is not None:
            qj.cancel_event.set()

    def cancel_client(self, client: str) -> int:
        """Cancel every unfinished job of ``client`` (it disconnected); returns how many."""
        jobs = [j for j in list(self._jobs.values()) if j.client == client and not j.finished]
        for j in jobs:
            self.cancel(j)
        return len(jobs)

    def _next(self) -> ServerJob | None:
        with self._lock:
            while not self._closed:
                for client in list(self._waiting):
                    q = self._waiting[client]
                    if q:
                        job = q.popleft()
                        self._waiting.move_to_end(client)  # round-robin: this client goes last
                        if not q:
                            del self._waiting[client]
                        job.status = "running"
                        return job
                    del self._waiting[client]
                self._lock.wait()
            return None

    def _queue_for(self, model: str):
        from cmrstudio.engine.hq import JobQueue

        if model not in self._queues:
            self._queues[model] = JobQueue(self.hq_renderer(model), on_progress=self._on_progress, yield_to=self.live_busy)
        return self._queues[model]

    def _dispatch(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            try:
                q = self._queue_for(job.model)
                with self._lock:
                    if job.cancel_asked:
                        raise _Skip()
                    qid = q.submit(job.mask, job.frame, job.vendor, job.seed, job.steps, job.guidance, job.solver, tag=job,
                                   context=job.context)
                    job.queue_job = q.job(qid)
                done = q.wait(qid)
                job.status, job.error, job.seconds = done.status, done.error, done.seconds
                job.step = done.step
                job.result = done.result
            except _Skip:
                job.status = "cancelled"
            except CmrError as exc:
                job.status, job.error = "failed", exc.message
            except Exception as exc:  # the dispatcher must survive anything
                job.status, job.error = "failed", f"Rendering failed ({type(exc).__name__}: {exc})."
            job.mask = job.mask  # kept for the result's record
            with self._lock:
                self._lock.notify_all()
            self._emit(job, {"type": "done", **job.summary()})

    def _on_progress(self, qjob) -> None:
        job: ServerJob = qjob.tag
        job.step = qjob.step
        self._emit(job, {"type": "progress", **job.summary()}, qjob.preview)

    def _emit(self, job: ServerJob, event: dict, preview=None) -> None:
        for cb in list(job.listeners):
            try:
                cb(event, preview)
            except Exception:  # a listener whose client went away
                pass

    def wait(self, job: ServerJob, timeout: float | None = None) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: job.finished, timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for q in self._waiting.values():
                for j in q:
                    j.status = "cancelled"
            self._waiting.clear()
            self._lock.notify_all()
        for e in list(self.live_engines):
            e.close()
        for q in self._queues.values():
            q.close()


class _Skip(Exception):
    pass
