"""The HTTP and WebSocket face of ``cmrstudio serve`` (FastAPI on uvicorn).

Endpoints (every one needs ``Authorization: Bearer <token>`` when the server has a token):

* ``GET /health``: version, device, models loaded, uptime, clients;
* ``GET /models``: the installed models with their cards and sha256;
* ``WS /ws/live``: live rendering, latest-wins per client. Each binary message is a render request
  (:mod:`cmrstudio.serve.wire` envelope: ``mask`` uint8, the frame, vendor, seed, context); each reply
  says which request it answers (``id``) and how many of this client's requests were dropped as stale;
* ``WS /ws/jobs``: HQ jobs with a progress stream (previews) and the result on the same socket;
  closing it cancels that client's unfinished jobs;
* ``POST /jobs`` (envelope body), ``GET /jobs/{id}``, ``DELETE /jobs/{id}``, ``GET /jobs/{id}/result``.

A WebSocket client without the header may send ``{"type": "auth", "token": ...}`` as its first message.
Every error is JSON ``{"error": "one sentence"}`` with a 4xx code (5xx only for a fault of the server's
own, still without a traceback); nothing a client sends stops the server.
"""

from __future__ import annotations

import asyncio
import json
import time
import warnings

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from cmrstudio.anatomy import VENDORS
from cmrstudio.data.frame import Frame
from cmrstudio.errors import CmrError
from cmrstudio.serve import wire
from cmrstudio.serve.security import RateLimit, bearer, same_token
from cmrstudio.serve.state import ServerJob, ServerState

