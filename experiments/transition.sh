#!/usr/bin/env bash
# Temperature and transition tuning on the CPU recipe, from the MoT run SOURCE (default
# out-cpu/mot-e128-g32, trained by experiments/compare.sh). A learned temperature (from τ = 1),
# then the MoT converted to discrete routing and to token-choice MoE and tuned for 15% of its
# steps; val loss of every model grouped and one sequence at a time.
set -euo pipefail
cd "$(dirname "$0")/.."  # the repository root
PYTHON=${PYTHON:-python}  # e.g. a virtual environment's, not activated
mkdir -p assets
ITERS=${ITERS:-2000}
TUNE=${TUNE:-300}
SOURCE=${SOURCE:-out-cpu/mot-e128-g32}
CPU=config/train_shakespeare_char_cpu.py
"$PYTHON" train.py $CPU config/train_shakespeare_char_cpu_mot.py --max_iters=$ITERS \
  --lr_decay_iters=$ITERS --temperature=1.0 --learnable_temperature=True \
  --out_dir=out-cpu/mot-learned-tau
TRANSITION="$CPU --init_from=$SOURCE --max_iters=$TUNE --lr_decay_iters=$TUNE \
  --warmup_iters=30 --learning_rate=3e-4 --min_lr=3e-5 --eval_interval=25"
"$PYTHON" train.py $TRANSITION --transition=discrete --out_dir=out-cpu/mot-discrete
"$PYTHON" train.py $TRANSITION --transition=token_choice --out_dir=out-cpu/mot-token-choice
"$PYTHON" experiments/evaluate.py out-cpu/dense $SOURCE out-cpu/mot-learned-tau \
  out-cpu/mot-discrete out-cpu/mot-token-choice
"$PYTHON" experiments/plot.py $SOURCE out-cpu/mot-discrete out-cpu/mot-token-choice \
  out-cpu/dense --labels "MoT E=128 G=32" "→ discrete" "→ token choice" "dense" \
  --step_offsets 0 $ITERS $ITERS 0 --out=assets/transition.png
"$PYTHON" experiments/visualize.py --out_dir=$SOURCE --layer=3
cp $SOURCE/merge_weights.png $SOURCE/merge_entropy.png assets/
