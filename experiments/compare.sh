#!/usr/bin/env bash
# Dense vs MoT vs MoE at matched FLOPs on shakespeare_char with the CPU recipe, then the plot and
# table. Each run takes a few minutes on 2 CPU cores.
# Usage: bash experiments/compare.sh   (ITERS=... to shorten)
set -euo pipefail
cd "$(dirname "$0")/.."  # the repository root
PYTHON=${PYTHON:-python}  # e.g. a virtual environment's, not activated
mkdir -p assets
ITERS=${ITERS:-2000}
[ -f data/shakespeare_char/train.bin ] || "$PYTHON" data/shakespeare_char/prepare.py
CPU=config/train_shakespeare_char_cpu.py
MOT="$CPU config/train_shakespeare_char_cpu_mot.py"  # E=128 G=32 τ=0.3
MOE="$CPU config/train_shakespeare_char_cpu_moe.py"  # top-1 E=8
STEPS="--max_iters=$ITERS --lr_decay_iters=$ITERS"
"$PYTHON" train.py $CPU $STEPS --out_dir=out-cpu/dense
"$PYTHON" train.py $MOT $STEPS --out_dir=out-cpu/mot-e128-g32
"$PYTHON" train.py $MOT $STEPS --n_experts=32 --group_size=8 --out_dir=out-cpu/mot-e32-g8
"$PYTHON" train.py $MOE $STEPS --out_dir=out-cpu/moe-top1-e8
"$PYTHON" train.py $MOE $STEPS --n_experts=16 --moe_top_k=2 --out_dir=out-cpu/moe-top2-e16
"$PYTHON" experiments/plot.py out-cpu/dense out-cpu/mot-e128-g32 out-cpu/mot-e32-g8 \
  out-cpu/moe-top1-e8 out-cpu/moe-top2-e16 --out=assets/results.png \
  --labels "dense" "MoT E=128 G=32" "MoT E=32 G=8" "MoE top-1 E=8" "MoE top-2 E=16"
