#!/usr/bin/env bash
# The GPU check: what this project's GPU path does on one NVIDIA GPU, in under 8 minutes.
#
#   bash benchmarks/gpu_check.sh                  # on a GPU machine, from the checkout's root
#   GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh   # print the steps, run none (any machine)
#
# Steps (each under its own time limit, 8 minutes in all; a failed step is recorded and the next runs):
#   install   make install: the torch CUDA build and DALI wheel the driver asks for (make gpu-choices)
#   demo      make demo on one GPU (configs/demo.yaml; precision auto: bf16 where the GPU has it)
#   loaders   benchmarks/loaders.py --suite backends --quick: DALI's mixed (nvJPEG) decode and FFCV to the device
#   recipe    the ImageNet ViT-S recipe on generated 256 px data: 20 steps with a checkpoint, a resume
#             to 30, the export (checkpoint, resume, export on the GPU)
#   step      benchmarks/gpu_step.py: ViT-S/16 and ViT-B/16 step time, MFU, peak memory per encoding,
#             and the attention kernel
# Everything goes to one folder (GPU_CHECK_OUT, default benchmarks/results/gpu_check): a log per step
# and summary.md, the file to paste into docs/performance.md.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${GPU_CHECK_OUT:-benchmarks/results/gpu_check}
dry=${GPU_CHECK_DRY_RUN:-0}
mkdir -p "$out"
summary=$out/summary.md
py=.venv/bin/python
export MLFLOW_TRACKING_URI=sqlite:///$PWD/$out/mlflow.db MLFLOW_DISABLE_TELEMETRY=true

{
    echo "# GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo
    echo '```'
    nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not found"
    nvidia-smi --query-gpu=driver_version,memory.total --format=csv,noheader 2>/dev/null || true
    echo "$(nproc) CPUs, $(free -g 2>/dev/null | awk '/Mem:/ {print $2}') GiB RAM"
    echo '```'
    echo
    echo "| step | result | seconds |"
    echo "|---|---|---|"
} >"$summary"

# step NAME LIMIT_S COMMAND...: run it with its log in $out/NAME.log, add a row to the summary
step() {
    local name=$1 limit=$2 rc=0 start
    shift 2
    start=$(date +%s)
    if [[ $dry == 1 ]]; then
        echo "would run (limit ${limit}s): $*" | tee "$out/$name.log"
    else
        echo "== $name: $*" >&2
        timeout "$limit" "$@" >"$out/$name.log" 2>&1 || rc=$?
    fi
    local took=$(($(date +%s) - start)) result="ok"
    [[ $rc == 124 ]] && result="timed out after ${limit}s"
    [[ $rc != 0 && $rc != 124 ]] && result="failed (exit $rc): $(tail -n 1 "$out/$name.log" | tr '|' '/')"
    echo "| $name | $result | $took |" >>"$summary"
    return 0
}

step install 180 make install
step choices 10 make -s gpu-choices
step demo 60 make demo NPROC=1  # auto precision: bf16 on a GPU with native bf16
step loaders 45 "$py" benchmarks/loaders.py --suite backends --quick --no-model --workers 8
data=$out/data run=$out/recipe
step prepare 30 "$py" launch/prepare_data.py compass2d --out "$data" --image-size 256 --formats webdataset --workers 8
recipe=(configs/imagenet/deit3_vit_s.yaml "data.root=$data" data.dataset=compass2d data.backend=dali
    data.batch_size=64 train.checkpoint_every=10 train.eval_every=0 "train.out_dir=$run" "eval.sizes=[224]")
step recipe 45 "$py" launch/train.py "${recipe[@]}" train.max_steps=20
step resume 30 "$py" launch/train.py "${recipe[@]}" train.max_steps=30
step gpu_step 90 "$py" benchmarks/gpu_step.py --out "$out/gpu_step.json"

{
    echo
    echo "What each step printed last:"
    echo
    for log in "$out"/*.log; do
        echo "- $(basename "$log" .log): $(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-200)"
    done
    if [[ -f $out/gpu_step.log ]]; then
        echo
        echo '```'
        grep -E 'batch|wrote' "$out/gpu_step.log" || true
        echo '```'
    fi
    grep -h 'resumed from\|precision ' "$out/resume.log" "$out/demo.log" 2>/dev/null | sed 's/^/    /' || true
} >>"$summary"
echo "summary: $summary"
