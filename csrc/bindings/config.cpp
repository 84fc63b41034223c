#include "bindings/bindings.h"

namespace spc::bindings {

void bind_config(pybind11::module_& m) {}

}  // namespace spc::bindings
