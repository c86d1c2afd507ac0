#!/usr/bin/env bash
# Everything this project checks on a CUDA GPU, for a machine lent for minutes: the CUDA
# tests, the benchmarks with --device cuda, then the rest of the suite with the GPU visible
# (it should pass as on a CPU machine: its training tests name train.device=cpu). Each
# step has its own time limit and log; a step that fails or runs out of time does not stop
# the next. Runs from a source checkout without installing (PYTHONPATH=src), on whatever
# torch the machine has.
#
#     bash benchmarks/gpu_checks.sh [LOG_DIR]        # LOG_DIR defaults to $OUT, else gpu-logs
#     STEPS="cuda_tests compile" bash benchmarks/gpu_checks.sh    # some steps only
#
# On an H200 (2026-12) the CUDA tests took 140 s, and each bench_models row about 24 s
# (a fresh process: imports, CUDA start-up, model build), so the whole script needs about
# 15 minutes; the suite step needs torch_cluster and the other packages of setup.cfg.
set -u
cd "$(dirname "$0")/.."
logs=${1:-${OUT:-gpu-logs}}
mkdir -p "$logs"
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
steps=" ${STEPS:-env cuda_tests bench_models breakdown compile pyg_convs suite} "

step() {  # step NAME SECONDS COMMAND...: the command's output to LOG_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    [[ $steps == *" $name "* ]] || return 0
    echo "== $name (limit ${limit}s, at ${SECONDS}s): $*"
    timeout "$limit" "$@" >"$logs/$name.log" 2>&1
    echo "== $name: exit $? at ${SECONDS}s"
    tail -n "${TAIL:-12}" "$logs/$name.log"
}

step env 30 bash -c "nvidia-smi -L; $py -c 'import torch, torch_geometric, timm; \
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), \
torch_geometric.__version__, timm.__version__)'; nproc"
step cuda_tests 240 $py -m pytest tests/test_cuda.py -m "" -v -p no:cacheprovider -rs
bench="$py benchmarks/bench_models.py --device cuda --warmup 3 --no-memory"
TAIL=25 step bench_models 480 $bench --iters 20 --convs mr edge sage gin
TAIL=14 step breakdown 240 $bench --iters 10 --breakdown --modes infer --convs mr edge sage gin
TAIL=8 step compile 300 $bench --iters 10 --compile --convs mr
TAIL=20 step pyg_convs 90 $py benchmarks/bench_pyg_convs.py --device cuda --warmup 3 --iters 10
workers=$($py -c 'import xdist' 2>/dev/null && echo "-n 8")  # pytest-xdist where installed
step suite "${SUITE_LIMIT:-300}" $py -m pytest tests -q -p no:cacheprovider -m "not slow" \
    --deselect tests/test_cuda.py $workers -rf
