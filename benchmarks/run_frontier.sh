#!/usr/bin/env bash
# Train every point of the frontier study that has no exported weights yet, one at a time, resuming
# a killed run from its last checkpoint. Wall time per training command goes to runs/frontier/timings.tsv.
# Usage: benchmarks/run_frontier.sh [point ...]   (default: every recipe in recipes/fashion_mnist/frontier/)
set -euo pipefail
cd "$(dirname "$0")/.."
IAMNN=${IAMNN:-.venv/bin/iamnn}
mkdir -p runs/frontier
points=("$@")
if [ ${#points[@]} -eq 0 ]; then
  for f in recipes/fashion_mnist/frontier/*.yaml; do points+=("$(basename "$f" .yaml)"); done
fi
for p in "${points[@]}"; do
  [ -f "runs/frontier/$p/model.safetensors" ] && continue
  start=$(date +%s)
  "$IAMNN" fit --config "recipes/fashion_mnist/frontier/$p.yaml" --ckpt_path last --trainer.enable_progress_bar=false
  printf '%s\t%s\n' "$p" "$(( $(date +%s) - start ))" >> runs/frontier/timings.tsv
done
