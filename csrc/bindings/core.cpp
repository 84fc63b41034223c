#include <torch/extension.h>

#include "bindings/bindings.h"

namespace spc::bindings {

void bind_core(pybind11::module_& m) {}

}  // namespace spc::bindings
