// Each part of the C++ core binds itself into seqpatchcore._C from its own file.
#pragma once

#include <pybind11/pybind11.h>

namespace spc::bindings {

void bind_log(pybind11::module_& m);
void bind_core(pybind11::module_& m);
void bind_render(pybind11::module_& m);
void bind_config(pybind11::module_& m);

}  // namespace spc::bindings
