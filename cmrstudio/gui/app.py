"""Studio assembly: a napari window with the studio's panels, menus, drag-and-drop and status bar."""

from __future__ import annotations

import time
import weakref
from pathlib import Path

import napari
import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtGui import QAction
from qtpy.QtWidgets import (QApplication, QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QLabel, QScrollArea)

from cmrstudio.gui.studio import Studio


def _scroll(widget, min_width: int = 0):
    """A panel in a scroll area, so a small screen scrolls the panel instead of squeezing the canvas."""
    area = QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QScrollArea.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    area.setMinimumWidth(max(min_width, widget.minimumSizeHint().width() + 20))
    return area


class _Drops(QObject):
    """Files dropped on the window open in the studio (not as loose napari layers)."""

    def __init__(self, studio: Studio):
        super().__init__()
        self.studio = studio

    def eventFilter(self, obj, event):  # noqa: N802 (Qt API)
        t = event.type()
        if t in (QEvent.DragEnter, QEvent.DragMove) and event.mimeData().hasUrls():
            event.acceptProposedAction()
            return True
        if t == QEvent.Drop and event.mimeData().hasUrls():
            paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
            event.acceptProposedAction()
            if paths:
                self.studio.session.open_path(paths[0])
            return True
        return False


class _Closing(QObject):
    """Stops the studio once its window has really closed (napari may ask first, and the user may cancel)."""

    def __init__(self, studio: Studio):
        super().__init__()
        self.studio = studio

    def eventFilter(self, obj, event):  # noqa: N802
        if event.type() == QEvent.Close:
            # weak references only: a pending check must not keep a closed window (and its viewer) alive
            me, window = weakref.WeakMethod(self._after_close), weakref.ref(obj)
            QTimer.singleShot(0, lambda: me() is not None and me()(window()))
        return False

    def _after_close(self, window) -> None:
        try:
            gone = window is None or not window.isVisible()
        except RuntimeError:  # the C++ window was already deleted
            gone = True
        if gone:
            self.studio.close()


class SettingsDialog(QDialog):
    def __init__(self, studio: Studio, parent=None):
        from cmrstudio.models.registry import list_models

        super().__init__(parent)
        self.setWindowTitle("cmrstudio settings")
        s = studio.session.settings
        f = QFormLayout(self)
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.device.setCurrentText(s.device or "auto")
        self.live = QComboBox()
        self.live.addItems([m.name for m in list_models("spade")])
        if s.live_model:
            self.live.setCurrentText(s.live_model)
        self.hq = QComboBox()
        self.hq.addItems([m.name for m in list_models("diffusion") + list_models("flow")])
        if s.hq_model:
            self.hq.setCurrentText(s.hq_model)
        f.addRow("Device", self.device)
        f.addRow("Live model", self.live)
        f.addRow("HQ model", self.hq)
        f.addRow(QLabel("The live model applies now, the device at the next start."))
        bb = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        bb.accepted.connect(self.accept)
        bb.rejected.connect(self.reject)
        f.addRow(bb)
        self.studio = studio

    def accept(self) -> None:
        s = self.studio.session.settings
        s.device = self.device.currentText()
        s.live_model = self.live.currentText() or None
        s.hq_model = self.hq.currentText() or None
        self.studio.session.save_settings()
        r = self.studio.session.renderer
        if s.live_model and (r is None or r.name != s.live_model):
            self.studio.session.set_live_model(s.live_model)
        super().accept()


