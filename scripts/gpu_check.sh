#!/usr/bin/env bash
# The GPU check, in one command, for a machine with a CUDA GPU and a CUDA build of torch:
# builds the core, the CUDA kernels and the bindings, runs the GPU tests (CPU against CUDA),
# then the GPU benchmark. Everything it prints and writes goes to $OUT (default ./gpu-check).
#
#   bash scripts/gpu_check.sh
#
# Needs: python3 with a CUDA torch, nvcc (PATH or /usr/local/cuda/bin), cmake, ninja. OpenCV,
# yaml-cpp, fmt and GoogleTest may be missing: render, config and the C++ tests are then left
# out (SEQPATCHCORE_BUILD_RENDER/CONFIG/TESTS=OFF) and fmt comes from torch's headers.
# The tests need pytest, numpy, pillow and tqdm. A machine without them and without a package
# index can take them from .gpu-deps/ in the repository, prepared where PyPI is reachable:
#   pip install --target .gpu-deps --python-version 3.12 --platform manylinux2014_x86_64 \
#     --only-binary=:all: pytest numpy pillow tqdm
# The model test needs the project's shared folder (weights): ../shared, or $SEQPATCHCORE_SHARED;
# without it that one test is deselected, and the log says so.
#
# Environment: OUT, PYTHON (default python3), SEQPATCHCORE_BUILD_DIR (default
# /tmp/seqpatchcore-gpu-build), SEQPATCHCORE_CUDA (default ON), TORCH_CUDA_ARCH_LIST (default:
# this machine's GPU), GPU_CHECK_BENCH=0 to skip the benchmark.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$root/gpu-check}
python=${PYTHON:-python3}
build=${SEQPATCHCORE_BUILD_DIR:-/tmp/seqpatchcore-gpu-build}
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
say() { printf '\n== %s\n' "$*"; }
status=0

say "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null \
  || echo "nvidia-smi: not available"
if [ -d "$root/.gpu-deps" ]; then
  export PYTHONPATH="$root/.gpu-deps${PYTHONPATH:+:$PYTHONPATH}"
fi
"$python" - <<'EOF'
import sys
import torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}")
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
EOF
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
nvcc_path=$(command -v nvcc || true)
echo "nvcc: ${nvcc_path:-not found}"
cmake --version | head -1

say "configure"
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }
on_if() { if have "$1"; then echo ON; else echo OFF; fi; }
arch=${TORCH_CUDA_ARCH_LIST:-$("$python" -c \
  'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))' 2>/dev/null \
  || echo "8.6;8.9;9.0")}
arch_cmake=${arch//./}
configure=(
  cmake -S "$root" -B "$build" -G Ninja
  "-DPython3_EXECUTABLE=$(command -v "$python")"
  "-DSEQPATCHCORE_PYTHON_OUTPUT_DIR=$root/python/seqpatchcore"
  -DCMAKE_BUILD_TYPE=Release
  "-DSEQPATCHCORE_CUDA=${SEQPATCHCORE_CUDA:-ON}"
  "-DSEQPATCHCORE_BUILD_TESTS=$(on_if libgtest-dev)"
  "-DSEQPATCHCORE_BUILD_RENDER=$(on_if libopencv-dev)"
  "-DSEQPATCHCORE_BUILD_CONFIG=$(on_if libyaml-cpp-dev)"
  "-DTORCH_CUDA_ARCH_LIST=$arch"
  "-DCMAKE_CUDA_ARCHITECTURES=$arch_cmake"
)
if [ -n "$nvcc_path" ]; then
  toolkit=$(cd "$(dirname "$(readlink -f "$nvcc_path")")/.." && pwd)
  configure+=("-DCUDA_TOOLKIT_ROOT_DIR=$toolkit" "-DCUDAToolkit_ROOT=$toolkit")
  # torch's CMake files want libnvrtc; pip's CUDA torch keeps it in site-packages/nvidia.
  if ! ls "$toolkit"/lib64/libnvrtc.so* >/dev/null 2>&1; then
    nvrtc=$("$python" - <<'EOF' 2>/dev/null || true
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
found = [p for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "libnvrtc.so*"),
                                             recursive=True) if "builtins" not in p]
print(sorted(found)[0] if found else "")
EOF
)
    [ -n "$nvrtc" ] && configure+=("-DCUDA_nvrtc_LIBRARY=$nvrtc")
  fi
fi
printf '%q ' "${configure[@]}"
echo
"${configure[@]}"

say "build"
cmake --build "$build" -j "$(nproc)"
"$python" -c "import sys; sys.path.insert(0, '$root/python'); from seqpatchcore import _C; \
print('seqpatchcore._C:', _C.__file__, '| cuda_compiled:', _C.cuda_compiled())"

say "GPU tests (tests/python/test_cuda.py -m gpu)"
pytest_args=(tests/python/test_cuda.py -m gpu -q -rs -p no:cacheprovider
             --junitxml "$out/test_cuda.xml")
shared=${SEQPATCHCORE_SHARED:-$root/../shared}
if [ -d "$shared" ]; then
  export SEQPATCHCORE_SHARED=$shared
else
  echo "no shared folder at $shared: the model test is deselected"
  pytest_args+=(--deselect
                tests/python/test_cuda.py::test_model_scores_on_the_gpu_match_the_cpu)
fi
(cd "$root" && PYTHONPATH="$root/python:$root/tests/python${PYTHONPATH:+:$PYTHONPATH}" \
  "$python" -m pytest "${pytest_args[@]}") || status=$?

if [ "${GPU_CHECK_BENCH:-1}" != "0" ]; then
  say "GPU benchmark (scripts/bench_knn.py --device cuda)"
  PYTHONPATH="$root/python${PYTHONPATH:+:$PYTHONPATH}" \
    "$python" "$root/scripts/bench_knn.py" --results "$out" --device cuda || status=$?
fi

say "done (status $status): results in $out"
exit "$status"
