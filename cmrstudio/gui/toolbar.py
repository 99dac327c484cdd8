"""The studio's tool strip: the painting tools and the view controls in one row above the images.

Labels (1 LV, 2 MYO, 3 RV, the active one checked), brush / eraser / fill, brush size, preserve
labels, undo / redo, interpolate, ED/ES, window/level presets and sync, contours, Render HQ, Keep
and the images-only layout. Every button has a qtawesome icon and a tooltip with its key. It stays
visible in the images-only layout, so painting never needs a dock.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHBoxLayout, QLabel, QMenu, QSpinBox, QToolButton, QWidget

from cmrstudio.anatomy import LV, MYO, RV
from cmrstudio.gui.keys import shortcut
from cmrstudio.gui.panels import STRUCTURES, icon, swatch
from cmrstudio.gui.studio import Studio
from cmrstudio.gui.views import PRESETS


def tool(text: str, icon_name: str | None, tip: str, slot=None, checkable: bool = False, show_text: bool = False) -> QToolButton:
    b = QToolButton()
    b.setText(text)
    if icon_name:
        b.setIcon(icon_name if not isinstance(icon_name, str) else icon(icon_name))
    b.setToolTip(tip)
    b.setCheckable(checkable)
    b.setAutoRaise(True)
    b.setToolButtonStyle(Qt.ToolButtonTextBesideIcon if show_text else Qt.ToolButtonIconOnly)
    if slot is not None:
        b.clicked.connect(slot)
    return b


def _tip(what: str, method: str, *args) -> str:
    key = shortcut(method, *args)
    return f"{what} ({key})" if key else what


class ToolStrip(QWidget):
    """One row of tools over the images; it follows the mask layer (label, tool, brush, preserve)."""

    def __init__(self, studio: Studio, images_only=None):
        super().__init__()
        self.studio = studio
        lay = QHBoxLayout(self)
        lay.setContentsMargins(4, 2, 4, 2)
        lay.setSpacing(2)
        self.label_buttons: dict[int, QToolButton] = {}
        for lab in (LV, MYO, RV):
            b = tool(f"{lab} {STRUCTURES[lab].replace(' blood pool', '').replace('LV myocardium', 'MYO')}", swatch(lab, 16),
                     _tip(f"Paint label {lab}: {STRUCTURES[lab]}", "pick_label", lab), lambda _=False, lab=lab: studio.pick_label(lab),
                     checkable=True, show_text=True)
            self.label_buttons[lab] = b
            lay.addWidget(b)
        lay.addSpacing(6)
        self.paint_btn = tool("", "fa5s.paint-brush", _tip("Brush", "set_tool", "paint"), lambda: studio.set_tool("paint"), True)
        self.erase_btn = tool("", "fa5s.eraser", _tip("Eraser", "set_tool", "erase"), lambda: studio.set_tool("erase"), True)
        self.fill_btn = tool("", "fa5s.fill-drip", _tip("Fill", "set_tool", "fill"), lambda: studio.set_tool("fill"), True)
        for b in (self.paint_btn, self.erase_btn, self.fill_btn):
            lay.addWidget(b)
        self.brush = QSpinBox()
        self.brush.setRange(1, 80)
        self.brush.setSuffix(" px")
        self.brush.setToolTip("Brush size in scan pixels ([ smaller, ] bigger); the circle on the canvas shows it")
        self.brush.setFocusPolicy(Qt.StrongFocus)
        self.brush.valueChanged.connect(self._brush_changed)
        lay.addWidget(self.brush)
        self.preserve = tool("", "fa5s.lock", _tip("Preserve labels: paint only over background, never over painted anatomy",
                                                   "toggle_preserve"), lambda: studio.toggle_preserve(), True)
        lay.addWidget(self.preserve)
        lay.addSpacing(6)
        self.undo_btn = tool("", "fa5s.undo", "Undo (Ctrl+Z): strokes, templates, quick edits, interpolation", studio.undo)
        self.redo_btn = tool("", "fa5s.redo", "Redo (Ctrl+Shift+Z)", studio.redo)
        self.interp_btn = tool("", "fa5s.layer-group", _tip("Interpolate: fill the slices between the edited ones", "interpolate"),
                               lambda: studio.interpolate())
        self.phase_btn = tool("ED/ES", "fa5s.heartbeat", _tip("Switch between the ED and ES phase of this case", "toggle_phase"),
                              lambda: studio.toggle_phase(), show_text=True)
        for b in (self.undo_btn, self.redo_btn, self.interp_btn, self.phase_btn):
            lay.addWidget(b)
        lay.addSpacing(6)
        self.wl_btn = tool("W/L", "fa5s.adjust", "Window/level presets (Shift+drag on a view adjusts it: left/right window, "
                                                  "up/down level)", show_text=True)
        self.wl_btn.setPopupMode(QToolButton.InstantPopup)
        menu = QMenu(self.wl_btn)
        for name, (text, _, _) in PRESETS.items():
            menu.addAction(text, lambda name=name: studio.views.preset(name))
        self.wl_btn.setMenu(menu)
        self.sync_btn = tool("", "fa5s.link", "Sync W/L: the live and HQ renders in the real scan's window/level", studio.views.set_sync, True)
        self.sync_btn.setChecked(studio.views.sync_wl)
        self.contour_btn = tool("", "fa5s.draw-polygon", "Mask contours on the renders", studio.set_contours, True)
        self.contour_btn.setChecked(studio.contours_on)
        for b in (self.wl_btn, self.sync_btn, self.contour_btn):
            lay.addWidget(b)
        lay.addSpacing(6)
        self.hq_btn = tool("Render HQ", "fa5s.magic", _tip("Render this slice with the HQ model", "render_hq"), studio.render_hq,
                           show_text=True)
        self.keep_btn = tool("Keep", "fa5s.bookmark", _tip("Keep the live render in the project's gallery", "keep_live"),
                             studio.keep_live, show_text=True)
        lay.addWidget(self.hq_btn)
        lay.addWidget(self.keep_btn)
        lay.addStretch(1)
        self.label_hint = QLabel("")
        self.label_hint.setToolTip("The label the brush paints")
        lay.addWidget(self.label_hint)
        self.images_btn = None
        if images_only is not None:
            self.images_btn = tool("", "fa5s.expand", "Images only: hide the panels (F11)", images_only, True)
            lay.addWidget(self.images_btn)
        studio.changed.connect(self._changed)
        self._changed("case")

    def _brush_changed(self, v: int) -> None:
        layer = self.studio.mask_layer
        if layer is not None and int(layer.brush_size) != v:
            layer.brush_size = v

    def _changed(self, what: str) -> None:
        if what not in ("case", "tool"):
            return
        layer = self.studio.mask_layer
        if layer is None:
            return
        lab, mode = int(layer.selected_label), str(layer.mode)
        for k, b in self.label_buttons.items():
            b.setChecked(k == lab and mode != "erase")
        for b, m in ((self.paint_btn, "paint"), (self.erase_btn, "erase"), (self.fill_btn, "fill")):
            b.setChecked(mode == m)
        if self.brush.value() != int(layer.brush_size):
            self.brush.blockSignals(True)
            self.brush.setValue(int(layer.brush_size))
            self.brush.blockSignals(False)
        self.preserve.setChecked(bool(layer.preserve_labels))
        what_paints = "erasing" if mode == "erase" else f"{mode}: {STRUCTURES.get(lab, f'label {lab}')}"
        self.label_hint.setText(what_paints + (" · over background only" if layer.preserve_labels else ""))
