#!/usr/bin/env bash
# One pass over everything that needs a GPU, for a machine with CUDA and torch: the CUDA
# tests, the benchmark in float32 and with TF32, and a short training run end to end through
# the CLI, then generate and eval. Writes its logs into OUTDIR.
#
#   bash scripts/gpu_check.sh OUTDIR path/to/tinyshakespeare.txt
set -uo pipefail
out=${1:?usage: gpu_check.sh OUTDIR TINYSHAKESPEARE}
data=${2:?usage: gpu_check.sh OUTDIR TINYSHAKESPEARE}
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$out"
py=${PYTHON:-python3}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())" \
  | tee -a "$out/gpu.txt"

echo "== CUDA tests"
timeout 200 $py -m pytest -q -p no:cacheprovider tests/test_cuda.py \
  tests/test_train.py::test_cuda_training_with_tf32_and_bf16_autocast \
  tests/test_checkpoint.py::test_saved_on_cuda_loads_on_cpu 2>&1 | tee "$out/tests.log" | tail -30

echo "== benchmark, float32"
timeout 300 $py scripts/bench.py --device cuda --data "$data" --repeats 5 2>&1 | tee "$out/bench.md"

echo "== benchmark, TF32"
timeout 120 $py scripts/bench.py --device cuda --tf32 --data "$data" --repeats 5 --skip memory,sample,eval \
  --sizes 512,64,128 1024,256,128 2>&1 | tee "$out/bench_tf32.md"

echo "== charrnn train / generate / eval on CUDA"
run=$(mktemp -d)/run
timeout 110 $py -m charrnn train "$data" --config configs/shakespeare.toml --max-time 60s --out "$run" \
  2>&1 | tee "$out/train.log" | tail -15
timeout 40 $py -m charrnn generate --checkpoint "$run" --prefix "ROMEO:" --length 300 --seed 0 2>&1 | tee "$out/generate.txt"
timeout 40 $py -m charrnn eval --checkpoint "$run" 2>&1 | tee "$out/eval.txt"
