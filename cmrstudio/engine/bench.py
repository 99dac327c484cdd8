"""`cmrstudio bench live` and `bench hq`: what the live path and the HQ samplers cost on this machine.

A brush stroke is simulated on the shipped sample case (Sunnybrook SCD0000101, ED,
mid-ventricular slice): every frame paints one more 3-pixel-radius dab of RV beside
the septum in the scan's own pixels, then the whole live path runs: mask slice to
synthesis frame, generator, image back to the scan's grid. The frame is chosen once,
as the studio does for a painting session.

Then the same stroke is replayed through :class:`LiveEngine` at a mouse-like rate to
show latest-wins at work: how many dabs were rendered, how many dropped as stale, and
the delay from a dab to its image.
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np
import torch

from cmrstudio.engine.live import LiveEngine
from cmrstudio.engine.device import autocast_weights, hardware
from cmrstudio.errors import CmrError
from cmrstudio.models.spade import count_parameters, onehot
from cmrstudio.record import sampler_name, sampler_of


def _stroke(mask2d: np.ndarray, n: int, spacing_px: float = 1.5):
    """Yield n masks, each with one more RV dab along an arc beside the LV."""
    m = mask2d.copy()
    pts = np.argwhere(m > 0)
    cy, cx = pts.mean(0) if len(pts) else (np.array(m.shape) / 2)
    r = (np.ptp(pts[:, 0]) / 2 + 8) if len(pts) else 20
    yy, xx = np.ogrid[: m.shape[0], : m.shape[1]]
    for i in range(n):
        a = np.pi * (0.6 + 0.8 * ((i * spacing_px / (np.pi * r)) % 1.0))
        y, x = cy + r * np.sin(a), cx + r * np.cos(a)
        dab = (yy - y) ** 2 + (xx - x) ** 2 <= 9
        m[dab & (m == 0)] = 3
        yield m.copy()


def _sample_slice():
    """The benchmarks' input: the sample case (ED) and its mid-ventricular slice index."""
    from cmrstudio.io import sample_case

    case = sample_case("ED")
    return case, int(np.argmax((case.mask > 0).sum(axis=(1, 2))))


