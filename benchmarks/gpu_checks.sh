#!/usr/bin/env bash
# Everything this project checks on a CUDA GPU, for a machine lent for 10 minutes: the CUDA
# tests, the speed and memory matrix of vig_ti and pvig_ti against the reference, then the
# rest of the suite with the GPU visible (it should pass as on a CPU machine: its training
# tests name train.device=cpu). Each step has its own time limit and log; a step that fails
# or runs out of time does not stop the next. Runs from a source checkout without
# installing (PYTHONPATH=src), on whatever torch the machine has.
#
#     bash benchmarks/gpu_checks.sh [LOG_DIR]        # LOG_DIR defaults to $OUT, else gpu-logs
#     STEPS="cuda_tests matrix_vig_ti" bash benchmarks/gpu_checks.sh    # some steps only
#
# Default steps and their limits, 570 s in all (a step's limit is the most it can take):
#   env             15 s   nvidia-smi, torch / PyG / timm versions
#   cuda_tests     165 s   tests/test_cuda.py (140 s on an H200, 2026-12)
#   matrix_vig_ti  140 s   bench_models.py --matrix for one model, in one process
#   matrix_pvig_ti 150 s   the same for pvig_ti (more nodes: slower steps)
#   suite          100 s   the not-slow suite with the GPU visible, as far as it gets
#                          (pytest-xdist, where installed, runs it on 8 workers)
# Opt-in (STEPS=...; not in the 570 s): breakdown 120 s (where ours' eager inference time
# goes, per aggregator) and pyg_convs 90 s (bench_pyg_convs.py).
#
# The matrix, per model (--convs mr edge sage gin --batches 16 128 --precisions float32 bf16
# --modes train infer --warmup 2 --iters 5), each cell ours and the reference alternating in
# the same process, with the CUDA allocator's peak memory of one step of each:
#   eager: every cell, 32 per model (4 convs x batch 16, 128 x float32, bf16 autocast x
#     training step, inference), against the eager reference;
#   compiled: torch.compile(ours) (default mode) against the eager reference, batch 128
#     only, 16 cells per model in this order: float32 training for mr, edge, sage, gin;
#     float32 inference for the four; bf16 training; bf16 inference. A compile is static
#     per cell (no dynamic batch). --budget (the step's limit less 12 s) skips, and
#     reports as skipped, every cell that would not end in time, so the step always ends
#     with its table; the compiled reference (--compile-reference) is not in the default
#     run: it doubles the compile time.
# Estimate (no matrix has run on a GPU yet): process start, imports and CUDA ~15 s; eager
# cells ~1-3 s each (16 steps of batch 16 at ~15-45 ms on the H200, of batch 128 at
# ~0.05-0.3 s), ~45 s for vig_ti's 32 and ~75 s for pvig_ti's; each compiled cell is mostly
# its compile, ~30-60 s (inference) to ~60-90 s (training). So the budgets cover every eager
# cell and the first compiled cells that fit (about 1-2 per model; a training cell is
# expected to take 90 s until one has been seen); the whole script, ~540 s (the matrices
# spend their budgets whole). The compiled cells at length: MATRIX_LIMIT=570
# STEPS=matrix_vig_ti bash benchmarks/gpu_checks.sh (one step per call).
set -u
cd "$(dirname "$0")/.."
logs=${1:-${OUT:-gpu-logs}}
mkdir -p "$logs"
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
steps=" ${STEPS:-env cuda_tests matrix_vig_ti matrix_pvig_ti suite} "

step() {  # step NAME SECONDS COMMAND...: the command's output to LOG_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    [[ $steps == *" $name "* ]] || return 0
    echo "== $name (limit ${limit}s, at ${SECONDS}s): $*"
    timeout "$limit" "$@" >"$logs/$name.log" 2>&1
    echo "== $name: exit $? at ${SECONDS}s"
    tail -n "${TAIL:-12}" "$logs/$name.log"
}

step env 15 bash -c "nvidia-smi -L; $py -c 'import torch, torch_geometric, timm; \
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), \
torch_geometric.__version__, timm.__version__)'; nproc"
step cuda_tests 165 $py -m pytest tests/test_cuda.py -m "" -v -p no:cacheprovider -rs
matrix() {  # matrix MODEL LIMIT: the model's matrix, its budget 12 s inside the limit
    TAIL=60 step "matrix_$1" "$2" $py benchmarks/bench_models.py --matrix --device cuda \
        --models "$1" --convs mr edge sage gin --batches 16 128 --precisions float32 bf16 \
        --modes train infer --warmup 2 --iters 5 --budget $(($2 - 12))
}
matrix vig_ti "${MATRIX_LIMIT:-140}"
matrix pvig_ti "${MATRIX_LIMIT:-150}"
workers=$($py -c 'import xdist' 2>/dev/null && echo "-n 8")  # pytest-xdist where installed
step suite "${SUITE_LIMIT:-100}" $py -m pytest tests -q -p no:cacheprovider -m "not slow" \
    --deselect tests/test_cuda.py $workers -rf
bench="$py benchmarks/bench_models.py --device cuda --warmup 3 --no-memory"
TAIL=14 step breakdown 120 $bench --iters 10 --breakdown --modes infer --convs mr edge sage gin
TAIL=20 step pyg_convs 90 $py benchmarks/bench_pyg_convs.py --device cuda --warmup 3 --iters 10
echo "== done at ${SECONDS}s; logs in $logs"
