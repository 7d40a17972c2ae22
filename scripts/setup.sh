#!/usr/bin/env bash
# Install lit_llm with its test extras, from nothing, in the current Python environment.
#
# torch: an installed torch is kept. Otherwise a machine with an NVIDIA driver gets PyPI's default (CUDA) build;
# a machine without one gets torch==2.13.0 (on the project's development machines a local CPU wheel that pip finds
# through its configured find-links; elsewhere PyPI's build). Set TORCH_INDEX_URL to pick another build, e.g.
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
pip_install() { "$PYTHON" -m pip install --disable-pip-version-check -q "$@"; }

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    pip_install torch --index-url "$TORCH_INDEX_URL"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    pip_install torch
  else
    pip_install "torch==2.13.0"
  fi
fi
pip_install -e ".[test]"
"$PYTHON" -c "import torch, lit_llm; print(f'lit_llm {lit_llm.__version__} ready (torch {torch.__version__})')"
