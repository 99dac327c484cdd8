"""Studio assembly: a napari window with the studio's panels, menus, drag-and-drop and status bar."""

from __future__ import annotations

import time
import weakref
from pathlib import Path

import napari
import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtGui import QAction
from qtpy.QtWidgets import (QApplication, QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QLabel, QScrollArea,
                            QToolBar)

from cmrstudio.gui.studio import Studio


def _scroll(widget, min_width: int = 0):
    """A panel in a scroll area, so a small screen scrolls the panel instead of squeezing the canvas."""
    area = QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QScrollArea.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    area.setMinimumWidth(min_width or widget.minimumSizeHint().width() + 20)
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
    """The studio's own question when its window is asked to close with unsaved mask edits (napari's generic
    "close the application?" never shows), then stops the studio once the window has really closed."""

    def __init__(self, window: "StudioWindow"):
        super().__init__()
        self.window = weakref.ref(window)
        self.confirmed = False

    def eventFilter(self, obj, event):  # noqa: N802
        if event.type() != QEvent.Close:
            return False
        win = self.window()
        if win is not None and not self.confirmed and not win.studio._closed:
            if not win.confirm_close():
                event.ignore()
                return True
            self.confirmed = True
            if event.spontaneous():  # the window's close button: napari would ask its own question; close without it
                event.ignore()
                QTimer.singleShot(0, obj.close)
                return True
        # weak references only: a pending check must not keep a closed window (and its viewer) alive
        me, qwin = weakref.WeakMethod(self._after_close), weakref.ref(obj)
        QTimer.singleShot(0, lambda: me() is not None and me()(qwin()))
        return False

    def _after_close(self, qwin) -> None:
        try:
            gone = qwin is None or not qwin.isVisible()
        except RuntimeError:  # the C++ window was already deleted
            gone = True
        win = self.window()
        if gone and win is not None:
            win.studio.close()
            _release_napari_window(win.viewer)
        elif not gone:
            self.confirmed = False  # still open (napari's own close was cancelled): ask again next time


def _release_napari_window(viewer) -> None:
    """After its window was closed by hand (not by ``viewer.close()``), napari still ties the closed window to its global
    theme events; its own teardown unties it, and the viewer forgets the window (a later ``viewer.close()`` does nothing)."""
    w = viewer.window
    try:
        w._teardown()
    except (AttributeError, RuntimeError, TypeError, ValueError):
        pass
    w.__dict__.pop("_qt_window", None)


class SettingsDialog(QDialog):
    def __init__(self, studio: Studio, parent=None):
        from cmrstudio.models.registry import hq_model_name, hq_models, live_models

        super().__init__(parent)
        self.setWindowTitle("cmrstudio settings")
        s = studio.session.settings
        f = QFormLayout(self)
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.device.setCurrentText(s.device or "auto")
        self.live = QComboBox()
        self.live.addItems([m.name for m in live_models()])
        if s.live_model:
            self.live.setCurrentText(s.live_model)
        self.hq = QComboBox()
        self.hq.addItems([m.name for m in hq_models()])
        wanted = hq_model_name(s.hq_model)  # the saved choice ("flow" too), else the shipped default
        if wanted:
            self.hq.setCurrentText(wanted)
        self.layout = QComboBox()  # fully synthetic renders' body layout: each model's own prior, or a layout model (a site's bank)
        self.layout.addItem("each model's own prior", None)
        for m in layout_choices():
            self.layout.addItem(m, m)
        if s.layout_prior:
            if self.layout.findData(s.layout_prior) < 0:
                self.layout.addItem(s.layout_prior, s.layout_prior)
            self.layout.setCurrentIndex(self.layout.findData(s.layout_prior))
        self.layout.setToolTip("Where fully synthetic renders take the body around the painted heart from (lungs, liver, chest wall, "
                               "fat): the tissue-class prior the model's card names, or a layout bank built from this site's own scans "
                               "with `cmrstudio train layout-bank` (real body layouts, no pixel of them).")
        f.addRow("Device", self.device)
        f.addRow("Live model", self.live)
        f.addRow("HQ model", self.hq)
        f.addRow("Body layout (fully synthetic)", self.layout)
        f.addRow(QLabel("The live model and the body layout apply now, the device at the next start."))
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
        layout = self.layout.currentData()
        if layout != s.layout_prior:
            self.studio.session.set_layout_prior(layout)
        super().accept()


