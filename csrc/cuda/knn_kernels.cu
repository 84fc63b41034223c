// Note [CUDA nearest-neighbour kernels]
// One fused kernel computes distances tile by tile and keeps, per query, the k smallest seen so
// far; the [queries, bank] matrix never exists, not even in part in global memory.
//
// Tiling: a block of 16 x 16 threads owns BM queries and walks bank tiles of BN rows. Both
// operand tiles pass through shared memory in slices of BK dimensions, the next slice is read
// into registers while the current one is multiplied, and each thread accumulates a TM x TM
// micro-tile. The rows and columns of a thread are interleaved in runs of four
// (local_index), so that the shared-memory reads of a quarter warp hit distinct banks.
//
// Selection: each thread keeps, for each of its TM queries, the k best of the bank columns it
// has seen, in registers for k = 1 and in a small sorted list (local memory, written rarely)
// for k <= kMaxK. Columns reach a thread in increasing bank order and only a strictly smaller
// distance enters a full list, so ties keep the lower index. The 16 threads that share a query
// then merge their lists with warp shuffles, comparing (distance, index). When the queries
// alone cannot fill the GPU, the bank is cut into `splits` ranges searched by separate blocks;
// a second kernel merges the per-range lists and takes square roots.
//
// Modes: the fast mode computes ||q - c||^2 + ||m - c||^2 - 2 (q - c).(m - c) in T with c the
// bank's mean (centring keeps the cancellation small). It is the fp32 norm trick without the
// CPU's exact refinement, so near ties may resolve differently from the CPU op, within
// matmul_error_bound (Note [Exact decisions from fast distances] in csrc/core/distance.h). The
// exact mode sums squared differences in double with the same four partial sums, in the same
// order and without fused multiply-adds, as spc::squared_distance, so its distances equal the
// CPU's on x86-64.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <type_traits>

#include "cuda/knn_kernels.h"

namespace spc::cuda {
namespace {

constexpr int kSide = 16;  // threads per side of a block
constexpr int kThreads = kSide * kSide;
constexpr int kPadding = 4;  // shared-memory row padding, keeps 16-byte alignment
constexpr int kNoIndex = INT_MAX;

// The tile shape of each kernel flavour: TM x TM results per thread, BK dims per slice.
template <typename T, bool kExact>
struct TileShape {
  static constexpr int kMicro = kExact ? 2 : (std::is_same<T, float>::value ? 8 : 4);
  static constexpr int kSlice = kExact ? 16 : 8;
  static constexpr int kRun = kMicro < 4 ? kMicro : 4;
  static constexpr int kTile = kSide * kMicro;
};

template <int kMicro, int kRun>
__device__ __forceinline__ int local_index(int lane, int i) {
  return (i / kRun) * (kSide * kRun) + lane * kRun + (i % kRun);
}

template <typename D>
__device__ __forceinline__ bool comes_before(D d1, int i1, D d2, int i2) {
  return d1 < d2 || (d1 == d2 && i1 < i2);
}

template <typename D>
__device__ __forceinline__ D infinity() {
  return static_cast<D>(INFINITY);
}

// One slice of BK dimensions of the query tile and the bank tile, read from global memory
// (centred in the fast mode, zero outside the matrices).
template <typename T, bool kExact, int kTileRows, int kSlice>
struct SliceLoader {
  static constexpr int kLoads = kTileRows * kSlice / kThreads;
  T query_values[kLoads];
  T bank_values[kLoads];

  __device__ __forceinline__ void read(const T* __restrict__ queries,
                                       int64_t num_queries,
                                       const T* __restrict__ bank,
                                       int64_t num_bank,
                                       int64_t dim,
                                       const T* __restrict__ centre,
                                       int64_t first_query,
                                       int64_t first_member,
                                       int64_t first_dim) {
#pragma unroll
    for (int l = 0; l < kLoads; ++l) {
      const int element = threadIdx.x + l * kThreads;
      const int row = element / kSlice;
      const int64_t column = first_dim + element % kSlice;
      const bool in_dim = column < dim;
      const T offset = (!kExact && in_dim) ? centre[column] : T(0);
      const int64_t query = first_query + row;
      const int64_t member = first_member + row;
      query_values[l] =
          (in_dim && query < num_queries) ? queries[query * dim + column] - offset : T(0);
      bank_values[l] = (in_dim && member < num_bank) ? bank[member * dim + column] - offset : T(0);
    }
  }

