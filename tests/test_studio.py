"""The studio window driven for real: napari under Xvfb, real mouse drags and key and drop events, the panels wired
to the session, the shipped models, a project folder on disk. What the session does without a window is tested in
test_session.py; these tests are about the window: layers, panels, painting, dialogs."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from qtpy.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl  # noqa: E402
from qtpy.QtGui import QDragEnterEvent, QDropEvent  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402

from cmrstudio.anatomy import LV, MYO, RV  # noqa: E402
from guihelpers import pump, settle  # noqa: E402


def shown(st, z=None, key="synthetic") -> np.ndarray:
    """The slice on screen in [0, 1] (the live layer holds 8-bit display values)."""
    layer = st.layers[key]
    a = np.asarray(layer.data[st.current_z() if z is None else z], np.float32)
    return a / 255.0 if layer.data.dtype == np.uint8 else a


@pytest.fixture
def studio_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CMRSTUDIO_CONFIG", str(tmp_path / "config" / "settings.json"))
    monkeypatch.setenv("CMRSTUDIO_PROJECT", str(tmp_path / "project"))
    monkeypatch.setenv("CMRSTUDIO_MODELS", str(tmp_path / "models"))
    return tmp_path


@pytest.fixture
def open_window(studio_env, make_napari_viewer):
    from cmrstudio.gui.app import StudioWindow

    wins = []

    def make(path=None, **kw):
        win = StudioWindow(path, viewer=make_napari_viewer(show=True), **kw)
        if "size" not in kw:
            win.viewer.window.resize(1400, 900)
        wins.append(win)
        settle(win)
        pump(timeout=0.3)  # the views refit to the new window size
        return win

    yield make
    for w in wins:
        w.studio.close()


def test_studio_opens_on_the_sample_real_case(open_window):
    from cmrstudio.anatomy import COLOURS

    win = open_window()
    st, v = win.studio, win.viewer
    labels = st.mask_layer
    assert labels.data is st.session.mask and labels.data is not st.session.case.mask  # it paints into the session's working copy
    assert np.allclose(labels.colormap.map(np.array([LV]))[0][:3], COLOURS[LV][:3], atol=0.02)
    assert "ge" in v.title and "1.37" in v.title and v.theme == "dark"
    shot = v.screenshot(canvas_only=True, flash=False)
    # two cells: the grey scan with the red LV overlay, and the synthetic slice with coloured contours
    red = (shot[..., 0].astype(int) - shot[..., 1].astype(int) > 60)
    half = shot.shape[1] // 2
    assert shot.std() > 10 and red[:, :half].sum() > 50 and red[:, half:].sum() > 5
    assert shot[:, half:].std() > 10  # the synthetic cell is not blank


def test_drag_paints_renders_live_and_undo_restores(open_window):
    from cmrstudio.gui.mouse import stroke_on_mask

    win = open_window()
    st, v = win.studio, win.viewer
    keys = ["scan", "mask", "synthetic", "contour", "hq", "hq_contour"]
    assert list(v.layers) == [st.layers[k] for k in keys]
    assert v.canvas.grid.enabled and v.canvas.grid.stride == 2  # real scan + mask | live + contour | HQ + contour, one camera
    assert "SCD0000101_ED" in v.title and "built-in sample" in v.title
    assert win.render_status.text().startswith(f"live: spade-cmr, in this patient, slice {st.current_z() + 1}/9")
    file_menu = [a.text() for a in v.window.file_menu.actions() if a.isVisible()]
    assert file_menu[:3] == ["Open scan…", "Open dataset folder…", "Open the sample case"]
    assert "Open File(s)..." not in file_menu and "Open Sample" not in file_menu  # napari's loose-layer entries are gone
    z = st.current_z()
    mask = st.mask_layer
    assert shown(st, z).std() > 0.05  # the live render of the scan's own mask is on screen
    before_img, before_mask = shown(st, z), mask.data[z].copy()
    dabs = []
    mask.events.labels_update.connect(lambda e: dabs.append(1))
    rendered0 = st.session.engine.rendered

    lv = np.argwhere(before_mask == LV).mean(0)
    win.tools.brush.setValue(7)
    assert mask.brush_size == 7
    assert mask.preserve_labels  # on by default: painting over anatomy keeps it ...
    win.tools.preserve.click()  # ... here the painter means to paint over the blood pool
    assert not mask.preserve_labels
    stroke_on_mask(v, mask, label=MYO, n=10, radius_frac=0.008, centre_yx=lv)
    settle(win)
    painted = (mask.data[z] == MYO) & (before_mask == LV)
    assert painted.sum() > 30, "the drag did not paint on the canvas"
    assert len(dabs) >= 3 and st.session.engine.rendered > rendered0
    # myocardium painted into the blood pool renders dark where the pool was bright
    assert shown(st, z)[painted].mean() < 0.8 * before_img[painted].mean()
    assert st.frame_ms and min(st.frame_ms) > 0
    assert pump(lambda: "frames" in win.synthesis.readout.text(), 2)  # the frame-time read-out

    assert st.session.dirty and st.session.edited == {z} and "unsaved" in v.title
    win.tools.undo_btn.click()
    settle(win)
    assert np.array_equal(mask.data[z], before_mask)
    assert np.abs(shown(st, z) - before_img).max() <= 2 / 255, "undo did not restore the synthetic slice"
    win.tools.redo_btn.click()
    settle(win)
    assert ((mask.data[z] == MYO) & (before_mask == LV)).sum() == painted.sum()


def test_slice_phase_seed_and_vendor_rerender(open_window):
    win = open_window()
    st, v = win.studio, win.viewer
    synth = st.layers["synthetic"]
    z = st.current_z()
    z2 = z + 1
    assert not synth.data[z2].any()
    v.dims.set_current_step(0, z2)
    settle(win)
    assert shown(st, z2).std() > 0.05 and st.current_z() == z2
    img = shown(st, z2)
    inside = st.mask_layer.data[z2] > 0  # in this patient a seed or a style changes the heart, not the patient's surroundings
    win.synthesis.new_seed.click()
    settle(win)
    assert st.session.seed == win.synthesis.seed_box.value()
    assert np.abs(shown(st, z2) - img)[inside].mean() > 0.01, "a new seed gave the same image"
    img = shown(st, z2)
    win.synthesis.vendor_box.setCurrentText("philips")
    win.synthesis.vendor_box.activated.emit(win.synthesis.vendor_box.currentIndex())
    settle(win)
    assert st.session.vendor == "philips" and np.abs(shown(st, z2) - img)[inside].mean() > 0.005, "the vendor style changed nothing"
    # the other phase of the same case
    assert [win.paint.phase_box.itemText(i) for i in range(win.paint.phase_box.count())] == ["ED", "ES"]
    win.paint.phase_box.activated.emit(1)
    settle(win)
    assert st.session.case.phase == "ES" and "ES" in v.title
    assert shown(st).std() > 0.05


def test_start_masks_template_sliders_and_quick_edits(open_window):
    from cmrstudio.edits import structure_sizes

    win = open_window()
    st, p = win.studio, win.paint
    z = st.current_z()
    sp = st.session.spacing_yx()
    p.start_box.setCurrentIndex(p.start_box.findData("template"))
    assert p.template_box.isVisibleTo(p)
    p.template_sliders["lv_diameter_mm"].setValue(70)  # a live template: the slice follows the slider
    settle(win)
    d70 = structure_sizes(st.mask_layer.data[z], sp)["lv_diameter"]
    assert abs(d70 - 70) < 4
    assert np.array_equal(st.layers["contour"].data[z], st.mask_layer.data[z])  # the contour follows panel edits
    p.struct_box.setCurrentIndex(p.struct_box.findData(LV))
    p.mm_box.setValue(5.0)
    p.grow(+1)
    settle(win)
    s = structure_sizes(st.mask_layer.data[z], sp)
    assert abs(s["lv_diameter"] - (d70 + 10)) < 3
    assert "LV ⌀" in p.sizes_label.text()
    # copy the next slice's mask here, then undo
    before = st.mask_layer.data[z].copy()
    assert st.session.copy_from_neighbour(+1)
    assert np.array_equal(st.mask_layer.data[z], st.mask_layer.data[z + 1])
    win.tools.undo_btn.click()
    assert np.array_equal(st.mask_layer.data[z], before)
    # the segmenter's start mask agrees with the expert's LV contour
    ref = st.session.case.mask[z]
    p.start_box.setCurrentIndex(p.start_box.findData("segment"))
    assert p.apply_start()
    seg = st.mask_layer.data[z]
    dice = 2 * ((seg == LV) & (ref == LV)).sum() / ((seg == LV).sum() + (ref == LV).sum())
    assert dice > 0.7
    p.start_box.setCurrentIndex(p.start_box.findData("empty"))
    p.apply_start()
    settle(win)
    assert not st.mask_layer.data[z].any() and st.mask_layer.data[z + 1].any()
    # an implausible mask gets a gentle warning, not a refusal
    m = np.zeros_like(before)
    m[100:140, 100:140] = MYO
    m[110:130, 110:130] = RV
    st.session.apply_mask(m, z)
    assert st.session.findings and "•" in p.anatomy_label.text()


def test_render_hq_completes_cancels_and_keeps(open_window, studio_env):
    from cmrstudio.project import Project

    win = open_window()
    st, syn = win.studio, win.synthesis
    z = st.current_z()
    previews = []
    st.session.events.connect("hq", lambda job, step, preview: previews.append(step))  # as reported
    assert syn.hq_box.currentData() == "flow-cmr-fine-2step" and syn.steps_box.value() == 2  # the shipped HQ default, its own steps
    syn.hq_box.setCurrentIndex(syn.hq_box.findData("flow-cmr"))
    assert syn.steps_box.value() == 8  # the teacher's own default
    syn.steps_box.setValue(3)
    syn.hq_btn.click()
    assert syn.cancel_btn.isEnabled() and syn.progress.maximum() == 0  # at once: a moving bar and Cancel, while the model loads
    assert pump(lambda: st.session.hq_job is not None and st.session.hq_job.finished, 60)
    pump(timeout=0.2)
    assert st.session.hq_job.status == "done" and previews[-3:] == [1, 2, 3]
    assert syn.progress.value() == 3 and syn.progress.maximum() == 3
    hq = st.layers["hq"].data[z]
    assert hq.std() > 0.05 and st.layers["hq"].name.startswith("HQ · ℗ in this patient")  # the cell says what it shows
    # the HQ render shows the anatomy: blood pool brighter than myocardium
    m = st.mask_layer.data[z]
    assert hq[m == LV].mean() > hq[m == MYO].mean() + 0.2

    syn.steps_box.setValue(200)
    syn.hq_btn.click()
    assert pump(lambda: st.session.hq_job.step >= 1, 60)
    assert syn.cancel_btn.isEnabled()
    syn.cancel_btn.click()
    assert pump(lambda: st.session.hq_job.finished, 30)
    pump(timeout=0.1)
    assert st.session.hq_job.status == "cancelled" and st.session.hq_job.step < 200
    assert "cancelled" in syn.message.text()
    assert st.session.hq_results[z].record.steps == 3  # the finished render is still the one kept

    # a phase switch while an HQ render runs: the job is cancelled and the panel forgets it
    syn.steps_box.setValue(200)
    syn.hq_btn.click()
    job = st.session.hq_job
    assert pump(lambda: job.step >= 1, 60)
    win.paint.phase_box.activated.emit(1)
    assert pump(lambda: job.finished, 30) and job.status == "cancelled"
    pump(timeout=0.2)
    assert st.session.case.phase == "ES" and not st.layers["hq"].data.any() and syn.progress.format() == "no HQ render yet"
    assert not syn.cancel_btn.isEnabled()
    win.paint.phase_box.activated.emit(0)
    settle(win)
    syn.hq_box.setCurrentIndex(syn.hq_box.findData("flow-cmr"))
    syn.steps_box.setValue(2)
    syn.hq_btn.click()
    assert pump(lambda: st.session.hq_job.finished, 60) and st.session.hq_job.status == "done"
    pump(timeout=0.2)

    syn.note_edit.setText("dilated LV, keep")
    syn.rating_box.setCurrentIndex(4)
    assert syn.keep("live") is not None
    assert syn.keep("hq") is not None
    assert win.gallery.list.count() == 2
    items = Project.open(studio_env / "project").items
    assert [(i.kind, i.note, i.rating, i.mode) for i in items] == [("spade", "dilated LV, keep", 4, "in-patient"), ("flow", "", None, "in-patient")]
    # the gallery hands its set to the exporters (here: an nnU-Net dataset), off the GUI thread
    from cmrstudio.export import check_nnunet_dataset_json, verify

    g = win.gallery
    g.format_box.setCurrentIndex(g.format_box.findData("nnunet"))
    assert g.export(parent=studio_env / "exports") is not None
    assert pump(lambda: g.exports and g.export_btn.isEnabled(), 60)
    dest = g.exports[0]
    root = dest / "Dataset501_SyntheticCMR"
    assert verify(dest) == [] and check_nnunet_dataset_json(json.loads((root / "dataset.json").read_text(encoding="utf-8")), root) == []
    assert "Exported 2 renders as nnunet" in syn.message.text()


def test_kept_renders_survive_closing_and_reopening(open_window, studio_env):
    win = open_window()
    st = win.studio
    st.session.set_seed(7)
    settle(win)
    item = st.session.keep("live", note="thin wall", rating=3)
    on_screen = shown(st)
    assert item is not None and win.gallery.list.count() == 1
    win.gallery.list.setCurrentRow(0)
    win.gallery.note_edit.setText("thin wall, septal")
    win.gallery.note_edit.editingFinished.emit()
    win.close()

    win2 = open_window()
    g = win2.gallery
    assert g.list.count() == 1 and str(studio_env / "project") in g.project_label.toolTip()
    g.list.setCurrentRow(0)
    assert g.note_edit.text() == "thin wall, septal" and g.rating_box.currentData() == 3
    assert not g.list.item(0).icon().isNull()  # the thumbnail
    res = win2.studio.session.project.load(item.id)
    assert res.record.seed == 7 and res.record.model == "spade-cmr"
    lo, hi = res.frame.intensity  # kept in the scan's own units; the canvas shows them in its window
    assert np.abs(np.clip((res.image - lo) / (hi - lo), 0, 1) - on_screen).max() <= 2 / 255  # the kept image is the one on screen
    assert win2.studio.session.settings.last_project == str(studio_env / "project")
    files = win2.studio.session.project.render_files(item.id)
    g.remove(confirm=False)
    assert g.list.count() == 0 and not any(f.exists() for f in files.values())


def test_a_file_that_will_not_open_at_start_is_said_in_the_window(open_window, studio_env):
    bad = studio_env / "truncated.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    win = open_window(bad)
    assert "truncated.nii.gz" in win.synthesis.message.text()  # said before the panel existed, shown when it appears
    assert win.studio.session.case.case_id == "SCD0000101_ED"  # the sample opened instead, ready to paint


def _drop(win, path):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    target = win.viewer.window._qt_viewer
    # as a real drag does: enter first (Qt delivers no drop without it), then drop
    assert QApplication.sendEvent(target, QDragEnterEvent(QPoint(20, 20), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier))
    QApplication.sendEvent(target, QDropEvent(QPointF(20, 20), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier))


def test_drop_opens_scans_and_bad_input_keeps_the_session(open_window, studio_env, monkeypatch):
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.io import write_case
    from cmrstudio.resources import resources_dir

    # a model whose weights are damaged: listed, but refused when picked
    models = studio_env / "models"
    models.mkdir()
    card = json.loads((resources_dir() / "models" / "spade-cmr.json").read_text(encoding="utf-8"))
    card["name"] = "spade-damaged"
    (models / "spade-damaged.json").write_text(json.dumps(card))
    (models / "spade-damaged.safetensors").write_bytes(b"not a safetensors file")

    win = open_window()
    st, syn = win.studio, win.synthesis
    kept = st.session.keep("live", note="before the bad input")
    layers = list(win.viewer.layers)

    bad = studio_env / "broken.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file")
    _drop(win, bad)
    pump(timeout=0.2)
    assert "broken.nii.gz" in syn.message.text()
    assert list(win.viewer.layers) == layers and st.session.case.case_id == "SCD0000101_ED"

    i = syn.model_box.findData("spade-damaged")
    assert i >= 0
    syn.model_box.setCurrentIndex(i)
    syn.model_box.activated.emit(i)
    pump(timeout=0.2)
    assert "spade-damaged" in syn.message.text() and "still using 'spade-cmr'" in syn.message.text()
    assert st.session.renderer.name == "spade-cmr" and syn.model_box.currentData() == "spade-cmr"
    z = st.current_z()
    before, heart = shown(st, z), st.mask_layer.data[z] > 0
    st.session.apply_mask(np.zeros_like(st.mask_layer.data[z]), z)  # the session goes on: the live path still renders
    settle(win)
    assert np.abs(shown(st, z) - before)[heart].mean() > 0.02
    assert [i.id for i in st.session.project.items] == [kept.id] and not st.session.project.check()

    # a good file dropped on the window opens in the studio
    c = phantom_case(3, n_slices=4, shape=(96, 96), vendor="philips")
    files = write_case(c, studio_env / "phantom")
    _drop(win, files["image"])
    settle(win)
    assert st.session.case.case_id == c.case_id and c.case_id in win.viewer.title
    assert st.session.vendor == "philips" == syn.vendor_box.currentText()  # the vendor style follows the scan
    assert shown(st).std() > 0.02
    assert st.session.settings.recent[0] == str(files["image"])
    # File ▸ Open scan in the studio… does the same (the dialog answered by the test)
    c2 = phantom_case(4, n_slices=3, shape=(80, 80), vendor="siemens")
    f2 = write_case(c2, studio_env / "phantom2")
    monkeypatch.setattr("cmrstudio.gui.app.QFileDialog.getOpenFileName", lambda *a, **k: (str(f2["image"]), ""))
    win.file_actions[0].trigger()
    settle(win)
    assert st.session.case.case_id == c2.case_id and st.mask_layer.data.shape == c2.shape
    assert st.session.vendor == "siemens" == syn.vendor_box.currentText() and "siemens" in win.viewer.title


def test_model_loads_beside_an_open_window(studio_env, make_napari_viewer):
    """As `cmrstudio` starts: the window first, torch and the live model on a thread; a bad model is a message."""
    from cmrstudio.gui.app import StudioWindow

    win = StudioWindow(viewer=make_napari_viewer(show=True), load_async=True)
    st = win.studio
    try:
        assert st.session.renderer is None and st.mask_layer is not None  # the scan and its mask are up before the model
        assert pump(lambda: st.session.live_shown, 60), "the live model never arrived"
        assert st.session.renderer.name == "spade-cmr" and shown(st).std() > 0.05
        assert "ready" in win.synthesis.message.text()
    finally:
        st.close()
    win2 = StudioWindow(viewer=make_napari_viewer(show=True), load_async=True, live_model="no-such-model")
    try:
        assert pump(lambda: any(lvl == "error" for lvl, _ in win2.studio.session.messages), 60)
        assert "no-such-model" in win2.synthesis.message.text() and "live synthesis is off" in win2.synthesis.message.text()
        assert win2.studio.session.case is not None and win2.studio.session.request_live() is None  # the session goes on without a model
    finally:
        win2.studio.close()


def test_settings_are_remembered(open_window, studio_env):
    from cmrstudio.gui.app import SettingsDialog

    win = open_window()
    dlg = SettingsDialog(win.studio)
    assert dlg.hq.currentText() == "flow-cmr-fine-2step"  # nothing saved yet: the shipped HQ default
    dlg.device.setCurrentText("cpu")
    dlg.accept()
    win.synthesis.contour_check.setChecked(False)
    assert win.studio.layers["contour"].opacity == 0 and win.studio.layers["contour"].visible  # hidden, still in its cell
    win.synthesis.vendor_box.setCurrentText("siemens")
    win.synthesis.vendor_box.activated.emit(win.synthesis.vendor_box.currentIndex())
    assert win.synthesis.margin_box.value() == 10.0 == win.studio.session.margin_mm
    win.synthesis.margin_box.setValue(6.0)  # the repaint margin: the next live frame is rendered with it
    settle(win, on_screen=True)
    st = win.studio
    assert st.session.margin_mm == 6.0 and st.session.live_shown[st.current_z()].record.margin_mm == 6.0
    win.close()
    saved = json.loads((studio_env / "config" / "settings.json").read_text(encoding="utf-8"))
    assert saved["vendor"] == "siemens" and saved["device"] == "cpu" and saved["margin_mm"] == 6.0
    saved["hq_model"] = "flow"  # a kind's name is a valid setting: both the panel and the dialog show the model it stands for
    (studio_env / "config" / "settings.json").write_text(json.dumps(saved), encoding="utf-8")
    win2 = open_window()  # the remembered style is the default; a scan that names its vendor (the sample: GE) is shown in its own
    assert win2.studio.session.settings.vendor == "siemens" and win2.studio.session.vendor == "ge" == win2.synthesis.vendor_box.currentText()
    assert win2.synthesis.hq_box.currentData() == "flow-cmr-fine-2step" == SettingsDialog(win2.studio).hq.currentText()
    assert win2.synthesis.margin_box.value() == 6.0 == win2.studio.session.margin_mm


def test_settings_dialog_offers_installed_layout_banks_for_fully_synthetic_renders(open_window, studio_env):
    from cmrstudio.gui.app import SettingsDialog
    from cmrstudio.resources import sample_dir
    from helpers import copy_model, run

    run("train", "layout-bank", "--data", str(sample_dir()), "--out", str(studio_env / "bank"), "--name", "bank-g")
    copy_model(studio_env / "bank" / "bank-g.json", studio_env / "models")  # installed as the user's model
    win = open_window()
    st = win.studio
    dlg = SettingsDialog(st)
    items = [dlg.layout.itemData(i) for i in range(dlg.layout.count())]
    assert items[0] is None and dlg.layout.currentIndex() == 0  # each model's own prior, until a bank is chosen
    assert "bank-g" in items and "layout-cmr-fine" in items and "layout-cmr" not in items  # the PCA's cells fit no scene model
    dlg.layout.setCurrentIndex(items.index("bank-g"))
    dlg.accept()
    assert st.session.settings.layout_prior == "bank-g" and st.session.renderer.layout_prior_name() == "bank-g"
    assert st.session.set_mode("synthetic")
    settle(win, on_screen=True)
    assert st.session.live_shown[st.current_z()].record.layout_prior == "bank-g" and shown(st).std() > 0.05
    assert SettingsDialog(st).layout.currentData() == "bank-g"
    st.update_captions()
    assert st.views.image_layer("live").name.startswith("LIVE · fully synthetic · body bank-g\nspade-cmr")  # the cell names the body layout
    st.session.set_layout_prior(None)
    st.update_captions()
    assert "body" not in st.views.image_layer("live").name  # the model's own prior: nothing to say


def test_npe2_widget_in_plain_napari(studio_env, make_napari_viewer):
    import npe2

    from cmrstudio.gui.layers import sample_data
    from cmrstudio.gui.plugin import synthesis_widget
    from cmrstudio.resources import resources_dir

    pm = npe2.PluginManifest.from_file(resources_dir().parent / "cmrstudio" / "napari.yaml")
    assert [w.command for w in pm.contributions.widgets] == ["cmrstudio.studio"]
    v = make_napari_viewer(show=True)
    for data, kw, kind in sample_data():
        getattr(v, f"add_{kind}")(data, **kw)
    pts = v.add_points(np.array([[4, 100, 100]]), name="my landmarks")
    w = synthesis_widget(v)
    v.window.add_dock_widget(w, name="studio")
    st = w.studio
    try:
        assert pump(lambda: st.session.live_shown, 20)
        assert pts in v.layers  # the user's other layers stay
        assert st.session.case.shape == st.layers["scan"].data.shape and st.mask_layer.data.max() == MYO
        assert shown(st).std() > 0.05
    finally:
        st.close()


@pytest.mark.shared_data
def test_dataset_folder_lists_cases_and_phases(open_window, acdc_dir):
    win = open_window(acdc_dir)
    st, p = win.studio, win.paint
    ids = [p.case_box.itemText(i) for i in range(p.case_box.count())]
    assert len(ids) > 5 and p.case_box.isEnabled() and st.session.case.case_id.startswith(ids[0])
    assert [p.phase_box.itemText(i) for i in range(p.phase_box.count())] == ["ED", "ES"]
    assert set(np.unique(st.mask_layer.data)) <= {0, LV, MYO, RV} and RV in st.mask_layer.data  # ACDC labels remapped
    p.case_box.activated.emit(3)
    settle(win)
    assert st.session.case.case_id.startswith(ids[3]) and st.session.case.phase == "ED"
    assert shown(st).std() > 0.05


def test_qt_binding_keeps_reference_counts():
    """PySide6 6.12.0 dropped a reference to True/False on every Signal.emit: a studio session
    (thousands of emits) died with 'bool_dealloc'. pyproject excludes it; this guards the pin."""
    import sys

    from qtpy.QtCore import QObject, Signal

    class Emitter(QObject):
        sig = Signal(object)

    e = Emitter()
    got = []
    e.sig.connect(got.append)
    before = sys.getrefcount(True), sys.getrefcount(False)
    for i in range(300):
        e.sig.emit(i)
    after = sys.getrefcount(True), sys.getrefcount(False)
    assert len(got) == 300
    assert after[0] >= before[0] - 50 and after[1] >= before[1] - 50, f"the Qt binding leaks bool references: {before} -> {after}"


def test_new_and_open_project_switch_the_gallery(open_window, studio_env):
    win = open_window()
    g, st = win.gallery, win.studio
    assert st.session.keep("live") is not None and g.list.count() == 1
    assert g.new_project(studio_env / "second")
    assert st.session.project.folder == studio_env / "second" and g.list.count() == 0
    assert st.session.settings.last_project == str(studio_env / "second")
    (studio_env / "not-a-project").mkdir()
    assert not g.open_project(studio_env / "not-a-project")
    assert "not-a-project" in win.synthesis.message.text() and st.session.project.folder == studio_env / "second"
    assert g.open_project(studio_env / "project") and g.list.count() == 1


# ---- issue 17: the studio as a radiologist's workspace ------------------------------------------------------------

def _key(win, key, text=""):
    """A real key press and release on the canvas (as typed with the mouse over the images)."""
    from qtpy.QtCore import QEvent
    from qtpy.QtGui import QKeyEvent

    canvas = win.viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    for kind in (QEvent.KeyPress, QEvent.KeyRelease):
        QApplication.sendEvent(canvas, QKeyEvent(kind, key, Qt.NoModifier, text))


def test_three_big_linked_views_at_1600x1000(open_window):
    win = open_window(size=(1600, 1000))
    st, v = win.studio, win.viewer
    qw = v.window._qt_window
    assert (qw.width(), qw.height()) == (1600, 1000)
    assert pump(lambda: st.views.view_sizes().get("real", (0, 0))[1] > 0, 5)
    sizes = st.views.view_sizes()
    assert sorted(sizes) == ["hq", "live", "real"]
    for cell, (w, h) in sizes.items():  # each view at least 45% of the window's height, and not a thumbnail in width
        assert h >= 0.45 * 1000 and w >= 0.22 * 1600, (cell, sizes)
    # one camera, one slice: the scan sits at the same place in each cell
    rects = st.views.cell_rects()
    offsets = {c: (st.views.image_rect(c)[0] - rects[c][0], st.views.image_rect(c)[1] - rects[c][1]) for c in rects}
    assert max(abs(o[0] - offsets["real"][0]) + abs(o[1] - offsets["real"][1]) for o in offsets.values()) < 2
    # zoomed to the heart: the painted heart spans a good part of the real view
    z = st.current_z()
    ys, xs = np.nonzero(st.mask_layer.data[z])
    from cmrstudio.gui.mouse import data_to_canvas

    x0, y0 = data_to_canvas(v, st.mask_layer, (ys.min(), xs.min()))
    x1, y1 = data_to_canvas(v, st.mask_layer, (ys.max(), xs.max()))
    assert (x1 - x0) > 0.25 * sizes["real"][0]
    # an HQ render does not move or shrink the views (the HQ cell is always there)
    hq = st.layers["hq"]
    hq.data[z] = st.layers["scan"].data[z]
    hq.refresh()
    pump(timeout=0.2)
    assert st.views.view_sizes() == sizes
    # images only (F11): the docks go, the views grow; again: they come back
    docks = [d for d in win.docks if d.isVisible()]
    win.images_action.trigger()
    assert not any(d.isVisible() for d in win.docks) and win.tools.isVisible()
    assert pump(lambda: st.views.view_sizes()["real"][0] > sizes["real"][0] + 50, 10)
    win.images_action.trigger()
    assert all(d.isVisible() for d in docks)


def test_painting_keys_labels_brush_eraser_fill(open_window):
    from cmrstudio.gui.mouse import drag, stroke_points

    win = open_window()
    st, v, tools = win.studio, win.viewer, win.tools
    mask = st.mask_layer
    z = st.current_z()
    assert mask.mode == "paint" and mask.selected_label == LV and mask.preserve_labels
    for key, lab in ((Qt.Key_2, MYO), (Qt.Key_3, RV), (Qt.Key_1, LV), (Qt.Key_2, MYO)):
        _key(win, key, str(lab))
        assert pump(lambda: mask.selected_label == lab, 5), f"key {lab} did not pick label {lab}"
        assert tools.label_buttons[lab].isChecked() and not any(b.isChecked() for k, b in tools.label_buttons.items() if k != lab)
    assert "LV myocardium" in tools.label_hint.text()  # the active label, said over the images
    assert "(2)" in tools.label_buttons[MYO].toolTip() and "(E)" in tools.erase_btn.toolTip()  # tooltips name the keys
    size = mask.brush_size
    _key(win, Qt.Key_BracketRight, "]")
    assert pump(lambda: mask.brush_size > size, 5) and tools.brush.value() == mask.brush_size
    bigger = mask.brush_size
    _key(win, Qt.Key_BracketLeft, "[")
    _key(win, Qt.Key_BracketLeft, "[")
    assert pump(lambda: mask.brush_size < bigger and mask.brush_size < size + 1, 5) and tools.brush.value() == mask.brush_size
    # the eraser: a real drag over the blood pool clears it (preserve labels: the eraser takes the label last painted, LV)
    _key(win, Qt.Key_1, "1")
    _key(win, Qt.Key_E, "e")
    assert pump(lambda: mask.mode == "erase", 5) and tools.erase_btn.isChecked() and "erasing" in tools.label_hint.text()
    lv = np.argwhere(mask.data[z] == LV)
    centre = lv.mean(0)
    before = int((mask.data[z] == LV).sum())
    drag(v, stroke_points(v, mask, centre, 3, n=10, turns=1.0))
    settle(win)
    assert (mask.data[z] == LV).sum() < before - 20, "the eraser erased nothing"
    assert st.session.dirty
    # fill: RV into the (partly erased) blood pool's hole, with preserve labels off (B)
    _key(win, Qt.Key_3, "3")
    _key(win, Qt.Key_F, "f")
    assert pump(lambda: mask.mode == "fill" and mask.selected_label == RV, 5) and tools.fill_btn.isChecked()
    _key(win, Qt.Key_B, "b")
    assert pump(lambda: not mask.preserve_labels, 5) and not tools.preserve.isChecked()
    lv = np.argwhere(mask.data[z] == LV)
    target = lv[len(lv) // 2]
    n_lv = len(lv)
    from cmrstudio.gui.mouse import data_to_canvas

    drag(v, [data_to_canvas(v, mask, target)])  # a click
    settle(win)
    assert mask.data[z][tuple(target)] == RV and (mask.data[z] == LV).sum() < n_lv
    # back to the brush
    _key(win, Qt.Key_P, "p")
    assert pump(lambda: mask.mode == "paint", 5) and tools.paint_btn.isChecked()
    # slice keys: the slider, the captions and the status line agree (counted from 1)
    _key(win, Qt.Key_Down, "")
    assert pump(lambda: st.current_z() == z + 1, 5)
    pump(lambda: False, 0.3)
    n = st.session.case.shape[0]
    assert int(v.dims.current_step[0]) == z + 1
    assert f"slice {z + 2}/{n}" in st.layers["scan"].name
    assert f"slice {z + 2}/{n}" in win.render_status.text()
    slider = v.window._qt_viewer.dims.slider_widgets[0]._cmrstudio_label
    assert slider.text() == f"{z + 2}/{n}"


def test_window_level_drag_presets_sync_and_cursor_echo(open_window):
    from cmrstudio.gui.mouse import data_to_canvas, drag, move

    win = open_window()
    st, v = win.studio, win.viewer
    views = st.views
    real, live = views.image_layer("real"), views.image_layer("live")
    assert views.sync_wl and win.tools.sync_btn.isChecked()
    lo, hi = views.window_level("real")
    live_before = views.window_level("live")
    z = st.current_z()
    c = np.array(st.layers["scan"].data.shape[-2:]) / 2
    p0 = data_to_canvas(v, real, c)
    painted = st.mask_layer.data[z].copy()
    # Shift+drag to the right: a wider window, on the real scan; the live render follows (sync W/L); nothing is painted
    drag(v, [p0, (p0[0] + 60, p0[1]), (p0[0] + 120, p0[1])], modifiers=Qt.ShiftModifier)
    lo2, hi2 = views.window_level("real")
    assert hi2 - lo2 > 1.2 * (hi - lo)
    assert views.window_level("live") != live_before
    assert np.array_equal(st.mask_layer.data[z], painted)
    # presets
    views.preset("full")
    data = st.session.case.image
    assert views.window_level("real") == pytest.approx((float(data.min()), float(data.max())), rel=1e-4)
    win.tools.sync_btn.click()  # sync off: the live view keeps its own window
    assert not views.sync_wl
    wl_live = views.window_level("live")
    views.preset("auto")
    assert views.window_level("live") == wl_live
    # the mouse over the real view is echoed as a cross at the same place in the live and HQ views
    q = (c[0] + 5, c[1] - 7)
    p = data_to_canvas(v, real, q)
    move(v, p)
    assert pump(lambda: views.echo is not None and np.allclose(views.echo, q, atol=1.0), 5)  # (the mouse is at whole pixels)
    pump(timeout=0.05)
    rects = views.cell_rects()
    assert views.cross_canvas_xy("real") is None  # the cell under the mouse has the brush circle
    for cell in ("live", "hq"):
        x, y = views.cross_canvas_xy(cell)
        assert abs((x - rects[cell][0]) - (p[0] - rects["real"][0])) < 1.5 and abs(y - p[1]) < 1.5, (cell, x, y, p)


def test_wheel_over_an_unfocused_combo_box_scrolls_the_panel(open_window):
    from qtpy.QtCore import QPointF
    from qtpy.QtGui import QWheelEvent

    win = open_window()
    box = win.synthesis.vendor_box
    box.clearFocus()
    i = box.currentIndex()

    def wheel(w):
        pos = QPointF(5, 5)
        ev = QWheelEvent(pos, QPointF(w.mapToGlobal(QPoint(5, 5))), QPoint(0, 0), QPoint(0, -120), Qt.NoButton, Qt.NoModifier,
                         Qt.NoScrollPhase, False)
        QApplication.sendEvent(w, ev)

    wheel(box)
    assert box.currentIndex() == i and not box.hasFocus()
    for w in (win.paint.start_box, win.paint.mm_box, win.paint.template_sliders["wall_mm"], win.synthesis.steps_box):
        before = w.value() if hasattr(w, "value") else w.currentIndex()
        wheel(w)
        assert (w.value() if hasattr(w, "value") else w.currentIndex()) == before, w
    # once clicked (focused), the wheel changes it
    win.viewer.window._qt_window.activateWindow()
    box.setFocus()
    if pump(lambda: box.hasFocus(), 3):
        wheel(box)
        assert box.currentIndex() != i


def test_the_reading_room_look(open_window):
    from qtpy.QtGui import QPalette
    from qtpy.QtWidgets import QToolButton

    win = open_window()
    v, qw = win.viewer, win.viewer.window._qt_window
    assert v.theme == "dark" and qw.palette().color(QPalette.Window).lightness() < 110
    assert tuple(np.round(np.asarray(v.canvas.background_color_override, float)[:3], 2)) == (0, 0, 0)  # images on black
    buttons = win.tools.findChildren(QToolButton)
    assert len(buttons) >= 15 and all(not b.icon().isNull() for b in buttons)  # qtawesome icons on the studio's own buttons
    assert all(b.toolTip() for b in buttons)
    assert not win.paint.save_btn.icon().isNull() and not win.synthesis.hq_btn.icon().isNull()
    # napari's layer list and controls (the same tools in napari's words) are hidden; the images take most of the window
    assert not v.window._qt_viewer.dockLayerControls.isVisible()
    w, h = win.studio.views.canvas_size()
    assert w * h > 0.55 * qw.width() * qw.height()
    # File ▸ Open is the studio's (Ctrl+O), and napari's own open entries are hidden and have no key
    from qtpy.QtGui import QKeySequence

    assert win.open_action.shortcut() == QKeySequence("Ctrl+O")
    others = [a for a in qw.findChildren(type(win.open_action)) if a is not win.open_action and a.shortcut() == QKeySequence("Ctrl+O")]
    assert not [a.text() for a in others if a.isEnabled()]


def _close_with_unsaved_edits(answers: list[str]) -> list[tuple]:
    """Open a studio window (napari's own, not the fixture's), edit the mask, close the window once per answer, answering
    the question with that button; what each question said, and whether the window was still open after it."""
    from qtpy.QtCore import QTimer

    from cmrstudio.gui.app import StudioWindow

    win = StudioWindow(show=True, size=(1200, 800))
    st, qw = win.studio, win.viewer.window._qt_window
    seen = []
    try:
        settle(win)
        z = st.current_z()
        m = st.mask_layer.data[z].copy()
        m[m == LV] = MYO
        st.session.apply_mask(m, z)
        assert st.session.dirty

        for label in answers:
            def run(label=label):
                box = win.close_dialog
                if box is None or not box.isVisible():
                    QTimer.singleShot(20, run)
                    return
                seen.append([box.windowTitle(), box.text(), box.informativeText(), [b.text() for b in box.buttons()]])
                next(b for b in box.buttons() if b.text() == label).click()

            QTimer.singleShot(0, run)
            qw.close()
            seen[-1].append(qw.isVisible())
        assert pump(lambda: st._closed, 10), "the studio did not stop with its window"
    finally:
        if not st._closed:
            st.close()
            win.viewer.close()
    return seen


def test_quit_with_unsaved_edits_asks_in_the_studios_words(studio_env, monkeypatch):
    """A real window closed for real: the studio's question, Cancel keeps it open, Close keeps the edits in the project."""
    import gc

    from napari._qt.qt_main_window import _QtMainWindow
    from napari._qt.qt_viewer import QtViewer
    from qtpy.QtCore import QEvent

    monkeypatch.setattr(_QtMainWindow, "_save_current_window_settings", lambda self: None)  # not this user's napari settings
    seen = _close_with_unsaved_edits(["Cancel", "Close (keep the autosave)"])
    assert len(seen) == 2
    (title, text, info, buttons, open_after_cancel), (*_, open_after_close) = seen
    assert title == "Unsaved mask edits" and "SCD0000101_ED" in text and "not saved to a file" in text
    assert "autosave" in info and set(buttons) == {"Save mask…", "Close (keep the autosave)", "Cancel"}
    assert open_after_cancel and not open_after_close
    assert list((studio_env / "project" / "autosave").glob("*_mask.nii.gz")), "the edits were not kept in the project"
    # closed for real: nothing keeps the window alive (napari's leak check, as its viewer fixture does)
    QApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    gc.collect()
    assert len(QtViewer._instances) == 0


