#!/usr/bin/env bash
# Whole test suite on CPU: sets up .venv on first run (see scripts/setup.sh), checks src with
# ruff (lint + format), then pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not vllm" -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Lint before testing: pyflakes + pycodestyle, and the formatter's layout (pyproject.toml [tool.ruff]).
lint_ok=1
.venv/bin/ruff check src || lint_ok=0
.venv/bin/ruff format --check src || lint_ok=0
if [ "$lint_ok" = 0 ]; then
    echo "ruff failed; to fix: .venv/bin/ruff format src && .venv/bin/ruff check src" >&2
    exit 1
fi
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q "$@"
