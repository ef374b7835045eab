#!/usr/bin/env bash
# A virtual environment with the peer libraries, for benchmarks/peer_formats.py and
# benchmarks/peer_eval.py:
#
#     bash benchmarks/peers_setup.sh              # creates .peers-venv
#     SPARSIFY_DISABLE_TRITON=1 .peers-venv/bin/python benchmarks/peer_formats.py
#
# The peers live apart from saekit's own environment: they pin their own versions of
# transformers and friends. torch is installed first (SAEKIT_TORCH, default the CPU
# build this machine has on disk), but dictionary-learning needs nnsight, which needs
# torchvision, whose newest build pins a newer torch: expect pip to replace it with a
# CUDA build (about 7 GB in all). The versions are the ones the figures in the issue
# notes were measured with.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.peers-venv}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "${SAEKIT_TORCH:-torch==2.13.0}"
"$VENV/bin/pip" install -q sae-lens==6.54.12 dictionary-learning==0.1.0 eai-sparsify==1.3.3 nnsight==0.3.7
"$VENV/bin/pip" install -q -e .
"$VENV/bin/python" -c "import sae_lens, dictionary_learning, sparsify, torch; print('peers ready, torch', torch.__version__)"
