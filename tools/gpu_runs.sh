#!/usr/bin/env bash
# Full-length runs on CIFAR-10 JPEGs on one GPU, within a time limit: Plain-11 with SGDR as
# `plainnet reproduce` trains it (fp32, no TF32, SGDR stepped per epoch, fp32 evaluation) and
# the same in bf16 (as `reproduce --variant bf16`), seed 0 each, at once (two processes): the
# pair says whether bf16 may become the Table I grid's default. Then ResNet-110 with SGDR, fp32.
# No snapshots. A run the limit cuts short stops cleanly (SIGTERM: it saves a checkpoint), and
# rerunning this script continues it: the runs live in runs/gpu/ in the repository.
#
# Into OUT_DIR: status.txt; results.tgz (every run's config.json, metrics.jsonl, summary.json
# and train log); and, if a run was cut short, resume.tgz.00, .01, ... (its whole directory in
# chunks of 15 MiB, the most a file brought back may hold). To resume on another machine:
#   cat resume.tgz.* > .gpu_inputs/resume.tgz     (carried with the JPEG archive, 64 MiB in all)
# and this script unpacks it into runs/gpu/ before it starts.
#
# usage: tools/gpu_runs.sh OUT_DIR [SECONDS]   (default 540)
# Inputs: this repository and .gpu_inputs/cifar10-jpeg.tar.gz (tools/pack_gpu_inputs.sh packs a
# CIFAR-10 JPEG class-folder tree there).
# Rehearsal on a CPU: PLAINNET_GPU_CHECK_DEVICE=cpu tools/gpu_runs.sh OUT_DIR 60 trains
# the same runs at a tiny length on a subset.
set -u -o pipefail
if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 OUT_DIR [SECONDS]" >&2
    exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
deadline=${2:-540}
cd "$repo"
device=${PLAINNET_GPU_CHECK_DEVICE:-cuda}
python=${PYTHON:-python3}
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1
export PYTHONUNBUFFERED=1 PLAINNET_CACHE=/tmp/plainnet-runs-cache
: > "$out/status.txt"

# A fixed place for the data: config.json records it, and a resumed run must see the same.
data=/tmp/plainnet-runs-data
if [[ ! -d $data/cifar10-jpeg ]]; then
    mkdir -p "$data"
    tar -xzf .gpu_inputs/cifar10-jpeg.tar.gz -C "$data" || {
        echo "no .gpu_inputs/cifar10-jpeg.tar.gz: run tools/pack_gpu_inputs.sh" \
            | tee -a "$out/status.txt"
        exit 2
    }
fi
common=(--dataset folder --data-dir "$data/cifar10-jpeg" --epochwise-sgdr --no-snapshots --tf32 off)
if [[ $device == cuda ]]; then
    common+=(--device cuda)
else
    common+=(--device cpu --scale 0.02 --train-limit 2000 --test-limit 500)
fi
runs=$repo/runs/gpu
if [[ ! -d $runs && -f .gpu_inputs/resume.tgz ]]; then
    mkdir -p "$runs" && tar -xzf .gpu_inputs/resume.tgz -C "$runs"
    echo "resuming $(ls "$runs")" | tee -a "$out/status.txt"
fi
mkdir -p "$runs"

train() {  # train NAME OPTIONS...: one run in the background, until the deadline
    local name=$1 left=$((deadline - SECONDS))
    shift
    echo "== $name: $left s left" | tee -a "$out/status.txt"
    timeout -s TERM --kill-after=60 "$left" "$python" -m plainnet train "${common[@]}" "$@" \
        --out "$runs/$name" >> "$runs/$name.log" 2>&1 &
}

train plain11-sgdr --model plain11 --schedule sgdr --amp off
train plain11-sgdr-bf16 --model plain11 --schedule sgdr --amp bf16
wait
if ((deadline - SECONDS > 60)); then
    train resnet110-sgdr --model resnet110 --schedule sgdr --amp off
    wait
fi
unfinished=()
for run in "$runs"/*/; do
    name=$(basename "$run")
    summary=$("$python" -c "import json,sys; s=json.load(open(sys.argv[1])); print(s['status'], s['epochs_done'], '/', s['epochs'], 'epochs, final test error', s['test_error'])" "$run/summary.json" 2>&1)
    echo "   $name: $summary" | tee -a "$out/status.txt"
    [[ $summary == finished* ]] || unfinished+=("$name")
done
(cd "$runs" && tar -czf "$out/results.tgz" ./*.log $(ls -d */config.json */metrics.jsonl \
    */summary.json 2>/dev/null))
if ((${#unfinished[@]})); then
    tar -czf - -C "$runs" "${unfinished[@]}" | split -b 15M -d - "$out/resume.tgz."
    echo "   cut short: ${unfinished[*]} (resume.tgz.*)" | tee -a "$out/status.txt"
fi
echo "done in $SECONDS s" | tee -a "$out/status.txt"
