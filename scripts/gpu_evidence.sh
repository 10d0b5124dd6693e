#!/usr/bin/env bash
# One lent H200, one call (issue 33): the multi-window Depo sweep, the GSM-Infinite-semantics study,
# the compute-matched baselines of Rule 110 (t = 4) and Depo (4 hops) and their parents again beside
# them, 32 runs side by side,
# each capped by a wall-clock budget (they save where they stop; the same command resumes them).
#
#   LIMIT=300 OUT=/tmp/gpu bash scripts/gpu_evidence.sh            # on a CUDA machine (~8 minutes;
#                                                                   # a bare lent one: see gpu_env.sh)
#   DEVICE=cpu LIMIT=10 OUT=/tmp/gpu bash scripts/gpu_evidence.sh  # a dry run of the plumbing
#
# Writes under $OUT: the studies' pages/JSON/plots (docs.tgz, for docs/studies/), their logs, and
# runs.tgz with every run's train.json and config.json (the curves), weights.tgz with the small models' weights.
set -uo pipefail
DEVICE=${DEVICE:-cuda}
LIMIT=${LIMIT:-300}
SA=${SA:-python3 -m sleepagent}
STUDIES=${STUDIES:-"depo-windows3-gpu:8 gsm-infinite:8 rule110-gpu-depth4:2 rule110-gpu-gdn2:2 depo-deep-gpu-depth4:2 depo-deep-gpu-gdn2:2"}
# the baselines' parents, N = 1 and N = 4, again beside them: the same machine and load, so steps,
# FLOPs and seconds compare; their pages go to rerun/, the published parent pages stay as they are
RERUN=${RERUN:-"rule110-gpu:4 depo-deep-gpu:4"}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
# pages and logs are written outside $OUT and come back as three archives (at most 8 files come back);
# every study is stopped at LIMIT + GRACE seconds so that the archives are always written
WORK=${WORK:-/tmp/evidence}
GRACE=${GRACE:-150}
mkdir -p "$WORK/docs" "$WORK/rerun" "$OUT"
trap 'echo "script end: $SECONDS s"' EXIT

SCRIPTS=$(cd "$(dirname "$0")" && pwd)
if [ "$DEVICE" = cuda ]; then
    python3 -c "import pydantic" 2>/dev/null || source "$SCRIPTS/gpu_env.sh"  # a bare lent machine
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
    source "$SCRIPTS/gpu_mps.sh"
fi

for item in $STUDIES; do
    study=${item%%:*}
    timeout $((LIMIT + GRACE)) $SA study "$study" --device "$DEVICE" --jobs "${item##*:}" --threads 1 --time-limit "$LIMIT" --quiet \
        --docs "$WORK/docs" >"$WORK/$study.log" 2>&1 &
done
for item in $RERUN; do
    study=${item%%:*}
    timeout $((LIMIT + GRACE)) $SA study "$study" --device "$DEVICE" --jobs "${item##*:}" --threads 1 --time-limit "$LIMIT" --quiet \
        --out runs/rerun --docs "$WORK/rerun" >"$WORK/rerun-$study.log" 2>&1 &
done
wait
echo "all studies done: $SECONDS s"
tail -n 4 "$WORK"/*.log
# at most 8 files come back: every run's curves and config; the weights of the small models
tar czf "$OUT/runs.tgz" runs/study/*/*/train.json runs/study/*/*/config.json runs/rerun/*/*/train.json
(cd runs/study && tar czf "$OUT/weights.tgz" depo-windows3-gpu/*/model.safetensors gsm-infinite/*/model.safetensors)
tar czf "$OUT/docs.tgz" -C "$WORK" .
ls -la "$OUT"
