"""The bundled app's entry point: the `cmrstudio` command, with shipped files found inside the bundle.

PyInstaller freezes this script. Inside the bundle ``sys.executable`` is the app itself, so the
places where cmrstudio starts a child Python (``sys.executable -m cmrstudio ...``, ``-m
cmrstudio.gui.probe``) get ``-m MODULE`` handled here.
"""

import multiprocessing
import os
import runpy
import sys

if getattr(sys, "frozen", False):
    os.environ.setdefault("CMRSTUDIO_RESOURCES", os.path.join(sys._MEIPASS, "resources"))  # type: ignore[attr-defined]
    os.environ.setdefault("CMRSTUDIO_BUNDLE", "1")


def main() -> None:
    multiprocessing.freeze_support()
    if len(sys.argv) >= 3 and sys.argv[1] == "-m":
        module = sys.argv[2]
        sys.argv = [sys.argv[0]] + sys.argv[3:]
        if module != "cmrstudio":
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            return
    from cmrstudio.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
