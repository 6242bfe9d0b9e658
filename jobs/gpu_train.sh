#!/usr/bin/env bash
# Issue 16's training on a lent GPU, in one run (`run` tool; about 12 minutes with the default
# step counts on an H200 — measure first with small ones: X2_STEPS=200 X4_STEPS=200 GAN_STEPS=100):
# SPAN x2 (paper form, gain 2), SPAN x4 initialised from it, then the GAN photo model from the x4
# one; each exported as fp16 safetensors under $OUT with its metrics, then the quality table.
# Data travels with the tree (prepare here first, 64 MiB limit):
#   python jobs/pack_train_data.py .traindata --budget-mb 58 ../shared/data/kodak \
#       ../shared/data/urban-train ../shared/data/train-extra
#   python jobs/pack_train_data.py .traindata/bench --budget-mb 4 ../shared/data/set5/HR ../shared/data/set14/HR
# and carry `.traindata`. No Ray on the device: --no-ray.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-train}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
DATA=(--set 'data.hr=".traindata/kodak"' --set 'data.extra_hr=[".traindata/urban-train", ".traindata/train-extra"]'
      --set 'data.benchmark_hr=[".traindata/bench/set5", ".traindata/bench/set14"]' --set "train.device=\"${DEVICE:-cuda}\"")
train() {  # NAME CONFIG STEPS INIT SECONDS [--set ...]
  local name=$1 config=$2 steps=$3 init=$4 seconds=$5
  shift 5
  [ -n "$init" ] && set -- "$@" --set "model.init_from=\"$init\""
  timeout "$seconds" "$PY" jobs/train.py --config "configs/$config.toml" --out "$OUT/$name" --no-ray \
    --steps "$steps" "${DATA[@]}" "$@" > "$OUT/$name.log" 2>&1
  echo "$name exit $?"
  [ -f "$OUT/$name/model.safetensors" ] && "$PY" -m pipeline.train.export "$OUT/$name/model.safetensors" \
    "$OUT/$name.safetensors" --fp16 --deploy
}
# x2 in the paper's form on the GPU (its config's gain 0 is the CPU recipe)
train span-x2 span-x2 "${X2_STEPS:-20000}" "" 200 --set 'model.options={num_feat = 48, num_block = 6, gain = 2}' \
  --set data.batch_size=32
train span-x4 span-x4 "${X4_STEPS:-30000}" "$OUT/span-x2/model.safetensors" 300
train span-x4-gan span-x4-gan "${GAN_STEPS:-8000}" "$OUT/span-x4/model.safetensors" 150
timeout 90 "$PY" benchmarks/quality.py --device cuda --sets .traindata/bench --models "$OUT"/span-*.safetensors edsr-x4 edsr-x2 \
  --json "$OUT/quality.json" > "$OUT/quality.md" 2> "$OUT/quality.log"
echo "quality exit $?"
tail -n 3 "$OUT"/*.log
