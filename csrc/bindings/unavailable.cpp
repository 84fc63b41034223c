// Stands in for the bindings of csrc/render and csrc/config in a minimal build
// (SEQPATCHCORE_BUILD_RENDER=OFF or SEQPATCHCORE_BUILD_CONFIG=OFF, see scripts/gpu_check.sh):
// the module then has no render or config functions, and `built_with_render` or
// `built_with_config` is False.
#include <pybind11/pybind11.h>

#include "bindings/bindings.h"

namespace py = pybind11;

namespace spc::bindings {

#ifdef SEQPATCHCORE_NO_RENDER
void bind_render(py::module_& m) { m.attr("built_with_render") = false; }
#endif

#ifdef SEQPATCHCORE_NO_CONFIG
void bind_config(py::module_& m) { m.attr("built_with_config") = false; }
#endif

}  // namespace spc::bindings
