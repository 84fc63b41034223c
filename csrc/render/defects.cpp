#include "render/defects.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "common/log_fmt.h"
#include "render/noise.h"
#include "render/rng.h"

namespace spc::render {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Largest value of the dent's slope profile 4 rho (1 - rho^2), at rho = 1 / sqrt(3).
constexpr double kDentSlopeMax = 1.5396007178390021;

// Most branches one crack may grow, so that a branch probability of 1 stays bounded.
constexpr int kMaxCrackBranches = 32;

void check_center(const std::string& kind, double x, double y) {
  if (!std::isfinite(x) || !std::isfinite(y)) {
    throw std::invalid_argument(fmt::format(
        "{}.center_x_px and {}.center_y_px must be finite, got {} and {}", kind, kind, x, y));
  }
}

// The given centre when both coordinates are >= 0, else a uniform draw from the central 80 %.
cv::Point2d pick_center(const std::string& kind, double x, double y, cv::Size size,
                        uint64_t seed) {
  if (x >= 0.0 && y >= 0.0) {
    if (x >= size.width || y >= size.height) {
      throw std::invalid_argument(fmt::format(
          "{} centre ({}, {}) lies outside the {}x{} image", kind, x, y, size.width,
          size.height));
    }
    return {x, y};
  }
  Rng rng(derive_seed(seed, Stream::kPlacement));
  const double px = rng.uniform(0.1, 0.9) * size.width;
  const double py = rng.uniform(0.1, 0.9) * size.height;
  return {px, py};
}

cv::Rect bounding_box(const std::vector<StrokePoint>& points, cv::Size size) {
  double x0 = kInf, y0 = kInf, x1 = -kInf, y1 = -kInf, width = 0.0;
  for (const auto& p : points) {
    x0 = std::min(x0, p.x);
    y0 = std::min(y0, p.y);
    x1 = std::max(x1, p.x);
    y1 = std::max(y1, p.y);
    width = std::max(width, p.width);
  }
  const double radius = 0.5 * std::max(x1 - x0, y1 - y0) + width;
  return disc_box(0.5 * (x0 + x1), 0.5 * (y0 + y1), radius, size);
}

}  // namespace

void ScratchParams::validate() const {
  check_center("scratch", center_x_px, center_y_px);
  check_range("scratch.length_px", length_px, 0.0, kInf, true);
  check_range("scratch.width_px", width_px, 0.0, kInf, true);
  check_range("scratch.curvature", curvature, 0.0, 1.0);
  check_range("scratch.strength", strength, -1.0, 1.0);
}

void DentParams::validate() const {
  check_center("dent", center_x_px, center_y_px);
  check_range("dent.radius_px", radius_px, 0.0, kInf, true);
  check_range("dent.aspect", aspect, 0.0, 1.0, true);
  check_range("dent.strength", strength, 0.0, 1.0);
  check_range("dent.light_azimuth_deg", light_azimuth_deg, -kInf, kInf);
}

void BlowholeParams::validate() const {
  check_center("blowhole", center_x_px, center_y_px);
  check_range("blowhole.radius_px", radius_px, 0.0, kInf, true);
  check_range("blowhole.irregularity", irregularity, 0.0, 1.0, false, true);
  check_range("blowhole.strength", strength, -1.0, 1.0);
  check_range("blowhole.rim_strength", rim_strength, -1.0, 1.0);
  check_range("blowhole.rim_width_px", rim_width_px, 0.0, kInf);
}

void CrackParams::validate() const {
  check_center("crack", center_x_px, center_y_px);
  check_range("crack.length_px", length_px, 0.0, kInf, true);
  check_range("crack.width_px", width_px, 0.0, kInf, true);
  check_range("crack.step_px", step_px, 0.5, std::max(0.5, length_px));
  check_range("crack.jaggedness", jaggedness, 0.0, 1.0);
  check_range("crack.branch_probability", branch_probability, 0.0, 1.0);
  check_range("crack.strength", strength, -1.0, 1.0);
}