def layout_choices() -> list[str]:
    """Installed layout models a scene model can render fully synthetic slices with: fine priors and layout banks."""
    from cmrstudio.models.layout import own_classes
    from cmrstudio.models.registry import list_models

    return [m.name for m in list_models(kind="layout") if own_classes(m)]


class BackendDialog(QDialog):
    """Settings ▸ Backend: render on this machine, or on a ``cmrstudio serve`` server (URL + token file), with a test."""

    def __init__(self, studio: Studio, parent=None):
        from qtpy.QtWidgets import QHBoxLayout, QLineEdit, QPushButton, QRadioButton

        super().__init__(parent)
        self.setWindowTitle("Where frames are rendered")
        self.studio = studio
        s = studio.session.settings
        f = QFormLayout(self)
        self.local = QRadioButton("This machine")
        self.server = QRadioButton("A server (cmrstudio serve)")
        (self.local if s.backend == "local" else self.server).setChecked(True)
        f.addRow(self.local)
        f.addRow(self.server)
        self.url = QLineEdit("" if s.backend == "local" else s.backend)
        self.url.setPlaceholderText("http://127.0.0.1:8765 (an ssh tunnel) or https://gpu-host:8765")
        f.addRow("Server URL", self.url)
        h = QHBoxLayout()
        self.token_file = QLineEdit(s.backend_token_file or "")
        self.token_file.setPlaceholderText("the server's token, copied into a file of mode 600 (none on loopback)")
        browse = QPushButton("…")
        browse.clicked.connect(self._browse)
        h.addWidget(self.token_file, 1)
        h.addWidget(browse)
        f.addRow("Token file", h)
        self.test_btn = QPushButton("Test connection")
        self.test_btn.clicked.connect(self.test)
        self.result = QLabel("")
        self.result.setWordWrap(True)
        f.addRow(self.test_btn, self.result)
        f.addRow(QLabel("If the server goes away, this machine renders until it is back; nothing painted is lost."))
        for w in (self.url, self.token_file, self.test_btn, browse):
            self.server.toggled.connect(w.setEnabled)
            w.setEnabled(self.server.isChecked())
        bb = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        bb.accepted.connect(self.accept)
        bb.rejected.connect(self.reject)
        f.addRow(bb)

    def _browse(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self, "The server's token file")
        if path:
            self.token_file.setText(path)

    def test(self) -> bool:
        """Ask the server for its health with this URL and token; the answer (or the reason) in one line."""
        from cmrstudio.errors import CmrError
        from cmrstudio.serve.client import RemoteBackend
        from cmrstudio.serve.security import read_token

        try:
            tf = self.token_file.text().strip()
            h = RemoteBackend(self.url.text().strip(), read_token(tf) if tf else None, timeout=3.0).health()
        except CmrError as exc:
            self.result.setText(exc.message)
            return False
        self.result.setText(f"Connected: cmrstudio {h['version']} on {h['device']}, live {h['live_model']}, HQ {h.get('hq_model')}.")
        return True

    def accept(self) -> None:
        sess = self.studio.session
        if self.local.isChecked():
            ok = sess.set_backend("local")
        else:
            ok = sess.set_backend(self.url.text().strip(), token_file=self.token_file.text().strip() or None)
        if ok:
            super().accept()
        else:
            self.result.setText(sess.messages[-1][1] if sess.messages else "The server settings are not usable.")


DOCK_WIDTH = 320  # px: the docks' column; the images take the rest
NAPARI_FILE_ENTRIES = ("New Layer", "New Image from Clipboard", "Open File(s)...", "Open Files as Stack...", "Open Folder...",
                       "Open with Plugin", "Open Sample", "IO Utilities", "Acquire", "Save Selected Layers...", "Save All Layers...")


