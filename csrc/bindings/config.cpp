#include <pybind11/stl.h>

#include <algorithm>

#include <cmath>

#include "bindings/bindings.h"
#include "config/config.h"

namespace py = pybind11;

namespace spc::bindings {
namespace {

using config::Field;
using config::Kind;
using config::ScalarType;

// A validated kAny value (Note [any values] in config.cpp): scalars carry their type as a tag.
py::object any_to_python(const YAML::Node& node) {
  if (node.IsMap()) {
    py::dict out;
    for (auto it = node.begin(); it != node.end(); ++it) {
      out[py::str(it->first.Scalar())] = any_to_python(it->second);
    }
    return out;
  }
  if (node.IsSequence()) {
    py::list out;
    for (const YAML::Node& item : node) {
      out.append(any_to_python(item));
    }
    return out;
  }
  switch (config::scalar_type(node)) {
    case ScalarType::kNull:
      return py::none();
    case ScalarType::kBool:
      return py::bool_(node.as<bool>());
    case ScalarType::kInt:
      return py::int_(node.as<int64_t>());
    case ScalarType::kFloat:
      return py::float_(node.as<double>());
    case ScalarType::kString:
      return py::str(node.Scalar());
  }
  return py::none();
}

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
    case Kind::kAny:
      return any_to_python(node);
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
    // Shortest text, so 0.3 stays 0.3; tagged, so 1.0 stays a float in an any-value field.
    const double number = value.cast<double>();
    YAML::Node out(std::isnan(number)   ? std::string(".nan")
                   : std::isinf(number) ? std::string(number > 0 ? ".inf" : "-.inf")
                                        : std::string(py::repr(value)));
    out.SetTag("tag:yaml.org,2002:float");
    return out;
  }
  if (py::isinstance<py::str>(value)) {
    // Tagged like a quoted scalar: the string "1" stays a string in an any-value field.
    YAML::Node out(value.cast<std::string>());
    out.SetTag("!");
    return out;
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
    schema: which schema ('run', 'render'; see config_schemas()).
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
  m.def(
      "config_key_kind",
      [](const std::string& schema, const std::string& dotted) -> std::string {
        const Field* field = &config::schema(schema);
        size_t start = 0;
        while (start <= dotted.size()) {
          const size_t end = std::min(dotted.find('.', start), dotted.size());
          const std::string part = dotted.substr(start, end - start);
          const auto it = std::find_if(field->fields.begin(), field->fields.end(),
                                       [&](const Field& f) { return f.name == part; });
          if (field->kind != Kind::kSection || it == field->fields.end()) {
            throw config::ConfigError("unknown key '" + dotted + "' in the " + schema +
                                      " schema");
          }
          field = &*it;
          start = end + 1;
        }
        static const char* names[] = {"bool", "int", "float", "string", "path",
                                      "list", "section", "map", "any"};
        return names[static_cast<int>(field->kind)];
      },
      py::arg("schema"),
      py::arg("key"),
      "The kind of a dotted key of a schema ('path', 'int', ...); ConfigError if unknown.");
}

}  // namespace spc::bindings