RenderResult render_scratch(const cv::Mat& image, const ScratchParams& params, uint64_t seed) {
  check_image(image, "image");
  params.validate();
  const cv::Size size = image.size();
  const cv::Point2d center =
      pick_center("scratch", params.center_x_px, params.center_y_px, size, seed);

  Rng rng(derive_seed(seed, Stream::kShape));
  const double angle = rng.uniform(0.0, M_PI);
  const double sagitta = params.curvature * params.length_px * rng.uniform(-1.0, 1.0);
  const cv::Point2d axis(std::cos(angle), std::sin(angle));
  const cv::Point2d normal(-axis.y, axis.x);
  const cv::Point2d p0 = center - 0.5 * params.length_px * axis;
  const cv::Point2d p2 = center + 0.5 * params.length_px * axis;
  // The control point sits at twice the sagitta: a quadratic Bezier's midpoint lies halfway.
  const cv::Point2d p1 = center + 2.0 * sagitta * normal;
  const Fbm2D depth(derive_seed(seed, Stream::kVariation), 2);

  const int segments = std::max(8, static_cast<int>(params.length_px / 1.5));
  std::vector<StrokePoint> points;
  for (int k = 0; k <= segments; ++k) {
    const double t = static_cast<double>(k) / segments;
    const cv::Point2d p = (1 - t) * (1 - t) * p0 + 2 * (1 - t) * t * p1 + t * t * p2;
    const double width = params.width_px * std::sqrt(std::sin(M_PI * t));
    const double weight = 0.75 + 0.25 * depth(t * params.length_px / 12.0, 0.5);
    points.push_back({p.x, p.y, width, weight});
  }

  Canvas canvas(size);
  cv::Mat coverage(size, CV_32FC1, cv::Scalar(0.0));
  stroke_polyline(points, coverage);
  apply_coverage(coverage, params.strength, bounding_box(points, size), canvas);
  logf(LogLevel::kDebug, "scratch at ({:.1f}, {:.1f}), seed {}", center.x, center.y, seed);
  return {composite(image, canvas), canvas.mask, {center}};
}

RenderResult render_dent(const cv::Mat& image, const DentParams& params, uint64_t seed) {
  check_image(image, "image");
  params.validate();
  const cv::Size size = image.size();
  const cv::Point2d center =
      pick_center("dent", params.center_x_px, params.center_y_px, size, seed);

  Rng rng(derive_seed(seed, Stream::kShape));
  const double angle = rng.uniform(0.0, M_PI);
  const double c = std::cos(angle);
  const double s = std::sin(angle);
  const double a = params.aspect;
  const double r = params.radius_px;
  const double azimuth = params.light_azimuth_deg * M_PI / 180.0;
  const double lx = std::cos(azimuth);
  const double ly = -std::sin(azimuth);  // image y points down

  Canvas canvas(size);
  const cv::Rect box = disc_box(center.x, center.y, r, size);
  for (int y = box.y; y < box.y + box.height; ++y) {
    auto* factor = canvas.factor.ptr<float>(y);
    auto* mask = canvas.mask.ptr<uint8_t>(y);
    for (int x = box.x; x < box.x + box.width; ++x) {
      const double dx = x + 0.5 - center.x;
      const double dy = y + 0.5 - center.y;
      const double u = dx * c + dy * s;
      const double v = (-dx * s + dy * c) / a;
      const double rho = std::hypot(u, v) / r;
      if (rho >= 1.0) {
        continue;
      }
      mask[x] = 255;
      if (rho == 0.0) {
        continue;
      }

      // h = -(1 - rho^2)^2, so grad h = 4 rho (1 - rho^2) grad rho, and r * grad rho is the
      // unit outward direction for a circle. A positive grad h . light is a wall that faces
      // away from the light: darker.
      const double grad_x = (u * c - v * s / a) / (r * rho);  // r * d(rho)/dx
      const double grad_y = (u * s + v * c / a) / (r * rho);  // r * d(rho)/dy
      const double slope = 4.0 * rho * (1.0 - rho * rho) / kDentSlopeMax;
      const double change = params.strength * slope * (grad_x * lx + grad_y * ly);
      factor[x] = static_cast<float>(std::max(0.0, 1.0 - change));
    }
  }
  logf(LogLevel::kDebug, "dent at ({:.1f}, {:.1f}), seed {}", center.x, center.y, seed);
  return {composite(image, canvas), canvas.mask, {center}};
}

