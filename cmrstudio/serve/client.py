"""The client of ``cmrstudio serve``: what the studio uses to render on a server instead of this machine.

* :class:`RemoteBackend` (``url``, ``token``): ``health()``, ``models()``, and factories for the two below;
* :class:`RemoteLiveEngine`: the :class:`~cmrstudio.engine.live.LiveEngine` interface (``submit``,
  ``on_ready(RenderResult)``, ``close``, ``wait_idle``, ``busy``, ``latest_id``) over one WebSocket. Every
  edit is sent at once; the server keeps only the newest waiting one per client (latest-wins there), and
  each reply names the request it answers, so replies for older requests that the server dropped simply
  never come. ``RenderResult.rtt_ms`` is the round trip, ``where`` the server;
* :class:`RemoteJobQueue`: the parts of :class:`~cmrstudio.engine.hq.JobQueue` the studio uses, on ``/ws/jobs``.

When the server goes away, the engine calls ``on_lost(sentence)`` once and stops; the studio falls back to
its own model (nothing painted is held only here: the masks are the studio's).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

import numpy as np

from cmrstudio.data.frame import Frame
from cmrstudio.engine.base import JobBook, RenderResult, join_worker
from cmrstudio.errors import CmrError
from cmrstudio.serve import wire

CONNECT_TIMEOUT_S = 5.0


def _where(url: str) -> str:
    return urlsplit(url).netloc or url


def check_url(url: str) -> str:
    u = urlsplit(str(url).strip())
    if u.scheme not in ("http", "https") or not u.hostname:
        raise CmrError(f"The server address {str(url)[:100]!r} is not an http:// or https:// URL (like http://127.0.0.1:8765).")
    return f"{u.scheme}://{u.netloc}"


class RemoteBackend:
    """A ``cmrstudio serve`` server: its URL and token (None: a loopback server without one)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = CONNECT_TIMEOUT_S, verify: bool | str = True):
        self.url = check_url(url)
        self.token = token or None
        self.timeout = float(timeout)
        self.verify = verify
        self.client_id = uuid.uuid4().hex
        self.where = _where(self.url)

    # -- HTTP ----------------------------------------------------------------------------------------
    def headers(self) -> dict:
        h = {"X-Cmrstudio-Client": self.client_id}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def request(self, method: str, path: str, content: bytes | None = None, timeout: float | None = None):
        import httpx

        verify = self.verify
        if isinstance(verify, str):  # a CA or self-signed certificate file to trust
            import ssl

            verify = ssl.create_default_context(cafile=verify)
        try:
            r = httpx.request(method, self.url + path, headers=self.headers(), content=content,
                              timeout=timeout or self.timeout, verify=verify)
        except httpx.HTTPError as exc:
            raise CmrError(f"The render server at {self.where} cannot be reached ({_reason(exc)}); check that it runs "
                           "(cmrstudio serve) and the address.") from None
        if r.status_code >= 400:
            try:
                msg = r.json().get("error") or r.text
            except ValueError:
                msg = r.text[:200]
            if r.status_code == 401:
                raise CmrError(f"The render server at {self.where} refused the token ({msg.rstrip('.')}); check the token file.")
            raise CmrError(f"The render server at {self.where} answered {r.status_code}: {msg}")
        return r

    def health(self, timeout: float | None = None) -> dict:
        return self.request("GET", "/health", timeout=timeout).json()

    def models(self) -> list[dict]:
        return self.request("GET", "/models").json()["models"]

    # -- WebSockets ----------------------------------------------------------------------------------
    def ws_url(self, path: str) -> str:
        return ("wss" if self.url.startswith("https") else "ws") + self.url[self.url.index(":"):] + path

    def connect(self, path: str):
        from websockets.sync.client import connect

        kw = {}
        if self.url.startswith("https"):
            import ssl

            ctx = ssl.create_default_context(cafile=self.verify if isinstance(self.verify, str) else None)
            if self.verify is False:
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            kw["ssl"] = ctx
        try:
            ws = connect(self.ws_url(path), additional_headers=self.headers(), open_timeout=self.timeout, max_size=64 * 2**20,
                         compression=None, **kw)
            ws.__enter__()  # the connection is used across threads and closed explicitly (websockets >= 17.1 asks for this)
        except Exception as exc:
            if "403" in str(exc) or "401" in str(exc):
                raise CmrError(f"The render server at {self.where} refused the token; check the token file.") from None
            raise CmrError(f"The render server at {self.where} cannot be reached ({_reason(exc)}); check that it runs "
                           "(cmrstudio serve) and the address.") from None
        try:
            hello = json.loads(ws.recv(timeout=self.timeout))
        except Exception as exc:
            ws.close()
            raise CmrError(f"The render server at {self.where} did not greet ({_reason(exc)}).") from None
        if hello.get("type") == "error":
            ws.close()
            raise CmrError(f"The render server at {self.where} refused the connection: {hello.get('error')}")
        return ws, hello

    def live(self, on_ready: Callable[[RenderResult], None] | None = None, on_lost: Callable[[str], None] | None = None,
             image_format: str = "float16", compress: bool | None = None) -> "RemoteLiveEngine":
        return RemoteLiveEngine(self, on_ready, on_lost, image_format, compress)

    def jobs(self, on_progress=None, on_done=None, on_lost=None, model: str | None = None) -> "RemoteJobQueue":
        return RemoteJobQueue(self, on_progress, on_done, on_lost, model)

    @property
    def loopback(self) -> bool:
        from cmrstudio.serve.security import is_loopback

        return is_loopback(urlsplit(self.url).hostname or "")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:160]


