#!/usr/bin/env bash
# Training a model on the lent GPU machine (the `device` tool of cmrstudio's development workplace).
#
# What travels to that machine is the working tree plus carried folders, at most 64 MiB (67,108,864 bytes); the
# tracked tree alone is 110 MB (the shipped models' weights 97.5 MB of it, the plugins' example weights 8.3 MB) and
# ../shared/data (102 MB) does not travel at all. So, here:
#
#   bash installer/device_train.sh prepare   # .device/: wheels the GPU image lacks, the training slices packed
#                                            # small (uint8; the held-out patients stay behind; 45 MB); ignored by git
#   bash installer/device_train.sh hide      # (CMR_KEEP=NAME keeps a model that --init names, too)
#                                            # the weights training does not need leave the tree (to /tmp/cmr-hidden):
#                                            # all but layout-cmr and CMR_KEEP (a --init model), and the plugins' weights
#
# then one device call (keep the command under 2,000 characters; --max-minutes leaves time to save). The live model's
# recipe as shipped (a scene SPADE on the fine prior's 2.5 mm classes, heart classes hidden, the critic at 1.5), from
# scratch: training with a *fine* prior reads only its card, so its 14 MB of weights stay behind:
#
#   run(carry=[".device"], timeout_s=600, command=
#       "bash installer/device_train.sh there spade --preset scene --batch 32 --steps 20000 --max-minutes 7 \
#        --layout-prior layout-cmr-fine --hide-heart-classes 3.75 --grid-loss 1000 --critic 1.5 \
#        --keep-checkpoints --save-every 1000 --name spade-gpu")
#
# Why from scratch and not `--init spade-cmr`: on the CPU every fine-tune of the shipped weights led away from them
# (2026-12-06/07, six runs with fresh or warm discriminators, generator warm-ups, critic weights 0.5 and 1.5, critic
# rates 1e-3 and 3e-3: fully synthetic KID on 120 held-out slices 65.7 -> 70-73 after 250-300 generator steps, 96 after
# 2550; the models page has the figures), and the shipped model has no `spade-cmr.adversaries/` yet, so `--init` would
# also start with a fresh discriminator and critic (+20 on the same screen). What comes back keeps the run's
# discriminator and critic (train_state/, 3.6 MB; the optimiser state stays behind): `train spade --init` of the
# returned card finds them, and a spade-cmr shipped from it brings them in resources/models/spade-cmr.adversaries/.
# Checked on the CPU the same way, with tiny settings (CMR_DEVICE=cpu CMR_WORKERS=0, OUT set by hand, --batch 2
# --steps 4 --critic 1.5): trains, saves, packs, unpacks, and the unpacked card's --init takes both adversaries.
#
# and back here:
#
#   bash installer/device_train.sh unhide    # the hidden weights go back to their paths
#   bash installer/device_train.sh unpack DIR  # DIR: the files_at folder of the call; the run folder lands in runs/device/run
#   cmrstudio evaluate checkpoints runs/device/run --data ../shared/data/acdc ... --max-slices 120 --seed-sets 2 --compare spade-cmr
#   cmrstudio train soup <the improving checkpoints' cards> --out runs/device/soup --name spade-cmr   # then screen it the same way
#
# `there` installs the wheels, unpacks the slices, trains with `cmrstudio train KIND ARGS --device cuda --workers 12
# --exclude <held-out>` on the packed data (the held-out patients are not packed; --exclude records them in the card),
# and returns the run folder as tar parts of 15 MiB under $OUT with its log: at most 8 files and 64 MiB in all come
# back, so step sample grids and, where needed, the oldest checkpoints are left out (said in the log). ACDC files never
# go into the repository: .device/ is ignored. Do not commit while the weights are hidden.
set -euo pipefail
SCRIPT=$(readlink -f "$0")
cd "$(dirname "$SCRIPT")/.."
DATA=${CMR_DATA:-../shared/data}
PACK=.device
HIDDEN=/tmp/cmr-hidden
# scene presets train with the tissue-class prior; the rest can stay behind, except models named in CMR_KEEP (a --init
# model). `hide` refuses what would pass 64 MiB: flow-cmr (29 MB), the teacher a distillation `there flow --init flow-cmr
# --reflow 16 --sample-steps 2` needs, does not fit beside the packed slices (about 89 MB in all) as they are packed now.
NEEDED_WEIGHTS="layout-cmr ${CMR_KEEP:-}"

