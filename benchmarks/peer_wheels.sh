#!/usr/bin/env bash
# The peers' wheels for a machine that cannot reach a package index (the lent GPU
# machine): each peer's own wheel and those of the packages its training step imports
# that the GPU image lacks, one folder per peer, so that no peer decides another's versions.
#
#     bash benchmarks/peer_wheels.sh        # → .whl-peers/<peer>/*.whl, then prints the sizes
#
# benchmarks/gpu_peers.sh installs each folder there with `pip install --no-index --no-deps
# --target /tmp/peers/<peer>` and runs train_throughput.py --peer-site /tmp/peers.
#
# The lists are not the peers' Requires-Dist trees (those pull in wandb twice, plotly, nltk,
# umap, diffusers, torchvision...: hundreds of MB): they are what one init, step and FVU of
# every architecture (benchmarks/throughput_worker.py, the same calls the table makes)
# actually imported, in each peer's venv from peers_setup.sh, less what the GPU image
# already has (/work/.library/device/KINDS.md, "Python packages already there": torch,
# transformers, huggingface_hub, numpy, pandas, pyarrow, scipy, einops, jaxtyping, rich,
# pyyaml, requests, xxhash, fsspec, pillow, click, sentencepiece, ...). Three of the image's
# packages travel anyway, because what is carried needs versions newer than the image may
# have: typing_extensions (pydantic 2.14 wants >= 4.16), protobuf (wandb's and nnsight's
# generated code wants >= 6.33.5).
# The versions are those peers_setup.sh resolved (the peers at the versions it names).
#
# saekit needs no folder: its training step imports torch, numpy, safetensors and tqdm
# only, all in the image, and runs from the checkout with PYTHONPATH=src.
#
# PEER_WHEELS_DIR moves the output (default .whl-peers); PEER_WHEELS_PYTHON picks the
# Python the wheels are for (default 3.12, the GPU image's; 3.11 gives this machine's, to
# try the same lists here).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${PEER_WHEELS_DIR:-.whl-peers}"
PY_VERSION="${PEER_WHEELS_PYTHON:-3.12}"

# Shared by SAELens and dictionary_learning (each gets its own copy).
PYDANTIC="pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0"
# Shared by SAELens and sparsify (datasets' own needs; pandas, pyarrow, xxhash and fsspec are in the image).
DATASETS="datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 simple-parsing==0.1.9 docstring_parser==0.18.0"

declare -A WHEELS
# sae_lens imports wandb (and through it opentelemetry) at the top of its trainer and config,
# transformer_lens through its package __init__.
WHEELS[sae-lens]="sae-lens==6.54.12 transformer-lens==3.9.0 better-abc==0.0.3 $DATASETS $PYDANTIC
  wandb==0.31.0 platformdirs==4.14.8 protobuf==7.36.2 googleapis-common-protos==1.76.0
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2
  opentelemetry-exporter-otlp-proto-http==1.45.2 opentelemetry-exporter-otlp-proto-common==1.45.2
  opentelemetry-semantic-conventions==0.66b2 opentelemetry-exporter-http-transport==0.66b2
  opentelemetry-exporter-otlp-common==0.66b2"
# dictionary_learning's package __init__ imports its buffer, hence nnsight and its client.
WHEELS[dictionary-learning]="dictionary-learning==0.1.0 nnsight==0.3.7 $PYDANTIC protobuf==7.36.2
  python-socketio==5.18.1 python-engineio==4.15.1 bidict==0.24.1 websocket-client==1.9.2 zstandard==0.25.0"
WHEELS[sparsify]="eai-sparsify==1.3.3 natsort==8.4.0 schedulefree==1.4.1 $DATASETS"

PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done

for peer in sae-lens dictionary-learning sparsify; do
  # Into a fresh folder, swapped in when complete: a rerun after a version change leaves
  # no stale wheel behind (two versions of one package stop the whole install there).
  mkdir -p "$OUT_DIR"
  fresh="$(mktemp -d "$OUT_DIR/.partial-$peer.XXXX")"
  trap 'rm -rf "$fresh"' EXIT
  # shellcheck disable=SC2086  # the lists are split on purpose
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$PY_VERSION" --implementation cp "${PLATFORMS[@]}" -d "$fresh" ${WHEELS[$peer]}
  rm -rf "${OUT_DIR:?}/$peer"
  mv "$fresh" "$OUT_DIR/$peer"
  trap - EXIT
done

for peer in sae-lens dictionary-learning sparsify; do
  echo "$peer:"
  (cd "$OUT_DIR/$peer" && ls -l --block-size=K ./*.whl | awk '{printf "  %8s  %s\n", $5, substr($9, 3)}')
  echo "  $(du -sh --apparent-size "$OUT_DIR/$peer" | cut -f1) in $(ls "$OUT_DIR/$peer" | wc -l) wheels"
done
echo "total: $(du -sh --apparent-size "$OUT_DIR" | cut -f1) in $OUT_DIR (Python $PY_VERSION)"
