#!/usr/bin/env bash
# Train the full-data study's points one after another, resuming any that a kill interrupted.
#   benchmarks/run_study.sh [POINT ...]      (default: every recipe in recipes/fashion_mnist/study)
#   STUDY=cluttered_fashion_mnist/study RUNS=runs/cluttered benchmarks/run_study.sh   (another study's recipes)
# A finished point is skipped (its run folder holds model.safetensors). One heavy job at a time:
# on 2 cores, two trainings side by side slow each other several times over.
set -euo pipefail
cd "$(dirname "$0")/.."
STUDY=${STUDY:-fashion_mnist/study}
RUNS=${RUNS:-runs/study}
points=("$@")
if [ ${#points[@]} -eq 0 ]; then
  for f in "recipes/$STUDY"/*.yaml; do points+=("$(basename "$f" .yaml)"); done
fi
for p in "${points[@]}"; do
  if [ -f "$RUNS/$p/model.safetensors" ]; then echo "== $p: done"; continue; fi
  echo "== $p: $(date -u +%H:%M:%S)"
  .venv/bin/iamnn fit --config "recipes/$STUDY/$p.yaml" --ckpt_path last
done
