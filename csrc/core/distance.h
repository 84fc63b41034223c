// Squared Euclidean distances and exact k-nearest-neighbour search.
//
// Note [Exact decisions from fast distances]
// The fast path computes squared distances as ||x||^2 + ||m||^2 - 2 x.m with one matrix
// product, which is fast but rounds: near-ties and large common offsets can flip which member is
// nearest. Every decision in this library (which neighbour, whether d_p > d_m, which member to
// evict) is instead taken on exact distances: sum of (x_i - m_i)^2 accumulated in double in a
// fixed order (`squared_distance`). The matrix product serves only as a filter. Its error is
// bounded by `matmul_error_bound`, so a candidate whose fast distance is farther than the best
// fast distance by more than twice the bound cannot win and is dropped; the few that remain are
// recomputed exactly. Inputs are centred on a reference point first, which keeps the bound tight
// when all features share a large offset. The result equals a brute-force search on exact
// distances, ties included, while the cost stays that of the matrix product.
// One exception: nearest_neighbors on CUDA tensors in the fast mode returns the float32
// distances of its fused kernel unrefined (scores only need the distance, within this bound);
// decisions of the sequential builder stay exact on every device.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

namespace spc {

// How distances are computed; decisions are exact in both modes (Note [Exact decisions ...]).
enum class DistanceMode : int64_t {
  kMatmul = 0,  // one matrix product per chunk, exact refinement of the few close candidates
  kExact = 1,   // exact differences everywhere: slower, for checks and pathological data
};

DistanceMode parse_distance_mode(const std::string& name);

// Sum of squared differences, accumulated in double in a fixed order, so that the same pair of
// rows gives the same bits wherever it is computed.
template <typename scalar_t>
inline double squared_distance(const scalar_t* a, const scalar_t* b, int64_t dim) {
  double s0 = 0.0;
  double s1 = 0.0;
  double s2 = 0.0;
  double s3 = 0.0;
  int64_t i = 0;
  for (; i + 4 <= dim; i += 4) {
    const double t0 = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    const double t1 = static_cast<double>(a[i + 1]) - static_cast<double>(b[i + 1]);
    const double t2 = static_cast<double>(a[i + 2]) - static_cast<double>(b[i + 2]);
    const double t3 = static_cast<double>(a[i + 3]) - static_cast<double>(b[i + 3]);
    s0 += t0 * t0;
    s1 += t1 * t1;
    s2 += t2 * t2;
    s3 += t3 * t3;
  }
  for (; i < dim; ++i) {
    const double t = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    s0 += t * t;
  }
  return (s0 + s1) + (s2 + s3);
}

// Unit roundoff of a matrix product of this dtype on this device, under the current
// torch float32 matmul precision setting (TF32 or bfloat16 products round much more).
double matmul_unit_roundoff(at::ScalarType dtype, bool cuda);

// Upper bound on |fast - exact| for one squared distance between centred rows whose squared
// norms are `norm_a` and `norm_b`. Standard dot-product error analysis gives about
// (dim + 2) * u * (norm_a + norm_b); the slack covers the norms, the centring and the final sum.
inline double matmul_error_bound(double unit_roundoff, int64_t dim, double norm_a, double norm_b) {
  return (2.0 * static_cast<double>(dim) + 16.0) * unit_roundoff * (norm_a + norm_b);
}

// Deterministic random projection to `out_dim` dimensions: x @ P with P[d, j] ~ N(0, 1/out_dim)
// drawn from `seed`. The product is accumulated in double row by row in a fixed order, so a
// feature projects to the same bits whatever chunk it arrives in.
// features: [n, d] float32/float64 -> [n, out_dim] of the same dtype.
at::Tensor random_projection_matrix(int64_t in_dim, int64_t out_dim, uint64_t seed);
at::Tensor project(const at::Tensor& features, const at::Tensor& projection);

// The k nearest rows of `bank` for every row of `queries`, by Euclidean distance.
// queries: [q, d], bank: [n, d], same floating dtype (float32 or float64).
// Returns distances [q, k] (same dtype, ascending) and indices [q, k] int64. Equal distances are
// ordered by bank index. When k > n the missing columns hold +inf and -1, as in FAISS.
// chunk_rows: queries per block; 0 chooses. The CPU holds threads * chunk_rows * 512 products
// at most (Note [Blocked CPU search] in distance.cpp); CUDA holds chunk_rows * k candidates per
// bank split.
// Dispatches on device through the `seqpatchcore::nearest_neighbors` operator: CUDA tensors go
// to csrc/cuda (k <= 32), whose fast mode skips the exact refinement (Note [CUDA
// nearest-neighbour kernels] in csrc/cuda/knn_kernels.cu) and whose exact mode matches the CPU.
std::tuple<at::Tensor, at::Tensor> nearest_neighbors(const at::Tensor& queries,
                                                     const at::Tensor& bank,
                                                     int64_t k,
                                                     DistanceMode mode = DistanceMode::kMatmul,
                                                     int64_t chunk_rows = 0);

// The CPU kernel behind the operator (exposed for tests and benchmarks).
std::tuple<at::Tensor, at::Tensor> nearest_neighbors_cpu(const at::Tensor& queries,
                                                         const at::Tensor& bank,
                                                         int64_t k,
                                                         bool exact,
                                                         int64_t chunk_rows);

// Checks shared by every entry point that takes a feature matrix.
void check_features(const at::Tensor& features, const char* name);

}  // namespace spc
