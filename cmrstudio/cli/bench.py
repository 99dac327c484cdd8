"""``cmrstudio bench``: benchmarks that print figures (live, hq, studio, startup)."""

from __future__ import annotations

import json
from typing import Optional

import typer

from cmrstudio.errors import CmrError

bench_app = typer.Typer(help="Benchmarks that print figures: live, hq, studio, startup.", no_args_is_help=True)


@bench_app.command("live")
def bench_live(
    model: Optional[str] = typer.Option(None, "--model", help="Model name or card path (default: the shipped SPADE model)."),
    n: int = typer.Option(100, "--n", help="Frames to time."),
    device: Optional[str] = typer.Option(None, "--device"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Per-frame latency of the live path (mask edit -> frame -> model -> back), p50/p95/fps."""
    from cmrstudio.engine.bench import bench_live as run_bench

    res = run_bench(model=model, n=n, device=device, threads=threads)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    typer.echo(f"live path, model {res['model']} ({res['parameters'] / 1e6:.2f} M parameters), window {res['window']}×{res['window']}, "
               f"{res['hardware']}")
    for mode, m in res["modes"].items():
        scene = f"; the synthetic surroundings once per slice and seed: {m['scene_ms']:.0f} ms" if m.get("scene_ms") is not None else ""
        around = (f"; around the network (framing, context, back into the scan): p50 {m['around_network_p50_ms']:.1f} ms, "
                  f"windows {', '.join(str(w) for w in m['windows'])}" if m.get("around_network_p50_ms") is not None else "")
        typer.echo(f"  {mode}: p50 {m['p50_ms']:.1f} ms  p95 {m['p95_ms']:.1f} ms  mean {m['mean_ms']:.1f} ms  {m['fps']:.1f} fps "
                   f"over {m['n']} frames{around}{scene}")
    typer.echo(f"  the network alone on the window: p50 {res['model_p50_ms']:.1f} ms")
    e = res["engine"]
    typer.echo(f"  engine ({e['mode']}), brush dabs every {e['dab_interval_ms']:.0f} ms: {e['submitted']} submitted, {e['rendered']} rendered, "
               f"{e['dropped']} dropped as stale; dab-to-image p50 {e['latency_p50_ms']:.1f} ms, p95 {e['latency_p95_ms']:.1f} ms")


@bench_app.command("hq")
def bench_hq_cmd(
    model: list[str] = typer.Option([], "--model", help="Diffusion or flow model(s); default: the shipped flow model."),
    steps: list[int] = typer.Option([], "--steps", help="Step counts to time (default: 4, 8, 16 for scene models; 10, 25, 50 for diffusion; 1, 2, 4, 8 for flow)."),
    n: int = typer.Option(3, "--n", help="Samples timed per setting (median reported)."),
    size: Optional[int] = typer.Option(None, "--size", help="Also time an untrained network of the same architecture at this size (e.g. 256)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Guidance scale (the card's default when omitted; 1 halves the work)."),
    device: Optional[str] = typer.Option(None, "--device"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Seconds per slice of each HQ sampler and step count on this machine (the sample case's mid-ventricular slice; scene
    models in this patient and fully synthetic, the scan's whole field of view)."""
    from cmrstudio.engine.bench import bench_hq

    res = bench_hq(models=list(model) or None, steps=list(steps) or None, n=n, size=size, guidance=guidance, device=device, threads=threads)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    typer.echo(f"HQ rendering on {res['hardware']} ({res['precision']}), median of {n} per setting:")
    for row in res["rows"]:
        size = f"{row['size']}px" if isinstance(row["size"], int) else row["size"]
        typer.echo(f"  {row['model']:<24} {row['kind']:<9} {row['solver']:<5} {size:>12}  {row['steps']:>3} steps  "
                   f"guidance {row['guidance']:<4g} {row['seconds']:>7.2f} s/sample  ({row['ms_per_step']:.0f} ms/step)")


@bench_app.command("studio")
def bench_studio_cmd(
    strokes: int = typer.Option(12, "--strokes", help="Brush strokes to paint (real mouse drags on the canvas)."),
    moves: int = typer.Option(24, "--moves", help="Mouse moves per stroke, one every 16 ms (a 60 Hz mouse)."),
    model: Optional[str] = typer.Option(None, "--model", help="Live model (default: the shipped SPADE model)."),
    window: Optional[str] = typer.Option(None, "--window", help="Window size WxH in pixels (default: the studio's own, it fills the screen)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Brush dab -> synthetic layer on screen in the real studio window, and how long the GUI thread was ever blocked."""
    from cmrstudio.gui.bench import bench_studio

    try:
        size = None if window is None else tuple(int(x) for x in window.lower().split("x"))
        assert size is None or (len(size) == 2 and min(size) >= 400)
    except (ValueError, AssertionError):
        raise CmrError(f"--window {window!r} must be WIDTHxHEIGHT in pixels, at least 400 each, like 1600x960.") from None
    res = bench_studio(strokes=strokes, moves=moves, model=model, window=size)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    d, m, h = res["dab_to_screen_ms"], res["model_ms"], res["gui_heartbeat_ms"]
    typer.echo(f"studio on {res['scan']}, live model {res['model']} ({res['frame_size']}² frame, {res['threads']} torch threads)")
    typer.echo(f"{res['strokes']} strokes, {res['dabs']} dabs -> {res['frames_shown']} frames shown, {res['skipped_latest_wins']} skipped (latest-wins)")
    typer.echo(f"dab -> on screen: p50 {d['p50']} ms, p95 {d['p95']} ms, max {d['max']} ms   (model alone p50 {m['p50']} ms)")
    q = res["gui_heartbeat_live_off_ms"]
    typer.echo(f"GUI heartbeat (5 ms timer) while painting: live on p50 {h['p50']} / p99 {h['p99']} / longest {h['max']} ms; "
               f"live off p50 {q['p50']} / p99 {q['p99']} / longest {q['max']} ms")
    typer.echo(f"window {res['window']}, canvas {res['canvas']} px (software OpenGL under Xvfb draws the canvas on the CPU)")
    typer.echo("views: " + ", ".join(f"{k} {w}x{h}" for k, (w, h) in res["views"].items()))


@bench_app.command("startup")
def bench_startup_cmd(
    n: int = typer.Option(3, "--n", help="Cold starts to time."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Seconds from launching `cmrstudio open` to the window with its first live frame drawn."""
    from cmrstudio.gui.bench import bench_startup

    res = bench_startup(n=n)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    for i, r in enumerate(res["runs"], 1):
        typer.echo(f"run {i}: window taking input at {r['window_s']} s, first live frame at {r['first_frame_s']} s")
    typer.echo(f"cold start to an interactive window: median {res['window_s_median']:.2f} s (max {res['window_s_max']:.2f}); "
               f"first synthetic frame on screen: median {res['first_frame_s_median']:.2f} s (max {res['first_frame_s_max']:.2f})")



@bench_app.command("serve")
def bench_serve_cmd(
    clients: list[int] = typer.Option([], "--clients", help="Concurrent live clients to time (default: 1, 4 and 16)."),
    n: int = typer.Option(20, "--n", help="Round trips timed per client count (shared among the clients)."),
    burst: int = typer.Option(20, "--burst", help="Dabs each client sends in the burst test (one every --dab-ms, not waiting)."),
    dab_ms: float = typer.Option(16.0, "--dab-ms", help="Milliseconds between dabs in the burst test."),
    model: Optional[str] = typer.Option(None, "--model", help="Live model (default: the shipped SPADE model)."),
    device: Optional[str] = typer.Option(None, "--device"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (the server and the local path alike)."),
    generate: bool = typer.Option(True, "--generate/--no-generate", help="Also time `cmrstudio generate` with 1 and 2 workers."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Live round trip through `cmrstudio serve` on loopback (p50/p95 for 1, 4, 16 clients) beside the local live path; frames
    rendered late (must be 0) and errors; then `generate` throughput in slices a second."""
    from cmrstudio.serve.bench import bench_serve, generate_figures

    res = bench_serve(clients=tuple(clients) or (1, 4, 16), n=n, device=device, threads=threads, dab_interval_ms=dab_ms, burst=burst,
                      model=model)
    res["generate"] = generate_figures() if generate else "not asked for (--no-generate)"
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    loc = res["local"]
    typer.echo(f"live round trip through cmrstudio serve on loopback, model {res['model']}, {res['hardware']}")
    typer.echo(f"  local live path (this process): p50 {loc['p50_ms']:.1f} ms  p95 {loc['p95_ms']:.1f} ms over {loc['n']} frames")
    for row in res["rows"]:
        typer.echo(f"  {row['clients']:>2} client{'s' if row['clients'] > 1 else ' '}: round trip p50 {row['p50_ms']:.1f} ms  "
                   f"p95 {row['p95_ms']:.1f} ms over {row['n']} (wire and codecs p50 {row['transport_p50_ms']:.1f} ms); burst {row['burst_sent']} dabs -> {row['burst_rendered']} frames, "
                   f"{row['dropped']} dropped as stale, {row['late']} late, {row['errors']} errors")
    if res["one_client_overhead_ms"] is not None:
        typer.echo(f"  one client's round trip is {res['one_client_overhead_ms']:+.1f} ms beside the local path; "
                   f"frames rendered late on the server: {res['late_frames_server']}")
    gen = res["generate"]
    if isinstance(gen, str):
        typer.echo(f"generate: {gen}")
    else:
        for g in gen:
            if "error" in g:
                typer.echo(f"generate, {g['workers']} worker(s): failed ({g['error']})")
            else:
                sps = g.get("slices_per_s", g.get("slices_per_second"))
                typer.echo(f"generate, {g['workers']} worker(s): {sps if sps is not None else g} slices/s")
