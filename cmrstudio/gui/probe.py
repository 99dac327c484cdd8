"""The Qt/napari/OpenGL probe that ``cmrstudio doctor`` runs in a child process (``python -m cmrstudio.gui.probe gl|nogl``),
so a crashing binding or driver cannot take the doctor down; prints one line ``PROBE {json}``."""

import json
import sys


def probe(mode: str) -> dict:
    out = {}
    try:
        import qtpy
        from qtpy import QtCore  # noqa: F401  (the binding loads its core library)
        out["qt"] = f"{qtpy.API_NAME} {getattr(qtpy, 'PYSIDE_VERSION', None) or getattr(qtpy, 'PYQT_VERSION', None) or ''} (Qt {qtpy.QT_VERSION})"
    except Exception as exc:
        out["qt_error"] = f"{type(exc).__name__}: {exc}"
    try:
        import napari
        out["napari"] = napari.__version__
    except Exception as exc:
        out["napari_error"] = f"{type(exc).__name__}: {exc}"
    if mode == "gl" and "qt_error" not in out:
        try:
            from qtpy.QtGui import QGuiApplication, QOffscreenSurface, QOpenGLContext
            app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841  (a context needs the app alive)
            ctx = QOpenGLContext()
            if not ctx.create():
                out["gl_error"] = "no OpenGL context could be created"
            else:
                surf = QOffscreenSurface()
                surf.setFormat(ctx.format())
                surf.create()
                if not ctx.makeCurrent(surf):
                    out["gl_error"] = "an OpenGL context was created but could not be made current"
                else:
                    fmt = ctx.format()
                    out["gl"] = f"OpenGL {fmt.majorVersion()}.{fmt.minorVersion()}"
                    try:
                        out["gl"] += f" ({ctx.functions().glGetString(0x1F01)})"  # GL_RENDERER
                    except Exception:
                        pass
                    ctx.doneCurrent()
        except Exception as exc:
            out["gl_error"] = f"{type(exc).__name__}: {exc}"
    return out


if __name__ == "__main__":
    print("PROBE " + json.dumps(probe(sys.argv[1] if len(sys.argv) > 1 else "nogl")))