def _key(arr: np.ndarray) -> str:
    a = np.ascontiguousarray(arr)
    return hashlib.blake2b(a.tobytes(), digest_size=12, person=str(a.shape).encode()[:16]).hexdigest()


def _context_fields(context, sent: set) -> tuple[dict | None, dict, dict]:
    """(the request's context, arrays to send, their compression) for a SliceContext; images already sent go by key."""
    if context is None:
        return None, {}, {}
    if context.mode == "synthetic":
        key = context.key
        return {"mode": "synthetic", "margin_mm": float(context.margin_mm),
                "key": None if key is None else json.loads(json.dumps(key, default=str))}, {}, {}
    c, arrays, comp = {"mode": "in-patient", "margin_mm": float(context.margin_mm)}, {}, {}
    for name, arr, dtype in (("image", context.image, np.float32), ("heart", context.heart, np.uint8)):
        if arr is None:
            continue
        a = np.asarray(arr).astype(dtype, copy=False)  # the scan's own float32 slice (sent once, compressed)
        k = _key(a)
        c[name] = k
        if (name, k) not in sent:
            arrays[f"{name}:{k}"] = a.astype(dtype)
            comp[f"{name}:{k}"] = True
            sent.add((name, k))
    return c, arrays, comp


@dataclass
class _Sent:
    mask: np.ndarray
    frame: Frame
    vendor: str | None
    seed: int
    tag: Any
    t: float = field(default_factory=time.perf_counter)


def _read_reply(msg) -> tuple[dict, dict]:
    """A server message: a JSON text frame (no arrays) or a binary wire envelope (head, arrays)."""
    return (json.loads(msg), {}) if isinstance(msg, str) else wire.decode(msg)


def _hang_up(ws, thread: threading.Thread, timeout: float) -> None:
    """Close a WebSocket (already closed is fine) and join its receiving thread."""
    try:
        ws.close()
    except Exception:
        pass
    join_worker(thread, timeout)