def test_gallery_double_click_uses_a_kept_render_and_a_contour_click_keeps_painting(open_window):
    from qtpy.QtCore import QEvent
    from qtpy.QtGui import QMouseEvent

    win = open_window()
    st, g, v = win.studio, win.gallery, win.viewer
    z = st.current_z()
    kept_mask = st.mask_layer.data[z].copy()
    assert st.session.keep("live") is not None and g.list.count() == 1
    assert g.list.iconSize().width() >= 128
    st.session.apply_mask(np.zeros_like(kept_mask), z)
    assert not st.mask_layer.data[z].any()
    item = g.list.item(0)
    g.list.scrollToItem(item)
    vp, c = g.list.viewport(), g.list.visualItemRect(item).center()
    for kind in (QEvent.MouseButtonPress, QEvent.MouseButtonRelease, QEvent.MouseButtonDblClick, QEvent.MouseButtonRelease):  # a double click
        held = Qt.NoButton if kind == QEvent.MouseButtonRelease else Qt.LeftButton
        QApplication.sendEvent(vp, QMouseEvent(kind, QPointF(c), QPointF(vp.mapToGlobal(c)), Qt.LeftButton, held, Qt.NoModifier))
    assert pump(lambda: st.mask_layer.data[z].any(), 5), "double-click did not use the render's mask"
    back = st.mask_layer.data[z]
    dice = 2 * ((back > 0) & (kept_mask > 0)).sum() / ((back > 0).sum() + (kept_mask > 0).sum())
    assert dice > 0.95 and "Using" in win.synthesis.message.text()
    # a click on a contour layer (napari's layer list, Window menu) must not leave painting silently dead
    v.layers.selection.active = st.layers["contour"]
    assert v.layers.selection.active is st.mask_layer


def test_the_window_fills_the_screen_and_the_views_follow_its_shape(open_window):
    win = open_window(size=None)  # the studio's own default
    qw, st = win.viewer.window._qt_window, win.studio
    avail = qw.screen().availableGeometry()
    assert qw.isMaximized() or (qw.width() >= avail.width() - 2 and qw.height() >= avail.height() - 2), (qw.geometry(), avail)
    # a portrait-ish canvas: the views take a 2×2 square when that gives clearly bigger images than a row
    win.viewer.window.resize(900, 1000)
    assert pump(lambda: st.views.shape == (2, 2), 10), st.views.shape
    w, h = st.views.canvas_size()

    def halves():  # (napari sizes new viewboxes at their first draw)
        return all(abs(vw - w / 2) <= 2 and abs(vh - h / 2) <= 2 for vw, vh in st.views.view_sizes().values())

    assert pump(halves, 10), (st.views.view_sizes(), w, h)
