// Approximate greedy k-center coreset (farthest point first), the standard PatchCore baseline.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace spc {

struct GreedyCoresetOptions {
  // Number of members to select; the result has min(size, rows) members.
  int64_t size = 0;
  // Distances are compared in a seeded random projection to this many dimensions when it is
  // smaller than the feature dim; 0 compares full features.
  int64_t projection_dim = 128;
  // Seeds the projection and, when start is -1, the first member.
  uint64_t seed = 0;
  // Index of the first member, or -1 for a seeded random row.
  int64_t start = -1;
};

// Selects members by farthest-point-first: each step takes the row whose distance to the
// members chosen so far is largest (ties: the lowest row), and never a row twice.
// features: [n, d] float32/float64 -> indices [min(size, n)] int64, in selection order.
// Memory: the (projected) features plus n doubles; time: size passes over them.
at::Tensor greedy_coreset(const at::Tensor& features, const GreedyCoresetOptions& options);

}  // namespace spc