class StudioWindow:
    """The studio: napari viewer + :class:`Studio` + tool strip + docks + menus + status line.

    ``.viewer``, ``.studio``, ``.tools``, ``.paint``, ``.synthesis``, ``.gallery``, ``.message``, ``.render_status``.
    The window fills the screen; the images take most of it (three linked views, a row or a 2×2 square); the
    docks sit on the right (Paint | Synthesis as tabs over the Gallery) and F11 hides them all.
    """

    def __init__(self, path: Path | None = None, case: str | None = None, show: bool = True, project=None, viewer=None,
                 live_model: str | None = None, load_async: bool = False, remember: bool = True, settings=None,
                 size: tuple[int, int] | None = None):
        from cmrstudio.gui.gallery import GalleryPanel
        from cmrstudio.gui.panels import MessageBar, PaintPanel, SynthesisPanel
        from cmrstudio.gui.toolbar import ToolStrip
        from cmrstudio.project import Project, default_project_dir

        self.viewer = viewer or napari.Viewer(title="cmrstudio", show=show)
        self.studio = st = Studio(self.viewer, settings=settings, live_model=live_model, load_async=load_async)
        st.session.remember = remember
        w = self.viewer.window
        qt_window = w._qt_window
        self._theme(st.session.settings)
        self._size(size, show)
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
        # the tool strip over the images
        self.tools = ToolStrip(st, images_only=self.toggle_images_only)
        self.toolbar = QToolBar("Tools")
        self.toolbar.setObjectName("cmrstudio tools")
        self.toolbar.setMovable(False)
        self.toolbar.addWidget(self.tools)
        qt_window.addToolBar(Qt.TopToolBarArea, self.toolbar)
        # napari's layer list and layer controls repeat the tool strip in napari's words: hidden (Window menu shows them)
        for name in ("dockLayerList", "dockLayerControls"):
            dock = getattr(w._qt_viewer, name, None)
            if dock is not None:
                dock.hide()
        # right: [Paint | Synthesis] over the Gallery, compact; the canvas takes the rest
        self.paint_dock = w.add_dock_widget(_scroll(self.paint, DOCK_WIDTH), name="Paint", area="right")
        self.gallery_dock = w.add_dock_widget(self.gallery, name="Gallery", area="right")
        qt_window.splitDockWidget(self.paint_dock, self.gallery_dock, Qt.Vertical)  # (split first: a tab cannot be split)
        self.synthesis_dock = w.add_dock_widget(_scroll(self.synthesis, DOCK_WIDTH), name="Synthesis", area="right")
        qt_window.tabifyDockWidget(self.paint_dock, self.synthesis_dock)
        self.docks = [self.paint_dock, self.synthesis_dock, self.gallery_dock]
        QTimer.singleShot(0, self.paint_dock.raise_)
        QTimer.singleShot(0, self._size_docks)
        self._images_only: list | None = None
        # the status line: the latest message (one line, it goes stale) and what is rendered where
        self.message = MessageBar(st)
        self.render_status = QLabel("")
        self.render_status.setToolTip("What the live view renders and where: model, in this patient or fully synthetic, slice, "
                                      "dab-to-screen time; the faithfulness (segmenter Dice) of the render; HQ progress")
        sb = qt_window.statusBar()
        sb.addPermanentWidget(self.message, 3)
        sb.addPermanentWidget(self.render_status, 0)
        self._status = self.render_status  # (older name)
        st.changed.connect(self._on_changed)
        self._tick = QTimer(qt_window)  # the render line's time figure and the autosave, once a second
        self._tick.timeout.connect(self._each_second)
        self._tick.start(1000)
        self._drops = _Drops(st)
        w._qt_viewer.installEventFilter(self._drops)
        w._qt_viewer.setAcceptDrops(True)
        self._closing = _Closing(self)
        qt_window.installEventFilter(self._closing)
        original_close = qt_window.close

        def close(quit_app=False, confirm_need=False):  # File ▸ Exit / Close Window: no napari question, the studio's own
            return original_close(quit_app, False)

        qt_window.close = close
        st.on_close.append(self._cleanup)
        self._menus()
        self._slider()
        self._on_changed("case")

    # -- window set-up -------------------------------------------------------------------------------
    def _theme(self, settings) -> None:
        theme = getattr(settings, "theme", "dark") or "dark"
        try:
            self.viewer.theme = theme
        except Exception:  # an unknown theme name: napari's own default stays
            pass
        self.viewer.canvas.background_color_override = "black"  # images on black, as in a reading room

    def _size(self, size, show: bool) -> None:
        """Fill the screen (maximised where a window manager can; the available screen area otherwise)."""
        qw = self.viewer.window._qt_window
        if size is not None:
            qw.resize(*size)
            return
        screen = qw.screen() or QApplication.primaryScreen()
        if screen is not None:
            qw.setGeometry(screen.availableGeometry())
        if show:
            qw.showMaximized()

    def _size_docks(self) -> None:
        qw = self.viewer.window._qt_window
        width = max(DOCK_WIDTH, min(360, int(0.2 * qw.width())))
        qw.resizeDocks([self.paint_dock], [width], Qt.Horizontal)
        h = qw.height()
        qw.resizeDocks([self.paint_dock, self.gallery_dock], [int(0.62 * h), int(0.38 * h)], Qt.Vertical)

    def toggle_images_only(self, on: bool | None = None) -> bool:
        """Only the images (and the tool strip): every dock hidden; again: the docks that were open come back."""
        qw = self.viewer.window._qt_window
        if not isinstance(on, bool):
            on = self._images_only is None
        from qtpy.QtWidgets import QDockWidget

        if on and self._images_only is None:
            self._images_only = [d for d in qw.findChildren(QDockWidget) if d.isVisible()]
            for d in self._images_only:
                d.hide()
        elif not on and self._images_only is not None:
            for d in self._images_only:
                d.show()
            self._images_only = None
            QTimer.singleShot(0, self._size_docks)
        if self.tools.images_btn is not None:
            self.tools.images_btn.setChecked(self._images_only is not None)
        if hasattr(self, "images_action"):
            self.images_action.setChecked(self._images_only is not None)
        return self._images_only is not None

    def _slider(self) -> None:
        """The slice slider says "slice 5/9" like the status line and the captions (napari counts from 0 and labels axes -3, -2, -1)."""
        v = self.viewer
        if v.dims.ndim == 3:
            v.dims.axis_labels = ("slice", "y", "x")
        try:
            sw = self.viewer.window._qt_viewer.dims.slider_widgets[0]
        except (AttributeError, IndexError):
            return
        for lab in (getattr(sw, "curslice_label", None), getattr(sw, "totslice_label", None)):
            if lab is not None:
                lab.hide()
        label = getattr(sw, "_cmrstudio_label", None)
        if label is None:
            label = QLabel("")
            label.setObjectName("slice_label")
            sw.layout().addWidget(label)
            sw._cmrstudio_label = label
        c = self.studio.session.case
        if c is not None:
            label.setText(f"{self.studio.session.z + 1}/{c.shape[0]}")
            label.setToolTip("Slice (counted from 1, as in the status line and the captions); Up/Down or the slider")

    def _on_changed(self, what: str) -> None:
        if what in ("case", "slice"):
            self._slider()
        self.render_status.setText(self._render_line())

    def _render_line(self) -> str:
        st = self.studio
        frame = st.frame_stats(10)["frame_p50_ms"] if st.frame_ms else None
        return st.session.render_line(frame)

    def _each_second(self) -> None:
        if self.studio._closed:
            return
        self.render_status.setText(self._render_line())
        self.studio.session.autosave_if_due()

    def _cleanup(self) -> None:
        """Break what ties the window's Qt objects to this Python object (so a closed viewer can be collected)."""
        self._tick.stop()
        try:
            self._tick.timeout.disconnect()
        except (RuntimeError, TypeError):
            pass
        _disconnect_all([sig for a in getattr(self, "_actions", []) for sig in (a.triggered, a.toggled)])
        qw = getattr(self.viewer.window, "_qt_window", None)
        if qw is None:  # napari has closed the window already
            return
        qw.__dict__.pop("close", None)
        for obj, flt in ((qw, self._closing), (qw._qt_viewer, self._drops)):
            try:
                obj.removeEventFilter(flt)
            except RuntimeError:
                pass

    # -- closing ---------------------------------------------------------------------------------------
    def confirm_close(self) -> bool:
        """Ask, in the studio's words, what to do with mask edits not saved to a file; True: go ahead and close."""
        from qtpy.QtWidgets import QMessageBox

        s = self.studio.session
        if s.case is None or not s.dirty:
            return True
        c = s.case
        kept = ("They are kept in this project's autosave and come back when you open this scan again."
                if s.project is not None else "No project is open, so they will be lost.")
        box = QMessageBox(self.viewer.window._qt_window)
        box.setWindowTitle("Unsaved mask edits")
        box.setIcon(QMessageBox.Warning)
        box.setText(f"The mask of {c.case_id} {c.phase or ''} has edits that are not saved to a file.")
        box.setInformativeText(f"{kept} Save the mask as NIfTI now?")
        save = box.addButton("Save mask…", QMessageBox.AcceptRole)
        close = box.addButton("Close without saving" if s.project is None else "Close (keep the autosave)", QMessageBox.DestructiveRole)
        cancel = box.addButton("Cancel", QMessageBox.RejectRole)
        box.setDefaultButton(save)
        box.setEscapeButton(cancel)
        self.close_dialog = box
        box.exec()
        clicked = box.clickedButton()
        self.close_dialog = None
        if clicked is save:
            return self.paint.save() is not None
        if clicked is close:
            s.autosave(force=True)
            return True
        return False

    def _menus(self) -> None:
        from qtpy.QtGui import QKeySequence

        from cmrstudio.gui.views import PRESETS

        w, st = self.viewer.window, self.studio
        qw = w._qt_window
        self._actions: list = []

        def act(text, slot, key=None, tip=None):
            a = QAction(text, qw)
            a.triggered.connect(lambda _=False: slot())
            self._actions.append(a)
            if key:
                a.setShortcut(QKeySequence(key))
                a.setShortcutContext(Qt.WindowShortcut)
            if tip:
                a.setStatusTip(tip)
            return a

        self.open_action = act("Open scan…", self.open_file_dialog, "Ctrl+O")
        self.open_folder_action = act("Open dataset folder…", self.open_folder_dialog, "Ctrl+Shift+O")
        self.sample_action = act("Open the sample case", lambda: st.session.open_path(None))
        self.save_action = act("Save mask", self.paint.save, "Ctrl+S", "NIfTI in the scan's geometry, canonical labels, JSON sidecar")
        self.save_as_action = act("Save mask as…", lambda: self.paint.save(ask=True), "Ctrl+Shift+S")
        self.images_action = act("Images only", self.toggle_images_only, "F11")
        self.images_action.setCheckable(True)
        self.file_actions = [self.open_action, self.open_folder_action, self.sample_action, self.save_action, self.save_as_action]
        # napari's File menu: its open and save entries open files as loose layers or save layers; the studio's take their keys
        fm = getattr(w, "file_menu", None)
        if fm is not None:
            for a in fm.actions():
                if a.text().replace("&", "") in NAPARI_FILE_ENTRIES:
                    a.setShortcut(QKeySequence())
                    a.setVisible(False)
                    a.setEnabled(False)
            first = fm.actions()[0] if fm.actions() else None
            for a in self.file_actions[:3]:
                fm.insertAction(first, a)
            fm.insertSeparator(first)
            for a in self.file_actions[3:]:
                fm.insertAction(first, a)
            fm.insertSeparator(first)
        else:
            for a in self.file_actions:
                qw.addAction(a)
        qw.addAction(self.images_action)
        menu = w.main_menu.addMenu("&Studio")
        mine = self._actions  # every action the studio connects: disconnected at close (see _cleanup)

        def add(m, text, slot=None):
            a = m.addAction(text)
            if slot is not None:
                a.triggered.connect(lambda _=False: slot())
            mine.append(a)
            return a

        for a in self.file_actions[:3]:
            menu.addAction(a)
        menu.addSeparator()
        for a in self.file_actions[3:]:
            menu.addAction(a)
        menu.addSeparator()
        # single keys belong to the canvas (gui/keys.py): the menu shows them after a tab, without taking them
        add(menu, "Interpolate between the edited slices\tI", st.interpolate)
        add(menu, "Switch ED / ES\tT", st.toggle_phase)
        menu.addSeparator()
        view = menu.addMenu("Window/level")
        for name, (text, _, _) in PRESETS.items():
            add(view, text, lambda name=name: st.views.preset(name))
        sync = add(view, "Sync W/L (renders in the real scan's window/level)")
        sync.setCheckable(True)
        sync.setChecked(st.views.sync_wl)
        sync.toggled.connect(st.views.set_sync)
        self.sync_action = sync
        add(view, "Shift+drag on a view: left/right window, up/down level").setEnabled(False)
        menu.addAction(self.images_action)
        menu.addSeparator()
        add(menu, "New project…", lambda: self.gallery.new_project())
        add(menu, "Open project…", lambda: self.gallery.open_project())
        menu.addSeparator()
        add(menu, "Read a study (blinded)…", self.read_study_dialog)
        add(menu, "Model cards…", self.model_cards_dialog)
        menu.addSeparator()
        add(menu, "Settings…", self.settings_dialog)
        add(menu, "Backend (this machine or a server)…", self.backend_dialog)
        self.studio_menu = menu

    def settings_dialog(self) -> None:
        SettingsDialog(self.studio, self.viewer.window._qt_window).exec()

    def backend_dialog(self) -> None:
        BackendDialog(self.studio, self.viewer.window._qt_window).exec()

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
        """Close without asking (scripts, tests, benchmarks); the edits are autosaved in the project first."""
        self._tick.stop()
        self.studio.close()
        self.viewer.close()


