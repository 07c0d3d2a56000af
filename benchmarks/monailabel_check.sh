#!/usr/bin/env bash
# The MONAI Label round trip a clinical collaborator makes, end to end, with medtransfer absent from the client:
#
#   bash benchmarks/monailabel_check.sh [RUN_DIR]
#
# 1. builds the client's virtual environment (.venv-monailabel, ignored by git; MONAILABEL_VENV to move it):
#    torch 2.14.1, torchvision 0.29.1, monailabel 0.8.5, pydicom 2.4.5 (about 6 GB; pip's cache makes a second
#    build cheap);
# 2. exports RUN_DIR (default: a tiny 3D Hippocampus run trained here, 1 epoch of 3 iterations) with
#    `medtransfer export --monailabel-app`;
# 3. starts `monailabel start_server` on 127.0.0.1 (a free port) under `timeout`, waits for /info/;
# 4. makes 3D Slicer's call, POST /infer/NAME?image=hippocampus_001, and times it;
# 5. sends a damaged scan: MONAI Label must answer with an error status and keep serving;
# 6. compares the returned mask with `medtransfer segment --precision fp32`'s, voxel for voxel;
# 7. stops the server. Exit status 0 only if the masks are equal and the server survived the damaged scan.
#
# MEDTRANSFER (default: medtransfer on PATH, else .venv/bin/medtransfer) and MEDTRANSFER_TEST_DATA
# (default ../shared/data) say where medtransfer and the data are. It sends requests to 127.0.0.1 only.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MONAILABEL_VENV:-$REPO/.venv-monailabel}"
DATA="${MEDTRANSFER_TEST_DATA:-$REPO/../shared/data}"
MEDTRANSFER="${MEDTRANSFER:-$(command -v medtransfer || echo "$REPO/.venv/bin/medtransfer")}"
MEDTRANSFER_PYTHON="$(dirname "$MEDTRANSFER")/python"
SERVER_TIMEOUT="${MONAILABEL_SERVER_TIMEOUT:-900}"   # seconds the server may live, whatever happens
SCAN=hippocampus_001
WORK="$(mktemp -d -t monailabel_check.XXXXXX)"
SERVER_PID=""

cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

step() { echo "== $*"; }

# pydicom 2.4.5: monailabel 0.8.5 pulls pydicom 3, whose removed pydicom._storage_sopclass_uids pydicom-seg 0.4.1
# imports, so `monailabel start_server` dies on import (BundleInferTask alone still works)
step "client venv: $VENV (${MONAILABEL_PACKAGES:=torch==2.14.1 torchvision==0.29.1 monailabel==0.8.5 pydicom==2.4.5})"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC2086
"$VENV/bin/pip" install --quiet $MONAILABEL_PACKAGES   # a few seconds when they are already there
"$VENV/bin/python" -c "import monailabel, torch, torchvision; print('monailabel', monailabel.__version__, '| torch', torch.__version__, '| torchvision', torchvision.__version__)"
unset PYTHONPATH
# the client runs from the work folder, so that the repository's own medtransfer/ is not importable by accident
if (cd "$WORK" && "$VENV/bin/python" -c "import medtransfer" 2>/dev/null); then
    echo "error: medtransfer is importable in the client venv; the check needs a client without it" >&2
    exit 2
fi

RUN="${1:-}"
if [ -z "$RUN" ]; then
    step "training a tiny 3D Hippocampus run (1 epoch x 3 iterations, filters 8-16-32, fp32)"
    RUN="$WORK/run"
    "$MEDTRANSFER" train --bundle binary_seg_3d --output_dir "$RUN" --data_manifest msd_hippocampus \
        --data_root "$DATA/msd_hippocampus" --fraction 0.05 --seed 0 --max_epochs 1 --iterations_per_epoch 3 \
        --filters "[8,16,32]" --patch_size "[32,32,32]" --precision fp32 --progress false > "$WORK/train.log" 2>&1 \
        || { tail -20 "$WORK/train.log"; exit 1; }
fi

step "export $RUN --monailabel-app"
"$MEDTRANSFER" export "$RUN" --output "$WORK/bundle" --monailabel-app "$WORK/app"
NAME="$(ls "$WORK/app/model")"
if grep -rqE "^(import|from) medtransfer" "$WORK/app" --include=*.py; then
    echo "error: the app imports medtransfer" >&2
    exit 1
fi

