#!/usr/bin/env bash
# The one-shot check of a GPU host (bench/gpu_bench.py): builds llama.cpp and torch with
# CUDA into .venv (scripts/setup.sh with CORTEX_GPU=cuda; needs nvcc on PATH), then runs
# both engines on the GPU against the CPU. Arguments go to gpu_bench.py (--device cuda:1,
# --tokens N, --runs N). Exit code 1: GGUF greedy text differed between GPU and CPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CORTEX_GPU="${CORTEX_GPU:-cuda}" CORTEX_EXTRAS=test source "$ROOT/scripts/setup.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python bench/gpu_bench.py "$@"
