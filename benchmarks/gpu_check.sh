#!/usr/bin/env bash
# Every GPU check of issue 14 in one run on a lent device (`run` tool, about 9 minutes at most):
# the engine benchmark on CUDA and gpu_throughput.py (EDSR-baseline and SRVGGNetCompact x4,
# large and small images, each precision, with and without torch.compile). JSON under $OUT.
# The device has no Ray and no network: the package runs from this tree (PYTHONPATH), with
# whatever Python packages the device has; what is missing is said in $OUT/environment.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
"$PY" - > "$OUT/environment.json" <<'PYEOF'
import importlib, json, torch
mods = {m: bool(importlib.util.find_spec(m)) for m in ("numpy", "PIL", "fsspec", "pyarrow", "safetensors",
                                                        "spandrel", "tifffile", "skimage", "tqdm")}
print(json.dumps({"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                  "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                  "modules": mods}, indent=2))
PYEOF
cat "$OUT/environment.json"
timeout 180 "$PY" benchmarks/gpu_throughput.py --compile off --out "$OUT/gpu_throughput.json" \
  2> "$OUT/gpu_throughput.log"
echo "gpu_throughput (eager) exit $?"
# torch.compile compiles once per shape (minutes in all): bf16 only, each figure logged as it comes
timeout 180 "$PY" benchmarks/gpu_throughput.py --compile on --precisions bf16 --out "$OUT/gpu_compile.json" \
  2> "$OUT/gpu_compile.log"
echo "gpu_throughput (compile) exit $?"
# the fastest tile and batch size on this card (what automatic tiles then use), then the engine end to end
UPSCALER_CACHE="$OUT/cache" timeout 50 "$PY" -m pipeline.cli calibrate --model edsr-x4 --device cuda --seconds 30 \
  --json > "$OUT/calibrate.json" 2> "$OUT/calibrate.log"
echo "calibrate exit $?"
UPSCALER_CACHE="$OUT/cache" timeout 120 "$PY" benchmarks/engine.py --device cuda --compile --repeat 1 > "$OUT/engine.json" \
  2> "$OUT/engine.log"
echo "engine exit $?"
tail -c 3000 "$OUT/gpu_throughput.log" "$OUT/gpu_compile.log"
