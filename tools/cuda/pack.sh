#!/usr/bin/env bash
# Build the CUDA `sprout` (tools/cuda/build.sh) and pack it for the GPU machine: stripped and
# xz-compressed into .gpu/sprout.xz (ignored by git), small enough for the 64 MiB that travels
# with a device run (`carry: [".gpu"]`). tools/cuda/device-train.sh unpacks it there.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
"$ROOT/tools/cuda/build.sh"
mkdir -p "$ROOT/.gpu"
strip -o "$ROOT/.gpu/sprout" "$ROOT/target-cuda/release/sprout"
xz -T0 -6 -f "$ROOT/.gpu/sprout"
ls -l "$ROOT/.gpu/sprout.xz"