AUTH_TIMEOUT_S = 10.0
MAX_CONTEXTS = 8  # in-patient context images kept per live client


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def err(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class BodyLimit:
    """Pure ASGI middleware: refuse HTTP bodies over ``limit`` bytes (413) before the app reads them."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", []):
            if k == b"content-length" and (not v.isdigit() or int(v) > self.limit):
                return await err(413, f"The request body is over the server's limit of {self.limit} bytes.")(scope, receive, send)
        seen = 0

        async def capped():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise ApiError(413, f"The request body is over the server's limit of {self.limit} bytes.")
            return msg

        return await self.app(scope, capped, send)


def create_app(state: ServerState) -> FastAPI:
    cfg = state.cfg
    app = FastAPI(title="cmrstudio serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.cmr = state
    app.add_middleware(BodyLimit, limit=cfg.max_request_bytes)
    http_limit = RateLimit(cfg.http_rate)

    @app.exception_handler(ApiError)
    async def _api(request, exc: ApiError):
        return err(exc.status, exc.message)

    @app.exception_handler(CmrError)
    async def _cmr(request, exc: CmrError):
        return err(400, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc):
        msg = {404: f"There is no endpoint {request.url.path}; see GET /health and GET /models.",
               405: f"{request.method} is not allowed on {request.url.path}."}.get(exc.status_code, str(exc.detail))
        return err(exc.status_code, msg)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return err(400, f"The request is malformed: {where or 'body'} {first.get('msg', 'is invalid')}.")

    @app.exception_handler(Exception)
    async def _any(request, exc):
        warnings.warn(f"cmrstudio serve: {request.url.path} failed ({type(exc).__name__}: {exc}).")
        return err(500, f"The server could not handle {request.url.path} ({type(exc).__name__}); it is still running.")

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if not same_token(bearer(request.headers.get("authorization")), cfg.token):
            return err(401, "The server needs a valid token: send the header 'Authorization: Bearer <token>'.")
        if not http_limit.allow(client_key(request)):
            return err(429, f"Too many requests from this client (at most {cfg.http_rate:g} a second); slow down.")
        try:
            return await call_next(request)
        except ApiError as exc:
            return err(exc.status, exc.message)

    @app.get("/health")
    async def health():
        return state.health()

    @app.get("/models")
    async def models():
        return {"models": state.models(), "live_model": state.live.name, "hq_model": state.hq_default}

    # -- HQ jobs over HTTP --------------------------------------------------------------------------
    @app.post("/jobs")
    async def submit_job(request: Request):
        body = await request.body()
        header, arrays = wire.decode(body, cfg.max_request_bytes)
        job = await run_in_threadpool(_submit, state, client_key(request), header, arrays)
        return {"job": job.id, "status": job.status, "position": state.position(job), "steps": job.total, "model": job.model}

    @app.get("/jobs/{job_id}")
    async def job_status(job_id: str, request: Request):
        job = _job(state, job_id)
        return {**job.summary(), "position": state.position(job)}

    @app.delete("/jobs/{job_id}")
    async def job_cancel(job_id: str):
        job = _job(state, job_id)
        state.cancel(job)
        return job.summary()

    @app.get("/jobs/{job_id}/result")
    async def job_result(job_id: str):
        job = _job(state, job_id)
        if job.status != "done":
            return err(409, f"Job {job_id} is {job.status}, with no result to fetch" + (f": {job.error}" if job.error else "."))
        return Response(_result_envelope(job, "float16", compress=True), media_type="application/octet-stream")

    # -- WebSockets ---------------------------------------------------------------------------------
    for path, connection in (("/ws/live", LiveConnection), ("/ws/jobs", JobsConnection)):
        app.add_api_websocket_route(path, _socket_endpoint(connection, state))

    return app


def _socket_endpoint(connection, state):
    """A WebSocket route: accept the client (token, limits), then let ``connection`` serve it until it goes."""
    async def endpoint(ws: WebSocket):
        client = await _accept(ws, state)
        if client is None:
            return
        await connection(ws, state, client).serve()
    return endpoint


def client_key(conn) -> str:
    """Who is asking: the client's own id header when it sends one, else its address."""
    cid = conn.headers.get("x-cmrstudio-client")
    host = conn.client.host if conn.client else "?"
    return f"{host}/{cid[:64]}" if cid else f"{host}:{conn.client.port if conn.client else 0}"


def _job(state: ServerState, job_id: str) -> ServerJob:
    try:
        return state.job(job_id)
    except KeyError:
        raise ApiError(404, f"There is no job {job_id[:40]!r} on this server (finished jobs are kept for a while only).") from None


async def _accept(ws: WebSocket, state: ServerState) -> str | None:
    """Accept a WebSocket after checking the token (header, or a first message {"type": "auth"}) and the client limit."""
    cfg = state.cfg
    given = bearer(ws.headers.get("authorization"))
    if given is not None and not same_token(given, cfg.token):
        await ws.close(code=1008)  # refused before the handshake completes: the client sees HTTP 403
        return None
    await ws.accept()
    if cfg.token is not None and given is None:
        try:
            msg = await asyncio.wait_for(ws.receive(), AUTH_TIMEOUT_S)
            first = json.loads(msg.get("text") or (msg.get("bytes") or b"").decode("utf-8", "replace") or "null")
            ok = isinstance(first, dict) and first.get("type") == "auth" and same_token(str(first.get("token")), cfg.token)
        except (asyncio.TimeoutError, ValueError, WebSocketDisconnect, RuntimeError):
            ok = False
        if not ok:
            await _send_error_close(ws, 1008, "The server needs a valid token: send it in the Authorization header or as "
                                              "the first message {\"type\": \"auth\", \"token\": ...}.", 401)
            return None
    if state.clients >= cfg.max_clients:
        await _send_error_close(ws, 1013, f"The server serves at most {cfg.max_clients} clients at once; try again later.", 503)
        return None
    return client_key(ws)


async def _send_error_close(ws: WebSocket, code: int, message: str, status: int) -> None:
    try:
        await ws.send_text(json.dumps({"type": "error", "error": message, "status": status}))
        await ws.close(code=code)
    except Exception:
        pass


def _frame(d) -> Frame:
    fr = Frame.from_dict(d)
    if fr.extra.get("scene"):
        raise CmrError("Give the heart frame, not a scene frame, to render a slice.")
    return fr


def _mask(arrays: dict, fr: Frame, name: str = "mask") -> np.ndarray:
    m = arrays.get(name)
    if m is None:
        raise CmrError(f"The request has no '{name}' array (uint8, the native mask slice).")
    if m.dtype != np.uint8 or m.ndim != 2:
        raise CmrError(f"The '{name}' must be a 2-D uint8 label slice, not {m.ndim}-D {m.dtype}.")
    if tuple(m.shape) != tuple(fr.native_shape):
        raise CmrError(f"The '{name}' is {m.shape[0]}×{m.shape[1]} but its frame was made for a {fr.native_shape[0]}×{fr.native_shape[1]} "
                       "slice; send the frame of this scan.")
    return m


def _vendor(v) -> str:
    v = "unknown" if v is None else v
    if not isinstance(v, str) or v.lower() not in VENDORS:
        raise CmrError(f"Vendor {str(v)[:40]!r} is not known; use one of {', '.join(VENDORS)}.")
    return v.lower()


def _seed(v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**63:
        raise CmrError(f"The seed {str(v)[:40]!r} must be a whole number from 0 to 2**63 - 1.")
    return v


def _context(h: dict, arrays: dict, fr: Frame, images: dict | None, client: str):
    """A SliceContext from a request: in-patient images come as arrays (or by the key of one this client sent earlier)."""
    from cmrstudio.engine.scene import SliceContext
    from cmrstudio.settings import DEFAULT_MARGIN_MM

    c = h.get("context")
    if c is None:
        return None
    if not isinstance(c, dict):
        raise CmrError("The 'context' must be an object with mode 'in-patient' or 'synthetic'.")
    margin = c.get("margin_mm", DEFAULT_MARGIN_MM)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise CmrError("The context's margin_mm must be a number of millimetres.")
    if c.get("mode") == "synthetic":
        key = c.get("key")
        key = None if key is None else (client, json.dumps(key)[:200])
        return SliceContext("synthetic", margin_mm=float(margin), key=key)
    if c.get("mode") != "in-patient":
        raise CmrError(f"Render mode {str(c.get('mode'))[:40]!r} is not known; use 'in-patient' or 'synthetic'.")

    def get(name: str, kind: str):
        key = c.get(name)
        if key is None:
            return None
        if not isinstance(key, str) or len(key) > 64:
            raise CmrError(f"The context's {name} key must be a short string.")
        arr = arrays.get(f"{name}:{key}")
        if arr is None:
            arr = (images or {}).get((name, key))
            if arr is None:
                raise CmrError(f"The context {name} {key!r} was not sent on this connection; send it with the request.")
        if arr.ndim != 2 or tuple(arr.shape) != tuple(fr.native_shape):
            raise CmrError(f"The context {name} is {list(arr.shape)}, not the slice's {list(fr.native_shape)}.")
        if kind == "image":
            if arr.dtype.kind != "f":
                raise CmrError("The context image must be float16 or float32.")
            arr = np.asarray(arr, np.float32)
            if not np.all(np.isfinite(arr)):
                raise CmrError("The context image holds NaN or infinite values.")
        elif arr.dtype != np.uint8:
            raise CmrError("The context heart must be a uint8 label slice.")
        if images is not None:
            images[(name, key)] = arr
            while len(images) > MAX_CONTEXTS:
                images.pop(next(iter(images)))
        return arr

    image = get("image", "image")
    if image is None:
        raise CmrError("Rendering in this patient needs the scan's own slice: send the context 'image'.")
    return SliceContext("in-patient", image, get("heart", "heart"), float(margin))


def _submit(state: ServerState, client: str, h: dict, arrays: dict) -> ServerJob:
    fr = _frame(h.get("frame"))
    mask = _mask(arrays, fr)
    ctx = _context(h, arrays, fr, None, client)
    model = h.get("model")
    if model is not None and not isinstance(model, str):
        raise CmrError("The 'model' must be an installed model's name.")
    opts = {}
    for k, conv in (("steps", int), ("guidance", float)):
        v = h.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise CmrError(f"The '{k}' must be a number.")
        opts[k] = None if v is None else conv(v)
    solver = h.get("solver")
    if solver is not None and not isinstance(solver, str):
        raise CmrError("The 'solver' must be a solver's name.")
    job = ServerJob(state.new_id(), client, model or state.hq_default, np.array(mask), fr, _vendor(h.get("vendor")), _seed(h.get("seed", 0)),
                    opts["steps"], opts["guidance"], solver, ctx)
    return state.submit(client, job)


def _result_envelope(job: ServerJob, fmt: str, compress: bool) -> bytes:
    r = job.result
    img, scale = wire.image_out(r.image, fmt)
    framed, fscale = wire.image_out(r.framed, fmt) if r.framed is not None else (None, {})
    arrays = {"image": img, **({"framed": framed} if framed is not None else {}), "mask": np.asarray(r.mask, np.uint8)}
    return wire.encode({"type": "result", **job.summary(), "record": r.record.to_dict(), "frame": r.frame.to_dict(),
                        "scale": scale, "framed_scale": fscale}, arrays, compress=compress)


class _Conn:
    def __init__(self, ws: WebSocket, state: ServerState, client: str):
        self.ws, self.state, self.client = ws, state, client
        self.loop = asyncio.get_running_loop()
        self.out: asyncio.Queue = asyncio.Queue()
        self.closed = False

    def post(self, data) -> None:
        """From any thread: queue a message for this client (dropped when it has gone)."""
        if not self.closed:
            try:
                self.loop.call_soon_threadsafe(self.out.put_nowait, data)
            except RuntimeError:  # the loop has closed
                pass

    async def _sender(self):
        while True:
            data = await self.out.get()
            if data is None:
                return
            if isinstance(data, str):
                await self.ws.send_text(data)
            else:
                await self.ws.send_bytes(data)

    def error(self, message: str, **extra) -> None:
        self.post(json.dumps({"type": "error", "error": message, **extra}))

    async def serve(self):
        self.state.clients += 1
        sender = asyncio.create_task(self._sender())
        try:
            await self.hello()
            while True:
                msg = await self.ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                data = msg.get("bytes")
                if data is None:
                    data = msg.get("text", "")
                try:
                    await self.handle(data)
                except CmrError as exc:
                    self.error(exc.message)
                except ApiError as exc:
                    self.error(exc.message, status=exc.status)
                except Exception as exc:  # never a traceback to the client, never a dead server
                    warnings.warn(f"cmrstudio serve: a message failed ({type(exc).__name__}: {exc}).")
                    self.error(f"The server could not handle the message ({type(exc).__name__}); it is still running.")
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self.closed = True
            self.state.clients -= 1
            await self.finish()
            self.out.put_nowait(None)
            sender.cancel()

    async def hello(self):
        pass

    async def finish(self):
        pass

    def decode(self, data) -> tuple[dict, dict]:
        if isinstance(data, str):
            try:
                h = json.loads(data)
            except ValueError:
                raise CmrError("The message is neither a binary envelope nor JSON.") from None
            if not isinstance(h, dict):
                raise CmrError("The message is not a JSON object.")
            return h, {}
        return wire.decode(data, self.state.cfg.max_request_bytes)


class LiveConnection(_Conn):
    def __init__(self, *a):
        super().__init__(*a)
        self.engine = None
        self.images: dict = {}
        self.limit = RateLimit(self.state.cfg.live_rate)
        self.last_sent = 0
        self.fmt, self.compress = "float16", False

    async def hello(self):
        r = self.state.live
        self.engine = self.state.live_engine(self.on_ready)
        await self.ws.send_text(json.dumps({"type": "hello", "model": r.name, "kind": r.kind, "sha256": r.info.card.get("sha256"),
                                            "describe": r.describe(), "device": self.state.device, "size": r.size,
                                            "spacing_mm": r.spacing_mm}))

    async def finish(self):
        if self.engine is not None:
            await run_in_threadpool(self.state.drop_live, self.engine)

    async def handle(self, data):
        h, arrays = self.decode(data)
        kind = h.get("type", "render")
        if kind == "options":
            self.fmt = "uint8" if h.get("image_format") == "uint8" else "float16"
            self.compress = bool(h.get("compress", False))
            return
        if kind == "auth":
            return
        if kind != "render":
            raise CmrError(f"Message type {str(kind)[:40]!r} is not known on /ws/live; send 'render' requests.")
        rid = h.get("id")
        if isinstance(rid, bool) or not isinstance(rid, int) or rid <= self.last_sent_request():
            raise CmrError(f"Each render request needs an 'id' larger than the last one ({self.last_sent_request()}), not {str(rid)[:20]}.")
        try:
            if not self.limit.allow("live"):
                raise CmrError(f"Too many live requests (at most {self.state.cfg.live_rate:g} a second); this one was dropped.")
            fr = _frame(h.get("frame"))
            mask = self.state.live.check_mask(_mask(arrays, fr))
            ctx = _context(h, arrays, fr, self.images, self.client)
            vendor, seed = _vendor(h.get("vendor")), _seed(h.get("seed", 0))
        except CmrError as exc:
            self._last_request = rid
            self.post(wire.encode({"type": "frame", "id": rid, "error": exc.message, "dropped": self.engine.dropped}))
            return
        self._last_request = rid
        self.engine.submit(mask, fr, vendor, seed, tag=(rid, time.perf_counter()), context=ctx)

    def last_sent_request(self) -> int:
        return getattr(self, "_last_request", 0)

    def on_ready(self, res) -> None:
        """On the engine's thread: encode the frame and queue it for this client."""
        rid, t_in = res.tag
        if rid <= self.last_sent:
            self.state.late_frames += 1  # would show an older mask after a newer one: never sent
            return
        self.last_sent = rid
        head = {"type": "frame", "id": rid, "dropped": self.engine.dropped, "render_ms": round(res.render_ms, 2),
                "server_ms": round(1000 * (time.perf_counter() - t_in), 2), "vendor": res.vendor, "seed": res.seed, "model": res.model,
                "note": res.note, "error": res.error, "record": res.record.to_dict() if res.record is not None else None}
        arrays = {}
        if res.error is None:
            img, scale = wire.image_out(res.image, self.fmt)
            framed, fscale = wire.image_out(res.framed, self.fmt)
            arrays = {"image": img, "framed": framed}
            head.update(scale=scale, framed_scale=fscale)
        self.post(wire.encode(head, arrays, compress=self.compress))


class JobsConnection(_Conn):
    def __init__(self, *a):
        super().__init__(*a)
        self.jobs: dict[str, ServerJob] = {}
        self.fmt, self.compress = "float16", True

    async def hello(self):
        await self.ws.send_text(json.dumps({"type": "hello", "hq_model": self.state.hq_default, "device": self.state.device}))

    async def finish(self):
        for job in list(self.jobs.values()):
            if not job.finished:
                self.state.cancel(job)

    async def handle(self, data):
        h, arrays = self.decode(data)
        kind = h.get("type")
        ref = h.get("ref")
        if kind == "auth":
            return
        if kind == "cancel":
            job = self.jobs.get(h.get("job")) if isinstance(h.get("job"), str) else None
            if job is None:
                raise CmrError(f"There is no job {str(h.get('job'))[:40]!r} of this connection to cancel.")
            self.state.cancel(job)
            return
        if kind != "submit":
            raise CmrError(f"Message type {str(kind)[:40]!r} is not known on /ws/jobs; send 'submit' or 'cancel'.")
        try:
            job = await run_in_threadpool(_submit, self.state, self.client, h, arrays)
        except CmrError as exc:
            self.post(json.dumps({"type": "rejected", "ref": ref, "error": exc.message}))
            return
        self.jobs[job.id] = job
        job.listeners.append(self.on_event)
        self.post(json.dumps({"type": "queued", "ref": ref, **job.summary(), "position": self.state.position(job)}))
        if job.finished:  # cancelled before the listener was added
            self.on_event({"type": "done", **job.summary()}, None)

    def on_event(self, event: dict, preview) -> None:
        job = self.jobs.get(event["job"])
        if job is None:
            return
        if event["type"] == "progress":
            arrays = {}
            if preview is not None:
                arrays["preview"] = np.asarray(preview, np.float16)
            self.post(wire.encode(event, arrays, compress=False))
        elif job.status == "done" and job.result is not None:
            self.post(_result_envelope(job, self.fmt, self.compress))
        else:
            self.post(wire.encode(event))
