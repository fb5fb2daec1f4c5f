#!/usr/bin/env bash
# The main job on CPU: sets up .venv on first run (see scripts/setup.sh), then runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} TOKENIZERS_PARALLELISM=false
exec .venv/bin/python examples/r1_zero_cpu.py "$@"
