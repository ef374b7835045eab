#!/usr/bin/env bash
# The training-throughput table of saekit and its peers on a GPU (issue 9): bf16 autocast,
# then fp32, every architecture a peer also has, 8x and 32x, synthetic activations.
# Run ON the GPU machine, from the repository root, with the peers' wheels beside it:
#
#     bash benchmarks/peer_wheels.sh        # here, once: .whl-peers/<peer>/*.whl (about 41 MiB)
#
# then, through the device tool (the machine has no index to install from, and the peers'
# venvs cannot travel), this call:
#
#     run(command="bash benchmarks/gpu_peers.sh", carry=[".whl-peers"], timeout_s=600)
#
# What comes back under $OUT: gpu-bf16.txt and gpu-fp32.txt (the printed tables and the
# progress), gpu-bf16.json and gpu-fp32.json (one object per row, as --json writes them),
# env.txt (GPU, driver, the versions of the image's packages the peers run on).
#
# Each peer's wheels are installed with --target into /tmp/peers/<peer>, and
# train_throughput.py --peer-site /tmp/peers runs each peer with the image's python3 and
# its own folder first on PYTHONPATH; saekit runs from the checkout (PYTHONPATH=src: its
# training step imports nothing the image lacks).
#
# Sizing, for about 8 minutes on an H100 (15 minutes of device time per session, the
# machine's start included); the defaults should take 3-4 minutes, leaving room for what
# could not be timed without a GPU. The steps are cheap: at 32x a dense fp32 step is
# 10·d·F·B = 0.44 TFLOP, about 10 ms at the H100's ~50 TFLOP/s without TF32 (the slowest
# library a few times that), so a round of four libraries and the dense bound is under
# 0.1 s and 35 rounds (5 warm-up, 30 timed) at most ~3 s per 32x group, under 1 s at 8x;
# bf16 is faster. What costs is fixed: installing the wheels (4-14 s on this project's
# 2-core CPU machine), the workers' imports (sae_lens 9 s, sparsify 6 s, dictionary_learning
# 5 s, saekit 1.5 s there; they run in parallel with the data, and the first import also
# compiles the .pyc files), 35 x 4,096 + 8,192 synthetic rows (12.6 s there), CUDA and
# Triton start-up, and per (architecture, width) group the trainers' construction
# (saekit's geometric median and the peers' norm estimates on 65,536 rows) and two FVU
# passes on 8,192 rows, a few seconds: about 30 s + 10 groups x ~5 s per precision.
# STEPS and WARMUP change the step counts; PRECISIONS="bf16" (or "fp32") runs one table;
# BENCH_ARGS is appended to train_throughput.py's flags (later flags win, e.g.
# BENCH_ARGS="--expansions 8"); DEVICE=cpu, PYTHON and WHEELS (default .whl-peers) let
# the same script be tried on a CPU machine with wheels for its Python.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu-peers}"
mkdir -p "$OUT"
STEPS="${STEPS:-30}"
WARMUP="${WARMUP:-5}"
PRECISIONS="${PRECISIONS:-bf16 fp32}"
PEERS=(sae-lens dictionary-learning sparsify)
SITE=/tmp/peers
PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl-peers}"
DEVICE="${DEVICE:-cuda}"
read -r -a BENCH_ARGS <<<"${BENCH_ARGS:-}"

for peer in "${PEERS[@]}"; do
  if ! ls "$WHEELS/$peer"/*.whl >/dev/null 2>&1; then
    echo "no wheels in $WHEELS/$peer: run \`bash benchmarks/peer_wheels.sh\` where pip reaches PyPI, and carry .whl-peers" >&2
    exit 2
  fi
done

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$PYTHON" - <<'EOF'
import importlib.metadata as md, sys
print("python", sys.version.split()[0], sys.executable)
for name in ("torch", "triton", "numpy", "transformers", "huggingface_hub", "typing_extensions", "protobuf",
             "pyarrow", "fsspec", "pandas", "xxhash", "einops", "jaxtyping", "safetensors", "tqdm"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} missing")
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

start=$SECONDS
for peer in "${PEERS[@]}"; do
  rm -rf "${SITE:?}/$peer"
  "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
    --target "$SITE/$peer" "$WHEELS/$peer"/*.whl || { echo "installing $peer's wheels failed" >&2; exit 1; }
done
echo "wheels installed in $SITE in $((SECONDS - start)) s"

export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
for precision in $PRECISIONS; do
  case "$precision" in
    bf16) autocast=bf16 ;;
    fp32) autocast=none ;;
    *) echo "PRECISIONS: bf16 and/or fp32, got $precision" >&2; exit 2 ;;
  esac
  echo "== $precision (at $((SECONDS - start)) s)"
  "$PYTHON" benchmarks/train_throughput.py --device "$DEVICE" --autocast "$autocast" --data synthetic \
    --archs relu,topk,batchtopk,gated,jumprelu --expansions 8,32 --steps "$STEPS" --warmup "$WARMUP" \
    --peer-site "$SITE" --json "$OUT/gpu-$precision.json" "${BENCH_ARGS[@]}" 2>&1 | tee "$OUT/gpu-$precision.txt" || status=1
done
echo "done in $((SECONDS - start)) s"
exit $status
