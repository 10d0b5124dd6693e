#!/usr/bin/env bash
# The next lent GPU, one call: what the open issues still need a GPU for, prepared and dry-run on
# the CPU beforehand.
#   issue 34: the GDN kernel at Qwen3.5's linear-attention head shape (16 heads x 128; the
#     transformers config's defaults), fla's chunked kernel against this project's torch_chunk, each
#     against the recurrent reference; wake latency per N, batched engine decode (native and
#     transformers hybrids) and the agent benchmark, on CUDA with fla (when its wheels came along).
#     Benchmarks first, alone on the GPU.
#   issue 33: the GSM-Infinite-semantics study (N = 1 and 4, two seeds) for the time left.
#
#   LIMIT=330 OUT=/tmp/gpu bash scripts/gpu_next.sh                 # a lent machine (~9 minutes)
#   DEVICE=cpu QUICK=1 LIMIT=5 OUT=/tmp/gpu bash scripts/gpu_next.sh  # a dry run of the plumbing
#                                                                     # (STUDY=0: the benchmarks only)
#
# On a bare lent machine gpu_env.sh installs the wheels carried in .whl/ (call the device tool with
# carry [".whl"]); for fla, add its wheels there first:
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl fla-core==0.6.0 einops==0.8.2
# Writes under $OUT: bench.json (every benchmark's JSON, one per line), bench.log, docs.tgz (the
# study's page, JSON and plots, for docs/studies/), runs.tgz (its runs' curves and configs).
set -uo pipefail
DEVICE=${DEVICE:-cuda}
LIMIT=${LIMIT:-330}
GRACE=${GRACE:-90}
QUICK=${QUICK:-0}
export PYTHONUNBUFFERED=1
SCRIPTS=$(cd "$(dirname "$0")" && pwd)
SA=${SA:-python3 -m sleepagent}
WORK=${WORK:-/tmp/gpu_next}
mkdir -p "$WORK/docs" "$OUT"
trap 'echo "script end: $SECONDS s"' EXIT
if [ "$DEVICE" = cuda ]; then
    python3 -c "import pydantic" 2>/dev/null || source "$SCRIPTS/gpu_env.sh"  # a bare lent machine
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
    # fla on the benchmarks' path only: the study trains as its earlier runs did (torch kernels)
    if [ -d /tmp/site/fla ]; then
        mkdir -p /tmp/fla_site && rm -rf /tmp/fla_site/* && mv /tmp/site/fla /tmp/site/fla_core-*.dist-info /tmp/fla_site/
    fi
    PYTHONPATH=${PYTHONPATH:-}:/tmp/fla_site python3 -c "import fla.ops.gated_delta_rule; print('fla', __import__('fla').__version__)" \
        || echo "no fla"
fi
BENCH_PATH=${PYTHONPATH:-}:/tmp/fla_site

if [ "$QUICK" = 1 ]; then
    LENGTHS=64,128; QWEN="--heads 2 --head-dim 16"; TOKENS=16; SESSIONS=2; PAGES=2
else
    LENGTHS=1024,4096,16384; QWEN="--heads 16 --head-dim 128"; TOKENS=256; SESSIONS=10; PAGES=12
fi
bench() {  # one benchmark, its JSON line appended to bench.json; a failure is logged, not fatal
    echo "== $*" | tee -a "$OUT/bench.log"
    if out=$(PYTHONPATH=$BENCH_PATH timeout 120 $SA bench "$@" --device "$DEVICE" --json 2>>"$OUT/bench.log"); then
        echo "{\"args\": \"$*\", \"result\": $out}" >>"$OUT/bench.json"
    else
        echo "failed: $*" | tee -a "$OUT/bench.log"
    fi
}
BACKENDS="torch_chunk"
if [ "$DEVICE" = cuda ] && PYTHONPATH=$BENCH_PATH python3 -c "import fla.ops.gated_delta_rule" 2>/dev/null; then
    BACKENDS="fla torch_chunk"
fi
for b in $BACKENDS; do
    bench kernels --lengths "$LENGTHS" $QWEN --backend "$b" --repeats 3
done
bench kernels --lengths "$LENGTHS" --repeats 3
bench wake --loops 1,2,4,8 --tokens "$TOKENS"
bench engine --sessions "$SESSIONS" --tokens 64
bench engine --model hf --sessions "$SESSIONS" --tokens 64
bench agent --pages "$PAGES"
echo "benchmarks done: $SECONDS s" | tee -a "$OUT/bench.log"

# the study, for what is left of the call (it saves where it stops; the same command resumes it)
[ "${STUDY:-1}" = 1 ] || exit 0
timeout $((LIMIT + GRACE)) $SA study gsm-infinite --device "$DEVICE" --jobs 4 --threads 1 --time-limit "$LIMIT" \
    --quiet --docs "$WORK/docs" >"$WORK/gsm-infinite.log" 2>&1
echo "study done: $SECONDS s"
tail -n 5 "$WORK/gsm-infinite.log"
cp "$WORK/gsm-infinite.log" "$OUT/"
tar czf "$OUT/runs.tgz" runs/study/gsm-infinite/*/train.json runs/study/gsm-infinite/*/config.json 2>/dev/null
tar czf "$OUT/docs.tgz" -C "$WORK/docs" .
ls -la "$OUT"
