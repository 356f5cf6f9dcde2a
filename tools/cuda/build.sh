#!/usr/bin/env bash
# Build a CUDA-enabled `sprout` (cargo feature `cuda`) on a machine that has a Rust toolchain
# but no CUDA toolkit, for a GPU machine that has the NVIDIA driver (CUDA 13.0) but no Rust.
# Everything comes from PyPI wheels of the CUDA 13.0 line, as ../shared/ASSETS.md describes;
# libcuda (the driver's) is replaced at link time by a stub with the symbols cudarc declares.
#
#   tools/cuda/build.sh            # → target-cuda/release/sprout (H100/H200: compute 9.0)
#   CUDA_COMPUTE_CAP=80 tools/cuda/build.sh
#
# On the GPU machine, put the CUDA libraries of its PyTorch installation on LD_LIBRARY_PATH
# (their nvidia/*/lib folders) and run the binary with `device = "cuda"` in the train config.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${CUDA_WORK:-/work/cuda-wheels}
mkdir -p "$WORK/wheels" "$WORK/root"
if [ ! -x "$WORK/root/nvidia/cu13/bin/nvcc" ]; then
  pip download --no-deps -q -d "$WORK/wheels" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-cublas==13.0.2.14 nvidia-curand
  # Unzip every wheel into one tree (pip install --target skips files of wheels that share
  # nvidia/cu13/).
  for w in "$WORK"/wheels/*.whl; do unzip -qo "$w" -d "$WORK/root"; done
fi
CU="$WORK/root/nvidia/cu13"
chmod +x "$CU"/bin/* "$CU"/nvvm/bin/* 2>/dev/null || true
for f in "$CU"/lib/lib*.so.*; do
  b=$(basename "$f"); n="${b%%.so.*}.so"
  [ -e "$CU/lib/$n" ] || ln -s "$b" "$CU/lib/$n"
done
# The driver library is not in any wheel: link against a stub that defines every cu* symbol
# cudarc's driver bindings declare; the real libcuda.so.1 is used at run time.
(cd "$ROOT" && cargo fetch -q)
CUDARC=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.* | tail -n 1)
mkdir -p "$CU/lib/stubs"
grep -hoE '^\s+fn cu[A-Za-z0-9_]+\(' "$CUDARC/src/driver/sys/mod.rs" \
  | sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u \
  | awk '{ print "int " $1 "(void) { return 999; }" }' > "$CU/lib/stubs/cuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CU/lib/stubs/libcuda.so" "$CU/lib/stubs/cuda_stub.c"
export CUDA_HOME="$CU" CUDA_PATH="$CU" PATH="$CU/bin:$PATH"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export LIBRARY_PATH="$CU/lib:$CU/lib/stubs:${LIBRARY_PATH:-}"
export LD_LIBRARY_PATH="$CU/lib:${LD_LIBRARY_PATH:-}"
cd "$ROOT"
cargo build --release --features cuda --target-dir target-cuda --bin sprout
echo "built $ROOT/target-cuda/release/sprout (compute capability $CUDA_COMPUTE_CAP)"
