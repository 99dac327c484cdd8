"""The blinded reading view: one image (or two, for 2AFC), keyboard answers, nothing else.

No file names, no layer names, no metadata: the window title is the study's name and the
progress count. Keys:

- single image: **R** real, **S** synthetic; then **1–5** how sure (the answer is committed);
- 2AFC: **←** the left one is real, **→** the right one is real; then **1–5**;
- **Backspace** takes back the choice before the confidence key; **P** pauses (the image is
  hidden and the clock stops); **0** resets window/level; drag with the mouse for window/level
  (left–right: width, up–down: level); **Esc** closes (every answer is already saved).

Each answer is committed to the study's SQLite database the moment the confidence key is pressed.
"""

from __future__ import annotations

import time

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QImage, QKeySequence, QPixmap
from qtpy.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QMainWindow, QSizePolicy, QVBoxLayout, QWidget

from cmrstudio.errors import CmrError

HINTS = {
    "single": "R  real     S  synthetic     then 1–5: how sure",
    "2afc": "←  left is real     →  right is real     then 1–5: how sure",
}


def _to_pixmap(img01: np.ndarray, level: float, width: float) -> QPixmap:
    lo = level - width / 2.0
    v = np.clip((np.asarray(img01, np.float32) - lo) / max(width, 1e-3), 0, 1)
    a = np.ascontiguousarray((v * 255 + 0.5).astype(np.uint8))
    qi = QImage(a.data, a.shape[1], a.shape[0], a.shape[1], QImage.Format_Grayscale8).copy()
    return QPixmap.fromImage(qi)


class ImageView(QLabel):
    """One grey image, scaled to fit, with window/level by mouse drag."""

    wl_changed = Signal()

    def __init__(self, owner):
        super().__init__()
        self.owner = owner
        self.setAlignment(Qt.AlignCenter)
        self.setMinimumSize(256, 256)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.setStyleSheet("background: black;")
        self.img: np.ndarray | None = None
        self._drag = None

    def show_image(self, img) -> None:
        self.img = img
        self.redraw()

    def redraw(self) -> None:
        if self.img is None or self.owner.paused:
            self.clear()
            return
        pm = _to_pixmap(self.img, self.owner.level, self.owner.width)
        self.setPixmap(pm.scaled(self.size(), Qt.KeepAspectRatio, Qt.SmoothTransformation))

    def resizeEvent(self, e):  # noqa: N802
        super().resizeEvent(e)
        self.redraw()

    def mousePressEvent(self, e):  # noqa: N802
        self._drag = (e.position().x(), e.position().y(), self.owner.level, self.owner.width)

    def mouseMoveEvent(self, e):  # noqa: N802
        if self._drag is None:
            return
        x0, y0, l0, w0 = self._drag
        self.owner.set_window(l0 - (e.position().y() - y0) / 300.0, w0 + (e.position().x() - x0) / 300.0)

    def mouseReleaseEvent(self, e):  # noqa: N802
        self._drag = None