  __device__ __forceinline__ void write(T (*query_tile)[kTileRows + kPadding],
                                        T (*bank_tile)[kTileRows + kPadding]) const {
#pragma unroll
    for (int l = 0; l < kLoads; ++l) {
      const int element = threadIdx.x + l * kThreads;
      query_tile[element % kSlice][element / kSlice] = query_values[l];
      bank_tile[element % kSlice][element / kSlice] = bank_values[l];
    }
  }
};

template <typename T, bool kExact, int kMaxList>
__global__ void __launch_bounds__(kThreads)
    nearest_partial_kernel(const T* __restrict__ queries,
                           int64_t num_queries,
                           const T* __restrict__ bank,
                           int64_t num_bank,
                           int64_t dim,
                           const T* __restrict__ centre,
                           const T* __restrict__ query_norms,
                           const T* __restrict__ bank_norms,
                           int k,
                           int64_t tiles_per_split,
                           double* __restrict__ partial_distances,
                           int64_t* __restrict__ partial_indices) {
  using Shape = TileShape<T, kExact>;
  constexpr int kMicro = Shape::kMicro;
  constexpr int kSlice = Shape::kSlice;
  constexpr int kRun = Shape::kRun;
  constexpr int kTile = Shape::kTile;
  constexpr int kParts = kExact ? 4 : 1;
  using Dist = typename std::conditional<kExact, double, T>::type;

  __shared__ __align__(16) T query_tile[kSlice][kTile + kPadding];
  __shared__ __align__(16) T bank_tile[kSlice][kTile + kPadding];

  const int tx = threadIdx.x % kSide;
  const int ty = threadIdx.x / kSide;
  const int64_t first_query = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t bank_tiles = (num_bank + kTile - 1) / kTile;
  const int64_t tile_begin = static_cast<int64_t>(blockIdx.y) * tiles_per_split;
  const int64_t tile_end =
      tile_begin + tiles_per_split < bank_tiles ? tile_begin + tiles_per_split : bank_tiles;
  // dim4: the dimensions that spc::squared_distance spreads over four partial sums
  const int64_t dim4 = dim - dim % 4;

  Dist query_norm[kMicro];
  Dist best_distance[kMicro][kMaxList];
  int best_index[kMicro][kMaxList];
  Dist threshold[kMicro];
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
    const int64_t query = first_query + local_index<kMicro, kRun>(ty, i);
    query_norm[i] = (!kExact && query < num_queries) ? query_norms[query] : Dist(0);
    threshold[i] = infinity<Dist>();
#pragma unroll
    for (int c = 0; c < kMaxList; ++c) {
      best_distance[i][c] = infinity<Dist>();
      best_index[i][c] = kNoIndex;
    }
  }

  SliceLoader<T, kExact, kTile, kSlice> loader;
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    const int64_t first_member = tile * kTile;

    // acc[p][i][j]: partial sum p of query i against member j
    Dist acc[kParts][kMicro][kMicro];
#pragma unroll
    for (int p = 0; p < kParts; ++p) {
#pragma unroll
      for (int i = 0; i < kMicro; ++i) {
#pragma unroll
        for (int j = 0; j < kMicro; ++j) {
          acc[p][i][j] = Dist(0);
        }
      }
    }

    loader.read(queries, num_queries, bank, num_bank, dim, centre, first_query, first_member, 0);
    loader.write(query_tile, bank_tile);
    __syncthreads();
    for (int64_t first_dim = 0; first_dim < dim; first_dim += kSlice) {
      const bool more = first_dim + kSlice < dim;
      if (more) {
        loader.read(queries, num_queries, bank, num_bank, dim, centre, first_query,
                    first_member, first_dim + kSlice);
      }

#pragma unroll
      for (int s = 0; s < kSlice; ++s) {
        T a[kMicro];
        T b[kMicro];
#pragma unroll
        for (int i = 0; i < kMicro; ++i) {
          a[i] = query_tile[s][local_index<kMicro, kRun>(ty, i)];
          b[i] = bank_tile[s][local_index<kMicro, kRun>(tx, i)];
        }
        if constexpr (kExact) {
          // The same partial sum as spc::squared_distance: i % 4 below dim4, else the first.
          const bool spread = first_dim + s < dim4;
#pragma unroll
          for (int i = 0; i < kMicro; ++i) {
#pragma unroll
            for (int j = 0; j < kMicro; ++j) {
              const double t =
                  __dsub_rn(static_cast<double>(a[i]), static_cast<double>(b[j]));
              const double square = __dmul_rn(t, t);
              if (spread) {
                acc[s % 4][i][j] = __dadd_rn(acc[s % 4][i][j], square);
              } else {
                acc[0][i][j] = __dadd_rn(acc[0][i][j], square);
              }
            }
          }
        } else {
#pragma unroll
          for (int i = 0; i < kMicro; ++i) {
#pragma unroll
            for (int j = 0; j < kMicro; ++j) {
              acc[0][i][j] += a[i] * b[j];
            }
          }
        }
      }
      __syncthreads();

      if (more) {
        loader.write(query_tile, bank_tile);
        __syncthreads();
      }
    }