class RemoteLiveEngine:
    """Latest-wins live rendering on a server, with the interface of :class:`~cmrstudio.engine.live.LiveEngine`."""

    def __init__(self, backend: RemoteBackend, on_ready=None, on_lost=None, image_format: str = "float16", compress: bool | None = None):
        self.backend = backend
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.where = backend.where
        self._ws, self.hello = backend.connect("/ws/live")
        self.model = self.hello.get("model")
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._sent: dict[int, _Sent] = {}
        self._ctx_sent: set = set()
        self._next_id = 0
        self._answered = 0
        self._closed = False
        self.lost: str | None = None
        self.submitted = self.rendered = self.failed = 0
        self.dropped = 0  # requests the server dropped as stale (its own count for this client)
        self.late = 0  # replies for a request older than one already answered: must stay 0
        self.rtt_ms: list[float] = []
        self.transport_ms: list[float] = []  # round trip less the server's own time (queue + render + encode): the wire's cost
        self.callback_errors: list[str] = []
        compress = not backend.loopback if compress is None else compress
        self._ws.send(json.dumps({"type": "options", "image_format": image_format, "compress": bool(compress)}))
        self._thread = threading.Thread(target=self._recv_loop, name="cmrstudio-remote-live", daemon=True)
        self._thread.start()

    @property
    def renderer(self):
        return None

    def submit(self, mask2d: np.ndarray, frame: Frame, vendor: str | None = "unknown", seed: int = 0, tag: Any = None,
               context=None) -> int:
        """Send a render of this mask slice (copied) to the server; returns its id. Raises if the connection is gone."""
        m = np.array(mask2d, dtype=np.uint8, copy=True)
        with self._cond:
            if self._closed:
                raise CmrError(self.lost or "The remote live engine was closed; start a new one.")
            self._next_id += 1
            rid = self._next_id
            ctx, arrays, comp = _context_fields(context, self._ctx_sent)
            self._sent[rid] = _Sent(m, frame, vendor, int(seed), tag)
            self.submitted += 1
        head = {"type": "render", "id": rid, "frame": frame.to_dict(), "vendor": vendor, "seed": int(seed), "context": ctx}
        data = wire.encode(head, {"mask": m, **arrays}, compress={"mask": True, **comp})
        try:
            with self._send_lock:
                self._ws.send(data)
        except Exception as exc:
            self._lose(f"The render server at {self.where} went away ({_reason(exc)})")
        return rid

    def _recv_loop(self) -> None:
        while True:
            try:
                msg = self._ws.recv()
            except Exception as exc:
                self._lose(f"The render server at {self.where} went away ({_reason(exc)})")
                return
            t = time.perf_counter()
            try:
                h, arrays = _read_reply(msg)
            except Exception as exc:
                warnings.warn(f"A reply from {self.where} could not be read ({_reason(exc)}).")
                continue
            if h.get("type") == "error" and "id" not in h:
                warnings.warn(f"The render server at {self.where}: {h.get('error')}")
                continue
            self._deliver(h, arrays, t)

    def _deliver(self, h: dict, arrays: dict, t: float) -> None:
        from cmrstudio.record import RenderRecord

        rid = h.get("id")
        with self._cond:
            if not isinstance(rid, int) or rid not in self._sent:
                if isinstance(rid, int) and rid <= self._answered:
                    self.late += 1
                return
            req = self._sent.pop(rid)
            for old in [k for k in self._sent if k < rid]:  # dropped by the server as stale: no reply will come
                del self._sent[old]
            self._answered = max(self._answered, rid)
            self.dropped = int(h.get("dropped") or self.dropped)
            err = h.get("error")
            if err:
                self.failed += 1
            else:
                self.rendered += 1
            closed = self._closed
        rtt = 1000 * (t - req.t)
        image = framed = record = None
        if not err:
            image = wire.image_in(arrays["image"], h.get("scale"))
            framed = wire.image_in(arrays["framed"], h.get("framed_scale"))
            try:
                record = RenderRecord.from_dict(h.get("record"), "The server's render record")
            except CmrError:
                record = None
            self.rtt_ms.append(rtt)
            if h.get("server_ms") is not None:
                self.transport_ms.append(rtt - float(h["server_ms"]))
        res = RenderResult(rid, image, framed, req.frame, h.get("vendor") or str(req.vendor), req.seed, h.get("model") or self.model or "",
                           float(h.get("render_ms") or 0.0), rtt, req.tag, h.get("note"), err, req.mask, record,
                           rtt_ms=rtt, where=self.where)
        with self._cond:
            self._cond.notify_all()
        if self.on_ready is not None and not closed:
            try:
                self.on_ready(res)
            except Exception as exc:
                self.callback_errors.append(f"{type(exc).__name__}: {exc}")
                warnings.warn(f"The remote engine's on_ready callback failed ({type(exc).__name__}: {exc}); rendering goes on.")

    def _lose(self, sentence: str) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self.lost = sentence + "."
            self._sent.clear()
            self._cond.notify_all()
        try:
            self._ws.close()
        except Exception:
            pass
        if self.on_lost is not None:
            try:
                self.on_lost(self.lost)
            except Exception as exc:
                self.callback_errors.append(f"{type(exc).__name__}: {exc}")

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every request is answered or dropped (the newest one answered); False on timeout or a lost server."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self._answered >= self._next_id or self._closed, timeout)
            return bool(ok) and self.lost is None

    @property
    def busy(self) -> bool:
        with self._cond:
            return not self._closed and self._answered < self._next_id

    @property
    def latest_id(self) -> int:
        return self._next_id

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._sent.clear()
            self._cond.notify_all()
        _hang_up(self._ws, self._thread, timeout)

    def __enter__(self) -> "RemoteLiveEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(eq=False)
