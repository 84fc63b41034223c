#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "core/anomaly_map.h"

namespace spc {
namespace {

TEST(AnomalyMap, GaussianKernelByHand) {
  // sigma = 4: radius int(16.5) = 16, 33 taps, weights exp(-x^2 / 32) normalised.
  const at::Tensor kernel = gaussian_kernel(4.0, at::kDouble);
  ASSERT_EQ(kernel.numel(), 33);
  double total = 0.0;
  for (int x = -16; x <= 16; ++x) {
    total += std::exp(-x * x / 32.0);
  }
  EXPECT_NEAR(kernel[16].item<double>(), 1.0 / total, 1e-12);
  EXPECT_NEAR(kernel[20].item<double>(), std::exp(-16.0 / 32.0) / total, 1e-12);
  EXPECT_NEAR(kernel[0].item<double>(), kernel[32].item<double>(), 1e-15);
}

TEST(AnomalyMap, ConstantScoresGiveAConstantMap) {
  const at::Tensor scores = at::full({2, 4, 6}, 3.5);
  const auto [maps, image_scores] = score_images(scores, 32, 48, 4.0);
  ASSERT_EQ(maps.sizes(), (at::IntArrayRef{2, 32, 48}));
  EXPECT_TRUE(at::allclose(maps, at::full({2, 32, 48}, 3.5)));
  EXPECT_TRUE(at::allclose(image_scores, at::full({2}, 3.5)));
}

TEST(AnomalyMap, ImpulseResponseIsTheOuterProductOfTheKernel) {
  // Same size in and out: the upsampling is the identity, and an impulse far from the border
  // becomes the 2-D Gaussian kernel.
  at::Tensor scores = at::zeros({1, 64, 64}, at::kDouble);
  scores[0][30][34] = 1.0;
  const at::Tensor map = anomaly_map(scores, 64, 64, 2.0);
  double total = 0.0;
  for (int x = -8; x <= 8; ++x) {
    total += std::exp(-x * x / 8.0);
  }
  const double expected = std::exp(-(4.0 + 9.0) / 8.0) / (total * total);  // offset (2, -3)
  EXPECT_NEAR(map[0][32][31].item<double>(), expected, 1e-12);
  EXPECT_NEAR(map.sum().item<double>(), 1.0, 1e-12);
}

TEST(AnomalyMap, BilinearUpsamplingOfARamp) {
  // align_corners = false: output pixel centres map to (y + 0.5) * h / H - 0.5 in the grid.
  at::Tensor scores = at::zeros({1, 1, 4}, at::kDouble);
  for (int x = 0; x < 4; ++x) {
    scores[0][0][x] = x;
  }
  const at::Tensor map = anomaly_map(scores, 1, 8, 0.0);
  // Pixel 3 maps to 3.5 * 4 / 8 - 0.5 = 1.25.
  EXPECT_NEAR(map[0][0][3].item<double>(), 1.25, 1e-12);
  EXPECT_NEAR(map[0][0][0].item<double>(), 0.0, 1e-12);  // clamped at the border
}

TEST(AnomalyMap, TinyImagesSmallerThanTheKernel) {
  const auto [maps, image_scores] = score_images(at::rand({1, 2, 2}), 5, 3, 4.0);
  EXPECT_EQ(maps.sizes(), (at::IntArrayRef{1, 5, 3}));
  EXPECT_TRUE(at::isfinite(maps).all().item<bool>());
}

TEST(AnomalyMap, RejectsBadInput) {
  EXPECT_THROW(anomaly_map(at::rand({4, 4}), 8, 8, 4.0), c10::Error);
  EXPECT_THROW(anomaly_map(at::rand({1, 4, 4}), 0, 8, 4.0), c10::Error);
  EXPECT_THROW(anomaly_map(at::rand({1, 4, 4}), 8, 8, -1.0), c10::Error);
}

}  // namespace
}  // namespace spc
