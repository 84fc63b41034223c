// Launchers of the CUDA nearest-neighbour kernels. Torch-free on purpose: raw device pointers
// and a cudaStream_t, so that knn_kernels.cu compiles with nvcc alone and the torch glue
// (knn.cpp) stays a host file. See Note [CUDA nearest-neighbour kernels] in knn_kernels.cu.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/cuda.h"

namespace spc::cuda {

// The most bank ranges one search is split into (see choose_splits).
constexpr int kMaxSplits = 64;

// Squared Euclidean norms of rows - centre, accumulated in T.
// rows: [count, dim]; centre: [dim]; norms: [count]. Device pointers.
template <typename T>
cudaError_t launch_row_norms(const T* rows,
                             const T* centre,
                             int64_t count,
                             int64_t dim,
                             T* norms,
                             cudaStream_t stream);

// How many bank ranges to search in separate blocks so that `num_queries` queries keep every
// multiprocessor of the current device busy; 1 when the queries alone fill it.
int choose_splits(int64_t num_queries, int64_t num_bank, bool exact, bool is_double);

// The k nearest bank rows of each query, squared, as (distance, index) lists per bank range.
// queries: [num_queries, dim]; bank: [num_bank, dim]; both contiguous.
// Fast mode (exact = false): centre [dim] and the squared norms of the centred rows,
// query_norms [num_queries] and bank_norms [num_bank], are required; distances are
// ||q - c||^2 + ||m - c||^2 - 2 (q - c).(m - c) in T. Exact mode: centre and norms are
// ignored (may be null); distances are sums of squared differences in double.
// Writes partial_distances, partial_indices: [splits, num_queries, k], each list ascending by
// (distance, index), missing entries as index -1.
template <typename T>
cudaError_t launch_nearest_partial(const T* queries,
                                   int64_t num_queries,
                                   const T* bank,
                                   int64_t num_bank,
                                   int64_t dim,
                                   const T* centre,
                                   const T* query_norms,
                                   const T* bank_norms,
                                   int64_t k,
                                   bool exact,
                                   int splits,
                                   double* partial_distances,
                                   int64_t* partial_indices,
                                   cudaStream_t stream);

// Merges the per-range lists into the k nearest: Euclidean distances (sqrt of the squared
// ones, clamped at 0) and indices, +inf and -1 where the bank has fewer than k rows.
// partial_*: [splits, num_queries, k]; distances, indices: [num_queries, k].
template <typename T>
cudaError_t launch_merge(const double* partial_distances,
                         const int64_t* partial_indices,
                         int64_t num_queries,
                         int64_t k,
                         int splits,
                         T* distances,
                         int64_t* indices,
                         cudaStream_t stream);

}  // namespace spc::cuda
