#!/usr/bin/env bash
# Build the standalone Linux app with PyInstaller (see installer/README.md):
#   installer/bundle.sh            -> dist/cmrstudio/ (run dist/cmrstudio/cmrstudio) and dist/cmrstudio-linux-x86_64.tar.gz
# Uses the Python that has cmrstudio installed (`make install`); CMRSTUDIO_BUNDLE_PLUGINS="cmrstudio-vae ..." also
# carries installed plugins (their code, models and entry points).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1
"$PY" -c "import cmrstudio, torch, napari" 2>/dev/null || { echo "bundle: install cmrstudio with its GUI first (make install)" >&2; exit 2; }
"$PY" -m pip install -q "pyinstaller==6.22.3"
start=$(date +%s)
nice -n 10 "$PY" -m PyInstaller --noconfirm --clean --log-level WARN --distpath dist --workpath build/bundle installer/cmrstudio.spec
tar -C dist -czf dist/cmrstudio-linux-x86_64.tar.gz.tmp cmrstudio && mv dist/cmrstudio-linux-x86_64.tar.gz.tmp dist/cmrstudio-linux-x86_64.tar.gz
echo "bundle: dist/cmrstudio ($(du -sh dist/cmrstudio | cut -f1) unpacked, $(du -sh dist/cmrstudio-linux-x86_64.tar.gz | cut -f1) as .tar.gz)," \
     "built in $(( $(date +%s) - start )) s; check it with installer/smoke.sh"
