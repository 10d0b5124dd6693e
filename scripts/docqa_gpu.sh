#!/usr/bin/env bash
# The shipped demo model on a lent GPU: the first run whenever a GPU is at hand.
#
# The ship recipe (sleepagent/train/ship.py, preset "cuda": the capacity study's shape, batch 64,
# fla's kernels): the model at N = 4 for $LIMIT seconds, then its twin at N = 1 to the same step,
# both from the shipped weights grown into that shape; then both are scored through the Agent API
# and copied into sleepagent/checkpoints (docqa-small, docqa-small-n1). It resumes: the same
# command continues where it stopped.
#
#   LIMIT=420 OUT=/tmp/gpu bash scripts/docqa_gpu.sh             # on a CUDA machine (~10 minutes)
#   DEVICE=cpu LIMIT=20 OUT=/tmp/gpu bash scripts/docqa_gpu.sh   # a dry run of the plumbing
#
# Writes under $OUT: the log, ship.json (steps, scores), and checkpoints.tgz (both models, no
# optimizer state) to unpack into sleepagent/checkpoints.
set -euo pipefail
DEVICE=${DEVICE:-cuda}
LIMIT=${LIMIT:-420}
PRESET=$([ "$DEVICE" = cuda ] && echo cuda || echo cpu)
SA=${SA:-sleepagent}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
trap 'echo "script end: $SECONDS s"' EXIT
SCRIPTS=$(cd "$(dirname "$0")" && pwd)
if [ "$DEVICE" = cuda ] && ! python3 -c "import pydantic" 2>/dev/null; then
    source "$SCRIPTS/gpu_env.sh"  # a bare lent machine: install, then work in /tmp/w
fi

if [ "$DEVICE" = cuda ]; then
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
    python3 -c "import fla; print('fla', fla.__version__)" || echo "fla not installed: the torch kernels run"
fi
$SA ship --preset "$PRESET" --time-limit "$LIMIT" --publish --sessions "${SESSIONS:-200}" \
    --report "$OUT/ship.json" 2>&1 | tee "$OUT/ship.log"
# where --publish wrote them: the imported package (the checkout, or /tmp/site on a bare lent machine)
CKPT=$(python3 -c "import pathlib, sleepagent; print(pathlib.Path(sleepagent.__file__).parent / 'checkpoints')")
tar czf "$OUT/checkpoints.tgz" -C "$CKPT" docqa-small docqa-small-n1
ls -la "$OUT"
