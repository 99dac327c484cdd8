"""``cmrstudio bench serve``: the live round trip through ``cmrstudio serve`` on loopback, beside the local live path.

A server runs on a thread of this process (127.0.0.1, a free port) with the same live model and
threads as the local path. The input is the benchmarks' own: the sample case's mid-ventricular
slice, rendered in this patient, a brush stroke of RV dabs.

* local: :class:`~cmrstudio.engine.live.LiveEngine` on this machine, one dab at a time, submit -> frame;
* 1, 4, 16 clients, closed loop: each client sends a dab and waits for its frame, then the next; the
  round trip is submit -> frame decoded here (float16 images, raw on loopback);
* the same clients in bursts (a dab every ``dab_interval_ms``, not waiting): the server drops stale
  masks; every frame must answer a newer request than the one before it (``late`` counts any that
  does not) and no request may fail.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from cmrstudio.errors import CmrError


def _pct(xs, q) -> float | None:
    return round(float(np.percentile(xs, q)), 2) if len(xs) else None


def bench_serve(clients=(1, 4, 16), n: int = 20, device: str | None = None, threads: int | None = None, bf16: bool | None = False,
                dab_interval_ms: float = 16.0, burst: int = 20, model: str | None = None) -> dict:
    from cmrstudio.engine.bench import _sample_slice, _stroke
    from cmrstudio.engine.device import hardware
    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.engine.live import LiveEngine
    from cmrstudio.engine.scene import SliceContext
    from cmrstudio.serve import ServeConfig, start
    from cmrstudio.serve.client import RemoteBackend

    if n < 1 or burst < 1 or not clients or min(clients) < 1:
        raise CmrError("--n, --burst and every --clients count must be at least 1.")
    case, z = _sample_slice()
    r = open_renderer(model, device=device, threads=threads, bf16=bf16)
    frame = r.frame_for(case.mask, case.spacing, image=case.image)
    ctx = SliceContext("in-patient", case.image[z], case.mask[z]) if r.scene else None
    masks = list(_stroke(case.mask[z], max(n, burst) + 3))

    # the local live path
    done = threading.Event()
    local = []
    eng = LiveEngine(r, on_ready=lambda res: (local.append(res.latency_ms), done.set()))
    for i in range(n + 3):
        done.clear()
        eng.submit(masks[i], frame, "siemens", 0, context=ctx)
        done.wait(60)
    eng.close()
    local = local[3:]

    srv = start(ServeConfig(port=0, live_model=r.name, device=device, threads=threads, bf16=bf16, max_clients=max(clients) + 4,
                            live_rate=10000))
    rows = []
    try:
        backend = RemoteBackend(srv.url)
        warm = backend.live()
        for i in range(3):
            warm.submit(masks[i], frame, "siemens", 0, context=ctx)
            warm.wait_idle(60)
        warm.close()
        for k in clients:
            rows.append(_clients(backend, k, masks, frame, ctx, n, burst, dab_interval_ms))
        late_server = srv.state.late_frames
    finally:
        srv.stop()
    lp50 = _pct(local, 50)
    one = next((row for row in rows if row["clients"] == 1), None)
    return {"model": r.name, "hardware": hardware(r.device), "threads": threads, "bf16": bool(r.describe().get("bf16")),
            "local": {"p50_ms": lp50, "p95_ms": _pct(local, 95), "n": len(local)}, "rows": rows,
            "one_client_overhead_ms": None if one is None or lp50 is None else round(one["p50_ms"] - lp50, 2),
            "late_frames_server": late_server}


def _clients(backend, k: int, masks, frame, ctx, n: int, burst: int, dab_interval_ms: float) -> dict:
    engines = [backend.live() for _ in range(k)]
    rtts: list[float] = []
    wire_ms: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    n_each = max(2, n // k) if k > 1 else n

    def closed_loop(e):
        for i in range(n_each):
            e.submit(masks[i], frame, "siemens", 0, context=ctx)
            if not e.wait_idle(120):
                with lock:
                    errors.append(e.lost or "timed out")
                return
        with lock:
            rtts.extend(e.rtt_ms[-n_each:])
            wire_ms.extend(e.transport_ms[-n_each:])

    def bursty(e):
        for i in range(burst):
            e.submit(masks[i], frame, "siemens", 0, context=ctx)
            time.sleep(dab_interval_ms / 1000)
        if not e.wait_idle(300):
            with lock:
                errors.append(e.lost or "timed out")

    try:
        for fn in (closed_loop, bursty):
            before = [(e.rendered, e.failed) for e in engines]
            ts = [threading.Thread(target=fn, args=(e,)) for e in engines]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        failed = sum(e.failed for e in engines)
        row = {"clients": k, "p50_ms": _pct(rtts, 50), "p95_ms": _pct(rtts, 95), "n": len(rtts),
               "transport_p50_ms": _pct(wire_ms, 50), "transport_p95_ms": _pct(wire_ms, 95),
               "burst_sent": burst * k, "burst_rendered": sum(e.rendered - b[0] for e, b in zip(engines, before)),
               "dropped": sum(e.dropped for e in engines), "late": sum(e.late for e in engines),
               "errors": len(errors) + failed, "error_text": errors[:3]}
    finally:
        for e in engines:
            e.close()
    return row


def generate_figures(workers=(1, 2)) -> list[dict] | str:
    """``cmrstudio generate`` throughput (slices a second) for 1 and 2 workers, when that part is installed."""
    try:
        from cmrstudio.generate.bench import generate_throughput
    except ImportError:
        return "cmrstudio.generate.bench is not available; generate throughput is not measured."
    out = []
    for w in workers:
        try:
            res = dict(generate_throughput(workers=w))
        except Exception as exc:  # its own failure is reported, not ours
            res = {"error": f"{type(exc).__name__}: {exc}"}
        out.append({"workers": w, **res})
    return out
