#include "render/composite.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

#include "render/rng.h"

namespace spc::render {

void check_image(const cv::Mat& image, const std::string& name) {
  if (image.empty()) {
    throw std::invalid_argument(fmt::format("{} must not be empty", name));
  }
  const int type = image.type();
  if (type != CV_8UC1 && type != CV_8UC3 && type != CV_32FC1 && type != CV_32FC3) {
    throw std::invalid_argument(
        fmt::format("{} must be CV_8UC1, CV_8UC3, CV_32FC1 or CV_32FC3, got {}", name,
                    cv::typeToString(type)));
  }
}

void check_range(const std::string& name, double value, double lo, double hi, bool open_low,
                 bool open_high) {
  const bool low_ok = open_low ? value > lo : value >= lo;
  const bool high_ok = open_high ? value < hi : value <= hi;
  if (low_ok && high_ok && std::isfinite(value)) {
    return;
  }
  if (std::isinf(hi)) {
    throw std::invalid_argument(
        fmt::format("{} must be {} {}, got {}", name, open_low ? ">" : ">=", lo, value));
  }
  throw std::invalid_argument(fmt::format("{} must be in {}{}, {}{}, got {}", name,
                                          open_low ? "(" : "[", lo, hi, open_high ? ")" : "]",
                                          value));
}

Canvas::Canvas(cv::Size size)
    : factor(size, CV_32FC1, cv::Scalar(1.0)), mask(size, CV_8UC1, cv::Scalar(0)) {}

namespace {

template <typename T, int C>
void multiply_masked(const cv::Mat& image, const Canvas& canvas, cv::Mat& out) {
  cv::parallel_for_(cv::Range(0, image.rows), [&](const cv::Range& rows) {
    for (int y = rows.start; y < rows.end; ++y) {
      const auto* mask = canvas.mask.ptr<uint8_t>(y);
      const auto* factor = canvas.factor.ptr<float>(y);
      auto* pixel = out.ptr<T>(y);
      for (int x = 0; x < image.cols; ++x) {
        if (!mask[x]) {
          continue;
        }
        for (int c = 0; c < C; ++c) {
          pixel[x * C + c] = cv::saturate_cast<T>(pixel[x * C + c] * factor[x]);
        }
      }
    }
  });
}

}  // namespace

cv::Mat composite(const cv::Mat& image, const Canvas& canvas) {
  cv::Mat out = image.clone();
  switch (image.type()) {
    case CV_8UC1:
      multiply_masked<uint8_t, 1>(image, canvas, out);
      break;
    case CV_8UC3:
      multiply_masked<uint8_t, 3>(image, canvas, out);
      break;
    case CV_32FC1:
      multiply_masked<float, 1>(image, canvas, out);
      break;
    case CV_32FC3:
      multiply_masked<float, 3>(image, canvas, out);
      break;
    default:
      CV_Assert(!"composite: check_image must run first");
  }
  return out;
}

JitteredGrid jittered_centers(cv::Size size, int count, double min_cell_px, uint64_t seed,
                              const std::string& count_name) {
  if (count < 0) {
    throw std::invalid_argument(fmt::format("{} must be >= 0, got {}", count_name, count));
  }
  JitteredGrid grid;
  if (count == 0) {
    return grid;
  }

  // Columns over rows follow the image's aspect ratio, so that cells are about square.
  const double aspect = static_cast<double>(size.width) / size.height;
  grid.cols = std::max(1, static_cast<int>(std::lround(std::sqrt(count * aspect))));
  grid.cols = std::min(grid.cols, count);
  grid.rows = (count + grid.cols - 1) / grid.cols;
  grid.cell_width = static_cast<double>(size.width) / grid.cols;
  grid.cell_height = static_cast<double>(size.height) / grid.rows;
  if (std::min(grid.cell_width, grid.cell_height) < min_cell_px) {
    throw std::invalid_argument(fmt::format(
        "{} = {} cannot fit in a {}x{} image: the jittered grid of {}x{} cells has cells of "
        "{:.1f}x{:.1f} px, smaller than the {:.1f} px that one instance needs; lower the count "
        "or the size",
        count_name, count, size.width, size.height, grid.cols, grid.rows, grid.cell_width,
        grid.cell_height, min_cell_px));
  }

  // A partial Fisher-Yates shuffle picks `count` distinct cells.
  Rng rng(derive_seed(seed, Stream::kPlacement));
  std::vector<int> cells(static_cast<size_t>(grid.cols * grid.rows));
  std::iota(cells.begin(), cells.end(), 0);
  for (int i = 0; i < count; ++i) {
    const auto j = i + static_cast<int>(rng.below(static_cast<uint64_t>(cells.size() - i)));
    std::swap(cells[static_cast<size_t>(i)], cells[static_cast<size_t>(j)]);
    const int cell = cells[static_cast<size_t>(i)];
    const double x0 = (cell % grid.cols) * grid.cell_width;
    const double y0 = (cell / grid.cols) * grid.cell_height;
    grid.cells.push_back(cell);
    grid.centers.emplace_back(x0 + rng.uniform() * grid.cell_width,
                              y0 + rng.uniform() * grid.cell_height);
  }
  return grid;
}

cv::Rect disc_box(double cx, double cy, double radius, cv::Size size) {
  const int x0 = std::max(0, static_cast<int>(std::floor(cx - radius)) - 1);
  const int y0 = std::max(0, static_cast<int>(std::floor(cy - radius)) - 1);
  const int x1 = std::min(size.width, static_cast<int>(std::ceil(cx + radius)) + 2);
  const int y1 = std::min(size.height, static_cast<int>(std::ceil(cy + radius)) + 2);
  if (x1 <= x0 || y1 <= y0) {
    return {};
  }
  return {x0, y0, x1 - x0, y1 - y0};
}

void stroke_polyline(const std::vector<StrokePoint>& points, cv::Mat& coverage) {
  const cv::Size size = coverage.size();
  for (size_t i = 0; i + 1 < points.size(); ++i) {
    const StrokePoint& a = points[i];
    const StrokePoint& b = points[i + 1];
    const double half = 0.5 * std::max(a.width, b.width);
    const cv::Rect box = disc_box(0.5 * (a.x + b.x), 0.5 * (a.y + b.y),
                                  0.5 * std::hypot(b.x - a.x, b.y - a.y) + half + 1.0, size);
    const double ex = b.x - a.x;
    const double ey = b.y - a.y;
    const double length2 = ex * ex + ey * ey;

    // Segments are short, so their boxes are small: a serial loop beats thread start-up.
    for (int y = box.y; y < box.y + box.height; ++y) {
      auto* out = coverage.ptr<float>(y);
      const double py = y + 0.5;
      for (int x = box.x; x < box.x + box.width; ++x) {
        const double px = x + 0.5;
        double t = length2 > 0.0 ? ((px - a.x) * ex + (py - a.y) * ey) / length2 : 0.0;
        t = std::clamp(t, 0.0, 1.0);
        const double distance = std::hypot(px - (a.x + t * ex), py - (a.y + t * ey));
        const double width = a.width + t * (b.width - a.width);
        const double weight = a.weight + t * (b.weight - a.weight);
        const double alpha = std::clamp(0.5 * width - distance + 0.5, 0.0, 1.0) * weight;
        if (alpha > out[x]) {
          out[x] = static_cast<float>(alpha);
        }
      }
    }
  }
}

void apply_coverage(const cv::Mat& coverage, double strength, const cv::Rect& region,
                    Canvas& canvas) {
  for (int y = region.y; y < region.y + region.height; ++y) {
    const auto* alpha = coverage.ptr<float>(y);
    auto* factor = canvas.factor.ptr<float>(y);
    auto* mask = canvas.mask.ptr<uint8_t>(y);
    for (int x = region.x; x < region.x + region.width; ++x) {
      if (alpha[x] > 0.0f) {
        factor[x] *= static_cast<float>(std::max(0.0, 1.0 - strength * alpha[x]));
        mask[x] = 255;
      }
    }
  }
}

}  // namespace spc::render