class RemoteJob:
    """A job on the server, as the studio sees it (the fields of :class:`~cmrstudio.engine.hq.Job` it reads)."""

    id: int
    tag: Any
    steps: int = 0
    status: str = "queued"
    step: int = 0
    preview: np.ndarray | None = None
    result: Any = None  # cmrstudio.record.Render
    error: str | None = None
    seconds: float = 0.0
    server_id: str | None = None
    mask: np.ndarray | None = None
    frame: Frame | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("done", "cancelled", "failed")


class _Named:
    def __init__(self, name: str | None):
        self.name = name or "HQ"


class RemoteJobQueue(JobBook):
    """HQ jobs on a server over one WebSocket: submit / cancel / job / jobs / wait / wait_idle / close, with
    ``on_progress(job)`` and ``on_done(job)`` on the receiving thread. Closing (or losing) the socket cancels
    the jobs on the server."""

    def __init__(self, backend: RemoteBackend, on_progress=None, on_done=None, on_lost=None, model: str | None = None):
        self.backend = backend
        self.on_progress, self.on_done, self.on_lost = on_progress, on_done, on_lost
        self.model = model
        self._ws, self.hello = backend.connect("/ws/jobs")
        self.renderer = _Named(model or self.hello.get("hq_model"))
        self._cond = threading.Condition()
        self._jobs: dict[int, RemoteJob] = {}
        self._by_server: dict[str, RemoteJob] = {}
        self._next = 0
        self._closed = False
        self.lost: str | None = None
        self._send_lock = threading.Lock()
        self._thread = threading.Thread(target=self._recv_loop, name="cmrstudio-remote-hq", daemon=True)
        self._thread.start()

    def submit(self, mask2d, frame: Frame, vendor="unknown", seed=0, steps=None, guidance=None, solver=None, tag=None,
               context=None, timeout: float = 30.0) -> int:
        """Queue a job on the server; returns its local id once the server has accepted it (a refusal raises, one sentence)."""
        m = np.array(mask2d, dtype=np.uint8, copy=True)
        with self._cond:
            if self._closed:
                raise CmrError(self.lost or "The remote render queue was closed; start a new one.")
            self._next += 1
            job = RemoteJob(self._next, tag, mask=m, frame=frame)
            self._jobs[job.id] = job
        ctx, arrays, comp = _context_fields(context, set())
        head = {"type": "submit", "ref": job.id, "model": self.model, "frame": frame.to_dict(), "vendor": vendor, "seed": int(seed),
                "steps": steps, "guidance": guidance, "solver": solver, "context": ctx}
        self._send(wire.encode(head, {"mask": m, **arrays}, compress={"mask": True, **comp}))
        with self._cond:
            self._cond.wait_for(lambda: job.server_id is not None or job.error is not None or self._closed, timeout)
            if job.server_id is None:
                del self._jobs[job.id]
                raise CmrError(job.error or self.lost or f"The render server at {self.backend.where} did not accept the job in time.")
        return job.id

    def _send(self, data) -> None:
        try:
            with self._send_lock:
                self._ws.send(data)
        except Exception as exc:
            self._lose(f"The render server at {self.backend.where} went away ({_reason(exc)})")
            raise CmrError(self.lost) from None

    def cancel(self, job_id: int) -> None:
        job = self.job(job_id)
        if job.finished or job.server_id is None:
            return
        try:
            self._send(json.dumps({"type": "cancel", "job": job.server_id}))
        except CmrError:
            pass

    def _recv_loop(self) -> None:
        while True:
            try:
                msg = self._ws.recv()
            except Exception as exc:
                self._lose(f"The render server at {self.backend.where} went away ({_reason(exc)})")
                return
            try:
                self._handle(*_read_reply(msg))
            except Exception as exc:
                warnings.warn(f"A reply from {self.backend.where} could not be read ({_reason(exc)}).")

    def _handle(self, h: dict, arrays: dict) -> None:
        from cmrstudio.record import Render, RenderRecord

        kind = h.get("type")
        with self._cond:
            if kind in ("queued", "rejected"):
                job = self._jobs.get(h.get("ref"))
                if job is None:
                    return
                if kind == "queued":
                    job.server_id, job.steps = h["job"], int(h.get("steps") or 0)
                    self._by_server[job.server_id] = job
                else:
                    job.error, job.status = h.get("error"), "failed"
                self._cond.notify_all()
                return
            if kind == "error":
                warnings.warn(f"The render server at {self.backend.where}: {h.get('error')}")
                return
            job = self._by_server.get(h.get("job"))
            if job is None:
                return
            job.step = int(h.get("step") or job.step)
            job.seconds = float(h.get("seconds") or 0.0)
            cb = None
            if kind == "progress":
                if "preview" in arrays:
                    job.preview = np.asarray(arrays["preview"], np.float32)
                cb = self.on_progress
            elif kind in ("done", "result"):
                job.status, job.error = h.get("status", "failed"), h.get("error")
                if kind == "result":
                    frame = Frame.from_dict(h["frame"])
                    framed = wire.image_in(arrays["framed"], h.get("framed_scale")) if "framed" in arrays else None
                    job.result = Render(wire.image_in(arrays["image"], h.get("scale")), framed, np.asarray(arrays["mask"]), frame,
                                        RenderRecord.from_dict(h["record"], "The server's render record"))
                cb = self.on_done
        if cb is not None:
            try:
                cb(job)
            except Exception as exc:
                warnings.warn(f"A remote render-queue callback failed ({type(exc).__name__}: {exc}); rendering goes on.")
        with self._cond:
            self._cond.notify_all()

    def _lose(self, sentence: str) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self.lost = sentence + "."
            unfinished = [j for j in self._jobs.values() if not j.finished]
            for j in unfinished:
                j.status, j.error = "failed", self.lost
            self._cond.notify_all()
        for j in unfinished:
            if self.on_done is not None:
                try:
                    self.on_done(j)
                except Exception:
                    pass
        if self.on_lost is not None:
            try:
                self.on_lost(self.lost)
            except Exception:
                pass

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for j in self._jobs.values():
                if not j.finished:
                    j.status = "cancelled"
            self._cond.notify_all()
        _hang_up(self._ws, self._thread, timeout)
