// Built in place of knn.cpp when the extension is compiled without CUDA. A CUDA build of torch
// can still hand it CUDA tensors; they get this message rather than the dispatcher's generic
// "could not run ... with arguments from the 'CUDA' backend".
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <tuple>

#include "cuda/cuda.h"

namespace spc::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> nearest_neighbors_unavailable(const at::Tensor& queries,
                                                                 const at::Tensor& bank,
                                                                 int64_t k,
                                                                 bool exact,
                                                                 int64_t chunk_rows) {
  TORCH_CHECK(false,
              "seqpatchcore was built without CUDA, so nearest_neighbors cannot take CUDA "
              "tensors (got queries on ",
              queries.device(),
              ", bank on ",
              bank.device(),
              "); rebuild with a CUDA build of torch and nvcc on PATH "
              "(SEQPATCHCORE_CUDA=ON pip install --no-build-isolation .), or move the tensors "
              "to the CPU");
}

}  // namespace

bool compiled() { return false; }

TORCH_LIBRARY_IMPL(seqpatchcore, CUDA, m) {
  m.impl("nearest_neighbors", &nearest_neighbors_unavailable);
}

}  // namespace spc::cuda
