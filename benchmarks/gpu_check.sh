#!/usr/bin/env bash
# The GPU check: one command for a machine with one CUDA GPU (an H100), CUDA PyTorch and no
# network. Writes everything to OUT_DIR and finishes in under 8 minutes (each step's time limit
# is also cut to what is left of 470 s; a step with under 20 s left is skipped):
#   1. environment.txt     torch / CUDA / GPU, nvidia-smi
#   2. throughput_plain11.{txt,json}  benchmarks/throughput.py on Plain-11: both pipelines, a
#                          profile of one step with its kernel launches and CUDA-graph replays,
#                          then 1 vs 2 plainnet training processes sharing the GPU (if compiling
#                          fails: throughput_eager.*, and the later steps run with --compile off)
#   3. throughput_resnet110.{txt,json}  the same for ResNet-110, without the concurrency (its own
#                          step: compiling it took over two minutes, and a timeout there must
#                          not lose Plain-11's figures)
#   4. at once, as neither is a speed figure:
#      pytest.txt          the GPU-only tests (pytest -m gpu), on the real CIFAR-10 JPEGs
#      train.txt, run/     plainnet train: Plain-11, SGDR, --scale 0.1 (18 epochs), CIFAR-10 JPEGs
#   5. ablation_*.{txt,json}  if time is left: plainnet's Plain-11 step without CUDA graphs, and
#                          eager, what each switch buys
#   status.txt             each step's exit status and seconds
#
# usage: benchmarks/gpu_check.sh OUT_DIR
# Inputs: this tree and .gpu_inputs/cifar10-jpeg.tar.gz (benchmarks/pack_gpu_inputs.sh). The
# package need not be installed (PYTHONPATH=src). A failing step is recorded and the next runs.
#
# Rehearsal on a CPU: PLAINNET_GPU_CHECK_DEVICE=cpu benchmarks/gpu_check.sh OUT_DIR runs the same
# steps with --device cpu and tiny sizes (the GPU tests then skip), to prove the script end to end.
set -u -o pipefail
if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
cd "$repo"
device=${PLAINNET_GPU_CHECK_DEVICE:-cuda}
python=${PYTHON:-python3}
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export PLAINNET_CACHE=$tmp/cache PLAINNET_TEST_CACHE=$tmp/cache
export TORCHINDUCTOR_CACHE_DIR=$tmp/inductor
: > "$out/status.txt"

deadline=470  # seconds: the whole check stays under 8 minutes
step() {  # step NAME TIMEOUT_S LOGFILE COMMAND...: run, log, record exit status and time
    local name=$1 limit=$2 log=$3
    shift 3
    local t0=$SECONDS
    if [[ $device == cuda ]]; then
        ((limit > deadline - SECONDS)) && limit=$((deadline - SECONDS))
    else
        limit=$((limit * 4))  # the CPU rehearsal may share slow cores; no deadline there
    fi
    if ((limit < 20)); then
        rc=124
        echo "== $name: skipped, $limit s left of the 8 minutes" | tee -a "$out/status.txt"
        return
    fi
    echo "== $name: $*" | tee -a "$out/status.txt"
    timeout --kill-after=10 "$limit" "$@" > "$out/$log" 2>&1
    rc=$?  # global: the caller may react to it
    echo "   $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$out/status.txt"
    tail -n 5 "$out/$log" | sed 's/^/   | /'
}

# 1. environment
{
    date -u
    git -C "$repo" rev-parse HEAD 2>/dev/null || echo "(no git)"
    "$python" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
    nvidia-smi 2>&1 || true
    nproc
} > "$out/environment.txt" 2>&1

# The real CIFAR-10 JPEGs, unpacked to a temporary folder.
jpegs=$tmp/cifar10-jpeg
if tar -xzf "$repo/.gpu_inputs/cifar10-jpeg.tar.gz" -C "$tmp" 2>> "$out/status.txt"; then
    export PLAINNET_TEST_CIFAR10_JPEG=$jpegs
    echo "unpacked $(find "$jpegs" -type f | wc -l) JPEGs" | tee -a "$out/status.txt"
