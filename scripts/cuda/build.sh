#!/usr/bin/env bash
# Builds a release `hone` with the CUDA backend on a machine without a GPU or a CUDA install,
# for NVIDIA GPUs whose driver supports CUDA 13.0 (Hopper by default: CUDA_COMPUTE_CAP=90).
#
# CUDA 13.0 comes from PyPI wheels (pinned: a newer nvcc emits PTX an older driver refuses),
# unpacked into $HONE_CUDA (default target-cuda/cuda). The wheels ship no driver library, so a
# link-time stub of libcuda.so is generated; the real one loads at run time. The binary finds
# cuBLAS and friends through an rpath to /usr/local/cuda/lib64, or LD_LIBRARY_PATH.
#
# Output: target-cuda/release/hone (stripped). A separate target folder keeps CPU builds intact.
# Needs python3 with pip, gcc, cargo. First build: ~15 minutes on 2 cores (nvcc on candle's
# kernels dominates).
set -euo pipefail
cd "$(dirname "$0")/../.."
CUDA_DIR=${HONE_CUDA:-$PWD/target-cuda/cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

if [ ! -x "$CUDA_DIR/nvidia/cu13/bin/nvcc" ]; then
  python3 -m pip install -q --no-deps --no-compile --only-binary=:all: --target "$CUDA_DIR" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
fi
export CUDA_HOME=$CUDA_DIR/nvidia/cu13
export PATH=$CUDA_HOME/bin:$PATH

# The linker wants unversioned library names; the wheels ship versioned ones only.
L=$CUDA_HOME/lib
for lib in cudart.so.13 cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13; do
  ln -sf "lib$lib" "$L/lib${lib%.so.*}.so"
done
# A stub driver library to link against: every cu* function of cuda.h, empty.
if [ ! -f "$L/stubs/libcuda.so" ]; then
  mkdir -p "$L/stubs"
  grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$CUDA_HOME/include/cuda.h" | sort -u \
    | sed 's/.*/void &(void){}/' > "$L/stubs/cuda_stub.c"
  gcc -shared -fPIC -o "$L/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$L/stubs/cuda_stub.c"
fi

# RUSTFLAGS replaces .cargo/config.toml's flags, so the CPU target is repeated here.
export CUDARC_CUDA_VERSION=13000
export RUSTFLAGS="-C target-cpu=x86-64-v3 -C link-arg=-Wl,-rpath,/usr/local/cuda/lib64"
cargo build --release --features cuda --target-dir target-cuda --bin hone
strip target-cuda/release/hone
ls -l target-cuda/release/hone
