"""Helpers for the tests that drive the studio window under Xvfb (import only after ``pytest.importorskip("napari")``)."""

from __future__ import annotations

import time

from qtpy.QtWidgets import QApplication


def pump(cond=lambda: False, timeout: float = 20.0) -> bool:
    """Run the Qt event loop until ``cond()`` or ``timeout``."""
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        QApplication.processEvents()
        if cond():
            return True
        time.sleep(0.005)
    return bool(cond())


def settle(win, timeout: float = 20.0, on_screen: bool = False) -> None:
    """Until the live engine is idle and its last result is on the layer (``on_screen``: and the current slice
    has been shown a live frame)."""
    st = win.studio
    assert pump(lambda: st.session.engine is not None and not st.session.engine.busy and not st._submitted
                and (not on_screen or st.session.z in st.session.live_shown), timeout), "the live render did not arrive"
    pump(timeout=0.1)
