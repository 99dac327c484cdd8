# The two set-up commands (see README): each installs everything it needs first.
.PHONY: run test test-fast install screenshot bundle smoke
run:
	bash installer/setup.sh run
test:
	bash installer/setup.sh test
test-fast:  # the fast tier: no training, no window, no subprocess
	bash installer/setup.sh test -m "not slow"
install:
	bash installer/setup.sh install
screenshot:
	xvfb-run -a -s "-screen 0 1600x1000x24" python3 -m cmrstudio screenshot --out resources/screenshot.png
bundle:  # the standalone Linux app (PyInstaller): dist/cmrstudio/ and a .tar.gz; see installer/README.md
	bash installer/bundle.sh
smoke:  # the bundle's smoke test, without the project's Python environment
	bash installer/smoke.sh