    // Columns reach this thread in increasing bank order (j, then tile).
#pragma unroll
    for (int j = 0; j < kMicro; ++j) {
      const int64_t member = first_member + local_index<kMicro, kRun>(tx, j);
      if (member >= num_bank) {
        continue;
      }
      const Dist member_norm = kExact ? Dist(0) : static_cast<Dist>(bank_norms[member]);
#pragma unroll
      for (int i = 0; i < kMicro; ++i) {
        Dist value;
        if constexpr (kExact) {
          value = __dadd_rn(__dadd_rn(acc[0][i][j], acc[1][i][j]),
                            __dadd_rn(acc[2][i][j], acc[3][i][j]));
        } else {
          value = query_norm[i] + member_norm - Dist(2) * acc[0][i][j];
        }
        if (value < threshold[i]) {
          if constexpr (kMaxList == 1) {
            best_distance[i][0] = value;
            best_index[i][0] = static_cast<int>(member);
            threshold[i] = value;
          } else {
            int slot = k - 1;
            while (slot > 0 && best_distance[i][slot - 1] > value) {
              best_distance[i][slot] = best_distance[i][slot - 1];
              best_index[i][slot] = best_index[i][slot - 1];
              --slot;
            }
            best_distance[i][slot] = value;
            best_index[i][slot] = static_cast<int>(member);
            threshold[i] = best_distance[i][k - 1];
          }
        }
      }
    }
  }

  // The 16 threads of a half warp share these queries: merge their lists, k rounds of taking
  // the smallest head, the owner of which advances.
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
    const int64_t query = first_query + local_index<kMicro, kRun>(ty, i);
    int head = 0;
    for (int c = 0; c < k; ++c) {
      // With one entry the list stays in registers: no indexing by a variable.
      const int at = kMaxList == 1 ? 0 : head;
      const Dist mine = head < k ? best_distance[i][at] : infinity<Dist>();
      const int mine_index = head < k ? best_index[i][at] : kNoIndex;
      Dist winner = mine;
      int winner_index = mine_index;
#pragma unroll
      for (int offset = kSide / 2; offset > 0; offset /= 2) {
        const Dist other = __shfl_xor_sync(0xffffffffu, winner, offset);
        const int other_index = __shfl_xor_sync(0xffffffffu, winner_index, offset);
        if (comes_before(other, other_index, winner, winner_index)) {
          winner = other;
          winner_index = other_index;
        }
      }
      if (winner_index != kNoIndex && mine_index == winner_index) {
        ++head;
      }
      if (tx == 0 && query < num_queries) {
        const int64_t at = (static_cast<int64_t>(blockIdx.y) * num_queries + query) * k + c;
        partial_distances[at] = static_cast<double>(winner);
        partial_indices[at] = winner_index == kNoIndex ? -1 : winner_index;
      }
    }
  }
}

template <typename T>
__global__ void merge_kernel(const double* __restrict__ partial_distances,
                             const int64_t* __restrict__ partial_indices,
                             int64_t num_queries,
                             int k,
                             int splits,
                             T* __restrict__ distances,
                             int64_t* __restrict__ indices) {
  const int64_t query = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (query >= num_queries) {
    return;
  }
  int head[kMaxSplits];
  for (int s = 0; s < splits; ++s) {
    head[s] = 0;
  }
  for (int c = 0; c < k; ++c) {
    int chosen = -1;
    double best = 0.0;
    int64_t best_index = -1;
    for (int s = 0; s < splits; ++s) {
      if (head[s] >= k) {
        continue;
      }
      const int64_t at = (s * num_queries + query) * k + head[s];
      const int64_t index = partial_indices[at];
      const double distance = partial_distances[at];
      if (index >= 0 &&
          (chosen < 0 || distance < best || (distance == best && index < best_index))) {
        chosen = s;
        best = distance;
        best_index = index;
      }
    }
    const int64_t out = query * k + c;
    if (chosen < 0) {
      distances[out] = infinity<T>();
      indices[out] = -1;
    } else {
      distances[out] = static_cast<T>(sqrt(fmax(best, 0.0)));
      indices[out] = best_index;
      ++head[chosen];
    }
  }
}

template <typename T>
__global__ void row_norms_kernel(const T* __restrict__ rows,
                                 const T* __restrict__ centre,
                                 int64_t count,
                                 int64_t dim,
                                 T* __restrict__ norms) {
  // One warp per row.
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= count) {
    return;
  }
  T sum = 0;
  for (int64_t c = lane; c < dim; c += 32) {
    const T t = rows[row * dim + c] - centre[c];
    sum += t * t;
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  }
  if (lane == 0) {
    norms[row] = sum;
  }
}

