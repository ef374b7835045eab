#!/usr/bin/env bash
# Everything a lent GPU should check, in one call of about three minutes on an H200 (the
# device time of a session is short, and each start costs minutes):
#
#   1. the GPU tests: the CUDA-graph step against the step op by op, NaN refusals, resume,
#      a whole `saekit train --device cuda` with and without graphs (tests/test_graphed_step.py);
#   2. benchmarks/gpu_graphs.py at 8x, 16x and 32x: the table behind graphed_step.GRAPH_MAX_FEATURES;
#   3. benchmarks/gpu_profile.py on the graphed bf16 8x steps (wall time against kernels);
#   4. benchmarks/gpu_peers.sh: the peer table of the README (needs .whl-peers, see there).
#
# Through the device tool, from the repository root:
#
#     run(command="bash benchmarks/gpu_check.sh", carry=[".whl-peers"], timeout_s=420)
#
# Each part's output lands in $OUT (default out/gpu-check); SKIP="peers" (or "graphs",
# "profile", "tests", several separated by spaces) leaves parts out.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-out/gpu-check}" PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
SKIP=" ${SKIP:-} "
PYTHON="${PYTHON:-python3}"
status=0

if [[ $SKIP != *" tests "* ]]; then
  timeout 240 "$PYTHON" -m pytest -q -p no:cacheprovider --tb=short tests/test_graphed_step.py 2>&1 \
    | tee "$OUT/tests.txt" | tail -25 || status=1
fi
if [[ $SKIP != *" graphs "* ]]; then
  (cd benchmarks && timeout 150 "$PYTHON" gpu_graphs.py --steps 12 --sizes 4608,9216,18432) 2>&1 \
    | tee "$OUT/graphs.txt" || status=1
fi
if [[ $SKIP != *" profile "* ]]; then
  (cd benchmarks && timeout 60 "$PYTHON" gpu_profile.py --graphs --sizes 4608 --precisions bf16 --top 5) 2>&1 \
    | tee "$OUT/profile.txt" || status=1
fi
if [[ $SKIP != *" peers "* ]]; then
  OUT="$OUT/peers" timeout 300 bash benchmarks/gpu_peers.sh 2>&1 | grep -E "^synthetic|wall clock|done in|rror" || status=1
fi
exit $status
