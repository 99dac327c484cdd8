"""The studio's keys on the canvas, as in ITK-SNAP and Slicer (napari's own key maps, bound per layer).

napari looks a key up in the active layer's own key map before the key map of its class, so a key
bound on the studio's layers wins over napari's bindings of the same key (napari's Labels layer
uses 1–7 for its tools). Every studio layer gets the keys, so they work whichever of them is
active. Keys only reach the canvas when it has the focus: typing "1" into a note field types a 1.
"""

from __future__ import annotations

KEYS = {  # key: (what, Studio method name, args)
    "1": ("paint LV blood pool (label 1)", "pick_label", (1,)),
    "2": ("paint LV myocardium (label 2)", "pick_label", (2,)),
    "3": ("paint RV blood pool (label 3)", "pick_label", (3,)),
    "p": ("brush", "set_tool", ("paint",)),
    "e": ("eraser", "set_tool", ("erase",)),
    "f": ("fill", "set_tool", ("fill",)),
    "[": ("smaller brush", "brush_step", (-1,)),
    "]": ("bigger brush", "brush_step", (1,)),
    "b": ("preserve labels on/off (paint over background only)", "toggle_preserve", ()),
    "i": ("interpolate between the edited slices", "interpolate", ()),
    "t": ("switch ED / ES", "toggle_phase", ()),
    "Up": ("previous slice", "step_slice", (-1,)),
    "Down": ("next slice", "step_slice", (1,)),
    "h": ("render HQ", "render_hq", ()),
    "k": ("keep the live render in the gallery", "keep_live", ()),
}


def shortcut(method: str, *args) -> str:
    """The key of a studio action, for tooltips ("" when it has none)."""
    for key, (_, name, a) in KEYS.items():
        if name == method and tuple(a) == tuple(args):
            return key.upper() if len(key) == 1 else key
    return ""


def bind_studio_keys(studio, layer) -> None:
    """Bind the studio keys on one napari layer (its own key map: it wins over the layer class's bindings).

    The action runs just after the key event, not inside it: switching ED/ES rebuilds the layers, and the
    layer whose key map is handling the key must not be deleted under napari's feet.
    """
    from qtpy.QtCore import QTimer

    for key, (_, name, args) in KEYS.items():
        def run(_layer=None, name=name, args=args):
            QTimer.singleShot(0, lambda: None if studio._closed else getattr(studio, name)(*args))

        layer.bind_key(key, run, overwrite=True)
