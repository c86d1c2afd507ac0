#!/usr/bin/env bash
# Everything this project checks on a CUDA GPU, in one go, for a machine lent for minutes:
# the CUDA tests, the benchmarks with --device cuda, then the rest of the suite with the GPU
# visible (train.device=auto picks it). Each step has its own time limit and log; a step that
# fails or runs out of time does not stop the next. Runs from a source checkout without
# installing (PYTHONPATH=src), on whatever torch the machine has.
#
#     bash benchmarks/gpu_checks.sh [LOG_DIR]        # LOG_DIR defaults to $OUT, else gpu-logs
set -u
cd "$(dirname "$0")/.."
logs=${1:-${OUT:-gpu-logs}}
mkdir -p "$logs"
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...: the command's output to LOG_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s, at ${SECONDS}s): $*"
    timeout "$limit" "$@" >"$logs/$name.log" 2>&1
    echo "== $name: exit $? at ${SECONDS}s"
    tail -n "${TAIL:-12}" "$logs/$name.log"
}

step env 30 bash -c "nvidia-smi -L; $py -c 'import torch, torch_geometric, timm; \
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), \
torch_geometric.__version__, timm.__version__)'; nproc"
step cuda_tests 150 $py -m pytest tests/test_cuda.py -m "" -v -p no:cacheprovider -rs
bench="$py benchmarks/bench_models.py --device cuda --warmup 3"
TAIL=25 step bench_models 170 $bench --iters 20 --no-memory --convs mr edge sage gin
TAIL=14 step breakdown 80 $bench --iters 10 --breakdown --modes infer --convs mr edge sage gin
TAIL=20 step big_batch 60 $bench --iters 10 --batch 64 --convs mr gin
TAIL=20 step pyg_convs 50 $py benchmarks/bench_pyg_convs.py --device cuda --warmup 3 --iters 10
step suite "${SUITE_LIMIT:-150}" $py -m pytest tests -q -p no:cacheprovider -m "not slow" \
    --deselect tests/test_cuda.py -n 8 --maxfail 40
