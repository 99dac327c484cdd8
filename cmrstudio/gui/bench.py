"""Studio benchmarks: brush dab -> synthetic layer on screen, GUI responsiveness, cold start.

``bench_studio`` opens the real studio window (under Xvfb when there is no display), paints
strokes with real mouse events on the canvas at a 60 Hz mouse rate, and measures for every
frame shown the time from the dab that was rendered to the canvas draw that shows it. A 5 ms
heartbeat timer on the GUI thread measures the longest time the GUI could not run (a render
blocking the GUI thread would show up there).

``bench_startup`` launches ``cmrstudio open`` in fresh processes and times spawn -> window shown
with the first live frame drawn.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from cmrstudio.errors import CmrError


@contextmanager
def display():
    """A display for Qt: the current one, else a private Xvfb (pyvirtualdisplay, installed with pytest-xvfb)."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        yield
        return
    try:
        from pyvirtualdisplay import Display
    except ImportError:
        raise CmrError("The studio benchmark needs a display; run it under `xvfb-run -a` or install the test extras.") from None
    d = Display(visible=False, size=(1600, 1000), color_depth=24)  # the screen the issue measures the views on
    try:
        d.start()
    except Exception as exc:
        raise CmrError(f"Xvfb could not start ({exc}); install it (`apt-get install -y xvfb`) or run under a display.") from None
    try:
        yield
    finally:
        d.stop()


def _pct(xs, q):
    return round(float(np.percentile(xs, q)), 1) if len(xs) else None


