"""The gallery of kept renders: thumbnails, how each was made, a note and a 1–5 rating.

Everything lives in the project folder (:mod:`cmrstudio.project`) and is written at once,
so closing the studio loses nothing.
"""

from __future__ import annotations

import threading
from pathlib import Path

from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QIcon, QPixmap
from qtpy.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem,
                            QVBoxLayout, QWidget)

from cmrstudio.gui.panels import button, no_wheel
from cmrstudio.gui.studio import Studio

THUMB = 128  # px: the project's thumbnails are drawn at this size


class GalleryPanel(QWidget):
    def __init__(self, studio: Studio):
        super().__init__()
        self.studio = studio
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        h = QHBoxLayout()
        self.project_label = QLabel("")
        self.project_label.setWordWrap(True)
        h.addWidget(self.project_label, 1)
        h.addWidget(button("", "fa5s.folder-open", "Open another project folder", self.open_project))
        h.addWidget(button("", "fa5s.plus", "New project folder", self.new_project))
        lay.addLayout(h)
        self.list = QListWidget()
        self.list.setViewMode(QListWidget.IconMode)
        self.list.setIconSize(QSize(THUMB, THUMB))
        self.list.setGridSize(QSize(THUMB + 16, THUMB + 34))
        self.list.setResizeMode(QListWidget.Adjust)
        self.list.setMovement(QListWidget.Static)
        self.list.setWordWrap(True)
        self.list.setMinimumHeight(THUMB + 44)
        self.list.setToolTip("Double-click a render to use it: its mask on its slice (its scan is opened when another one is open)")
        self.list.currentItemChanged.connect(self._selected)
        self.list.itemDoubleClicked.connect(lambda _it: self.use_render())
        lay.addWidget(self.list, 1)
        self.details = QLabel("")
        self.details.setWordWrap(True)
        self.details.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay.addWidget(self.details)
        f = QFormLayout()
        self.note_edit = QLineEdit()
        self.note_edit.setPlaceholderText("note")
        self.note_edit.editingFinished.connect(self._save_note)
        self.rating_box = QComboBox()
        self.rating_box.addItem("not rated", None)
        for r in range(1, 6):
            self.rating_box.addItem("★" * r, r)
        self.rating_box.activated.connect(self._save_rating)
        f.addRow("Note", self.note_edit)
        f.addRow("Rating", self.rating_box)
        lay.addLayout(f)
        h = QHBoxLayout()
        self.mask_btn = button("Use its mask", "fa5s.draw-polygon", "Put this render's mask on the current slice (undoable)", self.use_mask)
        self.delete_btn = button("Remove", "fa5s.trash-alt", "Remove this render from the project (its files are deleted)", self.remove)
        h.addWidget(self.mask_btn)
        h.addWidget(self.delete_btn)
        lay.addLayout(h)
        h = QHBoxLayout()
        self.format_box = QComboBox()
        for fmt, text in (("nifti", "NIfTI + JSON"), ("nnunet", "nnU-Net v2 dataset"), ("dicom", "DICOM (marked synthetic)")):
            self.format_box.addItem(text, fmt)
        self.min_rating_box = QComboBox()
        self.min_rating_box.addItem("all", None)
        for r in range(1, 6):
            self.min_rating_box.addItem("★" * r + " or more", r)
        self.export_btn = button("Export…", "fa5s.file-export", "Write the kept renders in a format other tools read", self.export)
        self.format_box.setToolTip("Export format")
        self.min_rating_box.setToolTip("Export only renders rated at least this")
        h.addWidget(self.format_box, 2)
        h.addWidget(self.min_rating_box, 1)
        h.addWidget(self.export_btn)
        lay.addLayout(h)
        self.exports: list[Path] = []
        self._broken: set[str] = set()
        self._checked_for = None
        studio.changed.connect(self._changed)
        self.refresh()
        no_wheel(self)

    # -- listing -------------------------------------------------------------------------------
    def current_id(self) -> str | None:
        it = self.list.currentItem()
        return it.data(Qt.UserRole) if it is not None else None

    def refresh(self, select: str | None = None, check: bool = False) -> None:
        """List the kept renders; ``check`` reads every render's files (on opening a project) to mark broken ones."""
        p = self.studio.session.project
        self.list.clear()
        if p is None:
            self.project_label.setText("No project open: kept renders need one.")
            self._selected(None)
            return
        self.project_label.setText(f"Project <b>{p.name}</b> — {len(p.items)} kept · {p.folder}")
        self.project_label.setToolTip(str(p.folder))
        if check or self._checked_for is not p:
            self._broken = {it.id for problem in p.check() for it in p.items if it.id in problem}
            self._checked_for = p
        broken = self._broken
        for it in p.items:
            stars = "★" * (it.rating or 0)
            badge = " ⓟ" if it.derived_from_patient else ""
            w = QListWidgetItem(f"{it.id}{badge} {stars}".strip())
            w.setData(Qt.UserRole, it.id)
            thumb = p.thumbnail_path(it.id)
            if thumb.exists():
                w.setIcon(QIcon(QPixmap(str(thumb))))
            if it.id in broken:
                w.setText(f"{it.id} (broken)")
                w.setToolTip("A file of this render is missing or damaged.")
            else:
                w.setToolTip(f"{it.kind} · {it.model} · {it.vendor} · seed {it.seed} · "
                             + ("in this patient: derived from a patient scan (ⓟ)" if it.derived_from_patient else "fully synthetic"))
            self.list.addItem(w)
            if it.id == select:
                self.list.setCurrentItem(w)
        if select is None and self.list.count():
            self.list.setCurrentRow(self.list.count() - 1)

    def _selected(self, cur, prev=None) -> None:
        p, iid = self.studio.session.project, self.current_id()
        on = p is not None and iid is not None
        for w in (self.note_edit, self.rating_box, self.mask_btn, self.delete_btn):
            w.setEnabled(on)
        self.export_btn.setEnabled(p is not None and bool(p.items))
        if not on:
            self.details.setText("")
            self.note_edit.clear()
            return
        it = p.item(iid)
        how = f"{it.sampler}, {it.steps} steps, guidance {it.guidance}" if (it.steps or 1) > 1 else "one pass"
        how += (" · <b>in this patient</b> (derived from a patient scan: not anonymous)" if it.derived_from_patient
                else " · fully synthetic")
        src = it.source or {}
        secs = f"{it.seconds:.2f} s" if it.seconds is not None else "?"
        self.details.setText(f"<b>{it.id}</b> · {it.kind} <i>{it.model}</i> · vendor {it.vendor} · seed {it.seed}<br>"
                             f"{how} · {secs} · {it.created}<br>from {src.get('case_id', '?')} {src.get('phase') or ''} "
                             f"slice {int(src.get('slice', 0)) + 1 if src.get('slice') is not None else '?'}")
        self.note_edit.setText(it.note or "")
        self.rating_box.setCurrentIndex(self.rating_box.findData(it.rating) if it.rating else 0)

    # -- edits ---------------------------------------------------------------------------------
    def _save_note(self) -> None:
        iid = self.current_id()
        if iid is None or self.studio.session.project is None:
            return
        text = self.note_edit.text().strip()
        if text != (self.studio.session.project.item(iid).note or ""):
            self._update(iid, note=text)

    def _save_rating(self, i: int) -> None:
        iid = self.current_id()
        if iid is not None and self.studio.session.project is not None:
            self._update(iid, rating=self.rating_box.itemData(i))
            cur = self.list.currentItem()
            badge = " ⓟ" if self.studio.session.project.item(iid).derived_from_patient else ""
            cur.setText(f"{iid}{badge} {'★' * (self.rating_box.itemData(i) or 0)}".strip())

    def _update(self, iid: str, **kw) -> None:
        try:
            self.studio.session.project.update(iid, **kw)
        except Exception as exc:
            self.studio.session.say("error", f"{iid} could not be updated: {getattr(exc, 'message', exc)}")

    def remove(self, confirm: bool = True) -> None:
        iid = self.current_id()
        if iid is None:
            return
        if confirm:
            from qtpy.QtWidgets import QMessageBox

            answer = QMessageBox.question(self, "Remove a kept render",
                                          f"Remove {iid} from the project and delete its files? This cannot be undone.")
            if answer != QMessageBox.Yes:
                return
        try:
            self.studio.session.project.remove(iid)
        except Exception as exc:
            self.studio.session.say("error", f"{iid} could not be removed: {getattr(exc, 'message', exc)}")
        self.refresh()

    def use_mask(self) -> bool:
        iid, s = self.current_id(), self.studio
        try:
            res = s.session.project.load(iid)
            if s.session.case is None or res.mask.shape != s.session.case.shape[1:]:
                raise ValueError(f"its mask is {res.mask.shape[0]}×{res.mask.shape[1]}, the open scan's slices are "
                                 f"{s.session.case.shape[1]}×{s.session.case.shape[2]}; open the scan it came from")
        except Exception as exc:
            s.session.say("error", f"The mask of {iid} cannot be used here: {getattr(exc, 'message', exc)}.")
            return False
        s.session.apply_mask(res.mask, s.current_z())
        return True

    def use_render(self) -> bool:
        """Double-click: this render's mask on its own slice of its own scan (opened first when another one is open)."""
        iid, s = self.current_id(), self.studio.session
        if iid is None or s.project is None:
            return False
        it = s.project.item(iid)
        src = it.source or {}
        same = s.case is not None and src.get("case_id") == s.case.case_id and src.get("phase") == s.case.phase
        if not same:
            path = src.get("path")
            if path and path != "built-in sample":
                from pathlib import Path as _P

                if not _P(path).exists():
                    s.say("error", f"{iid} came from {path}, which is no longer there; open its scan to use its mask.")
                    return False
                if not s.open_path(path, case=src.get("case_id"), phase=src.get("phase")):
                    return False
            elif path == "built-in sample":
                if not s.open_path(None, phase=src.get("phase")):
                    return False
            else:
                s.say("error", f"{iid} does not say which scan it came from; open that scan to use its mask.")
                return False
        z = src.get("slice")
        if z is not None and s.case is not None and 0 <= int(z) < s.case.shape[0]:
            s.set_slice(int(z))
        ok = self.use_mask()
        if ok:
            s.say("info", f"Using {iid}: its mask is on slice {s.z + 1} (undo restores the previous one).")
        return ok

    # -- export --------------------------------------------------------------------------------
    def export(self, parent: Path | None = None) -> threading.Thread | None:
        """Export the gallery (as `cmrstudio export` does) into a new folder under ``parent``, on a worker thread."""
        from datetime import datetime

        s, p = self.studio, self.studio.session.project
        if p is None or not p.items:
            s.session.say("warning", "The gallery is empty: keep a render first.")
            return None
        if parent is None:
            d = QFileDialog.getExistingDirectory(self, "Export the gallery into which folder?", s.session.settings.last_folder or str(Path.home()))
            if not d:
                return None
            parent = Path(d)
        fmt, min_rating = self.format_box.currentData(), self.min_rating_box.currentData()
        import re

        safe = re.sub(r"[^A-Za-z0-9_-]+", "_", p.name).strip("_") or "gallery"  # a folder name, whatever the project is called
        dest = Path(parent) / f"{safe}-{fmt}-{datetime.now():%Y%m%d-%H%M%S}"
        self.export_btn.setEnabled(False)
        s.session.say("info", f"Exporting the gallery as {fmt} to {dest}…")

        def job():
            from cmrstudio.export import export

            try:
                rep = export(p.folder, dest, fmt, min_rating=min_rating)
                skipped = f"; skipped: {' '.join(rep.skipped)}" if rep.skipped else ""
                s.message.emit("warning" if rep.skipped else "info",
                               f"Exported {len(rep.exported)} render{'s' if len(rep.exported) != 1 else ''} as {fmt} to {dest}{skipped}")
                self.exports.append(dest)
            except Exception as exc:
                s.message.emit("error", f"The export to {dest} failed: {getattr(exc, 'message', exc)}")
            finally:
                s.changed.emit("exported")

        t = threading.Thread(target=job, name="cmrstudio-export", daemon=True)
        t.start()
        return t

    # -- projects ------------------------------------------------------------------------------
    def _pick_folder(self, title: str) -> Path | None:
        start = self.studio.session.settings.last_project or self.studio.session.settings.last_folder or str(Path.home())
        d = QFileDialog.getExistingDirectory(self, title, start)
        return Path(d) if d else None

    def open_project(self, folder: Path | None = None) -> bool:
        return self._switch_project("open", folder or self._pick_folder("Open a cmrstudio project folder"))

    def new_project(self, folder: Path | None = None) -> bool:
        return self._switch_project("create", folder or self._pick_folder("Choose an empty folder for the new project"))

    def _switch_project(self, how: str, folder: Path | None) -> bool:
        from cmrstudio.project import Project

        if folder is None:
            return False
        try:
            p = getattr(Project, how)(folder)
        except Exception as exc:
            self.studio.session.say("error", getattr(exc, "message", str(exc)))
            return False
        self.studio.session.set_project(p)
        return True

    def _changed(self, what: str) -> None:
        if what == "exported":
            self.export_btn.setEnabled(True)
        if what in ("gallery", "project"):
            p = self.studio.session.project
            self.refresh(select=p.items[-1].id if (what == "gallery" and p and p.items) else None)
