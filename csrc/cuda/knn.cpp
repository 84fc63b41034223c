// The CUDA implementation of the seqpatchcore::nearest_neighbors operator: checks, device guard,
// current stream, workspace from torch's allocator, and the launches of knn_kernels.cu. Compiled
// only when torch has CUDA; see Note [CUDA nearest-neighbour kernels] in knn_kernels.cu.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <type_traits>

#include "core/distance.h"
#include "cuda/cuda.h"
#include "cuda/knn_kernels.h"

namespace spc::cuda {
namespace {

// Per-range lists cost 16 bytes per (split, query, neighbour); queries go in launches whose
// lists fit this budget.
constexpr int64_t kWorkspaceBudgetBytes = int64_t{256} << 20;

void check_launch(cudaError_t error, const char* kernel) {
  TORCH_CHECK(error == cudaSuccess, kernel, " failed to launch: ", cudaGetErrorString(error));
}

void check_finite(const at::Tensor& x, const char* name) {
  // NaN and infinity reach the extremes; aminmax needs no copy of x.
  const auto [lowest, highest] = at::aminmax(x);
  TORCH_CHECK(at::isfinite(at::stack({lowest, highest})).all().item<bool>(),
              name,
              " should be finite, got NaN or infinity");
}

template <typename scalar_t>
void search(const at::Tensor& queries,
            const at::Tensor& bank,
            int64_t k,
            bool exact,
            int64_t chunk_rows,
            at::Tensor& distances,
            at::Tensor& indices) {
  const int64_t num_queries = queries.size(0);
  const int64_t num_bank = bank.size(0);
  const int64_t dim = queries.size(1);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();

  // centre: [d]; bank_norms: [n] (fast mode only)
  at::Tensor centre;
  at::Tensor bank_norms;
  at::Tensor query_norms;
  if (!exact) {
    centre = bank.mean(0);
    bank_norms = at::empty({num_bank}, bank.options());
    check_launch(launch_row_norms<scalar_t>(bank.const_data_ptr<scalar_t>(),
                                            centre.const_data_ptr<scalar_t>(),
                                            num_bank,
                                            dim,
                                            bank_norms.mutable_data_ptr<scalar_t>(),
                                            stream),
                 "row_norms_kernel");
  }

  const int splits =
      choose_splits(num_queries, num_bank, exact, std::is_same<scalar_t, double>::value);
  const int64_t list_bytes = int64_t{splits} * k * (sizeof(double) + sizeof(int64_t));
  const int64_t rows =
      chunk_rows > 0 ? std::min(chunk_rows, num_queries)
                     : std::clamp<int64_t>(kWorkspaceBudgetBytes / list_bytes, 1, num_queries);

  // partial_distances, partial_indices: [splits, rows, k]
  const at::Tensor partial_distances =
      at::empty({splits * rows * k}, queries.options().dtype(at::kDouble));
  const at::Tensor partial_indices =
      at::empty({splits * rows * k}, queries.options().dtype(at::kLong));
  if (!exact) {
    query_norms = at::empty({rows}, queries.options());
  }

  for (int64_t start = 0; start < num_queries; start += rows) {
    const int64_t count = std::min(rows, num_queries - start);
    const scalar_t* chunk = queries.const_data_ptr<scalar_t>() + start * dim;
    if (!exact) {
      check_launch(launch_row_norms<scalar_t>(chunk,
                                              centre.const_data_ptr<scalar_t>(),
                                              count,
                                              dim,
                                              query_norms.mutable_data_ptr<scalar_t>(),
                                              stream),
                   "row_norms_kernel");
    }
    check_launch(
        launch_nearest_partial<scalar_t>(chunk,
                                         count,
                                         bank.const_data_ptr<scalar_t>(),
                                         num_bank,
                                         dim,
                                         exact ? nullptr : centre.const_data_ptr<scalar_t>(),
                                         exact ? nullptr : query_norms.const_data_ptr<scalar_t>(),
                                         exact ? nullptr : bank_norms.const_data_ptr<scalar_t>(),
                                         k,
                                         exact,
                                         splits,
                                         partial_distances.mutable_data_ptr<double>(),
                                         partial_indices.mutable_data_ptr<int64_t>(),
                                         stream),
        "nearest_partial_kernel");
    check_launch(launch_merge<scalar_t>(partial_distances.const_data_ptr<double>(),
                                        partial_indices.const_data_ptr<int64_t>(),
                                        count,
                                        k,
                                        splits,
                                        distances.mutable_data_ptr<scalar_t>() + start * k,
                                        indices.mutable_data_ptr<int64_t>() + start * k,
                                        stream),
                 "merge_kernel");
  }
}

std::tuple<at::Tensor, at::Tensor> nearest_neighbors_cuda(const at::Tensor& queries,
                                                          const at::Tensor& bank,
                                                          int64_t k,
                                                          bool exact,
                                                          int64_t chunk_rows) {
  check_features(queries, "queries");
  check_features(bank, "bank");
  TORCH_CHECK(queries.is_cuda() && bank.is_cuda() && queries.device() == bank.device(),
              "queries and bank should be on the same CUDA device, got ",
              queries.device(),
              " and ",
              bank.device());
  TORCH_CHECK(queries.size(1) == bank.size(1),
              "queries and bank should have the same dim, got ",
              queries.size(1),
              " and ",
              bank.size(1));
  TORCH_CHECK(queries.scalar_type() == bank.scalar_type(),
              "queries and bank should have the same dtype, got ",
              queries.scalar_type(),
              " and ",
              bank.scalar_type());
  TORCH_CHECK(k >= 1, "k should be >= 1, got ", k);
  TORCH_CHECK(k <= kMaxK,
              "k should be <= ",
              kMaxK,
              " for CUDA tensors, got ",
              k,
              "; move the tensors to the CPU for larger k");
  TORCH_CHECK(chunk_rows >= 0, "chunk_rows should be >= 0 (0 = automatic), got ", chunk_rows);
  TORCH_CHECK(bank.size(0) < std::numeric_limits<int32_t>::max(),
              "bank should have fewer than 2^31 - 1 rows on CUDA, got ",
              bank.size(0));

  const c10::cuda::CUDAGuard guard(queries.device());
  const at::Tensor q = queries.contiguous();
  const at::Tensor b = bank.contiguous();
  const int64_t num_queries = q.size(0);
  const int64_t num_bank = b.size(0);

  // distances: [q, k] (+inf where the bank has fewer than k rows); indices: [q, k] (-1 there)
  at::Tensor distances =
      at::full({num_queries, k}, std::numeric_limits<double>::infinity(), q.options());
  at::Tensor indices = at::full({num_queries, k}, -1, q.options().dtype(at::kLong));
  if (num_queries == 0 || num_bank == 0) {
    return {distances, indices};
  }
  check_finite(q, "queries");
  check_finite(b, "bank");

  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "nearest_neighbors_cuda", [&] {
    search<scalar_t>(q, b, k, exact, chunk_rows, distances, indices);
  });
  return {distances, indices};
}

}  // namespace

bool compiled() { return true; }

TORCH_LIBRARY_IMPL(seqpatchcore, CUDA, m) {
  m.impl("nearest_neighbors", &nearest_neighbors_cuda);
}

}  // namespace spc::cuda
