#!/usr/bin/env bash
# Every GPU check and benchmark of this project as one prepared run on a lent device machine
# (a bare image with CUDA torch; see benchmarks/RESULTS.md). Run from the repo root with:
#   .whl/   cp312 wheels the image lacks (faiss-cpu)
#   .gpu/home/datasets/movielens-100k   the converted dataset (the machine reaches no network)
# Writes JSON and logs to $OUT. Order: the required figures first, the exploration last, all
# inside BUDGET seconds.
set -u
OUT=${OUT:-/tmp/device-out}
BUDGET=${BUDGET:-500}
start=$(date +%s)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TAILORED_HOME=$PWD/.gpu/home
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
{ nvidia-smi -L; python3 -c 'import torch, faiss; print(torch.__version__, faiss.__version__)'; } \
    | tee "$OUT/device.txt"

echo "== refresh throughput (after a warm-up) and torch CUDA exact top-k, 1M items"
python3 -m benchmarks.scale.refresh_throughput --items 1000000 \
    --out "$OUT/refresh_throughput_gpu.json" > "$OUT/refresh.log" 2>&1
echo "rc $?"; tail -20 "$OUT/refresh.log"

echo "== training steps, synthetic site of 1M users: batch 1,024 / 8,192 / 65,536 against the GPU's peaks"
python3 -m benchmarks.scale.train_feed --users 1000000 --batch-sizes 1024 8192 65536 \
    --steps 100 --warmup 10 --threads 8 --cost \
    --out-json "$OUT/train_feed_gpu.json" > "$OUT/train_feed.log" 2>&1
echo "rc $?"; grep "batch \|Error" "$OUT/train_feed.log" | tail -12

echo "== what batch 8,192 learns (rate scaled by sqrt from 1,024): planted-truth recall@10"
python3 -m benchmarks.scale.train_throughput --users 1000000 --items 100000 --minutes 2 --epochs 5 \
    --eval-users 5000 --set train.batch_size=8192 --set 'train.lr_scaling="sqrt"' \
    --set train.lr_reference_batch=1024 \
    --out-json "$OUT/train_throughput_gpu_b8192.json" > "$OUT/train_b8192.log" 2>&1
echo "rc $?"; tail -12 "$OUT/train_b8192.log"

echo "== MovieLens-100k variants, each seed a two-stage run, 16 at once on the one GPU"
left=$(( BUDGET - ($(date +%s) - start) ))
minutes=$(python3 -c "print(max(1.0, ($left - 20) / 60))")
python3 -m benchmarks.explorations.movielens_sweep \
    --variants benchmarks/explorations/sweeps/movielens.toml --seeds 0 2 --jobs 16 \
    --minutes "$minutes" --set 'train.precision="32-true"' \
    --out-json "$OUT/sweep.json" > "$OUT/sweep.log" 2>&1
echo "rc $?"; grep -v "^    \|FAILED" "$OUT/sweep.log" | tail -40
echo "elapsed $(( $(date +%s) - start )) s"
