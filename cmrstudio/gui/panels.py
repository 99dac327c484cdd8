"""The studio's dock widgets: painting (scan, start masks, quick edits, save, anatomy) and synthesis (live + HQ).

Each panel observes a :class:`~cmrstudio.gui.studio.Studio` (its ``changed`` signal) and calls
its actions; nothing here renders or reads files itself. The painting tools themselves (labels,
brush, eraser, fill, brush size, undo) are on the tool strip over the images (:mod:`cmrstudio.gui.toolbar`).

Combo boxes, spin boxes and sliders in the docks ignore the mouse wheel unless they have the focus
(:func:`no_wheel`): the wheel scrolls the panel instead of changing a value by accident.
"""

from __future__ import annotations

import qtawesome as qta
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtGui import QColor, QIcon, QPainter, QPixmap
from qtpy.QtWidgets import (QAbstractScrollArea, QAbstractSpinBox, QApplication, QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout,
                            QGridLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton, QSizePolicy, QSlider,
                            QSpinBox, QVBoxLayout, QWidget)

from cmrstudio.anatomy import COLOURS, LV, MYO, RV, VENDORS
from cmrstudio.gui.studio import START_KINDS, Studio
from cmrstudio.session import MODES, base_id
from cmrstudio.settings import MARGIN_RANGE_MM, UNCHANGED_MARGIN_MM

STRUCTURES = {LV: "LV blood pool", MYO: "LV myocardium", RV: "RV blood pool"}
LEVEL_COLOURS = {"info": "#9fd0a0", "warning": "#e8c16a", "error": "#ff8a80"}


def icon(name: str, color: str = "#dddddd") -> QIcon:
    return qta.icon(name, color=color)


def swatch(label: int, size: int = 14) -> QIcon:
    pm = QPixmap(size, size)
    r, g, b = (int(255 * c) for c in COLOURS[label][:3])
    pm.fill(QColor(r, g, b))
    return QIcon(pm)


def button(text: str, icon_name: str | None = None, tip: str | None = None, slot=None) -> QPushButton:
    b = QPushButton(text)
    if icon_name:
        b.setIcon(icon(icon_name))
    if tip:
        b.setToolTip(tip)
    if slot is not None:
        b.clicked.connect(slot)
    return b


class MessageBar(QLabel):
    """The latest message from the studio on one line, coloured by level; the whole text in its tooltip.

    It never wraps or grows (a long sentence is elided, so it cannot push buttons about), and a message
    goes stale: info after 8 s, a warning after 20 s, an error after 45 s or at the next message.
    """

    LIFETIME_S = {"info": 8.0, "warning": 20.0, "error": 45.0}

    def __init__(self, studio: Studio):
        super().__init__("")
        self.setWordWrap(False)
        self.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)
        self.setMinimumWidth(40)
        self.level = "info"
        self._clear = QTimer(self)
        self._clear.setSingleShot(True)
        self._clear.timeout.connect(self.clear_message)
        studio.message.connect(self.show_message)
        # what was said before the panel existed (a file that would not open at start-up): errors first
        earlier = [m for m in studio.session.messages if m[0] == "error"] or [m for m in studio.session.messages if m[0] == "warning"]
        if earlier:
            self.show_message(*earlier[-1])

    def show_message(self, level: str, text: str) -> None:
        self.level = level
        self.setStyleSheet(f"color: {LEVEL_COLOURS.get(level, '#dddddd')};")
        self.setText(text)
        self.setToolTip(text)
        self._clear.start(int(1000 * self.LIFETIME_S.get(level, 8.0)))

    def clear_message(self) -> None:
        self.setText("")
        self.setToolTip("")

    def paintEvent(self, event):  # noqa: N802 (Qt API): one line, elided at the right
        p = QPainter(self)
        p.setPen(self.palette().color(self.foregroundRole()))
        r = self.contentsRect()
        p.drawText(r, int(Qt.AlignVCenter | Qt.AlignLeft), self.fontMetrics().elidedText(self.text(), Qt.ElideRight, r.width()))
        p.end()


class _NoWheel(QObject):
    """Wheel events on an unfocused value widget go to the panel (it scrolls) instead of changing the value."""

    def eventFilter(self, obj, event):  # noqa: N802 (Qt API)
        if event.type() == QEvent.Wheel and not obj.hasFocus():
            w = obj.parentWidget()
            while w is not None and not isinstance(w, QAbstractScrollArea):
                w = w.parentWidget()
            if w is not None:
                QApplication.sendEvent(w.verticalScrollBar(), event)
            return True
        return False