def _disconnect_all(signals) -> None:
    """Drop every slot of these Qt signals (Qt holds the Python slots, and they hold the studio and its viewer)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "failed to disconnect": a signal with no slot
        for sig in signals:
            try:
                sig.disconnect()
            except (RuntimeError, TypeError):
                pass


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
            # the first live frame: a dab's frame drawn (frame_ms), or the opening frame (submitted by the session, not
            # by a dab, so frame_ms misses it) put into the synthetic layer on an earlier tick and repainted since
            first = bool(win.studio.frame_ms) or marks.get("shown") is not None
            if win.studio._rendered_mask:
                marks.setdefault("shown", now)
            if first or errors:
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


def screenshot(out: Path, path: Path | None = None, case: str | None = None, paint: bool = True, hq_steps: int | None = None,
               size: tuple[int, int] | None = None) -> Path:
    """Open the studio at its default size (it fills the screen), paint a short stroke on the real scan, render this
    slice with the default HQ model (``hq_steps`` steps; None: the model's own default; 0: no HQ render), wait for the
    renders, save a PNG of the window."""
    from skimage.io import imsave

    import tempfile

    from cmrstudio.project import Project

    tmp = tempfile.TemporaryDirectory()
    from cmrstudio.settings import Settings

    win = StudioWindow(path, case, show=True, project=Project.create(Path(tmp.name) / "project"), remember=False, settings=Settings(),
                       size=size)
    st = win.studio
    _pump(0.5)
    st.session.engine.wait_idle(30)
    if paint:
        from cmrstudio.gui.mouse import stroke_on_mask

        z = st.current_z()
        lv = np.argwhere(st.mask_layer.data[z] == 1)
        # thicken the septal wall with a myocardium stroke, as a radiologist sketching hypertrophy would
        centre = lv.mean(0) + np.array([0.0, -0.35 * np.ptp(lv[:, 1])]) if len(lv) else None
        st.mask_layer.preserve_labels = False  # over the blood pool
        stroke_on_mask(win.viewer, st.mask_layer, label=2, n=14, radius_frac=0.012, centre_yx=centre)
        st.mask_layer.preserve_labels = True
        st.mask_layer.selected_label = 1
    st.session.engine.wait_idle(30)
    if hq_steps != 0:
        syn = win.synthesis
        if hq_steps is not None:
            syn.steps_box.setValue(int(hq_steps))
        if syn.render_hq() is not None:
            end = time.perf_counter() + 300
            while time.perf_counter() < end and st.current_z() not in st.session.hq_results:
                _pump(0.1)
    st.session.engine.wait_idle(30)
    _pump(0.8)
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