class StudioWindow:
    """The studio: napari viewer + :class:`Studio` + panels. ``.viewer``, ``.studio``, ``.paint``, ``.synthesis``, ``.gallery``."""

    def __init__(self, path: Path | None = None, case: str | None = None, show: bool = True, project=None, viewer=None,
                 live_model: str | None = None, load_async: bool = False, remember: bool = True, settings=None):
        from cmrstudio.gui.gallery import GalleryPanel
        from cmrstudio.gui.panels import PaintPanel, SynthesisPanel
        from cmrstudio.project import Project, default_project_dir

        self.viewer = viewer or napari.Viewer(title="cmrstudio", show=show)
        self.studio = st = Studio(self.viewer, settings=settings, live_model=live_model, load_async=load_async)
        st.session.remember = remember
        if project is None:
            where = st.session.settings.last_project or default_project_dir()
            try:
                project = Project.open_or_create(where)
            except Exception as exc:
                st.session.say("warning", f"{getattr(exc, 'message', exc)} Kept renders need a project: Studio ▸ New project.")
        elif not hasattr(project, "items"):
            project = Project.open_or_create(project)
        if project is not None:
            st.session.set_project(project)
        ok = st.session.open_path(path, case=case)
        if not ok and path is not None:
            st.session.open_path(None)  # the sample, so the studio is usable; the message says what failed
        self.synthesis = SynthesisPanel(st)
        self.paint = PaintPanel(st)
        self.gallery = GalleryPanel(st)
        w = self.viewer.window
        qt_window = w._qt_window
        # left: napari's layer controls over [Paint | layers]; right: [Synthesis | Gallery]; the canvas in between
        self.paint_dock = w.add_dock_widget(_scroll(self.paint, 370), name="Paint", area="left")
        layer_list = getattr(w._qt_viewer, "dockLayerList", None)
        if layer_list is not None:
            qt_window.tabifyDockWidget(layer_list, self.paint_dock)
        self.synthesis_dock = w.add_dock_widget(_scroll(self.synthesis, 470), name="Synthesis", area="right")
        self.gallery_dock = w.add_dock_widget(self.gallery, name="Gallery", area="right", tabify=True)
        QTimer.singleShot(0, self.synthesis_dock.raise_)
        QTimer.singleShot(0, self.paint_dock.raise_)
        self._status = QLabel("")
        qt_window.statusBar().addPermanentWidget(self._status)
        st.changed.connect(lambda _w: self._status.setText(st.session.status_line()))
        st.message.connect(lambda lvl, text: qt_window.statusBar().showMessage(text, 15000))
        self._status.setText(st.session.status_line())
        self._drops = _Drops(st)
        w._qt_viewer.installEventFilter(self._drops)
        w._qt_viewer.setAcceptDrops(True)
        self._closing = _Closing(st)
        qt_window.installEventFilter(self._closing)
        self._menus()

    def _menus(self) -> None:
        w, st = self.viewer.window, self.studio
        menu = w.main_menu.addMenu("&Studio")
        menu.addAction("Open scan file…", self.open_file_dialog)
        menu.addAction("Open dataset folder…", self.open_folder_dialog)
        menu.addAction("Open the sample case", lambda: st.session.open_path(None))
        menu.addSeparator()
        menu.addAction("New project…", lambda: self.gallery.new_project())
        menu.addAction("Open project…", lambda: self.gallery.open_project())
        menu.addSeparator()
        menu.addAction("Read a study (blinded)…", self.read_study_dialog)
        menu.addAction("Model cards…", self.model_cards_dialog)
        menu.addSeparator()
        menu.addAction("Settings…", lambda: SettingsDialog(st, w._qt_window).exec())
        self.studio_menu = menu
        # napari's File menu opens files as loose layers; the studio's own entries come first
        fm = getattr(w, "file_menu", None)
        if fm is not None and fm.actions():
            first = fm.actions()[0]
            self.file_actions = []
            for text, slot in (("Open scan in the studio…", self.open_file_dialog),
                               ("Open dataset folder in the studio…", self.open_folder_dialog)):
                a = QAction(text, fm)
                a.triggered.connect(slot)
                fm.insertAction(first, a)
                self.file_actions.append(a)
            fm.insertSeparator(first)

    def read_study_dialog(self, folder: str | None = None, reader: str | None = None, resume: bool | None = None):
        """Open the blinded reading view on a study (a separate window: nothing of the studio shows)."""
        from qtpy.QtWidgets import QInputDialog

        from cmrstudio.gui.reader import ReadingWindow
        from cmrstudio.study.design import load_study
        from cmrstudio.study.store import Store

        parent = self.viewer.window._qt_window
        folder = folder or QFileDialog.getExistingDirectory(parent, "Open a reader study folder", self.studio.session.settings.last_folder or str(Path.home()))
        if not folder:
            return None
        if reader is None:
            reader, ok = QInputDialog.getText(parent, "Reader", "Your name or reader code:")
            if not ok:
                return None
        try:
            study = load_study(folder)
            store = Store(study)
            name = store.clean_name(reader)
            known = name in store.readers()
            if known and resume is None:  # ask, as the command line's --resume would
                from qtpy.QtWidgets import QMessageBox

                n = len(store.answered(name))
                resume = QMessageBox.question(parent, "Continue?", f"{name} has already answered {n} questions. Continue as {name}?") \
                    == QMessageBox.Yes
            try:
                win = ReadingWindow(study, store, name, resume=bool(resume))
            except Exception:
                store.close()
                raise
        except Exception as exc:
            self.studio.session.say("error", getattr(exc, "message", str(exc)))
            return None
        self.readings = [w for w in getattr(self, "readings", []) if w.isVisible()] + [win]  # keep every open one alive
        win.showMaximized()
        return win

    def model_cards_dialog(self, name: str | None = None, modal: bool = True):
        """Every installed model's card with its evaluation (fidelity, faithfulness, privacy, utility, DP), the live one first."""
        dlg = ModelCardsDialog(self.viewer.window._qt_window, current=name or (self.studio.session.renderer.name if self.studio.session.renderer else None))
        self.cards_dialog = dlg
        if modal:
            dlg.exec()
        else:
            dlg.show()
        return dlg

    def open_file_dialog(self) -> bool:
        start = self.studio.session.settings.last_folder or str(Path.home())
        f, _ = QFileDialog.getOpenFileName(self.viewer.window._qt_window, "Open a cardiac scan", start,
                                           "Scans (*.nii *.nii.gz *.mha *.mhd *.nrrd *.h5 *.dcm);;All files (*)")
        return self.studio.session.open_path(f) if f else False

    def open_folder_dialog(self) -> bool:
        start = self.studio.session.settings.last_folder or str(Path.home())
        d = QFileDialog.getExistingDirectory(self.viewer.window._qt_window, "Open a dataset or DICOM folder", start)
        return self.studio.session.open_path(d) if d else False

    def close(self) -> None:
        self.studio.close()
        self.viewer.close()


