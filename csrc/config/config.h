// YAML configs validated against schemas before any work starts.
//
// A schema is a tree of Fields. Loading a file checks every key (unknown keys are errors that
// name the file, line and column, with the closest known key), every type and range, fills in
// defaults, and resolves relative paths against the config file's folder. The result is a
// YAML::Node holding only known keys with values of the declared types, which the bindings hand
// to Python as plain dicts.
#pragma once

#include <yaml-cpp/yaml.h>

#include <limits>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace spc::config {

// What went wrong and where: "<file>:<line>:<column>: <key>: <problem>".
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// kAny: any YAML value, checked later by the code that reads it (e.g. the fields of a C++
// parameter struct); see Note [any values] in config.cpp.
enum class Kind { kBool, kInt, kFloat, kString, kPath, kList, kSection, kMap, kAny };

// The type of a scalar under the YAML 1.2 core schema: a plain scalar is resolved by its text
// (`~`, `true`, `0x1F`, `1e3`, `.inf`, ...); a quoted scalar or `!!str` is a string.
enum class ScalarType { kNull, kBool, kInt, kFloat, kString };

struct Field {
  std::string name;
  Kind kind = Kind::kString;
  std::string doc;
  // An absent key takes the default; a null default makes the field required unless
  // `optional` is set. `optional` also lets an explicit null through.
  YAML::Node default_value;
  bool optional = false;
  // Inclusive numeric bounds for kInt and kFloat, and for every item of a numeric list.
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  // Allowed values of a kString.
  std::vector<std::string> choices;
  // kList: exact length when > 0.
  int64_t length = 0;
  // kSection: its fields. kList and kMap: the schema of each item / value (one entry).
  std::vector<Field> fields;
};

// Builders that read like the schema they declare.
Field section(std::string name, std::string doc, std::vector<Field> fields);
Field boolean(std::string name, bool default_value, std::string doc);
Field integer(std::string name, int64_t default_value, std::string doc,
              double min = -std::numeric_limits<double>::infinity(),
              double max = std::numeric_limits<double>::infinity());
Field number(std::string name, double default_value, std::string doc,
             double min = -std::numeric_limits<double>::infinity(),
             double max = std::numeric_limits<double>::infinity());
Field text(std::string name, std::string default_value, std::string doc,
           std::vector<std::string> choices = {});
Field path(std::string name, std::string doc);  // required
Field list(std::string name, Field item, YAML::Node default_value, std::string doc,
           int64_t length = 0);
Field map(std::string name, Field value, std::string doc);
// Any YAML value (scalar, list or mapping); a null default makes it required.
Field any(std::string name, YAML::Node default_value, std::string doc);
Field required(Field field);  // drops the default: the key must be given
Field optional(Field field);   // a null default that stays null when the key is absent
Field nullable(Field field);   // keeps the default, but an explicit null is allowed

// Sets `dotted.key=value` overrides (value parsed as YAML) on a raw document before validation;
// errors name the override. With the document's schema, a map whose keys are themselves dotted
// keys (a study's grid) takes the rest of the key whole (Note [Dotted keys in overrides]).
void apply_override(YAML::Node& document, const std::string& assignment,
                    const Field* schema = nullptr);

// A validated config and, for every key, where it came from ("file:line:column", or
// "default", or "override 'a.b=1'"), so later checks (a missing data folder, say) can point
// at the line to fix.
struct Loaded {
  YAML::Node value;
  std::map<std::string, std::string> locations;
};

// Validates `document` (read from `source`, a file path or a label such as "<string>") against
// `schema`. Relative kPath values are resolved against `base_dir` (empty: left as they are).
Loaded validate(const YAML::Node& document, const Field& schema, const std::string& source,
                const std::string& base_dir);

// Reads and validates a file, applying `overrides` first; parse errors are ConfigErrors naming
// the file and line.
Loaded load_file(const std::string& file, const Field& schema,
                 const std::vector<std::string>& overrides = {});

// The core-schema type of a scalar node: a value of a validated kAny field (whose scalars carry
// their resolved type as a tag), a scalar read from a file, or a null node. Throws ConfigError
// for a tag other than the core schema's.
ScalarType scalar_type(const YAML::Node& node);

// Emits a node as block-style YAML text that reads back as the same values: strings that would
// resolve to another type (`"1"`, `"true"`) are quoted.
std::string dump(const YAML::Node& node);

// Markdown reference of a schema: every key with its type, default, range and doc.
std::string describe(const Field& schema);

// The schemas of the project: "run" (the main job), "render" (synthetic datasets and
// impurities on real images).
const Field& schema(const std::string& name);
std::vector<std::string> schema_names();

}  // namespace spc::config