else
    echo "no .gpu_inputs/cifar10-jpeg.tar.gz: run benchmarks/pack_gpu_inputs.sh first" \
        | tee -a "$out/status.txt"
fi

# Measured on an H100 (2026-11-27): warm-up, compiling included, took 33 s for Plain-11 and over
# 150 s for ResNet-110; the conventional ResNet-110 loop trains about 1,400 img/s; Plain-11 with
# 2 concurrent processes took about 2 minutes. A benchmark's JSON is rewritten after each
# measurement, so a step cut by its limit keeps what it had measured.
if [[ $device == cuda ]]; then
    bench=(--device cuda --steps 100 --reps 3)
    train=(--device cuda --scale 0.1)
else  # the CPU rehearsal: the same steps at tiny sizes
    bench=(--device cpu --quick --train-images 1000 --test-images 200 --eval-images 200)
    train=(--device cpu --epochs 2 --train-limit 1000 --test-limit 500 --model "plain16-16|32-32|64")
fi
if [[ $device == cuda ]]; then
    # 100 steps of Plain-11 last 0.3 s: too short a repetition for a tight figure
    plain=(--device cuda --steps 300 --reps 3 --models plain11)
    resnet=("${bench[@]}" --models resnet110)
else  # two small models stand in for them
    plain=("${bench[@]}" --models "plain16-16|32-32|64")
    resnet=("${bench[@]}" --models "plain8-8|16")
fi

# The most wanted figures come first, in case a step runs long. If compiling fails in the
# benchmark, the later steps run eager (--compile off) so that the check still brings figures.
# 2. the benchmark on Plain-11: both pipelines, a profile of one step, 1 vs 2 processes
step throughput_plain11 140 throughput_plain11.txt "$python" benchmarks/throughput.py \
    "${plain[@]}" --profile --concurrent 2 --json "$out/throughput_plain11.json"
if [[ $device == cuda ]] && ! grep -q '"plainnet"' "$out/throughput_plain11.json" 2>/dev/null; then
    echo "   throughput failed: the later steps run with --compile off" | tee -a "$out/status.txt"
    resnet+=(--compile off)
    plain+=(--compile off)
    train+=(--compile off)
    step throughput_eager 60 throughput_eager.txt "$python" benchmarks/throughput.py \
        "${plain[@]}" --json "$out/throughput_eager.json"
fi
# 3. the benchmark on ResNet-110: both pipelines, a profile of one step
step throughput_resnet110 210 throughput_resnet110.txt "$python" benchmarks/throughput.py \
    "${resnet[@]}" --profile --json "$out/throughput_resnet110.json"
# 4. at once: the GPU-only tests (they also use the real-data fixtures, from the archive), and a
# short real-data run (Plain-11, SGDR, a tenth of the schedule: 18 epochs). Its seconds per
# epoch are shared with the tests, so they are not a speed figure.
step train 110 train.txt "$python" -m plainnet train --model plain11 --schedule sgdr \
    --dataset folder --data-dir "$jpegs" --out "$out/run" --no-snapshots "${train[@]}" &
step pytest 110 pytest.txt "$python" -m pytest -m gpu -q -p no:cacheprovider -rs tests
wait
[[ -f $out/run/summary.json ]] && cat "$out/run/summary.json"
# 5. what the switches buy: plainnet's Plain-11 step compiled without CUDA graphs, and eager
step ablation_no_graphs 40 ablation_no_graphs.txt "$python" benchmarks/throughput.py \
    "${plain[@]}" --only plainnet --cuda-graphs off --json "$out/ablation_no_graphs.json"
step ablation_eager 30 ablation_eager.txt "$python" benchmarks/throughput.py "${plain[@]}" \
    --only plainnet --compile off --json "$out/ablation_eager.json"
echo "done in $SECONDS s; results in $out" | tee -a "$out/status.txt"
