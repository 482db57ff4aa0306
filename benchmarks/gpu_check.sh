#!/usr/bin/env bash
# Everything to check on a machine with a CUDA GPU, in one run (about 10 minutes):
#   1. tests/test_cuda.py: the CPU's answers on CUDA (float64), gradients, bf16 autocast training,
#      `iamnn bench --device cuda`; then the model tests on the CPU of that machine as a sanity check;
#   2. `iamnn bench --pretrained --device cuda` at batch 1, 64 and 256 (act, full, fixed-1, no-halt,
#      the ResNets), twice, JSON and table;
#   3. two epochs of the demo recipe on the GPU under bf16-mixed.
# Usage, from the repository root, with iamnn importable (`pip install -e .`, or PYTHONPATH=src with
# its dependencies installed) and Fashion-MNIST's four IDX files in $IAMNN_DATA (default: .gpu-data):
#   bash benchmarks/gpu_check.sh OUT_FOLDER
# Outputs (all in OUT_FOLDER): gpu.txt, tests.txt, bench_cuda_{1,2}.json, bench_cuda.txt, fit.txt,
# fit_metrics.csv.
set -uo pipefail
out=${1:?give an output folder}
mkdir -p "$out"
export IAMNN_DATA=${IAMNN_DATA:-.gpu-data} PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

{ nvidia-smi; "$python" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())'; } >"$out/gpu.txt" 2>&1

timeout 240 "$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_models.py >"$out/tests.txt" 2>&1
echo "tests: exit $?" | tee -a "$out/tests.txt"

for i in 1 2; do
  timeout 150 "$python" -m iamnn.cli bench --pretrained --device cuda --json "$out/bench_cuda_$i.json" \
    >>"$out/bench_cuda.txt" 2>&1
  echo "bench $i: exit $?" | tee -a "$out/bench_cuda.txt"
done

timeout 240 "$python" -m iamnn.cli fit --config recipes/fashion_mnist/demo.yaml --name gpu_check --runs_dir "$out/runs" \
  --trainer.accelerator gpu --trainer.precision bf16-mixed --trainer.max_epochs 2 \
  --trainer.enable_progress_bar false >"$out/fit.txt" 2>&1
echo "fit: exit $?" | tee -a "$out/fit.txt"
cp "$out/runs/gpu_check/metrics.csv" "$out/fit_metrics.csv" 2>/dev/null
rm -rf "$out/runs"  # checkpoints and weights: not needed back