class ReadingWindow(QMainWindow):
    """Reads ``study`` as ``reader``; ``store`` receives every answer at once."""

    finished = Signal()

    def __init__(self, study, store, reader: str, resume: bool = False):
        super().__init__()
        self.study, self.store, self.reader = study, store, store.clean_name(reader)
        done = store.start(self.reader, resume=resume)
        self.order = study.order(reader)
        self.todo = [t for t in self.order if t not in done]
        self.total = len(self.order)
        self.level, self.width = 0.5, 1.0
        self.paused = False
        self.choice: str | None = None
        self.messages: list[str] = []
        self._t_shown = 0.0
        self._paused_at = 0.0
        self._paused_total = 0.0
        self._shown_once = False
        self.setWindowTitle(f"{study.name} — reader study")
        self.setStyleSheet("QMainWindow, QWidget { background: #111; color: #ddd; } QLabel#status { font-size: 15px; }")
        central = QWidget()
        lay = QVBoxLayout(central)
        self.status = QLabel("")
        self.status.setObjectName("status")
        self.status.setAlignment(Qt.AlignCenter)
        lay.addWidget(self.status)
        row = QHBoxLayout()
        self.left, self.right = ImageView(self), ImageView(self)
        row.addWidget(self.left, 1)  # equal halves in 2AFC: neither image looks more important
        row.addWidget(self.right, 1)
        lay.addLayout(row, 1)
        self.hint = QLabel("")
        self.hint.setAlignment(Qt.AlignCenter)
        lay.addWidget(self.hint)
        self.note = QLineEdit()
        self.note.setPlaceholderText("optional comment (Tab to type, Enter to return to the keys)")
        self.note.returnPressed.connect(lambda: self.setFocus())
        self.note.setFocusPolicy(Qt.ClickFocus)  # the answer keys always reach the window unless the reader clicks here
        self.note.setVisible(bool(study.questions.get("free_text")))
        lay.addWidget(self.note)
        self.setCentralWidget(central)
        self.setFocusPolicy(Qt.StrongFocus)
        self.resize(1100, 700)
        self.next_task()

    # -- flow ------------------------------------------------------------------------------------
    @property
    def current(self) -> tuple[str, str] | None:
        return self.todo[0] if self.todo else None

    def next_task(self) -> None:
        self.choice = None
        if not self.todo:
            self.left.show_image(None)
            self.right.show_image(None)
            self.right.setVisible(False)
            self.status.setText(f"All {self.total} answered — thank you. You can close this window (Esc).")
            self.hint.setText("")
            self.finished.emit()
            return
        mode, key = self.todo[0]
        if mode == "single":
            self.right.setVisible(False)
            self.left.show_image(self.study.images[key])
        else:
            p = self.study.pair(key)
            self.right.setVisible(True)
            self.left.show_image(self.study.images[p.left])
            self.right.show_image(self.study.images[p.right])
        self._t_shown = time.perf_counter()
        self._paused_total = 0.0
        self._status()

    def _status(self) -> None:
        n_done = self.total - len(self.todo)
        mode = self.current[0] if self.current else ""
        q = self.study.questions.get(mode, "")
        if self.paused:
            self.status.setText(f"Paused — {n_done} of {self.total} answered. Press P to go on.")
        elif self.choice is None:
            self.status.setText(f"{n_done + 1} / {self.total}   {q}")
        else:
            said = {"real": "real", "synthetic": "synthetic", "left": "left is real", "right": "right is real"}[self.choice]
            self.status.setText(f"{n_done + 1} / {self.total}   you said: {said} — how sure? 1–5 (Backspace to change)")
        self.hint.setText(HINTS.get(mode, "") + "     P pause   drag: window/level   0 reset   Esc close")

    def elapsed(self) -> float:
        return time.perf_counter() - self._t_shown - self._paused_total

    def choose(self, answer: str) -> None:
        if self.paused or self.current is None:
            return
        mode = self.current[0]
        if (mode == "single" and answer in ("real", "synthetic")) or (mode == "2afc" and answer in ("left", "right")):
            self.choice = answer
            self._status()

    def confidence(self, level: int) -> bool:
        """Commit the current answer with this confidence; False when there is nothing to commit or saving failed."""
        if self.paused or self.current is None or self.choice is None:
            return False
        mode, key = self.current
        try:
            self.store.answer(self.reader, mode, key, self.choice, int(level), self.elapsed(), self.note.text().strip() or None)
        except CmrError as exc:  # e.g. the database is locked by another program: the answer stays on screen to retry
            self.messages.append(exc.message)
            self.status.setText(exc.message)
            answered = self.store.answered(self.reader)
            if (mode, key) in answered:  # saved by another session of this reader after all: move on
                self.todo = [t for t in self.todo if t not in answered]
                self.next_task()
            return False
        self.note.clear()
        self.todo.pop(0)
        self.next_task()
        self.setFocus()
        return True

    def toggle_pause(self) -> None:
        if self.current is None:
            return
        self.paused = not self.paused
        if self.paused:
            self._paused_at = time.perf_counter()
        else:
            self._paused_total += time.perf_counter() - self._paused_at
        self.left.redraw()
        self.right.redraw()
        self._status()

    def set_window(self, level: float, width: float) -> None:
        self.level, self.width = float(np.clip(level, -0.5, 1.5)), float(np.clip(width, 0.02, 3.0))
        self.left.redraw()
        self.right.redraw()

    # -- keys ------------------------------------------------------------------------------------
    def keyPressEvent(self, e):  # noqa: N802
        k = e.key()
        if k == Qt.Key_Escape:
            self.close()
        elif k == Qt.Key_P:
            self.toggle_pause()
        elif k == Qt.Key_R:
            self.choose("real")
        elif k == Qt.Key_S:
            self.choose("synthetic")
        elif k == Qt.Key_Left:
            self.choose("left")
        elif k == Qt.Key_Right:
            self.choose("right")
        elif Qt.Key_1 <= k <= Qt.Key_5:
            self.confidence(k - Qt.Key_0)
        elif k == Qt.Key_Backspace:
            self.choice = None
            self._status()
        elif k == Qt.Key_0:
            self.set_window(0.5, 1.0)
        elif e.matches(QKeySequence.Close):
            self.close()
        else:
            super().keyPressEvent(e)

    def showEvent(self, e):  # noqa: N802
        super().showEvent(e)
        self.setFocus()
        if self.current is not None and not self._shown_once:
            self._t_shown = time.perf_counter()  # the first case's clock starts when the reader can see it
            self._shown_once = True

    def closeEvent(self, e):  # noqa: N802
        self.store.close()
        super().closeEvent(e)


def run_reader(study_dir, reader: str, resume: bool = False) -> int:
    """`cmrstudio study read`: open the reading window and run until it is closed; returns answers given."""
    from qtpy.QtWidgets import QApplication

    from cmrstudio.study.design import load_study
    from cmrstudio.study.store import Store

    study = load_study(study_dir)
    store = Store(study)
    app = QApplication.instance() or QApplication([])
    win = ReadingWindow(study, store, reader, resume=resume)
    before = len(win.todo)
    win.showMaximized()  # nothing else on the screen
    win.activateWindow()
    app.exec()
    return before - len(win.todo)
