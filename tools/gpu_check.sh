#!/usr/bin/env bash
# The GPU check: plainnet's GPU tests and speed measurements in one command, for a machine with
# one CUDA GPU and a CUDA build of PyTorch (no network needed). The most valuable figure comes first, every step writes its results as soon
# as it has them (a time limit keeps what was measured), and each step's limit is cut to what
# is left of DEADLINE seconds (default 480; a step with under 20 s left is skipped):
#   environment.txt               torch / CUDA / GPU, nvidia-smi
#   plain11.{txt,json}            throughput.py on Plain-11: plainnet's step (the whole step as
#                                 one CUDA graph, compiled) against the conventional loop, and a
#                                 profile: host ops, kernel launches, graph replays, GPU ms/step
#   resnet110.{txt,json}          the same for ResNet-110, not compiled (compiling it took over
#                                 150 s), with its profile (top kernels)
#   k3.{txt,json}                 three runs in one process, both models: in turns on three
#                                 streams (what --runs-per-process does) and fused into one
#                                 grouped network, each against the same three runs
#                                 trained one after the other
#   grouped_conv.{txt,json}       grouped against dense convolutions, every shape, K = 1..8
#                                 (benchmarks/research/grouped_conv.py)
#   resnet110_nchw.{txt,json}     ResNet-110's step without channels-last (its 16-channel layers)
#   pytest.txt                    the GPU tests (pytest -m gpu) on the real CIFAR-10 JPEGs
#   research.txt                  the research code's tests (benchmarks/research/tests)
#   status.txt                    each step's exit status and seconds
#
# usage: tools/gpu_check.sh OUT_DIR      (DEADLINE=SECONDS to change the 480 s budget)
# Inputs: this repository and .gpu_inputs/cifar10-jpeg.tar.gz (tools/pack_gpu_inputs.sh packs a
# CIFAR-10 JPEG class-folder tree there). plainnet need not be installed (PYTHONPATH=src). A
# failing step is recorded and the next runs. Full-length training runs: tools/gpu_runs.sh.
#
# Rehearsal on a CPU: PLAINNET_GPU_CHECK_DEVICE=cpu tools/gpu_check.sh OUT_DIR runs every
# step with --device cpu and tiny sizes (the GPU tests then skip), to prove the script.
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
deadline=${DEADLINE:-480}
python=${PYTHON:-python3}
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1
export PYTHONUNBUFFERED=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export PLAINNET_CACHE=$tmp/cache PLAINNET_TEST_CACHE=$tmp/cache
export TORCHINDUCTOR_CACHE_DIR=$tmp/inductor
: > "$out/status.txt"

step() {  # step NAME TIMEOUT_S COMMAND...: run, log to NAME.txt, record exit status and time
    local name=$1 limit=$2 t0=$SECONDS
    shift 2
    ((limit > deadline - SECONDS)) && limit=$((deadline - SECONDS))
    if ((limit < 20)); then
        echo "== $name: skipped, $limit s left of $deadline" | tee -a "$out/status.txt"
        return
    fi
    echo "== $name: $*" | tee -a "$out/status.txt"
    timeout --kill-after=10 "$limit" "$@" > "$out/$name.txt" 2>&1
    echo "   $name: exit $? after $((SECONDS - t0)) s" | tee -a "$out/status.txt"
    tail -n 4 "$out/$name.txt" | sed 's/^/   | /'
}

{
    date -u
    git -C "$repo" rev-parse HEAD 2>/dev/null || echo "(no git)"
    git -C "$repo" status --short 2>/dev/null | head -20
    "$python" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'
    nvidia-smi 2>&1 || true
    nproc
} > "$out/environment.txt" 2>&1

jpegs=$tmp/cifar10-jpeg
if tar -xzf "$repo/.gpu_inputs/cifar10-jpeg.tar.gz" -C "$tmp" 2>> "$out/status.txt"; then
    export PLAINNET_TEST_CIFAR10_JPEG=$jpegs
else
    echo "no .gpu_inputs/cifar10-jpeg.tar.gz: run tools/pack_gpu_inputs.sh first" \
        | tee -a "$out/status.txt"
fi

bench=("$python" benchmarks/throughput.py)
if [[ $device == cuda ]]; then
    plain=(--device cuda --steps 300 --reps 3 --models plain11)
    resnet=(--device cuda --steps 100 --reps 3 --models resnet110 --compile off)
    k3=(--device cuda --steps 60 --reps 3 --warmup 10 --models plain11,resnet110 --compile off)
    gconv=(--device cuda --max-seconds 50)
else  # the rehearsal: the same steps at tiny sizes
    tiny=(--device cpu --quick --train-images 1000 --test-images 200 --eval-images 200 --workers 1)
    plain=("${tiny[@]}" --models "plain16-16|32-32|64")
    resnet=("${tiny[@]}" --models "resnet8" --compile off)
    k3=("${tiny[@]}" --models "plain8|16,resnet8" --compile off)
    gconv=(--device cpu --quick --models plain11)
fi

step plain11 100 "${bench[@]}" "${plain[@]}" --profile --json "$out/plain11.json"
step resnet110 90 "${bench[@]}" "${resnet[@]}" --profile --json "$out/resnet110.json"
step k3 130 "${bench[@]}" "${k3[@]}" --only plainnet --together 3 --fused 3 --json "$out/k3.json"
step grouped_conv 70 "$python" benchmarks/research/grouped_conv.py "${gconv[@]}" --json "$out/grouped_conv.json"
step resnet110_nchw 40 "${bench[@]}" "${resnet[@]}" --only plainnet --channels-last off \
    --json "$out/resnet110_nchw.json"
step pytest 120 "$python" -m pytest -q -p no:cacheprovider -rs -m gpu tests
step research 60 "$python" -m pytest -q -p no:cacheprovider benchmarks/research/tests
echo "done in $SECONDS s; results in $out" | tee -a "$out/status.txt"
