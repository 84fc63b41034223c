#include "core/greedy_coreset.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <vector>

#include "common/log.h"
#include "core/distance.h"
#include "common/rng.h"

namespace spc {
namespace {

struct Farthest {
  double distance = -1.0;
  int64_t index = -1;
};

// Ties go to the lower row, which makes the reduction independent of the thread count.
Farthest farther(const Farthest& a, const Farthest& b) {
  if (a.distance != b.distance) {
    return a.distance > b.distance ? a : b;
  }
  return a.index <= b.index ? a : b;
}

template <typename scalar_t>
at::Tensor select(const at::Tensor& points, int64_t size, int64_t start) {
  const int64_t rows = points.size(0);
  const int64_t dim = points.size(1);
  const scalar_t* data = points.data_ptr<scalar_t>();

  // min_distance[i]: squared distance from row i to the nearest member; -1 marks members.
  std::vector<double> min_distance(rows, std::numeric_limits<double>::infinity());
  at::Tensor selected = at::empty({size}, at::kLong);
  int64_t* out = selected.data_ptr<int64_t>();

  int64_t member = start;
  const int64_t log_every = std::max<int64_t>(1, size / 10);
  for (int64_t step = 0; step < size; ++step) {
    out[step] = member;
    min_distance[member] = -1.0;
    if (step + 1 == size) {
      break;
    }

    // Update the distances with the new member and find the farthest row in the same pass.
    const scalar_t* centre = data + member * dim;
    const Farthest best = at::parallel_reduce(
        0,
        rows,
        int64_t{4096},
        Farthest{},
        [&](int64_t begin, int64_t end, Farthest local) {
          for (int64_t i = begin; i < end; ++i) {
            if (min_distance[i] < 0.0) {
              continue;
            }
            const double d = squared_distance(data + i * dim, centre, dim);
            if (d < min_distance[i]) {
              min_distance[i] = d;
            }
            local = farther(local, Farthest{min_distance[i], i});
          }
          return local;
        },
        farther);
    member = best.index;

    if ((step + 1) % log_every == 0 && log_enabled(LogLevel::kDebug)) {
      log_message(LogLevel::kDebug,
                  c10::str("greedy coreset: ", step + 1, "/", size, " members"));
    }
  }
  return selected;
}

}  // namespace

at::Tensor greedy_coreset(const at::Tensor& features, const GreedyCoresetOptions& options) {
  check_features(features, "features");
  TORCH_CHECK(options.size >= 1, "coreset size should be >= 1, got ", options.size);
  TORCH_CHECK(options.projection_dim >= 0,
              "projection_dim should be >= 0 (0 = no projection), got ",
              options.projection_dim);
  const int64_t rows = features.size(0);
  TORCH_CHECK(rows > 0, "features should have at least one row, got shape ", features.sizes());
  TORCH_CHECK(options.start >= -1 && options.start < rows,
              "start should be -1 (random) or a row in [0, ",
              rows,
              "), got ",
              options.start);

  const int64_t size = std::min(options.size, rows);
  const bool projected = options.projection_dim > 0 && options.projection_dim < features.size(1);
  const at::Tensor points =
      projected ? project(features, random_projection_matrix(features.size(1),
                                                             options.projection_dim,
                                                             options.seed))
                : features.contiguous();

  // The start row uses a stream of its own so it does not depend on the projection.
  int64_t start = options.start;
  if (start < 0) {
    Rng rng(options.seed ^ 0x5eed5eed5eed5eedULL);
    start = static_cast<int64_t>(rng.below(static_cast<uint64_t>(rows)));
  }

  at::Tensor selected;
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "greedy_coreset", [&] {
    selected = select<scalar_t>(points, size, start);
  });
  return selected;
}

}  // namespace spc