RenderResult render_blowhole(const cv::Mat& image, const BlowholeParams& params,
                             uint64_t seed) {
  check_image(image, "image");
  params.validate();
  const cv::Size size = image.size();
  const cv::Point2d center =
      pick_center("blowhole", params.center_x_px, params.center_y_px, size, seed);

  const PeriodicFbm1D outline(derive_seed(seed, Stream::kOutline), 4, 3);
  const double r0 = params.radius_px;
  // The rim reaches at least half a pixel out so that the pit's antialiased edge stays inside.
  const double rim = std::max(params.rim_width_px, 0.5);
  const double outer = r0 * (1.0 + params.irregularity) + rim;

  Canvas canvas(size);
  const cv::Rect box = disc_box(center.x, center.y, outer, size);
  for (int y = box.y; y < box.y + box.height; ++y) {
    auto* factor = canvas.factor.ptr<float>(y);
    auto* mask = canvas.mask.ptr<uint8_t>(y);
    for (int x = box.x; x < box.x + box.width; ++x) {
      const double dx = x + 0.5 - center.x;
      const double dy = y + 0.5 - center.y;
      const double d = std::hypot(dx, dy);
      const double r =
          r0 * (1.0 + params.irregularity * outline(std::atan2(dy, dx) / (2 * M_PI)));
      if (d >= r + rim) {
        continue;
      }

      // The pit's floor is darkest in the middle; the rim is a bump outside the outline.
      const double rho = std::min(d / r, 1.0);
      const double pit = params.strength * (0.75 + 0.25 * (1.0 - rho * rho));
      const double t = std::clamp((d - r) / rim, 0.0, 1.0);
      const double ring = params.rim_width_px > 0.0 ? params.rim_strength * std::sin(M_PI * t)
                                                    : 0.0;
      const double inside = std::clamp(r - d + 0.5, 0.0, 1.0);
      const double change = inside * pit + (1.0 - inside) * ring;
      factor[x] = static_cast<float>(std::max(0.0, 1.0 - change));
      mask[x] = 255;
    }
  }
  logf(LogLevel::kDebug, "blowhole at ({:.1f}, {:.1f}), seed {}", center.x, center.y, seed);
  return {composite(image, canvas), canvas.mask, {center}};
}

RenderResult render_crack(const cv::Mat& image, const CrackParams& params, uint64_t seed) {
  check_image(image, "image");
  params.validate();
  const cv::Size size = image.size();
  const cv::Point2d center =
      pick_center("crack", params.center_x_px, params.center_y_px, size, seed);

  struct Branch {
    cv::Point2d start;
    double heading;
    double length;
    double width;
    int level;
  };
  Rng rng(derive_seed(seed, Stream::kPath));
  const double heading = rng.uniform(0.0, 2.0 * M_PI);
  const cv::Point2d axis(std::cos(heading), std::sin(heading));
  std::vector<Branch> pending{
      {center - 0.5 * params.length_px * axis, heading, params.length_px, params.width_px, 0}};

  Canvas canvas(size);
  cv::Mat coverage(size, CV_32FC1, cv::Scalar(0.0));
  cv::Rect region;
  int grown = 0;
  while (!pending.empty()) {
    const Branch branch = pending.back();
    pending.pop_back();
    ++grown;

    // A random walk that turns at every step and is pulled back towards its heading, so
    // that it stays jagged without curling up.
    const int steps = std::max(1, static_cast<int>(std::ceil(branch.length / params.step_px)));
    cv::Point2d p = branch.start;
    double direction = branch.heading;
    std::vector<StrokePoint> points{{p.x, p.y, branch.width, 1.0}};
    for (int k = 1; k <= steps; ++k) {
      direction += 0.6 * params.jaggedness * rng.normal();
      direction += 0.3 * (branch.heading - direction);
      p += params.step_px * cv::Point2d(std::cos(direction), std::sin(direction));
      const double remaining = 1.0 - static_cast<double>(k) / steps;
      const double width = branch.width * (1.0 / 3.0 + 2.0 / 3.0 * remaining);
      points.push_back({p.x, p.y, width, 1.0});

      if (branch.level < 2 && grown + static_cast<int>(pending.size()) < kMaxCrackBranches &&
          rng.bernoulli(params.branch_probability)) {
        const double side = rng.bernoulli(0.5) ? 1.0 : -1.0;
        pending.push_back({p, direction + side * rng.uniform(0.35, 0.9),
                           branch.length * remaining * rng.uniform(0.3, 0.6) + params.step_px,
                           0.6 * width, branch.level + 1});
      }
    }
    // Branches share one coverage map (maximum), so junctions are not darkened twice.
    stroke_polyline(points, coverage);
    region |= bounding_box(points, size);
  }
  apply_coverage(coverage, params.strength, region, canvas);
  logf(LogLevel::kDebug, "crack at ({:.1f}, {:.1f}) with {} branches, seed {}", center.x,
       center.y, grown, seed);
  return {composite(image, canvas), canvas.mask, {center}};
}

}  // namespace spc::render
