// Seeded gradient (Perlin) noise with quintic fade, its fractal sum (fBm), and a periodic 1-D
// variant for closed outlines.
#pragma once

#include <opencv2/core.hpp>

#include <array>
#include <cstdint>
#include <vector>

namespace spc::render {

// Smooth interpolation weight 6t^5 - 15t^4 + 10t^3: its first and second derivatives vanish at
// the lattice points, so the noise has no visible grid creases.
inline double quintic_fade(double t) { return t * t * t * (t * (t * 6.0 - 15.0) + 10.0); }

// 0 at x <= edge0, 1 at x >= edge1, cubic in between (edge0 < edge1); a step at edge0 when
// the two are equal.
inline double smoothstep(double edge0, double edge1, double x) {
  if (edge0 >= edge1) {
    return x < edge0 ? 0.0 : 1.0;
  }
  double t = (x - edge0) / (edge1 - edge0);
  t = t < 0.0 ? 0.0 : (t > 1.0 ? 1.0 : t);
  return t * t * (3.0 - 2.0 * t);
}

// 2-D gradient noise on the integer lattice: zero at lattice points, about [-1, 1] elsewhere
// (scaled by sqrt(2), the bound for unit gradients), not periodic. Lattice points are hashed
// with the seed, so the pattern never repeats.
class GradientNoise2D {
 public:
  explicit GradientNoise2D(uint64_t seed);

  // x, y: lattice units.
  double operator()(double x, double y) const;

 private:
  uint64_t seed_;
  std::array<double, 256> gx_;
  std::array<double, 256> gy_;
};

// Fractal Brownian motion: sum over octaves k of gain^k * noise(lacunarity^k * p), divided by
// the sum of the amplitudes, so the result stays in [-1, 1].
class Fbm2D {
 public:
  Fbm2D(uint64_t seed, int octaves, double gain = 0.5, double lacunarity = 2.0);

  // x, y: units of the base octave's lattice.
  double operator()(double x, double y) const;

 private:
  std::vector<GradientNoise2D> octaves_;
  std::vector<double> offsets_;  // [2 * octave]: decorrelates the octaves' lattices at the origin
  double gain_;
  double lacunarity_;
  double norm_;
};

// Periodic fBm of one variable t in [0, 1): n(0) = n(1) exactly, so r(theta) = R (1 + A n)
// closes. Octave k has period * 2^k lattice cells over one turn. |n| <= 1.
class PeriodicFbm1D {
 public:
  PeriodicFbm1D(uint64_t seed, int period, int octaves, double gain = 0.5);

  double operator()(double t) const;

 private:
  std::vector<std::vector<double>> gradients_;  // [octave][cell] in [-1, 1]
  double gain_;
  double norm_;
};

// Fills a CV_32FC1 image of `size` with fbm(u, v), where (u, v) = transform * (x, y, 1) and
// (x, y) is the pixel centre in pixels. Rows run in parallel; each pixel is independent, so
// the result does not depend on the number of threads.
cv::Mat render_fbm(cv::Size size, const Fbm2D& fbm, const cv::Matx23d& transform);

}  // namespace spc::render