held_out() {  # the held-out prefixes of the shipped live model's card: the generators' split (never empty)
  local h
  h=$(python3 -c "import json; print(' '.join(json.load(open('resources/models/spade-cmr.json'))['training']['held_out_case_prefixes']))")
  [[ -n "$h" ]] || { echo "device_train: resources/models/spade-cmr.json names no held-out patients; refusing to pack or train without a split." >&2; exit 1; }
  echo "$h"
}

case "${1:-}" in
prepare)
  held=$(held_out)
  exclude_file=$(git rev-parse --git-path info/exclude)
  grep -qx "/$PACK/" "$exclude_file" 2>/dev/null || echo "/$PACK/" >> "$exclude_file"
  rm -rf "$PACK" && mkdir -p "$PACK/whl" "$PACK/data"
  # the GPU image has torch, numpy, scipy, h5py, typer, safetensors, tqdm; not nibabel (the NIfTI reader)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$PACK/whl" nibabel==5.4.2
  python3 - "$DATA" "$PACK/data" $held <<'EOF'
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np

src, dst, held = Path(sys.argv[1]), Path(sys.argv[2]), tuple(sys.argv[3:])
assert held, "no held-out patients given"
n_acdc = 0
# uint8 over [min, 99.9th percentile] (brighter voxels clipped): twice the grey levels of a min-max range in the part of
# the range the frame's 0.5-99.5 percentile window uses. Every slice is kept, so those percentiles do not move.
for f in sorted((src / "acdc").glob("patient*_frame*.h5")):  # ACDC: image [0, 1] float32 -> uint8 + scale, label as is
    if f.name.startswith(held):
        continue
    with h5py.File(f, "r") as h:
        img, lab = h["image"][:], h["label"][:]
    hi = float(np.percentile(img, 99.9)) or 1.0
    (dst / "acdc").mkdir(parents=True, exist_ok=True)
    with h5py.File(dst / "acdc" / f.name, "w") as h:
        h.create_dataset("image", data=np.round(np.clip(img / hi, 0, 1) * 255).astype(np.uint8), compression="gzip", compression_opts=9, shuffle=True)
        h.create_dataset("label", data=lab, compression="gzip", compression_opts=9, shuffle=True)
        h.attrs["uint8_scale"] = hi
    n_acdc += 1
for f in sorted((src / "mnms").glob("*_sa_E?.nii.gz")):  # M&Ms: images as uint8 with a scale (NIfTI slope), labels as is
    cid = f.name.split("_")[0]
    if cid.startswith(held):
        continue
    (dst / "mnms").mkdir(parents=True, exist_ok=True)
    im = nib.load(f)
    a = np.asarray(im.dataobj, dtype=np.float32)
    lo, hi = float(a.min()), float(np.percentile(a, 99.9))
    out = nib.Nifti1Image(np.round(np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8), im.affine, im.header)
    out.header.set_data_dtype(np.uint8)
    out.header.set_slope_inter((hi - lo) / 255.0, lo)
    nib.save(out, dst / "mnms" / f.name)
    gt = f.with_name(f.name.replace(".nii.gz", "_gt.nii.gz"))
    if gt.exists():
        (dst / "mnms" / gt.name).write_bytes(gt.read_bytes())
for p in (src / "mnms").glob("*.csv"):  # the challenge's vendor table, when the folder has one
    (dst / "mnms" / p.name).write_bytes(p.read_bytes())
print(f"packed: {n_acdc} ACDC volumes and the M&Ms images as uint8 (Sunnybrook stays behind: its DICOM reader needs SimpleITK, 50 MB); "
      f"held out: {' '.join(held)}")
