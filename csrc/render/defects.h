// Surface defects with pixel masks: scratches, dents, blowholes and cracks.
//
// Like the impurities (see Note [reflectance sign] in impurities.h), every defect multiplies
// the reflectance, I' = I * (1 - strength * weight), takes any CV_8UC1/3 or CV_32FC1/3 image,
// and returns the new image and a CV_8UC1 mask (255 = defect); pixels outside the mask are
// bit-identical to the input. One call renders one defect. Its centre is (center_x_px,
// center_y_px) when both are >= 0, otherwise drawn uniformly from the central 80 % of the
// image.
#pragma once

#include <opencv2/core.hpp>

#include <cstdint>

#include "render/composite.h"

namespace spc::render {

// A thin curved line: a quadratic Bezier curve whose width tapers to a point at both ends and
// whose depth varies along its length.
struct ScratchParams {
  double center_x_px = -1.0;
  double center_y_px = -1.0;
  // Length of the chord, px; > 0.
  double length_px = 70.0;
  // Width in the middle, px; > 0.
  double width_px = 1.5;
  // Largest sagitta of the bend relative to the length; [0, 1].
  double curvature = 0.15;
  // Reflectance change in the middle; [-1, 1]; the default brightens, as a scratch that
  // catches the light does.
  double strength = -0.6;

  void validate() const;
};

// A smooth shallow depression, seen through its shading: the wall facing away from the light
// is darker, the one facing it brighter. Height profile (1 - rho^2)^2 over an ellipse.
struct DentParams {
  double center_x_px = -1.0;
  double center_y_px = -1.0;
  // Semi-major axis, px; > 0.
  double radius_px = 18.0;
  // Minor over major axis; (0, 1].
  double aspect = 0.8;
  // Largest relative change of the shading (on the steepest wall); [0, 1].
  double strength = 0.35;
  // Direction towards the light in the image plane, degrees, 0 = +x, 90 = up (-y).
  double light_azimuth_deg = 135.0;

  void validate() const;
};

// A round pit, dark inside with a bright rim, its outline perturbed by periodic noise.
struct BlowholeParams {
  double center_x_px = -1.0;
  double center_y_px = -1.0;
  // Mean radius of the pit, px; > 0.
  double radius_px = 6.0;
  // Relative amplitude of the outline noise; [0, 1).
  double irregularity = 0.15;
  // Darkening at the bottom of the pit; [-1, 1].
  double strength = 0.7;
  // Change on the rim around the pit, same sign convention; [-1, 1]; the default brightens.
  double rim_strength = -0.35;
  // Width of the rim outside the pit, px; >= 0 (0 = no rim).
  double rim_width_px = 2.0;

  void validate() const;
};

// A branching jagged dark line: a random walk whose direction turns at every step, with side
// branches that split off and taper.
struct CrackParams {
  double center_x_px = -1.0;
  double center_y_px = -1.0;
  // Length of the main branch, px; > 0.
  double length_px = 90.0;
  // Width at the start of the main branch, px; > 0 (it tapers to a third).
  double width_px = 1.8;
  // Step of the random walk, px; [0.5, length_px].
  double step_px = 3.0;
  // Standard deviation of the turn per step, relative to 0.6 rad; [0, 1].
  double jaggedness = 0.5;
  // Probability per step that a side branch starts; [0, 1].
  double branch_probability = 0.05;
  // Darkening; [-1, 1].
  double strength = 0.7;

  void validate() const;
};

RenderResult render_scratch(const cv::Mat& image, const ScratchParams& params, uint64_t seed);
RenderResult render_dent(const cv::Mat& image, const DentParams& params, uint64_t seed);
RenderResult render_blowhole(const cv::Mat& image, const BlowholeParams& params, uint64_t seed);
RenderResult render_crack(const cv::Mat& image, const CrackParams& params, uint64_t seed);

}  // namespace spc::render
