// What the extension knows about its CUDA kernels, without any CUDA header: the bindings and
// the core ask through here, so that a CPU-only build compiles the same code.
#pragma once

namespace spc::cuda {

// Whether csrc/cuda's kernels were compiled in (false: CUDA tensors get a clear error).
bool compiled();

}  // namespace spc::cuda
