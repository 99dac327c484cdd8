#!/usr/bin/env bash
# Smoke test of the standalone bundle, with none of the project's Python environment: a bare environment
# (env -i, PATH=/usr/bin:/bin, a temporary HOME and working folder). Needs only Xvfb (xvfb-run) on the machine.
#   installer/smoke.sh [BUNDLE_DIR]     (default dist/cmrstudio)
# 1. cold start: the studio on the sample case under Xvfb until its first live frame is drawn;
# 2. paint a stroke with real mouse events on the canvas and wait for the live frame (cmrstudio bench studio);
# 3. render once from the bundle's command line, and list the models with their checksums.
set -euo pipefail
app="${1:-$(dirname "$0")/../dist/cmrstudio}"
[ -x "$app/cmrstudio" ] || { echo "smoke: no bundle at $app; build it with make bundle" >&2; exit 2; }
app="$(cd "$app" && pwd)"
exe="$app/cmrstudio"
command -v xvfb-run >/dev/null || { echo "smoke: xvfb-run is missing (apt-get install xvfb xauth)" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/home"
cd "$work"
bare() { env -i PATH=/usr/bin:/bin HOME="$work/home" LANG=C.UTF-8 timeout "${SMOKE_TIMEOUT:-600}" "$@"; }
screen=(xvfb-run -a -s "-screen 0 1600x1000x24")
fail() { echo "smoke: FAILED: $*" >&2; exit 1; }

t0=$(date +%s.%N)
bare "${screen[@]}" "$exe" open --ready-file "$work/ready.json" --quit-when-ready > open.log 2>&1 || { cat open.log; fail "the studio did not start"; }
t1=$(date +%s.%N)
[ -s ready.json ] || { cat open.log; fail "the studio drew no live frame"; }
grep -q '"error": null' ready.json || { cat ready.json; fail "the studio reported an error"; }
first=$(sed -n 's/.*"in_process_first_frame": \([0-9.]*\).*/\1/p' ready.json)
echo "smoke: cold start to the first live frame: $(awk "BEGIN{printf \"%.1f\", $t1-$t0}") s wall (including Xvfb), $(awk "BEGIN{printf \"%.1f\", $first}") s in the app"

bare "${screen[@]}" "$exe" bench studio --strokes 1 --moves 10 --json > studio.json 2> studio.err || { cat studio.err; fail "painting a stroke failed"; }
shown=$(sed -n 's/.*"frames_shown": \([0-9]*\).*/\1/p' studio.json)
[ "${shown:-0}" -ge 1 ] || { cat studio.json; fail "no live frame was shown after the stroke"; }
echo "smoke: painted a stroke with mouse events; $shown live frame(s) shown"

sample=$(find "$app" -name SCD0000101_ED_mask.nii.gz | head -1)
[ -n "$sample" ] || fail "the sample case is not in the bundle"
bare "$exe" render "$sample" --out "$work/render.nii.gz" --seed 1 > render.log 2>&1 || { cat render.log; fail "cmrstudio render failed"; }
[ -s render.nii.gz ] || fail "cmrstudio render wrote nothing"
echo "smoke: $(tail -1 render.log | cut -c1-160)"
bare "$exe" models --verify > models.log 2>&1 || { cat models.log; fail "cmrstudio models failed"; }
grep -q "spade-cmr .*checksum ok" models.log || { cat models.log; fail "the shipped models are not intact"; }
echo "smoke: $(grep -c 'checksum ok' models.log) models with checksums ok; the bundle works without the project's Python"
