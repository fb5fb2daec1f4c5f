#!/usr/bin/env bash
# Whole test suite on CPU: sets up .venv on first run (see scripts/setup.sh), then pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not vllm" -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q "$@"
