"""The studio window pointed at a cmrstudio serve server: frames render there, the live panel says where and the round
trip; when the server stops, the studio says so once, renders here, and keeps the painting and the gallery."""

from __future__ import annotations


import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui


from cmrstudio.anatomy import LV, MYO  # noqa: E402
from guihelpers import pump, settle  # noqa: E402

TOKEN = "gui-test-token-0123456789"


def test_studio_renders_on_the_server_and_falls_back_when_it_stops(tmp_path, monkeypatch, make_napari_viewer):
    from cmrstudio.gui.app import BackendDialog, StudioWindow
    from cmrstudio.gui.mouse import stroke_on_mask
    from cmrstudio.serve import ServeConfig, start
    from cmrstudio.settings import Settings

    monkeypatch.setenv("CMRSTUDIO_CONFIG", str(tmp_path / "config" / "settings.json"))
    monkeypatch.setenv("CMRSTUDIO_PROJECT", str(tmp_path / "project"))
    monkeypatch.setenv("CMRSTUDIO_LIVE_THREADS", "1")
    srv = start(ServeConfig(port=0, threads=1, bf16=False, token=TOKEN))
    where = f"127.0.0.1:{srv.port}"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    win = StudioWindow(None, viewer=make_napari_viewer(show=True), settings=Settings(backend=srv.url, backend_token_file=str(token_file)),
                       remember=False)
    st, s = win.studio, win.studio.session
    s.probe_interval_s = 0.3
    try:
        assert pump(lambda: s.backend_state == "remote", 30), s.messages
        s.request_live()
        settle(win, 60.0, on_screen=True)
        assert s.live_shown[s.z].where == where
        assert pump(lambda: where in win.synthesis.where_label.text() and "round trip" in win.synthesis.where_label.text(), 5)
        assert where in win.render_status.text() or pump(lambda: where in win.render_status.text(), 3)
        # paint with a real drag: the frame comes back from the server
        z, mask = s.z, st.mask_layer
        lv = np.argwhere(mask.data[z] == LV).mean(0)
        win.tools.preserve.click()
        stroke_on_mask(win.viewer, mask, label=MYO, n=8, radius_frac=0.008, centre_yx=lv)
        settle(win, 60.0, on_screen=True)
        painted = mask.data.copy()
        assert s.live_shown[z].where == where and np.array_equal(s.live_shown[z].mask, painted[z])
        item = s.keep("live")
        assert item is not None and item.kind
        n_items = len(s.project.items)
        # the server stops: one sentence, this machine renders, nothing painted or kept is lost
        srv.stop()
        assert pump(lambda: s.backend_state == "lost", 20)
        said = [t for lvl, t in s.messages if "went away" in t]
        assert len(said) == 1 and "rendering on this machine" in said[0]
        settle(win, 60.0, on_screen=True)
        assert s.live_shown[z].where is None and np.array_equal(s.live_shown[z].mask, painted[z])
        assert np.array_equal(mask.data, painted) and len(s.project.items) == n_items and s.project.item(item.id)
        assert pump(lambda: "not answering" in win.synthesis.where_label.text(), 5)
        # Settings ▸ Backend: the test says in one sentence that the server is not there
        dlg = BackendDialog(st, win.viewer.window._qt_window)
        assert dlg.server.isChecked() and dlg.url.text() == srv.url
        assert not dlg.test() and "cannot be reached" in dlg.result.text()
        dlg.local.setChecked(True)
        dlg.accept()
        assert s.backend_state == "local" and s.settings.backend == "local"
        assert pump(lambda: win.synthesis.where_label.text() == "this machine", 5)
    finally:
        st.close()
        srv.stop()