template <typename T, bool kExact, int kMaxList>
cudaError_t launch_flavour(const T* queries,
                           int64_t num_queries,
                           const T* bank,
                           int64_t num_bank,
                           int64_t dim,
                           const T* centre,
                           const T* query_norms,
                           const T* bank_norms,
                           int64_t k,
                           int splits,
                           double* partial_distances,
                           int64_t* partial_indices,
                           cudaStream_t stream) {
  constexpr int kTile = TileShape<T, kExact>::kTile;
  const int64_t bank_tiles = (num_bank + kTile - 1) / kTile;
  const int64_t tiles_per_split = (bank_tiles + splits - 1) / splits;
  const dim3 grid(static_cast<unsigned>((num_queries + kTile - 1) / kTile),
                  static_cast<unsigned>(splits));
  nearest_partial_kernel<T, kExact, kMaxList><<<grid, kThreads, 0, stream>>>(
      queries, num_queries, bank, num_bank, dim, centre, query_norms, bank_norms,
      static_cast<int>(k), tiles_per_split, partial_distances, partial_indices);
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t launch_row_norms(const T* rows,
                             const T* centre,
                             int64_t count,
                             int64_t dim,
                             T* norms,
                             cudaStream_t stream) {
  if (count == 0) {
    return cudaSuccess;
  }
  constexpr int kRowsPerBlock = 8;
  const auto blocks = static_cast<unsigned>((count + kRowsPerBlock - 1) / kRowsPerBlock);
  row_norms_kernel<T><<<blocks, kRowsPerBlock * 32, 0, stream>>>(rows, centre, count, dim, norms);
  return cudaGetLastError();
}

int choose_splits(int64_t num_queries, int64_t num_bank, bool exact, bool is_double) {
  int device = 0;
  int multiprocessors = 1;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device) !=
          cudaSuccess) {
    cudaGetLastError();  // clear the error: one split is always correct
    return 1;
  }
  const int tile = exact ? TileShape<float, true>::kTile
                         : (is_double ? TileShape<double, false>::kTile
                                      : TileShape<float, false>::kTile);
  const int64_t query_blocks = std::max<int64_t>(1, (num_queries + tile - 1) / tile);
  const int64_t bank_tiles = std::max<int64_t>(1, (num_bank + tile - 1) / tile);
  // Two waves of blocks per multiprocessor hide the tail of the last one.
  const int64_t wanted = (2 * static_cast<int64_t>(multiprocessors) + query_blocks - 1) /
                         query_blocks;
  const int64_t splits = std::min<int64_t>({wanted, bank_tiles, kMaxSplits});
  return static_cast<int>(std::max<int64_t>(1, splits));
}

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
                                   cudaStream_t stream) {
  if (num_queries == 0) {
    return cudaSuccess;
  }
  if (k < 1 || k > kMaxK || splits < 1 || splits > kMaxSplits) {
    return cudaErrorInvalidValue;
  }
  const auto args = [&](auto launch) {
    return launch(queries, num_queries, bank, num_bank, dim, centre, query_norms, bank_norms,
                  k, splits, partial_distances, partial_indices, stream);
  };
  if (exact) {
    return k == 1 ? args(launch_flavour<T, true, 1>) : args(launch_flavour<T, true, kMaxK>);
  }
  return k == 1 ? args(launch_flavour<T, false, 1>) : args(launch_flavour<T, false, kMaxK>);
}

template <typename T>
cudaError_t launch_merge(const double* partial_distances,
                         const int64_t* partial_indices,
                         int64_t num_queries,
                         int64_t k,
                         int splits,
                         T* distances,
                         int64_t* indices,
                         cudaStream_t stream) {
  if (num_queries == 0) {
    return cudaSuccess;
  }
  constexpr int kBlock = 256;
  const auto blocks = static_cast<unsigned>((num_queries + kBlock - 1) / kBlock);
  merge_kernel<T><<<blocks, kBlock, 0, stream>>>(partial_distances, partial_indices, num_queries,
                                                 static_cast<int>(k), splits, distances, indices);
  return cudaGetLastError();
}

#define SPC_INSTANTIATE(T)                                                                    \
  template cudaError_t launch_row_norms<T>(const T*, const T*, int64_t, int64_t, T*,         \
                                           cudaStream_t);                                    \
  template cudaError_t launch_nearest_partial<T>(const T*, int64_t, const T*, int64_t,        \
                                                 int64_t, const T*, const T*, const T*,       \
                                                 int64_t, bool, int, double*, int64_t*,       \
                                                 cudaStream_t);                               \
  template cudaError_t launch_merge<T>(const double*, const int64_t*, int64_t, int64_t, int, \
                                       T*, int64_t*, cudaStream_t);

SPC_INSTANTIATE(float)
SPC_INSTANTIATE(double)

#undef SPC_INSTANTIATE

}  // namespace spc::cuda