def run(path: Path | None = None, case: str | None = None, ready_file: Path | None = None, quit_when_ready: bool = False) -> None:
    """Open the studio and run the Qt event loop.

    ``ready_file``: once the window is shown and the first live frame is on screen, write the
    seconds since start there (the cold-start benchmark); ``quit_when_ready`` then closes.
    """
    win = StudioWindow(path, case, show=True, load_async=True)
    if ready_file is not None or quit_when_ready:
        import json

        import psutil

        born = psutil.Process().create_time()
        marks: dict[str, float] = {}

        def poll():
            now = time.time()
            marks.setdefault("window", now)  # the event loop runs: the window is up and takes input
            errors = [text for lvl, text in win.studio.session.messages if lvl == "error"]
            if win.studio.frame_ms or errors:
                if ready_file is not None:
                    Path(ready_file).write_text(json.dumps({"wall_window": marks["window"], "wall_first_frame": now,
                                                            "in_process_window": marks["window"] - born,
                                                            "in_process_first_frame": now - born,
                                                            "error": errors[-1] if errors and not win.studio.frame_ms else None}))
                if quit_when_ready:
                    win.close()
                    QApplication.instance().quit()
                return
            QTimer.singleShot(10, poll)

        QTimer.singleShot(0, poll)
    napari.run()


def screenshot(out: Path, path: Path | None = None, case: str | None = None, paint: bool = True) -> Path:
    """Open the studio, paint a short stroke on the real scan, wait for the render, save a PNG of the window."""
    from skimage.io import imsave

    import tempfile

    from cmrstudio.project import Project

    tmp = tempfile.TemporaryDirectory()
    from cmrstudio.settings import Settings

    win = StudioWindow(path, case, show=True, project=Project.create(Path(tmp.name) / "project"), remember=False, settings=Settings())
    win.viewer.window.resize(1600, 960)
    win.viewer.window._qt_window.showNormal()
    _pump(0.5)
    win.studio.fit_heart()
    if paint:
        from cmrstudio.gui.mouse import stroke_on_mask

        st = win.studio
        z = st.current_z()
        lv = np.argwhere(st.mask_layer.data[z] == 1)
        # thicken the septal wall with a myocardium stroke, as a radiologist sketching hypertrophy would
        centre = lv.mean(0) + np.array([0.0, -0.35 * np.ptp(lv[:, 1])]) if len(lv) else None
        stroke_on_mask(win.viewer, st.mask_layer, label=2, n=14, radius_frac=0.012, centre_yx=centre)
    win.studio.session.engine.wait_idle(10)
    _pump(0.6)
    img = win.viewer.screenshot(canvas_only=False, flash=False)
    win.close()
    tmp.cleanup()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    imsave(out, img, check_contrast=False)
    return out


def _pump(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.005)



class ModelCardsDialog(QDialog):
    """A model picker and the chosen model's card as rich text (what it was trained on, how it measures up)."""

    def __init__(self, parent=None, current: str | None = None):
        from qtpy.QtWidgets import QTextBrowser, QVBoxLayout

        from cmrstudio.models.registry import list_models

        super().__init__(parent)
        self.setWindowTitle("Model cards")
        self.resize(900, 640)
        self.models = {m.name: m for m in list_models()}
        self.picker = QComboBox()
        names = sorted(self.models, key=lambda n: (n != current, self.models[n].kind, n))
        self.picker.addItems(names)
        self.text = QTextBrowser()
        self.text.setOpenExternalLinks(False)
        lay = QVBoxLayout(self)
        lay.addWidget(self.picker)
        lay.addWidget(self.text, 1)
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
        self.picker.currentTextChanged.connect(self.show_card)
        if names:
            self.show_card(names[0])

    def show_card(self, name: str) -> None:
        from cmrstudio.evaluate.report import card_html

        info = self.models.get(name)
        if info is not None:
            self.text.setHtml(card_html({**info.card, "name": info.name, "kind": info.kind}))
