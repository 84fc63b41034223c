// Binds csrc/render into seqpatchcore._C. Images cross as numpy arrays: uint8 or float32,
// [H, W] or [H, W, C] with C in {1, 3}. No torch headers here (Note [fmt and torch headers]).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <opencv2/core.hpp>

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/bindings.h"
#include "render/defects.h"
#include "render/impurities.h"
#include "render/surface.h"

namespace py = pybind11;

namespace spc::bindings {
namespace {

using namespace spc::render;

// Wraps a numpy image as a cv::Mat without copying. The array must stay alive while the Mat is
// used; callers keep `array` in scope.
cv::Mat mat_from_array(const py::array& array, const std::string& name) {
  const bool is_u8 = py::isinstance<py::array_t<uint8_t>>(array);
  const bool is_f32 = py::isinstance<py::array_t<float>>(array);
  if (!is_u8 && !is_f32) {
    throw py::type_error(name + " must have dtype uint8 or float32, got " +
                         py::str(array.dtype()).cast<std::string>());
  }
  int channels = 1;
  if (array.ndim() == 3 && (array.shape(2) == 1 || array.shape(2) == 3)) {
    channels = static_cast<int>(array.shape(2));
  } else if (array.ndim() != 2) {
    std::string shape;
    for (py::ssize_t i = 0; i < array.ndim(); ++i) {
      shape += (i ? ", " : "") + std::to_string(array.shape(i));
    }
    throw std::invalid_argument(name + " must have shape [H, W] or [H, W, C] with C in {1, 3}, "
                                "got [" + shape + "]");
  }
  if (!(array.flags() & py::array::c_style)) {
    throw std::invalid_argument(name + " must be C-contiguous (use numpy.ascontiguousarray)");
  }
  const int depth = is_u8 ? CV_8U : CV_32F;
  return cv::Mat(static_cast<int>(array.shape(0)), static_cast<int>(array.shape(1)),
                 CV_MAKETYPE(depth, channels), const_cast<void*>(array.data()));
}

// Hands a Mat to numpy without copying: the capsule owns a heap copy of the header, which
// keeps the pixel buffer's reference count up. Single-channel images come back as [H, W].
py::array array_from_mat(cv::Mat mat, bool keep_channel_axis) {
  if (!mat.isContinuous()) {
    mat = mat.clone();
  }
  const py::dtype dtype = mat.depth() == CV_8U ? py::dtype::of<uint8_t>() : py::dtype::of<float>();
  const auto item = static_cast<py::ssize_t>(mat.elemSize1());
  const auto channels = static_cast<py::ssize_t>(mat.channels());
  std::vector<py::ssize_t> shape{mat.rows, mat.cols};
  std::vector<py::ssize_t> strides{static_cast<py::ssize_t>(mat.step[0]), item * channels};
  if (channels > 1 || keep_channel_axis) {
    shape.push_back(channels);
    strides.push_back(item);
  }
  auto* owner = new cv::Mat(std::move(mat));
  py::capsule capsule(owner, [](void* p) { delete static_cast<cv::Mat*>(p); });
  return py::array(dtype, shape, strides, owner->data, capsule);
}

int output_type(const std::string& dtype, int channels) {
  if (channels != 1 && channels != 3) {
    throw std::invalid_argument("channels must be 1 or 3, got " + std::to_string(channels));
  }
  if (dtype == "uint8") {
    return CV_MAKETYPE(CV_8U, channels);
  }
  if (dtype == "float32") {
    return CV_MAKETYPE(CV_32F, channels);
  }
  throw std::invalid_argument("dtype must be 'uint8' or 'float32', got '" + dtype + "'");
}

cv::Size output_size(int height, int width) {
  if (height <= 0 || width <= 0) {
    throw std::invalid_argument("size must be positive, got height " + std::to_string(height) +
                                " and width " + std::to_string(width));
  }
  return {width, height};
}

// Binds one renderer `fn(image, params, seed)` as name(image, params, seed) -> (image, mask).
template <typename Params>
void def_renderer(py::module_& m, const char* name,
                  RenderResult (*fn)(const cv::Mat&, const Params&, uint64_t), const char* doc) {
  m.def(
      name,
      [fn](const py::array& image, const Params& params, uint64_t seed) {
        const cv::Mat input = mat_from_array(image, "image");
        const bool channel_axis = image.ndim() == 3;
        RenderResult result;
        {
          py::gil_scoped_release release;
          result = fn(input, params, seed);
        }
        return py::make_tuple(array_from_mat(result.image, channel_axis),
                              array_from_mat(result.mask, false));
      },
      py::arg("image"), py::arg("params"), py::arg("seed"), doc);
}

// Fields with their documentation; each class also gets validate() and a field list, so that
// Python can build it from keyword arguments and write it to a manifest.
template <typename Params>
py::class_<Params> bind_params(py::module_& m, const char* name, const char* doc) {
  py::class_<Params> cls(m, name, doc);
  cls.def(py::init<>());
  cls.def("validate", &Params::validate,
          "Raise ValueError naming the first field that is out of range.");
  return cls;
}

}  // namespace

void bind_render(py::module_& m) {
  auto r = m.def_submodule("render", "Procedural impurities, surfaces and defects (OpenCV).");

  bind_params<WaterStainParams>(r, "WaterStainParams", "Water stain parameters; see render.md.")
      .def_readwrite("count", &WaterStainParams::count, "stains per image, >= 0")
      .def_readwrite("radius_px", &WaterStainParams::radius_px, "mean radius R, px, > 0")
      .def_readwrite("radius_jitter", &WaterStainParams::radius_jitter, "[0, 1)")
      .def_readwrite("elongation", &WaterStainParams::elongation, "[0, 0.9]")
      .def_readwrite("outline_amplitude", &WaterStainParams::outline_amplitude, "A, [0, 1)")
      .def_readwrite("outline_period", &WaterStainParams::outline_period, "lobes, [1, 64]")
      .def_readwrite("outline_octaves", &WaterStainParams::outline_octaves, "[1, 8]")
      .def_readwrite("strength", &WaterStainParams::strength, "s, [-1, 1], > 0 darkens")
      .def_readwrite("falloff", &WaterStainParams::falloff, "k of exp(-k rho), [0, 20]")
      .def_readwrite("strength_variation", &WaterStainParams::strength_variation, "[0, 1]")
      .def_readwrite("variation_scale", &WaterStainParams::variation_scale, "x radius, > 0")
      .def_readwrite("rim_strength", &WaterStainParams::rim_strength, "[-1, 1]")
      .def_readwrite("rim_width", &WaterStainParams::rim_width, "(0, 0.5] of the radius")
      .def_readwrite("edge_softness", &WaterStainParams::edge_softness, "[0, 1] of the radius");

  bind_params<FingerprintParams>(r, "FingerprintParams", "Fingerprint parameters.")
      .def_readwrite("count", &FingerprintParams::count, "prints per image, >= 0")
      .def_readwrite("size_px", &FingerprintParams::size_px, "semi-major axis, px, > 0")
      .def_readwrite("size_jitter", &FingerprintParams::size_jitter, "[0, 1)")
      .def_readwrite("aspect", &FingerprintParams::aspect, "minor / major, (0, 1]")
      .def_readwrite("ridge_period_px", &FingerprintParams::ridge_period_px, "px, >= 2")
      .def_readwrite("ridge_sharpness", &FingerprintParams::ridge_sharpness, "[0.5, 8]")
      .def_readwrite("warp_px", &FingerprintParams::warp_px, "px, >= 0")
      .def_readwrite("arch_probability", &FingerprintParams::arch_probability, "[0, 1]")
      .def_readwrite("strength", &FingerprintParams::strength, "[-1, 1], > 0 darkens")
      .def_readwrite("pressure_variation", &FingerprintParams::pressure_variation, "[0, 1]")
      .def_readwrite("break_density", &FingerprintParams::break_density, "[0, 1)")
      .def_readwrite("edge_softness", &FingerprintParams::edge_softness, "[0, 1]");

  bind_params<DustParams>(r, "DustParams", "Dust parameters.")
      .def_readwrite("count", &DustParams::count, "particles per image, >= 0")
      .def_readwrite("radius_min_px", &DustParams::radius_min_px, "px, > 0")
      .def_readwrite("radius_max_px", &DustParams::radius_max_px, "px, >= radius_min_px")
      .def_readwrite("strength", &DustParams::strength, "[-1, 1], > 0 darkens")
      .def_readwrite("bright_fraction", &DustParams::bright_fraction, "[0, 1]")
      .def_readwrite("fibre_fraction", &DustParams::fibre_fraction, "[0, 1]")
      .def_readwrite("fibre_length_px", &DustParams::fibre_length_px, "px, > 0")
      .def_readwrite("fibre_width_px", &DustParams::fibre_width_px, "px, > 0")
      .def_readwrite("irregularity", &DustParams::irregularity, "[0, 1)");

  bind_params<ScratchParams>(r, "ScratchParams", "Scratch parameters.")
      .def_readwrite("center_x_px", &ScratchParams::center_x_px, "px; < 0: random")
      .def_readwrite("center_y_px", &ScratchParams::center_y_px, "px; < 0: random")
      .def_readwrite("length_px", &ScratchParams::length_px, "px, > 0")
      .def_readwrite("width_px", &ScratchParams::width_px, "px, > 0")
      .def_readwrite("curvature", &ScratchParams::curvature, "sagitta / length, [0, 1]")
      .def_readwrite("strength", &ScratchParams::strength, "[-1, 1], > 0 darkens");

  bind_params<DentParams>(r, "DentParams", "Dent parameters.")
      .def_readwrite("center_x_px", &DentParams::center_x_px, "px; < 0: random")
      .def_readwrite("center_y_px", &DentParams::center_y_px, "px; < 0: random")
      .def_readwrite("radius_px", &DentParams::radius_px, "semi-major axis, px, > 0")
      .def_readwrite("aspect", &DentParams::aspect, "minor / major, (0, 1]")
      .def_readwrite("strength", &DentParams::strength, "shading change, [0, 1]")
      .def_readwrite("light_azimuth_deg", &DentParams::light_azimuth_deg, "degrees, 90 = up");

  bind_params<BlowholeParams>(r, "BlowholeParams", "Blowhole parameters.")
      .def_readwrite("center_x_px", &BlowholeParams::center_x_px, "px; < 0: random")
      .def_readwrite("center_y_px", &BlowholeParams::center_y_px, "px; < 0: random")
      .def_readwrite("radius_px", &BlowholeParams::radius_px, "px, > 0")
      .def_readwrite("irregularity", &BlowholeParams::irregularity, "[0, 1)")
      .def_readwrite("strength", &BlowholeParams::strength, "[-1, 1], > 0 darkens")
      .def_readwrite("rim_strength", &BlowholeParams::rim_strength, "[-1, 1], < 0 brightens")
      .def_readwrite("rim_width_px", &BlowholeParams::rim_width_px, "px, >= 0");

  bind_params<CrackParams>(r, "CrackParams", "Crack parameters.")
      .def_readwrite("center_x_px", &CrackParams::center_x_px, "px; < 0: random")
      .def_readwrite("center_y_px", &CrackParams::center_y_px, "px; < 0: random")
      .def_readwrite("length_px", &CrackParams::length_px, "px, > 0")
      .def_readwrite("width_px", &CrackParams::width_px, "px, > 0")
      .def_readwrite("step_px", &CrackParams::step_px, "px, [0.5, length_px]")
      .def_readwrite("jaggedness", &CrackParams::jaggedness, "[0, 1]")
      .def_readwrite("branch_probability", &CrackParams::branch_probability, "[0, 1]")
      .def_readwrite("strength", &CrackParams::strength, "[-1, 1], > 0 darkens");

  bind_params<SurfaceParams>(r, "SurfaceParams", "Procedural surface parameters.")
      .def_readwrite("mean", &SurfaceParams::mean, "fraction of full scale, [0, 1]")
      .def_readwrite("albedo_contrast", &SurfaceParams::albedo_contrast, "[0, 1]")
      .def_readwrite("albedo_scale_px", &SurfaceParams::albedo_scale_px, "px, > 0")
      .def_readwrite("roughness", &SurfaceParams::roughness, "height, px, [0, 20]")
      .def_readwrite("direction_deg", &SurfaceParams::direction_deg, "lay, degrees from +x")
      .def_readwrite("streak_width_px", &SurfaceParams::streak_width_px, "px, >= 1")
      .def_readwrite("streak_length_px", &SurfaceParams::streak_length_px, "px, >= width")
      .def_readwrite("streak_contrast", &SurfaceParams::streak_contrast, "[0, 1]")
      .def_readwrite("mill_pitch_px", &SurfaceParams::mill_pitch_px, "px, >= 2")
      .def_readwrite("tool_radius_px", &SurfaceParams::tool_radius_px, "px, > 0")
      .def_readwrite("grain_px", &SurfaceParams::grain_px, "px, >= 1")
      .def_readwrite("light_azimuth_deg", &SurfaceParams::light_azimuth_deg, "90 = up")
      .def_readwrite("light_elevation_deg", &SurfaceParams::light_elevation_deg, "(0, 90]")
      .def_readwrite("light_gradient", &SurfaceParams::light_gradient, "[0, 1]")
      .def_readwrite("vignette", &SurfaceParams::vignette, "[0, 1]")
      .def_readwrite("noise_std", &SurfaceParams::noise_std, "fraction of full scale");

  def_renderer<WaterStainParams>(r, "water_stains", &render_water_stains,
                                 "(image, params, seed) -> (image, mask)");
  def_renderer<FingerprintParams>(r, "fingerprints", &render_fingerprints,
                                  "(image, params, seed) -> (image, mask)");
  def_renderer<DustParams>(r, "dust", &render_dust, "(image, params, seed) -> (image, mask)");
  def_renderer<ScratchParams>(r, "scratch", &render_scratch,
                              "(image, params, seed) -> (image, mask)");
  def_renderer<DentParams>(r, "dent", &render_dent, "(image, params, seed) -> (image, mask)");
  def_renderer<BlowholeParams>(r, "blowhole", &render_blowhole,
                               "(image, params, seed) -> (image, mask)");
  def_renderer<CrackParams>(r, "crack", &render_crack, "(image, params, seed) -> (image, mask)");

  r.def(
      "surface",
      [](const std::string& family, const SurfaceParams& params, int height, int width,
         uint64_t seed, const std::string& dtype, int channels) {
        const SurfaceFamily parsed = parse_surface_family(family);
        const int type = output_type(dtype, channels);
        const cv::Size size = output_size(height, width);
        cv::Mat image;
        {
          py::gil_scoped_release release;
          image = render_surface(parsed, params, size, type, seed);
        }
        return array_from_mat(image, false);
      },
      py::arg("family"), py::arg("params"), py::arg("height"), py::arg("width"),
      py::arg("seed"), py::arg("dtype") = "uint8", py::arg("channels") = 1,
      "Procedural surface [H, W] or [H, W, 3].");

  py::class_<SurfaceModel>(r, "SurfaceModel",
                           "Amplitude spectrum and grey-level quantiles of real images.")
      .def(py::init([](const py::array_t<float, py::array::c_style | py::array::forcecast>&
                           amplitude,
                       const py::array_t<float, py::array::c_style | py::array::forcecast>&
                           quantiles,
                       double slope, const std::string& scale,
                       const std::optional<py::array_t<float, py::array::c_style |
                                                                 py::array::forcecast>>&
                           mean_image,
                       double residual_std) {
             if (amplitude.ndim() != 2 || quantiles.ndim() != 2) {
               throw std::invalid_argument("amplitude and quantiles must be 2-D arrays");
             }
             SurfaceModel model;
             model.work_size = static_cast<int>(amplitude.shape(0));
             model.scale = parse_spectrum_scale(scale);
             model.amplitude =
                 cv::Mat(static_cast<int>(amplitude.shape(0)),
                         static_cast<int>(amplitude.shape(1)), CV_32FC1,
                         const_cast<float*>(amplitude.data()))
                     .clone();
             model.quantiles =
                 cv::Mat(static_cast<int>(quantiles.shape(0)),
                         static_cast<int>(quantiles.shape(1)), CV_32FC1,
                         const_cast<float*>(quantiles.data()))
                     .clone();
             model.slope = slope;
             model.residual_std = residual_std;
             if (mean_image && mean_image->size() > 0) {
               if (mean_image->ndim() != 2) {
                 throw std::invalid_argument("mean_image must be a 2-D array");
               }
               model.mean_image = cv::Mat(static_cast<int>(mean_image->shape(0)),
                                          static_cast<int>(mean_image->shape(1)), CV_32FC1,
                                          const_cast<float*>(mean_image->data()))
                                      .clone();
             }
             model.validate();
             return model;
           }),
           py::arg("amplitude"), py::arg("quantiles"), py::arg("slope"), py::arg("scale"),
           py::arg("mean_image"), py::arg("residual_std"))
      .def_readonly("residual_std", &SurfaceModel::residual_std)
      .def_property_readonly("mean_image",
                             [](const SurfaceModel& m) -> py::object {
                               if (m.mean_image.empty()) {
                                 return py::none();
                               }
                               return array_from_mat(m.mean_image.clone(), false);
                             })
      .def_readonly("work_size", &SurfaceModel::work_size)
      .def_property_readonly("scale",
                             [](const SurfaceModel& m) { return spectrum_scale_name(m.scale); })
      .def_readonly("slope", &SurfaceModel::slope)
      .def_property_readonly("amplitude",
                             [](const SurfaceModel& m) {
                               return array_from_mat(m.amplitude.clone(), false);
                             })
      .def_property_readonly("quantiles", [](const SurfaceModel& m) {
        return array_from_mat(m.quantiles.clone(), false);
      });

  r.def(
      "fit_surface_model",
      [](const std::vector<py::array>& images, int work_size, const std::string& scale,
         int crops_per_image, int quantile_count, uint64_t seed) {
        SurfaceFitParams params;
        params.work_size = work_size;
        params.scale = parse_spectrum_scale(scale);
        params.crops_per_image = crops_per_image;
        params.quantile_count = quantile_count;
        std::vector<cv::Mat> mats;
        for (size_t i = 0; i < images.size(); ++i) {
          mats.push_back(mat_from_array(images[i], "images[" + std::to_string(i) + "]"));
        }
        py::gil_scoped_release release;
        return fit_surface_model(mats, params, seed);
      },
      py::arg("images"), py::arg("work_size") = 256, py::arg("scale") = "image",
      py::arg("crops_per_image") = 4, py::arg("quantile_count") = 256, py::arg("seed") = 0,
      "Fit a SurfaceModel to grey images (uint8 or float32 [H, W]).");

  r.def(
      "surface_from_model",
      [](const SurfaceModel& model, int height, int width, uint64_t seed,
         const std::string& dtype, int channels, int quantile_row) {
        const int type = output_type(dtype, channels);
        const cv::Size size = output_size(height, width);
        cv::Mat image;
        {
          py::gil_scoped_release release;
          image = render_surface(model, size, type, seed, quantile_row);
        }
        return array_from_mat(image, false);
      },
      py::arg("model"), py::arg("height"), py::arg("width"), py::arg("seed"),
      py::arg("dtype") = "uint8", py::arg("channels") = 1, py::arg("quantile_row") = -1,
      "Calibrated surface [H, W] or [H, W, 3] in the units of the fitted images.");
}

}  // namespace spc::bindings
