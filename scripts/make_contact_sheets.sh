#!/usr/bin/env bash
# Contact sheets of the synthesis, one per class, from the two photos the repository may redistribute (the
# ultralytics sample images behind resources/samples; the shared training photos must not be copied here).
# Writes models/synthesis_sheets/contact_sheet_<class>.jpg and records.csv (kind, strength, parameters), and the same
# from two dead-leaves pictures (`blurflag-train pretrain`'s corpus) into models/synthesis_sheets/dead_leaves/.
#
#   bash scripts/make_contact_sheets.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(realpath -m "${1:-/tmp/blurflag-sheets}")
rm -rf "$WORK/src" "$WORK/out" "$WORK/dead_leaves" "$WORK/out_dead_leaves"
mkdir -p "$WORK/src"
cp resources/samples/sharp__bus.jpg "$WORK/src/bus.jpg"
cp resources/samples/sharp__zidane.jpg "$WORK/src/zidane.jpg"
MPPY=$(bash scripts/mediapipe_venv.sh "$WORK/mediapipe-venv")
"$MPPY" trainer/masks.py --out "$WORK/masks" "$WORK"/src/*.jpg
KINDS=()
for k in clean bokeh panning high_iso defocus subject_defocus shake linear_motion subject_motion; do KINDS+=(--kind "$k"); done
.venv/bin/blurflag-train synthesize "$WORK/src" "$WORK/out" --mask-dir "$WORK/masks" --count 3 --seed 3 \
  --contact-sheet --sheet-thumb 420 "${KINDS[@]}"
mkdir -p models/synthesis_sheets
cp "$WORK"/out/contact_sheet_*.jpg models/synthesis_sheets/
sed "s#$WORK/src/##" "$WORK/out/records.csv" > models/synthesis_sheets/records.csv
# Dead-leaves pictures carry their runner's mask in the shared masks' layout (images/ + masks/).
.venv/bin/python -c "import sys; from pathlib import Path; from trainer.deadleaves import write_corpus; \
write_corpus(Path(sys.argv[1]), 2, seed=3, workers=1)" "$WORK/dead_leaves"
.venv/bin/blurflag-train synthesize "$WORK/dead_leaves/images" "$WORK/out_dead_leaves" --count 3 --seed 3 \
  --contact-sheet --sheet-thumb 420 "${KINDS[@]}"
mkdir -p models/synthesis_sheets/dead_leaves
cp "$WORK"/out_dead_leaves/contact_sheet_*.jpg models/synthesis_sheets/dead_leaves/
sed "s#$WORK/dead_leaves/images/##" "$WORK/out_dead_leaves/records.csv" > models/synthesis_sheets/dead_leaves/records.csv
ls -la models/synthesis_sheets models/synthesis_sheets/dead_leaves