def bench_studio(strokes: int = 12, moves: int = 24, model: str | None = None, interval_s: float = 0.016,
                 window: tuple[int, int] | None = None) -> dict:
    """``window``: the window's size; None: the studio's default (it fills the screen; a private Xvfb is 1600×1000)."""
    with display(), tempfile.TemporaryDirectory() as tmp:
        from qtpy.QtCore import Qt, QTimer
        from qtpy.QtWidgets import QApplication

        import napari  # noqa: F401  (creates the QApplication the same way the studio does)
        from cmrstudio.anatomy import LV, MYO, RV
        from cmrstudio.gui.app import StudioWindow, _pump
        from cmrstudio.gui.mouse import stroke_on_mask
        from cmrstudio.project import Project
        from cmrstudio.settings import Settings

        win = StudioWindow(None, show=True, project=Project.create(Path(tmp) / "project"), live_model=model, remember=False,
                           settings=Settings())  # the defaults, not this user's settings
        st, v = win.studio, win.viewer
        if window is not None:
            v.window.resize(*window)
        _pump(1.0)
        st.session.engine.wait_idle(10)
        _pump(0.3)  # the views refit to the window
        views = st.views.view_sizes()
        lab = st.mask_layer
        lab.preserve_labels = False  # the strokes paint over the painted anatomy (with preserve labels on they would paint nothing)
        z = st.current_z()
        heart = np.argwhere(lab.data[z] > 0)
        centre = heart.mean(0) if len(heart) else np.array(lab.data.shape[-2:]) / 2
        dabs = []
        lab.events.labels_update.connect(lambda e: dabs.append(time.perf_counter()))
        gaps: list[float] = []
        last = [time.perf_counter()]

        def beat():
            now = time.perf_counter()
            gaps.append(1000 * (now - last[0]))
            last[0] = now

        timer = QTimer()
        timer.setTimerType(Qt.PreciseTimer)
        timer.timeout.connect(beat)
        labels = [MYO, RV, LV]

        def paint_strokes():
            for i in range(strokes):
                ang = 2 * np.pi * i / max(strokes, 1)
                c = centre + 8 * np.array([np.sin(ang), np.cos(ang)])
                stroke_on_mask(v, lab, labels[i % 3], n=moves, radius_frac=0.015, centre_yx=c, interval_s=interval_s)
                for _ in range(3):
                    QApplication.processEvents()

        def heartbeat(run):
            gaps.clear()
            last[0] = time.perf_counter()
            timer.start(5)
            t0 = time.perf_counter()
            run()
            took = time.perf_counter() - t0
            st.session.engine.wait_idle(10)
            _pump(0.3)
            timer.stop()
            return list(gaps), took

        # warm-up stroke (first-call allocations, tracing), not counted
        stroke_on_mask(v, lab, LV, n=8, radius_frac=0.02, centre_yx=centre, interval_s=interval_s)
        st.session.engine.wait_idle(10)
        _pump(0.3)
        # the same strokes with live synthesis off: what painting alone costs the GUI thread
        st.session.set_live(False)
        quiet_gaps, _ = heartbeat(paint_strokes)
        for _ in range(strokes):
            lab.undo()
        st.session.set_live(True)
        st.session.engine.wait_idle(10)
        _pump(0.3)
        st.frame_ms.clear()
        st.session.render_ms.clear()
        dabs.clear()
        r0, d0 = st.session.engine.rendered, st.session.engine.dropped
        gaps, painting_s = heartbeat(paint_strokes)
        frames = list(st.frame_ms)
        out = {
            "model": st.session.renderer.name,
            "scan": f"{st.session.case.case_id} {st.session.case.shape[1]}×{st.session.case.shape[2]}",
            "frame_size": st.session.renderer.size,
            "strokes": strokes,
            "dabs": len(dabs),
            "frames_shown": len(frames),
            "rendered": st.session.engine.rendered - r0,
            "skipped_latest_wins": st.session.engine.dropped - d0,
            "dab_to_screen_ms": {"p50": _pct(frames, 50), "p95": _pct(frames, 95), "max": _pct(frames, 100)},
            "model_ms": {"p50": _pct(list(st.session.render_ms), 50), "p95": _pct(list(st.session.render_ms), 95)},
            "gui_heartbeat_ms": {"p50": _pct(gaps, 50), "p99": _pct(gaps, 99), "max": _pct(gaps, 100)},
            "gui_heartbeat_live_off_ms": {"p50": _pct(quiet_gaps, 50), "p99": _pct(quiet_gaps, 99), "max": _pct(quiet_gaps, 100)},
            "window": f"{v.window._qt_window.width()}×{v.window._qt_window.height()}",
            "canvas": "×".join(str(int(x)) for x in v.window._qt_viewer.canvas._scene_canvas.size),
            "views": {k: list(views[k]) for k in ("real", "live", "hq") if k in views},
            "painting_s": round(painting_s, 2),
            "threads": _threads(),
        }
        win.close()
        _pump(0.2)
        return out


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def bench_startup(n: int = 3, timeout: float = 120.0) -> dict:
    """Seconds from spawning ``cmrstudio open`` to the window taking input, and to its first live frame drawn."""
    times = []
    with display(), tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, CMRSTUDIO_CONFIG=str(Path(tmp) / "settings.json"), CMRSTUDIO_PROJECT=str(Path(tmp) / "project"))
        for i in range(n):
            ready = Path(tmp) / f"ready{i}"
            t0 = time.time()
            p = subprocess.run([sys.executable, "-m", "cmrstudio", "open", "--ready-file", str(ready), "--quit-when-ready"], env=env,
                               capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout)
            if p.returncode != 0 or not ready.exists():
                raise CmrError(f"The studio did not start (exit {p.returncode}): {(p.stderr or p.stdout).strip()[-400:]}")
            info = json.loads(ready.read_text(encoding="utf-8"))
            if info.get("error"):
                raise CmrError(f"The studio started but showed an error instead of a first frame: {info['error']}")
            times.append({"window_s": round(info["wall_window"] - t0, 2), "first_frame_s": round(info["wall_first_frame"] - t0, 2),
                          "exit_s": round(time.time() - t0, 2)})
    w = [t["window_s"] for t in times]
    f = [t["first_frame_s"] for t in times]
    return {"runs": times, "window_s_median": float(np.median(w)), "window_s_max": float(np.max(w)),
            "first_frame_s_median": float(np.median(f)), "first_frame_s_max": float(np.max(f))}
