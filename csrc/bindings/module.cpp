#include <pybind11/functional.h>
#include <pybind11/pybind11.h>

#include "bindings/bindings.h"
#include "common/log.h"

namespace py = pybind11;

namespace spc::bindings {

void bind_log(py::module_& m) {
  m.def(
      "set_log_sink",
      [](py::object callback) {
        if (callback.is_none()) {
          set_log_sink({});
          return;
        }
        // The core may log from a thread that does not hold the GIL.
        auto shared = std::make_shared<py::object>(std::move(callback));
        set_log_sink([shared](LogLevel level, const std::string& message) {
          py::gil_scoped_acquire gil;
          (*shared)(static_cast<int>(level), message);
        });
      },
      py::arg("callback"),
      "Forward C++ log messages to callback(level: int, message: str); None restores stderr.");
  m.def(
      "set_log_level",
      [](int level) { set_log_level(static_cast<LogLevel>(level)); },
      py::arg("level"),
      "Drop C++ log messages below this Python logging level.");
}

}  // namespace spc::bindings

PYBIND11_MODULE(_C, m) {
  m.doc() = "seqpatchcore C++ core: coresets, nearest-neighbour search, impurity rendering";
  spc::bindings::bind_log(m);
  spc::bindings::bind_core(m);
  spc::bindings::bind_render(m);
  spc::bindings::bind_config(m);
}