mkdir -p "$WORK/studies"
cp "$DATA/msd_hippocampus/images/$SCAN.nii.gz" "$WORK/studies/"
head -c 3000 "$DATA/msd_hippocampus/images/$SCAN.nii.gz" > "$WORK/studies/damaged.nii.gz"   # a cut-off file
PORT="$("$MEDTRANSFER_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
URL="http://127.0.0.1:$PORT"

step "monailabel start_server --app APP --studies STUDIES --conf models $NAME --host 127.0.0.1 --port $PORT"
cd "$WORK"
# `monailabel` (a shell wrapper) runs `python -m monailabel.main` with PYTHONPATH set to the folder two levels above
# itself, which for a venv inside this repository is the repository: medtransfer would be importable. So the
# wrapper's command is run directly, with the client venv's python.
timeout "$SERVER_TIMEOUT" "$VENV/bin/python" -m monailabel.main start_server --app "$WORK/app" --studies "$WORK/studies" \
    --conf models "$NAME" --host 127.0.0.1 --port "$PORT" > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
STARTED=$(date +%s)
until curl -sf "$URL/info/" -o "$WORK/info.json"; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null || [ $(( $(date +%s) - STARTED )) -gt 600 ]; then
        echo "error: the server did not come up" >&2
        tail -40 "$WORK/server.log" >&2
        exit 1
    fi
    sleep 2
done
echo "server up after $(( $(date +%s) - STARTED )) s; models: $("$MEDTRANSFER_PYTHON" -c "import json, sys; print(sorted(json.load(open(sys.argv[1]))['models']))" "$WORK/info.json")"

step "POST /infer/$NAME?image=$SCAN&output=image (what 3D Slicer's MONAI Label module sends)"
INFER_START=$(date +%s.%N)
HTTP=$(curl -s -X POST "$URL/infer/$NAME?image=$SCAN&output=image" -F 'params={}' -o "$WORK/monailabel_mask.nii.gz" \
    -w '%{http_code}')
INFER_SECONDS=$(echo "$(date +%s.%N) - $INFER_START" | bc)
echo "HTTP $HTTP in ${INFER_SECONDS} s"
if [ "$HTTP" != 200 ]; then tail -40 "$WORK/server.log" >&2; exit 1; fi

step "POST /infer/$NAME?image=damaged (a cut-off NIfTI file)"
DAMAGED=$(curl -s -X POST "$URL/infer/$NAME?image=damaged&output=image" -F 'params={}' -o "$WORK/damaged_answer" \
    -w '%{http_code}')
ALIVE=$(curl -s -o /dev/null -w '%{http_code}' "$URL/info/")
echo "damaged scan: HTTP $DAMAGED ($(head -c 200 "$WORK/damaged_answer" | tr -d '\n')); server afterwards: HTTP $ALIVE"

step "stop the server"
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""

step "medtransfer segment BUNDLE $SCAN --precision fp32"
"$MEDTRANSFER" segment "$WORK/bundle" "$WORK/studies/$SCAN.nii.gz" --output "$WORK/segmented" --precision fp32 \
    --device cpu --no-progress > "$WORK/segment.log" 2>&1 || { cat "$WORK/segment.log"; exit 1; }

step "compare"
"$MEDTRANSFER_PYTHON" - "$WORK/monailabel_mask.nii.gz" "$WORK/segmented/${SCAN}_seg.nii.gz" "$DAMAGED" "$ALIVE" <<'EOF'
import sys

import nibabel as nib
import numpy as np

served, ours = nib.load(sys.argv[1]), nib.load(sys.argv[2])
a, b = np.asarray(served.dataobj), np.asarray(ours.dataobj)
same_grid = a.shape == b.shape and np.allclose(served.affine, ours.affine, atol=1e-4)
differ = int((a.astype(np.int64) != b.astype(np.int64)).sum()) if a.shape == b.shape else -1
print(f"MONAI Label mask: shape {a.shape}, {int((a > 0).sum())} voxels; segment: shape {b.shape}, "
      f"{int((b > 0).sum())} voxels; same grid: {same_grid}; voxels differing: {differ}")
damaged_refused, alive = sys.argv[3] not in ("200", "000"), sys.argv[4] == "200"
ok = same_grid and differ == 0 and int((b > 0).sum()) > 0 and damaged_refused and alive
print(("PASS" if ok else "FAIL") + ": masks " + ("equal" if differ == 0 else "differ")
      + f"; damaged scan answered with an error: {damaged_refused}; server alive after it: {alive}")
sys.exit(0 if ok else 1)
EOF
echo "round trip: POST /infer/$NAME?image=$SCAN took ${INFER_SECONDS} s"
