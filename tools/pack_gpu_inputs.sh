#!/usr/bin/env bash
# Pack the CIFAR-10 JPEG folder for benchmarks/gpu_check.sh into .gpu_inputs/ (git-ignored).
#
# usage: benchmarks/pack_gpu_inputs.sh [JPEG_DIR [ARCHIVE]]
#   JPEG_DIR holds train/<class>/*.jpg and test/<class>/*.jpg; default $PLAINNET_TEST_CIFAR10_JPEG,
#   else ../shared/data/cifar10-jpeg next to the repository (where the test fixtures look).
#   ARCHIVE defaults to .gpu_inputs/cifar10-jpeg.tar.gz, where gpu_check.sh looks.
# The GPU machine receives the project tree plus this archive, 64 MiB in all: the script refuses
# an archive over 60 MiB. JPEG data does not compress; gzip only squeezes the tar headers.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
src=${1:-${PLAINNET_TEST_CIFAR10_JPEG:-$repo/../shared/data/cifar10-jpeg}}
if [[ ! -d $src/train || ! -d $src/test ]]; then
    echo "pack_gpu_inputs: $src has no train/ and test/ folders: pass the JPEG folder" >&2
    exit 2
fi
archive=${2:-$repo/.gpu_inputs/cifar10-jpeg.tar.gz}
mkdir -p "$(dirname "$archive")"
tmp=$archive.tmp
# Fixed order, owner and times: the same folder packs to the same archive.
tar -C "$src" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
    --transform 's,^\.,cifar10-jpeg,' -cf - ./train ./test | gzip -n -6 > "$tmp"
mv "$tmp" "$archive"
bytes=$(stat -c %s "$archive")
files=$(tar -tzf "$archive" | grep -c -i '\.jpe\?g$')
echo "wrote $archive: $((bytes / 1048576)) MiB, $files images"
if (( bytes > 60 * 1048576 )); then
    echo "pack_gpu_inputs: archive over 60 MiB; the GPU machine's inputs are capped at 64 MiB" >&2
    exit 1
fi