def _sync(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _contexts(r, case, z):
    """The render modes a renderer offers on the sample slice: (name, context); heart-crop models: fully synthetic only."""
    from cmrstudio.engine.scene import SliceContext

    if not r.scene:
        return [("synthetic (heart crop)", None)]
    return [("in-patient", SliceContext("in-patient", case.image[z], case.mask[z])),
            ("synthetic", SliceContext("synthetic", key=("bench", z)))]


def bench_live(model: str | None = None, n: int = 100, device: str | None = None, threads: int | None = None,
               dab_interval_ms: float = 15.0, warmup: int = 5) -> dict:
    """Per-frame latency of the live path on the sample slice, in each render mode the model has.

    Scene models: *in-patient* repaints a window around the old and new heart in the scan's own
    slice; *synthetic* does the same in synthetic surroundings, which are made once per slice and
    seed (timed apart as ``scene_ms``: the first frame of a painting session, not of every dab).
    """
    from cmrstudio.engine.factory import open_renderer

    if n < 1:
        raise CmrError(f"--n {n} must be at least 1 frame.")
    case, z = _sample_slice()
    r = open_renderer(model, device=device, threads=threads)
    if not r.one_step:
        raise CmrError(f"The model '{r.name}' renders step by step; `bench live` times one-step (live) models — use `bench hq` for it.")
    frame = r.frame_for(case.mask, case.spacing, image=case.image)
    masks = list(_stroke(case.mask[z], n + warmup))
    sync = _sync(r.device)
    modes = {}
    for name, ctx in _contexts(r, case, z):
        scene_ms = None
        if ctx is not None and ctx.mode == "synthetic":
            t = time.perf_counter()
            r.render_slice(case.mask[z], frame, "siemens", 0, ctx)  # makes the synthetic surroundings once
            scene_ms = 1000 * (time.perf_counter() - t)
        for m in masks[:warmup]:
            r.render_slice(m, frame, "siemens", 0, ctx)
        times, around, windows = [], [], []
        for m in masks[warmup:]:
            t = time.perf_counter()
            r.render_slice(m, frame, "siemens", 0, ctx)
            sync()
            times.append(1000 * (time.perf_counter() - t))
            if r.scene:  # the same frame split: in the network, and everything around it (framing, context, putting back)
                net_ms, win = r.last_network()
                around.append(times[-1] - net_ms)
                windows.append(win)
        t = np.asarray(times)
        modes[name] = {"p50_ms": float(np.percentile(t, 50)), "p95_ms": float(np.percentile(t, 95)), "mean_ms": float(t.mean()),
                       "fps": float(1000.0 / t.mean()), "scene_ms": scene_ms, "n": len(t),
                       "around_network_p50_ms": float(np.percentile(around, 50)) if around else None,
                       "windows": sorted(set(windows))}

    # the network alone on the live window, for the split between network and resampling
    model_times = []
    with torch.inference_mode():
        if r.scene:
            name, ctx = _contexts(r, case, z)[0]
            plan = r.plan(masks[-1], frame, ctx, 0, 0)
            cond = torch.from_numpy(plan.cond())[None].to(r.device)
            noise = r.noise_field(0, plan.window[2]).to(r.device)
            run = lambda: list(r._window_steps(cond, 0, 0, noise, live=True))  # noqa: E731
            window = plan.window[2]
        else:
            framed = r.to_frame(masks[-1], frame)
            oh = onehot(torch.from_numpy(framed[None].astype(np.int64))).to(r.device)
            v = torch.zeros(1, dtype=torch.long, device=r.device)
            zz = r.latent(0).to(r.device)
            run = lambda: r.net(oh, v, zz)  # noqa: E731
            window = r.size
        run()
        for _ in range(max(10, n // 2)):
            t = time.perf_counter()
            run()
            sync()
            model_times.append(1000 * (time.perf_counter() - t))

    name, ctx = _contexts(r, case, z)[0]
    latencies: list[float] = []
    with LiveEngine(r, on_ready=lambda res: latencies.append(res.latency_ms)) as eng:
        for m in masks[warmup:]:
            eng.submit(m, frame, "siemens", 0, context=ctx)
            time.sleep(dab_interval_ms / 1000)
        if not eng.wait_idle(60):
            raise CmrError("The live engine did not finish the benchmark stroke within 60 s.")
        submitted, rendered, dropped = eng.submitted, eng.rendered + eng.failed, eng.dropped

    first = modes[next(iter(modes))]
    return {
        "model": r.name,
        "parameters": count_parameters(r.net),
        "size": r.size,
        "window": window,
        "device": str(r.device),
        "hardware": hardware(r.device),
        "n": first["n"],
        "p50_ms": first["p50_ms"],
        "p95_ms": first["p95_ms"],
        "mean_ms": first["mean_ms"],
        "fps": first["fps"],
        "modes": modes,
        "model_p50_ms": float(np.percentile(model_times, 50)),
        "engine": {
            "mode": name,
            "dab_interval_ms": dab_interval_ms,
            "submitted": submitted,
            "rendered": rendered,
            "dropped": dropped,
            "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies else float("nan"),
            "latency_p95_ms": float(np.percentile(latencies, 95)) if latencies else float("nan"),
        },
    }


def bench_hq(models: list[str] | None = None, steps: list[int] | None = None, n: int = 3, size: int | None = None,
             guidance: float | None = None, device: str | None = None, threads: int | None = None) -> dict:
    """Seconds per sample of diffusion (DDIM) and flow (Euler) at several step counts.

    One mid-ventricular slice of the sample case in its frame; guidance on (two network calls a
    step) unless ``guidance`` is 1. With ``size``, an untrained network of the same architecture
    at that size is timed too (the speed does not depend on the weights).
    """
    from cmrstudio.models.diffusion import CondUNet, DiffusionConfig
    from cmrstudio.models.sampling import check_guidance, check_steps, noise_for, run_to_end, sample

    if n < 1:
        raise CmrError(f"--n {n} must be at least 1.")
    for k in steps or ():
        check_steps(k)
    if guidance is not None:
        check_guidance(guidance)
    if threads:
        torch.set_num_threads(threads)
    case, z = _sample_slice()
    rows = []
    from cmrstudio.engine.factory import open_renderer

    renderers = [open_renderer(m, device=device) for m in (models or ["flow"])]
    for r in renderers:
        if not hasattr(r, "sampling"):
            raise CmrError(f"The model '{r.name}' renders in one step; `bench hq` times step-wise models — use `bench live` for it.")
        if r.scene:
            rows += _bench_scene_hq(r, case, z, steps, n, guidance)
            continue
        g = r.guidance if guidance is None else guidance
        frame = r.frame_for(case.mask, case.spacing)
        framed = r.to_frame(case.mask[z], frame)
        nets = [(r.size, r.net, framed)]
        if size and size != r.size:
            try:
                cfg = DiffusionConfig.from_dict({**r.net.cfg.to_dict(), "size": size})
            except ValueError as exc:
                raise CmrError(f"--size {size} does not fit the architecture of '{r.name}' ({exc}); try 256.") from None
            big = dataclasses.replace(frame, size=size, step=tuple(s * r.size / size for s in frame.step))  # same field of view
            untrained = CondUNet(cfg).to(r.device).eval()
            if r.net.inp.weight.dtype == torch.bfloat16:  # stored as the trained network is (engine.device.autocast_weights)
                autocast_weights(untrained)
            nets.append((size, untrained, r.to_frame(case.mask[z], big)))
        sync = _sync(r.device)
        v = torch.zeros(1, dtype=torch.long, device=r.device)
        shift = getattr(r, "time_shift", 1.0)  # a plugin's renderer may have no time grid of its own
        spins = getattr(r, "shifts", 1)
        sampler = sampler_name(r.solver, shift, spins)
        for sz, net, fm in nets:
            oh = onehot(torch.from_numpy(fm[None].astype(np.int64))).to(r.device)
            noise = noise_for(0, sz).to(r.device)
            for k in steps or ([10, 25, 50] if r.kind == "diffusion" else [1, 2, 4, 8]):
                run_to_end(sample(net, r.kind, oh, v, noise, 2, g, r.solver, bf16=r.bf16, time_shift=shift, shifts=spins))  # warm-up
                times = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    run_to_end(sample(net, r.kind, oh, v, noise, k, g, r.solver, bf16=r.bf16, time_shift=shift, shifts=spins))
                    sync()
                    times.append(time.perf_counter() - t0)
                sec = float(np.median(times))
                rows.append({"model": r.name if sz == r.size else f"{r.name} (untrained, {sz}px)", "kind": r.kind, "solver": sampler,
                             "size": sz, "steps": k, "guidance": g, "seconds": sec, "ms_per_step": 1000 * sec / k})
    r0 = renderers[0]
    return {"hardware": hardware(r0.device), "device": str(r0.device), "precision": "bf16 autocast" if r0.bf16 else "fp32",
            "n": n, "rows": rows}


def _bench_scene_hq(r, case, z: int, steps: list[int] | None, n: int, guidance: float | None) -> list[dict]:
    """A scene model: one slice in this patient (a window around the heart) and fully synthetic (the whole scan's field of view)."""
    from cmrstudio.engine.scene import SliceContext

    frame = r.frame_for(case.mask, case.spacing, image=case.image)
    sync = _sync(r.device)
    rows = []
    size = r.scene_of(frame).frame.size
    sampler = sampler_of(r)
    seeds = itertools.count(1)  # every timed render its own seed: none finds its tissue classes already sampled
    for mode in ("in-patient", "synthetic", "synthetic, classes kept"):
        for k in steps or [4, 8, 16]:
            def once(seed, k=k):
                ctx = SliceContext("in-patient", case.image[z], case.mask[z]) if mode == "in-patient" else SliceContext("synthetic")
                r.render_slice_ctx(case.mask[z], frame, "siemens", seed, ctx, steps=k, guidance=guidance)
            once(0)  # warm-up (and the tissue-class prior's first load)
            times = []
            for i in range(n):
                seed = next(seeds)
                if mode == "synthetic, classes kept":  # the live model has drawn this slice and seed: the prior's sample is kept
                    once(seed, k=1)
                t0 = time.perf_counter()
                once(seed)
                sync()
                times.append(time.perf_counter() - t0)
            sec = float(np.median(times))
            what = "heart window" if mode == "in-patient" else f"{size}px scene"
            rows.append({"model": f"{r.name} {mode}", "kind": r.kind, "solver": sampler, "size": what, "steps": k,
                         "guidance": r.guidance if guidance is None else guidance, "seconds": sec, "ms_per_step": 1000 * sec / k})
    return rows
