#!/usr/bin/env bash
# Everything a GPU can tell us, in one command of at most 10 minutes on one GPU, written to one
# file (default gpu_check.txt):
#   1. the checks that take a device (experiments/gpu_tests.py: no host sync in a training step,
#      MoT and MoE against their loop references, KV-cache decoding);
#   2. bench.py --step and --sampling in bfloat16, without and with torch.compile;
#   3. dense against MoT on the GPU shakespeare recipe, 150 s each: val loss at equal steps and
#      at equal seconds (experiments/plot.py).
#
#   bash experiments/gpu_check.sh                          # on the GPU
#   bash experiments/gpu_check.sh --device=cpu --tiny      # the same steps, tiny, on a CPU (CI)
#   options: --data_root=DIR (default data/, with shakespeare_char prepared or preparable),
#            --out=FILE, --seconds=N (training time of each of the two runs)
set -euo pipefail
cd "$(dirname "$0")/.."
device=cuda dtype=bfloat16 tiny="" data_root=data out=gpu_check.txt seconds=150
for arg in "$@"; do
  case "$arg" in
    --device=*) device="${arg#*=}" ;;
    --data_root=*) data_root="${arg#*=}" ;;
    --out=*) out="${arg#*=}" ;;
    --seconds=*) seconds="${arg#*=}" ;;
    --tiny) tiny="--tiny" ;;
    *) echo "error: unknown option $arg (see the top of $0)" >&2; exit 2 ;;
  esac
done
[ "$device" = cpu ] && dtype=float32  # bfloat16 matmuls are emulated, slowly, on most CPUs
[ -f "$data_root/shakespeare_char/train.bin" ] || python data/shakespeare_char/prepare.py
runs=$(mktemp -d)
mkdir -p "$(dirname "$out")"
# the recipe, or a tiny model that a CPU trains in seconds
model=()
[ -n "$tiny" ] && model=(--n_layer=2 --n_head=2 --n_embd=32 --block_size=32 --batch_size=8
                         --n_experts=8 --group_size=4 --eval_iters=2 --eval_interval=10
                         --max_iters=30 --lr_decay_iters=30 --warmup_iters=5 --compile=False)
{
  echo "# GPU check at commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u)"
  python -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
  echo; echo "## 1. device checks"
  MOT_TEST_DEVICE="$device" python -m pytest -q experiments/gpu_tests.py 2>&1 | tail -n 3
  for compile in "" --compile; do
    echo; echo "## 2. bench.py --step $compile"
    python bench.py --step --device="$device" --dtype="$dtype" $compile $tiny
  done
  echo; echo "## 2. bench.py --sampling"
  python bench.py --sampling --device="$device" --dtype="$dtype" $tiny
  echo; echo "## 3. dense against MoT, ${seconds} s each"
  for ffn in dense mot; do
    overlay=()
    [ "$ffn" = mot ] && overlay=(config/train_shakespeare_char_mot.py)
    # a run stops after its seconds (timeout): what it logged until then is compared
    timeout "$seconds" python train.py config/train_shakespeare_char.py "${overlay[@]}" \
      --device="$device" --dtype="$dtype" --data_root="$data_root" --out_dir="$runs/$ffn" \
      --eval_interval=250 --eval_iters=20 --log_interval=100 "${model[@]}" \
      | grep "^step" || [ -s "$runs/$ffn/log.jsonl" ]
  done
  python experiments/plot.py "$runs/dense" "$runs/mot" --out="${out%.*}.png" \
    || echo "(the figure needs matplotlib: pip install matplotlib)"
} 2>&1 | tee "$out"
rm -rf "$runs"
echo "wrote $out"
