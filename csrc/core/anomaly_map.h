// From patch scores to pixel anomaly maps and image scores, as PatchCore does.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

namespace spc {

// Bilinear upsampling of the patch-score grid to the image (align_corners = false), then a
// Gaussian blur of standard deviation `sigma` pixels (kernel radius 4 sigma, reflected borders,
// replicated where the image is smaller than the kernel); sigma = 0 skips the blur.
// patch_scores: [b, h, w] -> anomaly maps [b, height, width] of the same dtype.
at::Tensor anomaly_map(const at::Tensor& patch_scores, int64_t height, int64_t width, double sigma);

// Anomaly maps and image scores (the maximum of each map). Returns ([b, height, width], [b]).
std::tuple<at::Tensor, at::Tensor> score_images(const at::Tensor& patch_scores,
                                                int64_t height,
                                                int64_t width,
                                                double sigma);

// A normalised 1-D Gaussian kernel [2 * radius + 1] with radius = int(4 sigma + 0.5).
at::Tensor gaussian_kernel(double sigma, at::ScalarType dtype);

}  // namespace spc