_NO_WHEEL = None


def no_wheel(root: QWidget) -> None:
    """Combo boxes, spin boxes and sliders under ``root`` take the wheel only once clicked (focused)."""
    global _NO_WHEEL
    if _NO_WHEEL is None:
        _NO_WHEEL = _NoWheel()
    for kind in (QComboBox, QAbstractSpinBox, QSlider):
        for w in root.findChildren(kind):
            w.setFocusPolicy(Qt.StrongFocus)
            w.installEventFilter(_NO_WHEEL)
            if isinstance(w, QComboBox):  # compact docks: a combo box need not be as wide as its longest entry
                w.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
                w.setMinimumContentsLength(6)


def _slider(lo: int, hi: int, value: int) -> QSlider:
    s = QSlider(Qt.Horizontal)
    s.setRange(lo, hi)
    s.setValue(value)
    return s


class PaintPanel(QWidget):
    """Scan and phase pickers, the label legend and tools, start masks and quick edits, anatomy checks."""

    TEMPLATE = {  # slider key: (label, lo, hi, default, unit)
        "lv_diameter_mm": ("LV diameter", 20, 90, 50, "mm"),
        "wall_mm": ("Wall thickness", 3, 25, 9, "mm"),
        "rv_width_mm": ("RV size", 10, 60, 35, "mm"),
        "rv_angle_deg": ("RV position", 90, 270, 180, "°"),
    }

    def __init__(self, studio: Studio):
        super().__init__()
        self.studio = studio
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)

        # scan: case and phase
        g = QGroupBox("Scan")
        f = QFormLayout(g)
        self.case_box = QComboBox()
        self.case_box.activated.connect(lambda i: studio.session.open_case_id(self.case_box.itemText(i)))
        self.phase_box = QComboBox()
        self.phase_box.activated.connect(lambda i: studio.session.open_ref(self.phase_box.itemData(i)))
        h = QHBoxLayout()
        h.addWidget(self.phase_box, 1)
        self.phase_btn = button("ED/ES", "fa5s.heartbeat", "Switch between ED and ES (T); this phase's edits are kept",
                                lambda: studio.toggle_phase())
        h.addWidget(self.phase_btn)
        f.addRow("Case", self.case_box)
        f.addRow("Phase", h)
        lay.addWidget(g)

        # start mask
        g = QGroupBox("Start the mask from")
        v = QVBoxLayout(g)
        row = QHBoxLayout()
        self.start_box = QComboBox()
        for k, text in START_KINDS.items():
            self.start_box.addItem(text, k)
        self.scope_box = QComboBox()
        self.scope_box.addItem("this slice", "slice")
        self.scope_box.addItem("all slices", "volume")
        self.start_btn = button("Apply", "fa5s.draw-polygon", "Replace the mask (undo restores it)", self.apply_start)
        row.addWidget(self.start_box, 1)
        v.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(self.scope_box, 1)
        row.addWidget(self.start_btn)
        v.addLayout(row)
        tf = QFormLayout()
        self.template_sliders: dict[str, QSlider] = {}
        self.template_values: dict[str, QLabel] = {}
        for key, (text, lo, hi, val, unit) in self.TEMPLATE.items():
            s = _slider(lo, hi, val)
            lab = QLabel(f"{val} {unit}")
            s.valueChanged.connect(lambda x, lab=lab, unit=unit: lab.setText(f"{x} {unit}"))
            s.sliderPressed.connect(self._template_drag_start)
            s.sliderReleased.connect(self._template_drag_end)
            s.valueChanged.connect(self._template_changed)
            h = QHBoxLayout()
            h.addWidget(s, 1)
            h.addWidget(lab)
            tf.addRow(text, h)
            self.template_sliders[key] = s
            self.template_values[key] = lab
        self.template_box = QWidget()
        self.template_box.setLayout(tf)
        v.addWidget(self.template_box)
        self.start_box.currentIndexChanged.connect(self._start_kind_changed)
        self._start_kind_changed()
        lay.addWidget(g)

        # quick edits
        g = QGroupBox("Quick edits")
        v = QGridLayout(g)
        self.struct_box = QComboBox()
        for lab, name in STRUCTURES.items():
            self.struct_box.addItem(swatch(lab), name, lab)
        self.mm_box = QDoubleSpinBox()
        self.mm_box.setRange(0.5, 20.0)
        self.mm_box.setSingleStep(0.5)
        self.mm_box.setValue(3.0)
        self.mm_box.setSuffix(" mm")
        self.edit_scope = QComboBox()
        self.edit_scope.addItem("this slice", "slice")
        self.edit_scope.addItem("all slices", "volume")
        v.addWidget(self.struct_box, 0, 0)
        v.addWidget(self.mm_box, 0, 1)
        v.addWidget(self.edit_scope, 1, 0)
        v.addWidget(button("Grow", "fa5s.expand-arrows-alt", "Dilate the structure (LV: the wall moves with it; MYO: thicker wall)",
                           lambda: self.grow(+1)), 2, 0)
        v.addWidget(button("Shrink", "fa5s.compress-arrows-alt", "Erode the structure", lambda: self.grow(-1)), 2, 1)
        v.addWidget(button("Copy ↑ slice", "fa5s.copy", "Copy the previous slice's mask here", lambda: studio.session.copy_from_neighbour(-1)), 3, 0)
        v.addWidget(button("Copy ↓ slice", "fa5s.copy", "Copy the next slice's mask here", lambda: studio.session.copy_from_neighbour(+1)), 3, 1)
        self.interp_btn = button("Interpolate", "fa5s.layer-group", "Fill the slices between the edited ones (I); undo restores them",
                                 lambda: studio.interpolate())
        v.addWidget(self.interp_btn, 1, 1)
        lay.addWidget(g)

        # save
        g = QGroupBox("Mask file")
        v = QGridLayout(g)
        self.save_state = QLabel("")
        self.save_state.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.save_state.setWordWrap(True)
        self.save_btn = button("Save", "fa5s.save", "Save the mask (Ctrl+S): NIfTI in the scan's geometry, canonical labels, JSON sidecar",
                               self.save)
        self.save_as_btn = button("Save as…", "fa5s.file-export", "Save the mask to a new file (Ctrl+Shift+S)", lambda: self.save(ask=True))
        v.addWidget(self.save_state, 0, 0, 1, 2)
        v.addWidget(self.save_btn, 1, 0)
        v.addWidget(self.save_as_btn, 1, 1)
        lay.addWidget(g)

        # anatomy
        g = QGroupBox("Anatomy (this slice)")
        v = QVBoxLayout(g)
        self.sizes_label = QLabel("")
        self.anatomy_label = QLabel("")
        self.anatomy_label.setWordWrap(True)
        v.addWidget(self.sizes_label)
        v.addWidget(self.anatomy_label)
        lay.addWidget(g)
        lay.addStretch(1)

        self._drag_timer = QTimer(self)  # while a template slider is dragged: one redraw per event-loop turn at most
        self._drag_timer.setSingleShot(True)
        self._drag_timer.setInterval(15)
        self._drag_timer.timeout.connect(self._template_moved)
        self._dragging = False
        studio.changed.connect(self._changed)
        self._changed("case")
        no_wheel(self)

    # -- actions -------------------------------------------------------------------------------
    def save(self, ask: bool = False):
        """Save mask (to where it was saved before, else ask) or Save mask as… (always ask)."""
        from qtpy.QtWidgets import QFileDialog

        sess = self.studio.session
        if sess.case is None:
            return None
        path = None
        if ask or sess.saved_path is None:
            f, _ = QFileDialog.getSaveFileName(self, "Save the mask as NIfTI", str(sess.suggest_mask_path()), "NIfTI (*.nii.gz *.nii)")
            if not f:
                return None
            path = f
        return sess.save_mask(path)

    def template_params(self) -> dict:
        return {k: float(s.value()) for k, s in self.template_sliders.items()}

    def apply_start(self) -> bool:
        kind = self.start_box.currentData()
        params = self.template_params() if kind == "template" else {}
        return self.studio.session.start_mask(kind, self.scope_box.currentData(), **params)

    def _start_kind_changed(self, *_):
        self.template_box.setVisible(self.start_box.currentData() == "template")

    def _live_template(self) -> bool:
        return self.start_box.currentData() == "template" and self.scope_box.currentData() == "slice"

    def _template_moved(self) -> None:
        # a live template: moving a slider redraws this slice's template (undoable)
        if self._live_template():
            self.apply_start()

    def _template_changed(self, _v) -> None:
        if self._dragging:
            self._drag_timer.start()  # the slice follows the slider while it is dragged
        else:
            self._template_moved()  # keyboard, wheel (focused) or programmatic change: one undo step each

    def _template_drag_start(self) -> None:
        self._dragging = True
        layer = self.studio.mask_layer
        if self._live_template() and layer is not None and hasattr(layer, "_begin_stroke"):
            layer._begin_stroke()  # the whole drag is one undo step, as a brush stroke is

    def _template_drag_end(self) -> None:
        self._drag_timer.stop()
        self._template_moved()
        self._dragging = False
        layer = self.studio.mask_layer
        if layer is not None and hasattr(layer, "_commit_stroke") and getattr(layer, "_block_history", False):
            layer._commit_stroke()

    def grow(self, sign: int) -> bool:
        return self.studio.session.change_structure(self.struct_box.currentData(), sign * self.mm_box.value(), self.edit_scope.currentData())

    # -- observing -----------------------------------------------------------------------------
    def _changed(self, what: str) -> None:
        s = self.studio
        if what == "case" and s.session.case is not None:
            self.case_box.clear()
            ids = s.session.case_ids() or [s.session.case.case_id]
            self.case_box.addItems(ids)
            self.case_box.setCurrentText(base_id(s.session.opened.refs[s.session.opened.index]) if s.session.opened.index >= 0 else s.session.case.case_id)
            self.case_box.setEnabled(len(ids) > 1)
            self.phase_box.clear()
            for ph, idx in s.session.phases():
                self.phase_box.addItem(ph, idx)
            self.phase_box.setCurrentText(s.session.case.phase or "-")
            self.phase_box.setEnabled(self.phase_box.count() > 1)
            self.phase_btn.setEnabled(self.phase_box.count() > 1)
        if what in ("case", "mask", "slice", "anatomy"):
            self._anatomy()
        if what in ("case", "edits", "mask"):
            sess = s.session
            where = sess.saved_path.name if sess.saved_path else "not saved to a file yet"
            state = "unsaved edits · " if sess.dirty else ""
            auto = " (autosaved in the project)" if sess.dirty and sess.project is not None else ""
            self.save_state.setText(f"{state}{where}{auto}")
            self.save_state.setToolTip(str(sess.saved_path) if sess.saved_path else "Save writes NIfTI + a JSON sidecar")
            self.save_state.setStyleSheet(f"color: {LEVEL_COLOURS['warning'] if sess.dirty else LEVEL_COLOURS['info']};")

    def _anatomy(self) -> None:
        s = self.studio
        if s.session.case is None:
            return
        sl = s.mask_layer.data[s.current_z()]
        self.sizes_label.setText(s.sizes_text())
        if s.session.findings:
            self.anatomy_label.setStyleSheet(f"color: {LEVEL_COLOURS['warning']};")
            self.anatomy_label.setText("\n".join(f"• {f.message}" for f in s.session.findings[:4]))
        else:
            self.anatomy_label.setStyleSheet(f"color: {LEVEL_COLOURS['info']};")
            self.anatomy_label.setText("No anatomy warnings." if sl.any() else "")


