#include "bindings/bindings.h"

namespace spc::bindings {

void bind_render(pybind11::module_& m) {}

}  // namespace spc::bindings
