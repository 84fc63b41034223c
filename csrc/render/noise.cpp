#include "render/noise.h"

#include <cmath>

#include "render/rng.h"

namespace spc::render {
namespace {

// Maximum of |2-D gradient noise| with unit gradients is sqrt(1/2); scale it to 1.
constexpr double kNoise2Scale = 1.4142135623730951;

// Maximum of |1-D gradient noise| with gradients in [-1, 1] is 1/2.
constexpr double kNoise1Scale = 2.0;

inline uint64_t hash_cell(uint64_t seed, int64_t x, int64_t y) {
  return mix64(seed ^ (static_cast<uint64_t>(x) * 0x9E3779B97F4A7C15ull) ^
               (static_cast<uint64_t>(y) * 0xC2B2AE3D27D4EB4Full));
}

}  // namespace

GradientNoise2D::GradientNoise2D(uint64_t seed) : seed_(mix64(seed)) {
  Rng rng(seed);
  for (size_t i = 0; i < gx_.size(); ++i) {
    const double angle = rng.uniform(0.0, 2.0 * M_PI);
    gx_[i] = std::cos(angle);
    gy_[i] = std::sin(angle);
  }
}

double GradientNoise2D::operator()(double x, double y) const {
  const double fx = std::floor(x);
  const double fy = std::floor(y);
  const auto x0 = static_cast<int64_t>(fx);
  const auto y0 = static_cast<int64_t>(fy);
  const double tx = x - fx;
  const double ty = y - fy;

  auto corner = [&](int64_t cx, int64_t cy, double dx, double dy) {
    const size_t g = hash_cell(seed_, cx, cy) & 255u;
    return gx_[g] * dx + gy_[g] * dy;
  };
  const double n00 = corner(x0, y0, tx, ty);
  const double n10 = corner(x0 + 1, y0, tx - 1.0, ty);
  const double n01 = corner(x0, y0 + 1, tx, ty - 1.0);
  const double n11 = corner(x0 + 1, y0 + 1, tx - 1.0, ty - 1.0);

  const double u = quintic_fade(tx);
  const double v = quintic_fade(ty);
  const double bottom = n00 + u * (n10 - n00);
  const double top = n01 + u * (n11 - n01);
  return kNoise2Scale * (bottom + v * (top - bottom));
}

Fbm2D::Fbm2D(uint64_t seed, int octaves, double gain, double lacunarity)
    : gain_(gain), lacunarity_(lacunarity), norm_(0.0) {
  Rng rng(derive_seed(seed, Stream::kShape));
  double amplitude = 1.0;
  for (int k = 0; k < octaves; ++k) {
    octaves_.emplace_back(derive_seed(seed, Stream::kVariation, static_cast<uint64_t>(k)));
    offsets_.push_back(rng.uniform(0.0, 256.0));
    offsets_.push_back(rng.uniform(0.0, 256.0));
    norm_ += amplitude;
    amplitude *= gain;
  }
  norm_ = norm_ > 0.0 ? 1.0 / norm_ : 0.0;
}

double Fbm2D::operator()(double x, double y) const {
  double sum = 0.0;
  double amplitude = 1.0;
  double frequency = 1.0;
  for (size_t k = 0; k < octaves_.size(); ++k) {
    sum += amplitude *
           octaves_[k](x * frequency + offsets_[2 * k], y * frequency + offsets_[2 * k + 1]);
    amplitude *= gain_;
    frequency *= lacunarity_;
  }
  return sum * norm_;
}

PeriodicFbm1D::PeriodicFbm1D(uint64_t seed, int period, int octaves, double gain)
    : gain_(gain), norm_(0.0) {
  double amplitude = 1.0;
  int cells = period;
  for (int k = 0; k < octaves; ++k) {
    Rng rng(derive_seed(seed, Stream::kOutline, static_cast<uint64_t>(k)));
    std::vector<double> gradients(static_cast<size_t>(cells));
    for (auto& g : gradients) {
      g = rng.uniform(-1.0, 1.0);
    }
    gradients_.push_back(std::move(gradients));
    norm_ += amplitude;
    amplitude *= gain;
    cells *= 2;
  }
  norm_ = norm_ > 0.0 ? 1.0 / norm_ : 0.0;
}

double PeriodicFbm1D::operator()(double t) const {
  t -= std::floor(t);

  double sum = 0.0;
  double amplitude = 1.0;
  for (const auto& gradients : gradients_) {
    const auto cells = static_cast<int64_t>(gradients.size());
    const double x = t * static_cast<double>(cells);
    const double fx = std::floor(x);
    const auto i0 = static_cast<int64_t>(fx) % cells;
    const int64_t i1 = (i0 + 1) % cells;  // wraps: the last cell's right end is cell 0
    const double f = x - fx;
    const double n0 = gradients[static_cast<size_t>(i0)] * f;
    const double n1 = gradients[static_cast<size_t>(i1)] * (f - 1.0);
    sum += amplitude * kNoise1Scale * (n0 + quintic_fade(f) * (n1 - n0));
    amplitude *= gain_;
  }
  return sum * norm_;
}

cv::Mat render_fbm(cv::Size size, const Fbm2D& fbm, const cv::Matx23d& transform) {
  cv::Mat field(size, CV_32FC1);
  cv::parallel_for_(cv::Range(0, size.height), [&](const cv::Range& rows) {
    for (int y = rows.start; y < rows.end; ++y) {
      auto* out = field.ptr<float>(y);
      const double py = y + 0.5;
      for (int x = 0; x < size.width; ++x) {
        const double px = x + 0.5;
        const double u = transform(0, 0) * px + transform(0, 1) * py + transform(0, 2);
        const double v = transform(1, 0) * px + transform(1, 1) * py + transform(1, 2);
        out[x] = static_cast<float>(fbm(u, v));
      }
    }
  });
  return field;
}

}  // namespace spc::render
