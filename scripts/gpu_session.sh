#!/usr/bin/env bash
# One lent GPU, a few minutes: the CUDA tests, then the GPU training runs side by side, each
# capped by a wall-clock budget (they save where they stop and resume with the same command).
#
#   LIMIT=380 OUT=/tmp/gpu bash scripts/gpu_session.sh          # on a CUDA machine
#   DEVICE=cpu LIMIT=15 OUT=/tmp/gpu bash scripts/gpu_session.sh  # a dry run of the plumbing
#
# Writes under $OUT: log files, the rule110-gpu studies' pages/JSON/plots (docs/, for the repository's docs/studies/), and
# docqa.tgz, rule110.tgz with every run directory (without optimizer states).
set -uo pipefail
DEVICE=${DEVICE:-cuda}
LIMIT=${LIMIT:-380}
SA=${SA:-sleepagent}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/docs"
trap 'echo "script end: $SECONDS s"' EXIT
SCRIPTS=$(cd "$(dirname "$0")" && pwd)
if [ "$DEVICE" = cuda ] && ! python3 -c "import pydantic" 2>/dev/null; then
    source "$SCRIPTS/gpu_env.sh"  # a bare lent machine: install, then work in /tmp/w
fi
mkdir -p runs/gpu

if [ "$DEVICE" = cuda ]; then
    python3 -c "import torch; print('torch', torch.__version__)"
    python3 -c "import fla; print('fla', fla.__version__)" || echo "fla not installed: the torch kernels run"
    source "$SCRIPTS/gpu_mps.sh"
    (timeout 300 python3 -m pytest -q -p no:cacheprovider "${REPO:-.}/tests/model/test_cuda.py" >"$OUT/test_cuda.log" 2>&1;
     echo "pytest exit $?" >>"$OUT/test_cuda.log") &
fi

# the shipped demo model's task, trained with N = 4 on a batch 16x the CPU run's
$SA train --task docqa --loops 4 --steps 20000 --batch-size ${DOCQA_BATCH:-64} --d-model 128 --n-layers 4 --seed 0 \
    --warmup-steps 100 --schedule constant --save-every 500 --eval-every 250 --eval-n 50 \
    --task-args '{"n_places": [4, 6], "hops": [1, 2], "questions": 6, "window": 384, "name_len": 1, "page_chars": 56}' \
    --device "$DEVICE" --time-limit "$LIMIT" --out runs/gpu/docqa >"$OUT/docqa.log" 2>&1 &
DOCQA=$!

# Rule 110 at t = 2 and t = 4: N = 1 vs N = 4, two seeds each, all eight runs at once
$SA study rule110-gpu-t2 --device "$DEVICE" --jobs 4 --time-limit "$LIMIT" --quiet --docs "$OUT/docs" \
    >"$OUT/study_t2.log" 2>&1 &
T2=$!
$SA study rule110-gpu --device "$DEVICE" --jobs 4 --time-limit "$LIMIT" --quiet --docs "$OUT/docs" \
    >"$OUT/study.log" 2>&1
echo "study exit $?" >>"$OUT/study.log"
wait $T2
echo "study exit $?" >>"$OUT/study_t2.log"
wait $DOCQA
echo "docqa exit $?" >>"$OUT/docqa.log"
$SA eval runs/gpu/docqa --loops 1,4 --n ${EVAL_N:-200} --device "$DEVICE" >>"$OUT/docqa.log" 2>&1
wait
# at most 8 files of 16 MiB come back from a lent machine: one archive per group
tar czf "$OUT/docqa.tgz" --exclude=optimizer.safetensors runs/gpu
tar czf "$OUT/rule110_t4.tgz" --exclude=optimizer.safetensors runs/study/rule110-gpu
tar czf "$OUT/rule110_t2.tgz" --exclude=optimizer.safetensors runs/study/rule110-gpu-t2
tar czf "$OUT/logs.tgz" -C "$OUT" docs $(cd "$OUT" && ls *.log)
ls -la "$OUT"
tail -n 25 "$OUT/test_cuda.log" 2>/dev/null
tail -n 12 "$OUT/study.log" "$OUT/study_t2.log"
tail -n 15 "$OUT/docqa.log"
