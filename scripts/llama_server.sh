#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` for tests/llama_server.rs, which runs hone's loops over it.
# The source is the llama.cpp that llama-cpp-python 0.3.36 vendors (the version the reference
# fixtures of tests/reference.rs came from), built for x86-64-v3 like hone: a -DGGML_NATIVE=ON
# build dies with "Illegal instruction" on CPUs whose AMX tiles the OS does not enable.
# Needs python3 with pip and a C++ compiler; 10-15 minutes on 2 cores. Prints the binary's
# path; does nothing more when it is already built.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/llama.cpp
bin=$out/build/bin/llama-server
if [ -x "$bin" ]; then
    echo "$bin"
    exit 0
fi
mkdir -p "$out"
python3 -m venv "$out/venv"
pip="$out/venv/bin/pip --quiet --disable-pip-version-check"
$pip install cmake==4.4.5 ninja==1.13.2 scikit-build-core==1.1.2
# The sdist alone (no build of the Python package): its metadata comes from scikit-build-core.
$pip download --no-deps --no-build-isolation --no-binary llama-cpp-python \
    llama-cpp-python==0.3.36 -d "$out"
tar xzf "$out/llama_cpp_python-0.3.36.tar.gz" -C "$out"
export PATH="$PWD/$out/venv/bin:$PATH"
cmake -S "$out/llama_cpp_python-0.3.36/vendor/llama.cpp" -B "$out/build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
    -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON > "$out/cmake.log" \
    || { tail -40 "$out/cmake.log"; exit 1; }
cmake --build "$out/build" --target llama-server -j "$(nproc)" > "$out/build.log" \
    || { tail -40 "$out/build.log"; exit 1; }
echo "$bin"
