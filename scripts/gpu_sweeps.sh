#!/usr/bin/env bash
# One lent GPU, one call: the Depo N-sweeps of issue 22 (N = 1 to 4, two seeds each), the
# one-window sweep and the two-window variant, sixteen runs side by side (16 CPU cores drive them),
# each capped by a wall-clock budget; they save where they stop and this command resumes them.
#
#   LIMIT=360 OUT=/tmp/gpu bash scripts/gpu_sweeps.sh           # on a CUDA machine
#   DEVICE=cpu LIMIT=10 OUT=/tmp/gpu bash scripts/gpu_sweeps.sh  # a dry run of the plumbing
#
# Writes under $OUT: the studies' pages/JSON/plots (docs/, for the repository's docs/studies/), logs, and one archive of run
# directories per study (without optimizer states; at most 8 files come back from a lent machine).
set -uo pipefail
DEVICE=${DEVICE:-cuda}
LIMIT=${LIMIT:-360}
SA=${SA:-sleepagent}
STUDIES=${STUDIES:-"depo-sweep-gpu depo-windows-gpu"}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p "$OUT/docs"
trap 'echo "script end: $SECONDS s"' EXIT
SCRIPTS=$(cd "$(dirname "$0")" && pwd)
if [ "$DEVICE" = cuda ] && ! python3 -c "import pydantic" 2>/dev/null; then
    source "$SCRIPTS/gpu_env.sh"  # a bare lent machine: install, then work in /tmp/w
fi

if [ "$DEVICE" = cuda ]; then
    source "$SCRIPTS/gpu_mps.sh"
fi

for study in $STUDIES; do
    $SA study "$study" --device "$DEVICE" --jobs 8 --threads 1 --time-limit "$LIMIT" --quiet --docs "$OUT/docs" \
        >"$OUT/$study.log" 2>&1 &
done
wait
for study in $STUDIES; do
    tar czf "$OUT/$study.tgz" --exclude=optimizer.safetensors "runs/study/$study"
    tail -n 8 "$OUT/$study.log"
done
tar czf "$OUT/docs.tgz" -C "$OUT" docs
ls -la "$OUT"
