#!/usr/bin/env bash
# Temperature and transition tuning on the CPU recipe (run experiments/compare.sh first: it trains
# out-cpu/mot-e128-g32). A learned temperature (from τ = 1), then the MoT converted to discrete
# routing and to token-choice MoE and tuned for 15% of its steps; val loss of every model grouped
# and one sequence at a time.
set -euo pipefail
cd "$(dirname "$0")/.."  # the repository root
mkdir -p assets
ITERS=${ITERS:-2000}
TUNE=${TUNE:-300}
CPU=config/train_shakespeare_char_cpu.py
python train.py $CPU config/train_shakespeare_char_cpu_mot.py --max_iters=$ITERS \
  --lr_decay_iters=$ITERS --temperature=1.0 --learnable_temperature=True \
  --out_dir=out-cpu/mot-learned-tau
TRANSITION="$CPU --init_from=out-cpu/mot-e128-g32 --max_iters=$TUNE --lr_decay_iters=$TUNE \
  --warmup_iters=30 --learning_rate=3e-4 --min_lr=3e-5 --eval_interval=25"
python train.py $TRANSITION --transition=discrete --out_dir=out-cpu/mot-discrete
python train.py $TRANSITION --transition=token_choice --out_dir=out-cpu/mot-token-choice
python experiments/evaluate.py out-cpu/dense out-cpu/mot-e128-g32 out-cpu/mot-learned-tau \
  out-cpu/mot-discrete out-cpu/mot-token-choice
python experiments/plot.py out-cpu/mot-e128-g32 out-cpu/mot-discrete out-cpu/mot-token-choice \
  out-cpu/dense --labels "MoT E=128 G=32" "→ discrete" "→ token choice" "dense" \
  --step_offsets 0 $ITERS $ITERS 0 --out=assets/transition.png
python experiments/visualize.py --out_dir=out-cpu/mot-e128-g32 --layer=3
cp out-cpu/mot-e128-g32/merge_weights.png out-cpu/mot-e128-g32/merge_entropy.png assets/
