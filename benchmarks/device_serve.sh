#!/usr/bin/env bash
# The serving load benchmark (issue 4) on a lent device machine: a machine with spare cores
# (16 here against 2 on the CPU machine), so the server's processes and the load clients do
# not share two cores. Serving is CPU-only (onnxruntime, FAISS on the CPU); the GPU only
# speeds up building the 1M-item bundle. Run from the repo root with .whl/ (cp312 wheels the
# image lacks: faiss-cpu, grpcio and its health/reflection packages, protobuf, redis,
# prometheus-client). SMOKE=1 runs it on a small bundle (to try it on the CPU first);
# INSTALL=0 skips the wheel install. Writes JSON and logs to $OUT.
set -u
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
start=$(date +%s)
export PYTHONUNBUFFERED=1 TAILORED_HOME=${TAILORED_HOME:-/tmp/tailored-home}
if [ "${INSTALL:-1}" = 1 ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
    python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
fi
PY=${PY:-python3}
{ nproc; nvidia-smi -L 2>/dev/null; $PY -c 'import torch, faiss, grpc, onnxruntime as o; print(torch.__version__, faiss.__version__, grpc.__version__, o.__version__)'; } \
    | tee "$OUT/device.txt"
if [ "${SMOKE:-0}" = 1 ]; then
    size=(--smoke)
    cfgs="smoke_p4 smoke_p1"
else
    # 1M items as on the CPU machine; training capped at 1 minute (the GPU), its final
    # evaluation on 2,000 users, a smaller ranker set: serving cost does not depend on how
    # long the towers trained
    size=(--train-minutes 1 --final-eval-users 2000 --ranker-users 3000 --ranker-epochs 2
        --seconds 6 --warmup 1)
    cfgs=${CFGS:-processes12 processes4 processes1}
fi
for c in $cfgs; do
    echo "== recommend phase, [serve] of benchmarks/serving/configs/$c.toml ($(( $(date +%s) - start )) s)"
    # the first configuration also profiles the servicer in-process (and the served recall)
    phases=recommend; [ "$c" = "${cfgs%% *}" ] && phases=recommend,profile
    $PY -m benchmarks.serving.serve_load --phases "$phases" "${size[@]}" --connections 16 \
        --client-processes 4 --server-config "benchmarks/serving/configs/$c.toml" \
        --out "$OUT/serve_load_device_$c.json" > "$OUT/serve_$c.log" 2>&1
    echo "rc $?"; grep -v "^ *[{}]\|\"" "$OUT/serve_$c.log" | tail -12
    cp "$TAILORED_HOME"/bench/serve_load/*/build.json "$OUT/build.json" 2>/dev/null
done
echo "elapsed $(( $(date +%s) - start )) s"
