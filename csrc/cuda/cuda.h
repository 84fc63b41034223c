// What the extension knows about its CUDA kernels, without any CUDA header: the bindings and
// the core ask through here, so that a CPU-only build compiles the same code.
#pragma once

#include <cstdint>

namespace spc::cuda {

// The largest k the CUDA kernels keep per query.
constexpr int64_t kMaxK = 32;

// Whether csrc/cuda's kernels were compiled in (false: CUDA tensors get a clear error).
bool compiled();

}  // namespace spc::cuda
