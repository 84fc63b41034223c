#include "core/anomaly_map.h"

#include <ATen/ops/upsample_bilinear2d.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace spc {

at::Tensor gaussian_kernel(double sigma, at::ScalarType dtype) {
  TORCH_CHECK(sigma > 0.0 && std::isfinite(sigma), "sigma should be > 0, got ", sigma);
  const int64_t radius = static_cast<int64_t>(4.0 * sigma + 0.5);
  const at::Tensor offsets = at::arange(-radius, radius + 1, at::kDouble);
  const at::Tensor kernel = at::exp(-0.5 * (offsets / sigma).square());
  return (kernel / kernel.sum()).to(dtype);
}

at::Tensor anomaly_map(const at::Tensor& patch_scores, int64_t height, int64_t width, double sigma) {
  TORCH_CHECK(patch_scores.dim() == 3,
              "patch_scores should be [batch, h, w], got shape ",
              patch_scores.sizes());
  TORCH_CHECK(at::isFloatingType(patch_scores.scalar_type()),
              "patch_scores should be floating point, got ",
              patch_scores.scalar_type());
  TORCH_CHECK(patch_scores.size(1) > 0 && patch_scores.size(2) > 0,
              "patch_scores should have a non-empty grid, got shape ",
              patch_scores.sizes());
  TORCH_CHECK(height > 0 && width > 0,
              "the anomaly map size should be positive, got ",
              height,
              "x",
              width);
  TORCH_CHECK(sigma >= 0.0 && std::isfinite(sigma), "sigma should be >= 0, got ", sigma);

  // maps: [b, 1, height, width]
  at::Tensor maps = at::upsample_bilinear2d(patch_scores.unsqueeze(1),
                                            {height, width},
                                            /*align_corners=*/false);
  if (sigma > 0.0) {
    const at::Tensor kernel = gaussian_kernel(sigma, maps.scalar_type());
    const int64_t radius = (kernel.size(0) - 1) / 2;
    // Reflection needs the padding to be smaller than the image side.
    auto blur = [&](const at::Tensor& x, bool along_width) {
      const int64_t side = along_width ? x.size(3) : x.size(2);
      const bool reflect = radius < side;
      const std::vector<int64_t> pad =
          along_width ? std::vector<int64_t>{radius, radius, 0, 0}
                      : std::vector<int64_t>{0, 0, radius, radius};
      const at::Tensor padded = reflect ? at::reflection_pad2d(x, pad)
                                        : at::replication_pad2d(x, pad);
      const at::Tensor weight = along_width ? kernel.view({1, 1, 1, -1}) : kernel.view({1, 1, -1, 1});
      return at::conv2d(padded, weight);
    };
    maps = blur(blur(maps, true), false);
  }
  return maps.squeeze(1);
}

std::tuple<at::Tensor, at::Tensor> score_images(const at::Tensor& patch_scores,
                                                int64_t height,
                                                int64_t width,
                                                double sigma) {
  at::Tensor maps = anomaly_map(patch_scores, height, width, sigma);
  at::Tensor scores = maps.flatten(1).amax(1);
  return {maps, scores};
}

}  // namespace spc
