// Building blocks shared by the impurity and defect renderers: input checks, the result type,
// jittered placement, antialiased strokes, and the multiplicative composite that leaves every
// pixel outside the mask bit-identical.
#pragma once

#include <opencv2/core.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace spc::render {

// What every impurity and defect renderer returns.
struct RenderResult {
  cv::Mat image;  // same type and size as the input
  cv::Mat mask;   // CV_8UC1, 255 where the impurity or defect is, 0 elsewhere
  std::vector<cv::Point2d> centers;  // one per instance, pixels (x right, y down)
};

// Throws std::invalid_argument unless `image` is a non-empty CV_8UC1, CV_8UC3, CV_32FC1 or
// CV_32FC3 matrix.
void check_image(const cv::Mat& image, const std::string& name);

// Throws std::invalid_argument unless lo <= value <= hi (or lo < value when open_low, value < hi
// when open_high). name: the parameter, e.g. "stain.radius_px".
void check_range(const std::string& name, double value, double lo, double hi,
                 bool open_low = false, bool open_high = false);

// Factor and mask accumulated by one render call, then applied once by composite().
struct Canvas {
  explicit Canvas(cv::Size size);

  cv::Mat factor;  // CV_32FC1, multiplies every channel, 1 = unchanged
  cv::Mat mask;    // CV_8UC1, 255 where the factor was touched
};

// Returns a copy of `image` where each masked pixel is multiplied by canvas.factor (rounded and
// saturated for 8-bit). Pixels where canvas.mask is 0 are copied bit for bit.
cv::Mat composite(const cv::Mat& image, const Canvas& canvas);

// Jittered (stratified) sampling: the image is cut into a grid of about `count` cells with the
// image's aspect ratio, `count` distinct cells are chosen at random, and each chosen cell gets
// one centre drawn uniformly inside it.
struct JitteredGrid {
  int cols = 0;
  int rows = 0;
  double cell_width = 0.0;   // px
  double cell_height = 0.0;  // px
  std::vector<int> cells;    // chosen cells, row * cols + col, one per centre
  std::vector<cv::Point2d> centers;
};

// Throws std::invalid_argument naming `count_name` when count < 0, or when the grid's cells
// would be smaller than min_cell_px on a side (the count cannot fit in the image).
JitteredGrid jittered_centers(cv::Size size, int count, double min_cell_px, uint64_t seed,
                              const std::string& count_name);

// One vertex of an antialiased stroke: position (px), full width (px) and a weight in [0, 1]
// that scales the stroke's coverage there.
struct StrokePoint {
  double x;
  double y;
  double width;
  double weight;
};

// Draws the polyline through `points` into `coverage` (CV_32FC1, the canvas size) by taking
// the maximum with each segment's antialiased coverage: 1 inside half the width, falling to 0
// over one pixel. Width and weight are interpolated along each segment.
void stroke_polyline(const std::vector<StrokePoint>& points, cv::Mat& coverage);

// Folds a coverage map into the canvas: factor *= 1 - strength * coverage where coverage > 0,
// and marks those pixels in the mask. Only pixels inside `region` are visited.
void apply_coverage(const cv::Mat& coverage, double strength, const cv::Rect& region,
                    Canvas& canvas);

// Pixel box around a disc of `radius` px about (cx, cy), one pixel of margin, clipped to size.
cv::Rect disc_box(double cx, double cy, double radius, cv::Size size);

}  // namespace spc::render