EOF
  du -sh "$PACK"/* ;;
hide)  # only tracked weights without local changes: `unhide` puts back exactly these, each to its own path
  # resources/models/: every model but those training needs; plugins/: their example weights (training never needs them)
  mkdir -p "$HIDDEN"
  for w in resources/models/*.safetensors $(git ls-files 'plugins/*.safetensors' 'plugins/*.pt'); do
    n=$(basename "$w"); n=${n%.*}
    [[ "$w" == resources/* && " $NEEDED_WEIGHTS " == *" $n "* ]] && continue
    if git ls-files --error-unmatch "$w" >/dev/null 2>&1 && git diff --quiet -- "$w"; then
      mkdir -p "$HIDDEN/$(dirname "$w")" && mv "$w" "$HIDDEN/$w"
    else
      echo "kept in place (untracked or changed, so not hidden): $w" >&2
    fi
  done
  tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1 || true)  # hidden files are gone: du says so
  carried=$(du -sb $PACK | cut -f1)
  echo "travels: $tracked bytes tracked + $carried carried (limit $(( 64 * 1024 * 1024 )))"
  if (( tracked + carried > 64 * 1024 * 1024 )); then
    echo "device_train: that is over the 64 MiB a device call takes; keep fewer models (CMR_KEEP) or pack fewer slices (unhide puts the hidden weights back)." >&2
    exit 1
  fi ;;
unhide)
  if [[ -d "$HIDDEN" ]]; then
    (cd "$HIDDEN" && find . -type f -printf '%P\n') | while read -r w; do
      [[ -e "$w" ]] && { echo "device_train: $w is back already; the hidden copy stays in $HIDDEN." >&2; continue; }
      mv "$HIDDEN/$w" "$w"
    done
    find "$HIDDEN" -depth -type d -empty -delete
  fi
  [[ ! -e "$HIDDEN" ]] || { echo "device_train: $HIDDEN is not empty; look at what is left there." >&2; exit 1; }
  git status --short resources/ plugins/ ;;
there)
  shift
  kind=${1:?name the model kind: spade, flow or diffusion}; shift
  [[ -n "${OUT:-}" && -d "$OUT" ]] || { echo "device_train: \$OUT (the folder whose files come back) is not set; run this through the device tool." >&2; exit 2; }
  held=$(held_out)
  excludes=()
  for p in $held; do excludes+=(--exclude "$p"); done
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$PACK"/whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
  python3 - "$PACK/data" /tmp/data <<'EOF'
import sys
from pathlib import Path

import h5py
import numpy as np

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for f in src.rglob("*"):
    if f.is_file():
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        if f.suffix == ".h5":  # back to float32 images on the original files' scale
            with h5py.File(f, "r") as h, h5py.File(out, "w") as o:
                o.create_dataset("image", data=h["image"][:].astype(np.float32) * (float(h.attrs["uint8_scale"]) / 255.0))
                o.create_dataset("label", data=h["label"][:])
        else:
            out.write_bytes(f.read_bytes())
EOF
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  run=/tmp/run
  set +e
  python3 -m cmrstudio train "$kind" --data /tmp/data/acdc --data /tmp/data/mnms --device "${CMR_DEVICE:-cuda}" --workers "${CMR_WORKERS:-12}" --quiet \
    "${excludes[@]}" --out "$run" "$@" 2>&1 | tee "$OUT/train.log"
  rc=${PIPESTATUS[0]}
  set -e
  if [[ -d "$run" ]]; then
    # the optimiser state and the raw generator are large and not needed back; the discriminator and the critic are:
    # a fine-tune of the returned model (`train spade --init`) finds them there and does not start with fresh ones
    find "$run/train_state" -type f ! -name discriminator.safetensors ! -name critic.safetensors ! -name feature_critic.safetensors -delete 2>/dev/null || true
    find "$run/samples" -name 'step_*.png' -delete 2>/dev/null || true  # latest.png stays
    limit=$(( ${CMR_RETURN_KB:-61440} * 1024 ))  # 60 MiB: 4 parts of 15 MiB beside the log, under the 64 MiB that come back
    while (( $(du -sb "$run" | cut -f1) > limit )); do
      oldest=$(ls "$run"/checkpoints/*.safetensors 2>/dev/null | sort | head -1)
      [[ -n "$oldest" ]] || { echo "device_train: the run folder is over the return limit even without checkpoints; nothing comes back." | tee -a "$OUT/train.log"; exit 1; }
      echo "device_train: over the return limit, left out: $oldest (and its card)" | tee -a "$OUT/train.log"
      rm -f "$oldest" "${oldest%.safetensors}.json"
    done
    tar cf - -C /tmp run | split -b 15m - "$OUT/run.tar.part-"
  fi
  ls -l "$OUT"
  exit "$rc" ;;
unpack)
  src=${2:?give the folder where the files of the device call landed}
  rm -rf runs/device/run && mkdir -p runs/device
  cat "$src"/run.tar.part-* | tar xf - -C runs/device
  name=$(ls runs/device/run/*.json | head -1)
  echo "run folder: runs/device/run ($name)" ;;
*)
  sed -n '2,/^set -euo/p' "$SCRIPT" | sed '$d'; exit 2 ;;
esac