class SynthesisPanel(QWidget):
    """Live SPADE rendering controls with a frame-time read-out; Render HQ with progress and cancel; Keep."""

    def __init__(self, studio: Studio):
        from cmrstudio.models.registry import hq_model_name, hq_models, live_models

        super().__init__()
        self.studio = studio
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        self.message = MessageBar(studio)
        lay.addWidget(self.message)

        g = QGroupBox("Live synthesis")
        f = QFormLayout(g)
        self.model_box = QComboBox()
        for m in live_models():  # every one-pass generator: SPADE and plugins' (cmrstudio.api)
            self.model_box.addItem(m.name, m.name)
        self.model_box.activated.connect(self._model_picked)
        f.addRow("Model", self.model_box)
        self.mode_box = QComboBox()
        for key, text in MODES.items():
            self.mode_box.addItem(text, key)
        self.mode_box.setToolTip("In this patient: the painted heart is rendered into the scan's own slice, its surroundings kept "
                                 "(derived from a patient scan). Fully synthetic: no real pixel, the model makes the whole slice.")
        self.mode_box.setCurrentIndex(self.mode_box.findData(studio.session.mode))
        self.mode_box.activated.connect(self._mode_picked)
        f.addRow("Render", self.mode_box)
        self.margin_box = QDoubleSpinBox()
        self.margin_box.setRange(*MARGIN_RANGE_MM)
        self.margin_box.setSingleStep(1.0)
        self.margin_box.setDecimals(2)
        self.margin_box.setSuffix(" mm")
        self.margin_box.setKeyboardTracking(False)  # one render when the number is done, not one per keystroke
        self.margin_box.setValue(studio.session.margin_mm)
        self.margin_box.setToolTip("How far around what you painted differently from the scan's own labels the model repaints "
                                   f"(around an outline you left as it was: {UNCHANGED_MARGIN_MM:g} mm, or this margin when smaller); "
                                   "beyond it the slice stays the scan's (in this patient) or the kept surroundings (fully "
                                   "synthetic edits). Smaller: more of the real slice, less room for a heart of another shape.")
        self.margin_box.valueChanged.connect(self._margin_picked)
        f.addRow("Repaint margin", self.margin_box)
        self.vendor_box = QComboBox()
        self.vendor_box.addItems(list(VENDORS))
        self.vendor_box.setCurrentText(studio.session.vendor)
        self.vendor_box.activated.connect(lambda i: studio.session.set_vendor(self.vendor_box.itemText(i)))
        f.addRow("Vendor style", self.vendor_box)
        h = QHBoxLayout()
        self.seed_box = QSpinBox()
        self.seed_box.setRange(0, 2**31 - 2)
        self.seed_box.setValue(studio.session.seed)
        self.seed_box.editingFinished.connect(lambda: studio.session.set_seed(self.seed_box.value()) if self.seed_box.value() != studio.session.seed else None)
        self.new_seed = button("New seed", "fa5s.dice", "Another random seed: another plausible image for the same mask", lambda: studio.session.set_seed())
        h.addWidget(self.seed_box, 1)
        h.addWidget(self.new_seed)
        f.addRow("Seed", h)
        h = QHBoxLayout()
        self.live_check = QCheckBox("Live")
        self.live_check.setChecked(studio.session.live_on)
        self.live_check.toggled.connect(studio.session.set_live)
        self.contour_check = QCheckBox("Mask contours")
        self.contour_check.setChecked(studio.contours_on)
        self.contour_check.toggled.connect(studio.set_contours)
        h.addWidget(self.live_check)
        h.addWidget(self.contour_check)
        f.addRow("", h)
        h = QHBoxLayout()
        self.where_label = QLabel("this machine")
        self.where_label.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.where_label.setToolTip("Where live and HQ frames are rendered: this machine, or a cmrstudio serve server "
                                    "(with the round trip, mask out to frame back). Settings ▸ Backend changes it.")
        self.backend_btn = button("Backend…", None, "Render on this machine or on a cmrstudio serve server",
                                  lambda: studio.backend_dialog())
        h.addWidget(self.where_label, 1)
        h.addWidget(self.backend_btn)
        f.addRow("Rendered on", h)
        self.readout = QLabel("–")
        self.readout.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.readout.setToolTip("From a brush dab to the synthetic slice on screen (median of the last 30), "
                                "the model's own time, and frames rendered / dropped (latest-wins).")
        f.addRow("Frame time", self.readout)
        self.faith_label = QLabel("–")
        self.faith_label.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.faith_label.setToolTip("Faithfulness of the live render: the bundled segmenter (seg-cmr) reads the render, and its Dice "
                                    "against the painted mask says how much of the painted anatomy the image really shows "
                                    "(1 = all of it). Computed off the GUI thread, a few times a second.")
        f.addRow("Faithful", self.faith_label)
        lay.addWidget(g)

        g = QGroupBox("Render HQ (on demand)")
        f = QFormLayout(g)
        self.hq_box = QComboBox()
        hq = hq_models()
        for m in hq:
            self.hq_box.addItem(f"{m.name} ({m.kind})", m.name)
        # the last one used ("flow" too), else the shipped default
        i = self.hq_box.findData(hq_model_name(studio.session.settings.hq_model) or "")
        if i >= 0:
            self.hq_box.setCurrentIndex(i)
        self.hq_box.currentIndexChanged.connect(self._hq_model_changed)
        f.addRow("Model", self.hq_box)
        self.steps_box = QSpinBox()
        self.steps_box.setRange(1, 1000)
        self.guidance_box = QDoubleSpinBox()
        self.guidance_box.setRange(0.0, 10.0)
        self.guidance_box.setSingleStep(0.25)
        f.addRow("Steps", self.steps_box)
        f.addRow("Guidance", self.guidance_box)
        h = QHBoxLayout()
        self.hq_btn = button("Render HQ", "fa5s.magic", "Render this slice with the diffusion or flow model (H)", self.render_hq)
        self.cancel_btn = button("Cancel", "fa5s.stop", "Stop the HQ render (a model still loading, or before its next step)",
                                 studio.session.cancel_hq)
        self.cancel_btn.setEnabled(False)
        h.addWidget(self.hq_btn, 1)
        h.addWidget(self.cancel_btn)
        f.addRow(h)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("no HQ render yet")
        f.addRow(self.progress)
        self.hq_note = QLabel("")
        self.hq_note.setWordWrap(True)
        f.addRow(self.hq_note)
        if not hq:
            self.hq_btn.setEnabled(False)
            self.hq_note.setText("No diffusion or flow model is installed; train one with `cmrstudio train diffusion`.")
        lay.addWidget(g)

        g = QGroupBox("Keep")
        f = QFormLayout(g)
        self.note_edit = QLineEdit()
        self.note_edit.setPlaceholderText("a note for the gallery (optional)")
        self.rating_box = QComboBox()
        self.rating_box.addItem("not rated", None)
        for r in range(1, 6):
            self.rating_box.addItem("★" * r, r)
        f.addRow("Note", self.note_edit)
        f.addRow("Rating", self.rating_box)
        h = QHBoxLayout()
        self.keep_live_btn = button("Keep live", "fa5s.bookmark", "Keep this slice's live render in the project's gallery (K)",
                                    lambda: self.keep("live"))
        self.keep_hq_btn = button("Keep HQ", "fa5s.star", "Keep this slice's HQ render in the project's gallery", lambda: self.keep("hq"))
        h.addWidget(self.keep_live_btn)
        h.addWidget(self.keep_hq_btn)
        f.addRow(h)
        lay.addWidget(g)
        lay.addStretch(1)

        self._hq_model_changed()
        studio.changed.connect(self._changed)
        self._changed("live_model")
        self._timer = QTimer(self)
        self._timer.timeout.connect(self._tick)
        self._timer.start(250)
        no_wheel(self)

    def _model_picked(self, i: int) -> None:
        name = self.model_box.itemData(i)
        if self.studio.session.renderer is None or name != self.studio.session.renderer.name:
            if not self.studio.session.set_live_model(name):
                self._changed("live_model")  # back to the model still in use

    def _margin_picked(self, mm: float) -> None:
        if abs(mm - self.studio.session.margin_mm) > 1e-9 and not self.studio.session.set_margin(mm):
            self.margin_box.setValue(self.studio.session.margin_mm)

    def _mode_picked(self, i: int) -> None:
        if not self.studio.session.set_mode(self.mode_box.itemData(i)):
            self.mode_box.setCurrentIndex(self.mode_box.findData(self.studio.session.mode))

    def _hq_model_changed(self, *_):
        name = self.hq_box.currentData()
        if not name:
            return
        from cmrstudio.models.registry import get_model

        try:
            info = get_model(name, kind=None)
        except Exception as exc:
            self.hq_note.setText(str(getattr(exc, "message", exc)))
            return
        smp = info.card.get("sampling", {})
        if "steps" not in smp or "guidance" not in smp:  # the sampler's defaults (imports torch)
            from cmrstudio.models.sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS

            smp = {"steps": DEFAULT_STEPS[info.kind], "guidance": DEFAULT_GUIDANCE, **smp}
        self.steps_box.setValue(int(smp["steps"]))
        self.guidance_box.setValue(float(smp["guidance"]))
        proc = info.card.get("process", {})
        what = {"ddim": "DDIM", "euler": "rectified flow (Euler)", "heun": "rectified flow (Heun)"}.get(proc.get("sampler"), info.kind)
        self.hq_note.setText(f"{what}: more steps, finer and slower; `cmrstudio bench hq` times this machine.")

    def render_hq(self) -> int | None:
        name = self.hq_box.currentData()
        if not name:
            return None
        jid = self.studio.session.render_hq(name, self.steps_box.value(), self.guidance_box.value(), background_load=True)
        if jid is not None:
            self.studio.session.settings.hq_model = name
            self.studio.session.save_settings()
            self._busy(f"loading {name}…" if jid < 0 else f"step 1 of {self.steps_box.value()}…")
        return jid

    def _busy(self, text: str) -> None:
        """A moving bar until the first step is done (loading the model, the first step): the render is under way."""
        self.progress.setRange(0, 0)
        self.progress.setFormat(text)
        self.cancel_btn.setEnabled(True)

    def keep(self, which: str):
        item = self.studio.session.keep(which, note=self.note_edit.text().strip(), rating=self.rating_box.currentData())
        if item is not None:
            self.note_edit.clear()
            self.rating_box.setCurrentIndex(0)
        return item

    def _changed(self, what: str) -> None:
        s = self.studio
        if what == "margin" and abs(self.margin_box.value() - s.session.margin_mm) > 1e-9:
            self.margin_box.blockSignals(True)
            self.margin_box.setValue(s.session.margin_mm)
            self.margin_box.blockSignals(False)
        if what in ("mode", "case"):
            self.mode_box.setCurrentIndex(self.mode_box.findData(s.session.mode))
            self.mode_box.setEnabled(s.session.case is None or s.session.case.image is not None)
            self.vendor_box.setCurrentText(s.session.vendor)
        if what == "live_model" and s.session.renderer is not None:
            i = self.model_box.findData(s.session.renderer.name)
            if i < 0:
                self.model_box.addItem(s.session.renderer.name, s.session.renderer.name)
                i = self.model_box.count() - 1
            self.model_box.setCurrentIndex(i)
        elif what == "seed":
            self.seed_box.setValue(s.session.seed)
        elif what == "vendor":
            self.vendor_box.setCurrentText(s.session.vendor)
        elif what == "render_hq":
            self.render_hq()
        elif what == "tool":
            if self.contour_check.isChecked() != s.contours_on:
                self.contour_check.setChecked(s.contours_on)
        elif what == "faith":
            f = s.session.faith
            if f is None or f.get("mean") is None:
                self.faith_label.setText("– (no heart painted)" if f is not None and not f.get("error") else "–")
                self.faith_label.setToolTip(f.get("error", "") if f else self.faith_label.toolTip())
            else:
                d = f["dice"]
                per = ", ".join(f"{k} {d[k]:.2f}" for k in ("LV", "MYO", "RV") if d.get(k) is not None)
                self.faith_label.setText(f"Dice {f['mean']:.2f} ({per})")
        elif what == "hq_loading":
            if s.session.hq_loading:
                self._busy(f"loading {s.session.hq_loading}…")
            elif s.session.hq_job is None or s.session.hq_job.finished:
                self._changed("hq")
        elif what == "hq":
            job = s.session.hq_job
            if s.session.hq_loading:
                return
            if job is not None and not job.finished and s.session.hq_step == 0:
                self._busy(f"step 1 of {job.steps}…")
                self.keep_hq_btn.setEnabled(s.current_z() in s.session.hq_results)
                return
            if job is None:
                self.progress.setRange(0, 1)
                self.progress.setValue(0)
                self.progress.setFormat("no HQ render yet")
                self.cancel_btn.setEnabled(False)
                self.keep_hq_btn.setEnabled(s.current_z() in s.session.hq_results)
                return
            self.progress.setFormat("%v / %m steps")
            self.progress.setRange(0, job.steps)
            self.progress.setValue(s.session.hq_step)
            self.cancel_btn.setEnabled(not job.finished)
            self.keep_hq_btn.setEnabled(s.current_z() in s.session.hq_results)
        elif what in ("slice", "case"):
            self.keep_hq_btn.setEnabled(s.current_z() in s.session.hq_results)
        elif what == "backend":
            self.where_label.setText(self.where_text())

    def where_text(self) -> str:
        s = self.studio.session
        line = s.backend_line()
        return line[3:] if line.startswith("on ") else (line or "this machine")

    def _tick(self) -> None:
        self.where_label.setText(self.where_text())
        st = self.studio.frame_stats()
        if not self.studio.session.live_on:
            self.readout.setText("live is off")
            return
        if st["frame_p50_ms"] is None:
            self.readout.setText("–")
            return
        self.readout.setText(f"{st['frame_p50_ms']:.0f} ms (model {st['render_p50_ms']:.0f} ms) · {st['rendered']} frames, "
                             f"{st['dropped']} skipped")

