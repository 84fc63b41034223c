#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "config/config.h"

namespace py = pybind11;

namespace spc::bindings {
namespace {

using config::Field;
using config::Kind;

py::object to_python(const YAML::Node& node, const Field& field) {
  if (!node.IsDefined() || node.IsNull()) {
    return py::none();
  }
  switch (field.kind) {
    case Kind::kBool:
      return py::bool_(node.as<bool>());
    case Kind::kInt:
      return py::int_(node.as<int64_t>());
    case Kind::kFloat:
      return py::float_(node.as<double>());
    case Kind::kString:
    case Kind::kPath:
      return py::str(node.as<std::string>());
    case Kind::kList: {
      py::list out;
      for (const YAML::Node& item : node) {
        out.append(to_python(item, field.fields.at(0)));
      }
      return out;
    }
    case Kind::kMap: {
      py::dict out;
      for (auto it = node.begin(); it != node.end(); ++it) {
        out[py::str(it->first.as<std::string>())] = to_python(it->second, field.fields.at(0));
      }
      return out;
    }
    case Kind::kSection: {
      py::dict out;
      for (const Field& child : field.fields) {
        out[py::str(child.name)] = to_python(node[child.name], child);
      }
      return out;
    }
  }
  return py::none();
}

YAML::Node from_python(const py::handle& value, const std::string& key) {
  if (value.is_none()) {
    return YAML::Node(YAML::NodeType::Null);
  }
  if (py::isinstance<py::bool_>(value)) {
    return YAML::Node(value.cast<bool>());
  }
  if (py::isinstance<py::int_>(value)) {
    return YAML::Node(value.cast<int64_t>());
  }
  if (py::isinstance<py::float_>(value)) {
    return YAML::Node(std::string(py::repr(value)));  // shortest text, 0.3 stays 0.3
  }
  if (py::isinstance<py::str>(value)) {
    return YAML::Node(value.cast<std::string>());
  }
  if (py::isinstance<py::dict>(value)) {
    YAML::Node out(YAML::NodeType::Map);
    for (const auto& [k, v] : value.cast<py::dict>()) {
      const std::string name = py::str(k);
      out[name] = from_python(v, key.empty() ? name : key + "." + name);
    }
    return out;
  }
  if (py::isinstance<py::list>(value) || py::isinstance<py::tuple>(value)) {
    YAML::Node out(YAML::NodeType::Sequence);
    for (const auto& item : value) {
      out.push_back(from_python(item, key));
    }
    return out;
  }
  throw config::ConfigError("config value of '" + key + "' has an unsupported type " +
                            std::string(py::str(py::type::handle_of(value).attr("__name__"))));
}

py::tuple loaded_to_python(const config::Loaded& loaded, const Field& schema) {
  return py::make_tuple(to_python(loaded.value, schema), loaded.locations);
}

}  // namespace

void bind_config(py::module_& m) {
  py::register_exception<config::ConfigError>(m, "ConfigError", PyExc_ValueError);

  m.def(
      "load_config",
      [](const std::string& file, const std::string& schema,
         const std::vector<std::string>& overrides) {
        const Field& fields = config::schema(schema);
        return loaded_to_python(config::load_file(file, fields, overrides), fields);
      },
      py::arg("file"),
      py::arg("schema") = "run",
      py::arg("overrides") = std::vector<std::string>{},
      R"doc(Reads and validates a YAML config.

Args:
    file: the YAML file; relative paths inside are resolved against its folder.
    schema: which schema ('run', ...).
    overrides: 'dotted.key=value' assignments applied before validation.

Returns:
    (config as nested dicts with every default filled in, {dotted key: 'file:line:column'}).

Raises:
    ConfigError: naming the file, line, key, what was expected and what was found.)doc");
  m.def(
      "validate_config",
      [](const py::dict& document, const std::string& schema, const std::string& source,
         const std::string& base_dir) {
        const Field& fields = config::schema(schema);
        return loaded_to_python(
            config::validate(from_python(document, ""), fields, source, base_dir), fields);
      },
      py::arg("document"),
      py::arg("schema") = "run",
      py::arg("source") = "<dict>",
      py::arg("base_dir") = "",
      "Validates a config given as nested dicts; returns the same as load_config.");
  m.def(
      "dump_config",
      [](const py::dict& document) { return config::dump(from_python(document, "")); },
      py::arg("document"),
      "Nested dicts as YAML text.");
  m.def(
      "describe_config",
      [](const std::string& schema) { return config::describe(config::schema(schema)); },
      py::arg("schema") = "run",
      "A Markdown table of every key of a schema.");
  m.def("config_schemas", &config::schema_names);
}

}  // namespace spc::bindings
