#include "config/config.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

namespace spc::config {
namespace {

namespace fs = std::filesystem;

const char* kind_name(const Field& field) {
  switch (field.kind) {
    case Kind::kBool:
      return "a boolean (true or false)";
    case Kind::kInt:
      return "an integer";
    case Kind::kFloat:
      return "a number";
    case Kind::kString:
      return "a string";
    case Kind::kPath:
      return "a path";
    case Kind::kList:
      return "a list";
    case Kind::kSection:
    case Kind::kMap:
      return "a mapping";
    case Kind::kAny:
      return "any YAML value";
  }
  return "a value";
}

// Note [any values]
// A kAny field takes any YAML value, so that a parameter map whose fields are those of a C++
// struct (SurfaceParams, WaterStainParams, ...) is declared once, by the struct, and checked
// by the code that builds the struct. Scalars are typed by the YAML 1.2 core schema, as a
// YAML 1.2 reader would: `~`/`null`/empty is null, `true`/`False` a boolean, `12`/`0o14`/`0xC`
// an integer, `1.5`/`1e3`/`.inf`/`.nan` a float, anything else, and every quoted scalar, a
// string (YAML 1.1's `yes`, `on` and `1_000` are strings). The validator returns a canonical
// copy: decimal integers, floats that read back as floats, every scalar tagged with its type,
// so the bindings convert it without parsing the text again and dump() can quote a string
// that would read back as another type. Every key and item inside gets a location, so an
// error found later (an unknown struct field, a value out of range) still names its line.

constexpr const char* kCoreTag = "tag:yaml.org,2002:";

std::string type_tag(ScalarType type) {
  switch (type) {
    case ScalarType::kNull:
      return std::string(kCoreTag) + "null";
    case ScalarType::kBool:
      return std::string(kCoreTag) + "bool";
    case ScalarType::kInt:
      return std::string(kCoreTag) + "int";
    case ScalarType::kFloat:
      return std::string(kCoreTag) + "float";
    case ScalarType::kString:
      return std::string(kCoreTag) + "str";
  }
  return "";
}

// The core schema's resolution of a plain (unquoted, untagged) scalar.
ScalarType resolve_plain(const std::string& text) {
  static const std::regex null_pattern("~|null|Null|NULL|");
  static const std::regex bool_pattern("true|True|TRUE|false|False|FALSE");
  static const std::regex int_pattern("[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+");
  static const std::regex float_pattern(
      R"([-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?)"
      R"(|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN))");
  if (std::regex_match(text, null_pattern)) {
    return ScalarType::kNull;
  }
  if (std::regex_match(text, bool_pattern)) {
    return ScalarType::kBool;
  }
  if (std::regex_match(text, int_pattern)) {
    return ScalarType::kInt;
  }
  if (std::regex_match(text, float_pattern)) {
    return ScalarType::kFloat;
  }
  return ScalarType::kString;
}

// Text that the core schema reads back as the same float: 1.0 is "1.0", not "1" (an integer).
std::string float_text(double value) {
  if (std::isnan(value)) {
    return ".nan";
  }
  if (std::isinf(value)) {
    return value > 0 ? ".inf" : "-.inf";
  }
  std::string text = fmt::format("{}", value);
  if (text.find_first_of(".eE") == std::string::npos) {
    text += ".0";
  }
  return text;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) {
    row[j] = j;
  }
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1] ? 1 : 0)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// The shortest text that reads back as the same double, so 0.3 stays "0.3" in dumps.
YAML::Node float_node(double value) { return YAML::Node(fmt::format("{}", value)); }

std::string range_text(const Field& field) {
  if (std::isfinite(field.min) && std::isfinite(field.max)) {
    return fmt::format("in [{}, {}]", field.min, field.max);
  }
  if (std::isfinite(field.min)) {
    return fmt::format(">= {}", field.min);
  }
  if (std::isfinite(field.max)) {
    return fmt::format("<= {}", field.max);
  }
  return "";
}

std::string join(const std::vector<std::string>& items, const char* separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    out += (i ? separator : "") + items[i];
  }
  return out;
}

// Walks a document against a schema, collecting the validated tree and the key locations.
class Validator {
 public:
  Validator(std::string source, std::string base_dir, std::map<std::string, std::string> overrides)
      : source_(std::move(source)),
        base_dir_(std::move(base_dir)),
        overrides_(std::move(overrides)) {}

  Loaded run(const YAML::Node& document, const Field& schema) {
    Loaded loaded;
    loaded.value = visit(document, schema, "", document);
    loaded.locations = std::move(locations_);
    return loaded;
  }

 private:
  // Overridden keys (and everything below them) come from the command line, not the file.
  std::string where(const YAML::Node& node, const std::string& key) const {
    if (in_default_) {
      return "default";
    }
    for (const auto& [overridden, assignment] : overrides_) {
      if (key == overridden || key.rfind(overridden + ".", 0) == 0 ||
          key.rfind(overridden + "[", 0) == 0) {
        return fmt::format("override '{}'", assignment);
      }
    }
    const YAML::Mark mark = node.Mark();
    if (mark.is_null() || mark.line < 0) {
      return source_;
    }
    return fmt::format("{}:{}:{}", source_, mark.line + 1, mark.column + 1);
  }

  [[noreturn]] void fail(const YAML::Node& node, const std::string& key,
                         const std::string& problem, bool name_key = true) const {
    throw ConfigError(fmt::format("{}: {}{}", where(node, key),
                                  key.empty() || !name_key ? "" : key + ": ", problem));
  }

  static std::string show(const YAML::Node& node) {
    if (node.IsScalar()) {
      return "'" + node.Scalar() + "'";
    }
    if (node.IsSequence()) {
      return "a list";
    }
    if (node.IsMap()) {
      return "a mapping";
    }
    return "nothing";
  }

  static std::string join_key(const std::string& prefix, const std::string& name) {
    return prefix.empty() ? name : prefix + "." + name;
  }

  YAML::Node visit(const YAML::Node& node, const Field& field, const std::string& key,
                   const YAML::Node& parent) {
    const YAML::Node& located = node.IsDefined() ? node : parent;
    if (!key.empty()) {
      locations_[key] = node.IsDefined() ? where(node, key) : "default";
    }
    // For an any-value field an explicit null is a value like any other.
    if (node.IsDefined() && field.kind == Kind::kAny) {
      return visit_any(node, key);
    }

    if (!node.IsDefined() || node.IsNull()) {
      if (field.kind == Kind::kSection) {
        return visit_section(YAML::Node(YAML::NodeType::Map), field, key, located);
      }
      // An explicit null keeps a nullable field empty; an absent key takes the default.
      if (node.IsDefined() && field.optional) {
        return YAML::Node(YAML::NodeType::Null);
      }
      if (field.default_value.IsDefined() && !field.default_value.IsNull()) {
        // Items of a default list or mapping come from the schema, not the file.
        const bool outer = in_default_;
        in_default_ = true;
        YAML::Node value = visit(field.default_value, field, key, located);
        in_default_ = outer;
        locations_[key] = "default";
        return value;
      }
      if (field.optional) {
        return YAML::Node(YAML::NodeType::Null);
      }
      if (field.kind == Kind::kMap) {
        return YAML::Node(YAML::NodeType::Map);
      }
      fail(located, key, fmt::format("is required: expected {}{}", kind_name(field),
                                     field.doc.empty() ? "" : " (" + field.doc + ")"));
    }

    switch (field.kind) {
      case Kind::kSection:
        return visit_section(node, field, key, node);
      case Kind::kMap:
        return visit_map(node, field, key);
      case Kind::kList:
        return visit_list(node, field, key);
      case Kind::kAny:
        return visit_any(node, key);
      default:
        return visit_scalar(node, field, key);
    }
  }

  // See Note [any values].
  YAML::Node visit_any(const YAML::Node& node, const std::string& key) {
    if (node.IsMap()) {
      YAML::Node out(YAML::NodeType::Map);
      for (auto it = node.begin(); it != node.end(); ++it) {
        if (!it->first.IsScalar()) {
          fail(it->first, key, fmt::format("expected text keys, got {}", show(it->first)));
        }
        const std::string name = it->first.Scalar();
        const std::string child = join_key(key, name);
        locations_[child] = where(it->second.IsNull() ? it->first : it->second, child);
        out[name] = visit_any(it->second, child);
      }
      return out;
    }
    if (node.IsSequence()) {
      YAML::Node out(YAML::NodeType::Sequence);
      for (size_t i = 0; i < node.size(); ++i) {
        const std::string child = fmt::format("{}[{}]", key, i);
        locations_[child] = where(node[i].IsNull() ? node : node[i], child);
        out.push_back(visit_any(node[i], child));
      }
      return out;
    }
    return canonical_scalar(node, key);
  }

  YAML::Node canonical_scalar(const YAML::Node& node, const std::string& key) {
    ScalarType type;
    try {
      type = scalar_type(node);
    } catch (const ConfigError& error) {
      fail(node, key, error.what());
    }
    if (type == ScalarType::kNull) {
      return YAML::Node(YAML::NodeType::Null);
    }
    const std::string& text = node.Scalar();
    YAML::Node out;
    switch (type) {
      case ScalarType::kBool:
        if (resolve_plain(text) != ScalarType::kBool) {
          fail(node, key, fmt::format("expected a boolean, got '{}'", text));
        }
        out = YAML::Node(text[0] == 't' || text[0] == 'T');
        break;
      case ScalarType::kInt:
        out = YAML::Node(parse_int(node, key, text));
        break;
      case ScalarType::kFloat:
        out = YAML::Node(float_text(parse_float(node, key, text)));
        break;
      default:
        out = YAML::Node(text);
        break;
    }
    out.SetTag(type_tag(type));
    return out;
  }

  int64_t parse_int(const YAML::Node& node, const std::string& key,
                    const std::string& text) const {
    if (resolve_plain(text) != ScalarType::kInt) {
      fail(node, key, fmt::format("expected an integer, got '{}'", text));
    }
    const bool octal = text.rfind("0o", 0) == 0;
    const bool hex = text.rfind("0x", 0) == 0;
    errno = 0;
    char* end = nullptr;
    int64_t value;
    if (octal || hex) {
      const unsigned long long magnitude = std::strtoull(text.c_str() + 2, &end, octal ? 8 : 16);
      if (magnitude > static_cast<unsigned long long>(std::numeric_limits<int64_t>::max())) {
        errno = ERANGE;
      }
      value = static_cast<int64_t>(magnitude);
    } else {
      value = std::strtoll(text.c_str(), &end, 10);
    }
    if (errno == ERANGE) {
      fail(node, key, fmt::format("integer {} is outside the 64-bit range", text));
    }
    return value;
  }

  double parse_float(const YAML::Node& node, const std::string& key,
                     const std::string& text) const {
    const ScalarType type = resolve_plain(text);
    if (type != ScalarType::kFloat && type != ScalarType::kInt) {
      fail(node, key, fmt::format("expected a number, got '{}'", text));
    }
    const size_t dot = text.find('.');
    const std::string special = dot == std::string::npos ? "" : text.substr(dot + 1);
    if (special == "nan" || special == "NaN" || special == "NAN") {
      return std::numeric_limits<double>::quiet_NaN();
    }
    if (special == "inf" || special == "Inf" || special == "INF") {
      return text[0] == '-' ? -std::numeric_limits<double>::infinity()
                            : std::numeric_limits<double>::infinity();
    }
    if (type == ScalarType::kInt) {
      return static_cast<double>(parse_int(node, key, text));
    }
    const double value = std::strtod(text.c_str(), nullptr);
    if (std::isinf(value)) {
      fail(node, key, fmt::format("number {} is outside the range of a double", text));
    }
    return value;
  }

  YAML::Node visit_section(const YAML::Node& node, const Field& field, const std::string& key,
                           const YAML::Node& located) {
    if (!node.IsMap()) {
      fail(located, key, fmt::format("expected a mapping, got {}", show(node)));
    }
    std::vector<std::string> known;
    for (const Field& child : field.fields) {
      known.push_back(child.name);
    }
    for (auto it = node.begin(); it != node.end(); ++it) {
      const std::string name = it->first.as<std::string>();
      if (std::find(known.begin(), known.end(), name) != known.end()) {
        continue;
      }
      std::string suggestion;
      size_t best = 3;
      for (const std::string& candidate : known) {
        const size_t distance = edit_distance(name, candidate);
        if (distance < best) {
          best = distance;
          suggestion = fmt::format(" (did you mean '{}'?)", candidate);
        }
      }
      fail(it->first, join_key(key, name),
           fmt::format("unknown key '{}' in {}{}; expected one of: {}",
                       join_key(key, name), key.empty() ? "the config" : "'" + key + "'",
                       suggestion, join(known, ", ")),
           /*name_key=*/false);
    }

    YAML::Node out(YAML::NodeType::Map);
    for (const Field& child : field.fields) {
      out[child.name] = visit(node[child.name], child, join_key(key, child.name), located);
    }
    return out;
  }

  YAML::Node visit_map(const YAML::Node& node, const Field& field, const std::string& key) {
    if (!node.IsMap()) {
      fail(node, key, fmt::format("expected a mapping, got {}", show(node)));
    }
    YAML::Node out(YAML::NodeType::Map);
    for (auto it = node.begin(); it != node.end(); ++it) {
      const std::string name = it->first.as<std::string>();
      out[name] = visit(it->second, field.fields.at(0), join_key(key, name), it->second);
    }
    return out;
  }

  YAML::Node visit_list(const YAML::Node& node, const Field& field, const std::string& key) {
    if (!node.IsSequence()) {
      fail(node, key, fmt::format("expected a list, got {}", show(node)));
    }
    if (field.length > 0 && static_cast<int64_t>(node.size()) != field.length) {
      fail(node, key, fmt::format("expected a list of {} items, got {}", field.length,
                                  node.size()));
    }
    YAML::Node out(YAML::NodeType::Sequence);
    for (size_t i = 0; i < node.size(); ++i) {
      out.push_back(visit(node[i], field.fields.at(0), fmt::format("{}[{}]", key, i), node));
    }
    return out;
  }

  YAML::Node visit_scalar(const YAML::Node& node, const Field& field, const std::string& key) {
    if (!node.IsScalar()) {
      fail(node, key, fmt::format("expected {}, got {}", kind_name(field), show(node)));
    }
    const std::string& text = node.Scalar();
    switch (field.kind) {
      case Kind::kBool: {
        if (text == "true" || text == "True" || text == "false" || text == "False") {
          return YAML::Node(text == "true" || text == "True");
        }
        fail(node, key, fmt::format("expected {}, got '{}'", kind_name(field), text));
      }
      case Kind::kInt: {
        char* end = nullptr;
        errno = 0;
        const long long value = std::strtoll(text.c_str(), &end, 10);
        if (text.empty() || *end != '\0' || errno == ERANGE) {
          fail(node, key, fmt::format("expected an integer, got '{}'", text));
        }
        check_range(node, field, key, static_cast<double>(value), text);
        return YAML::Node(static_cast<int64_t>(value));
      }
      case Kind::kFloat: {
        char* end = nullptr;
        const double value = std::strtod(text.c_str(), &end);
        if (text.empty() || *end != '\0' || std::isnan(value)) {
          fail(node, key, fmt::format("expected a number, got '{}'", text));
        }
        check_range(node, field, key, value, text);
        return float_node(value);
      }
      case Kind::kString: {
        if (!field.choices.empty() &&
            std::find(field.choices.begin(), field.choices.end(), text) == field.choices.end()) {
          fail(node, key, fmt::format("expected one of {}, got '{}'", join(field.choices, ", "),
                                      text));
        }
        return YAML::Node(text);
      }
      case Kind::kPath:
        return YAML::Node(resolve_path(node, key, text));
      default:
        fail(node, key, "internal error: not a scalar kind");
    }
  }

  void check_range(const YAML::Node& node, const Field& field, const std::string& key,
                   double value, const std::string& text) const {
    if (value < field.min || value > field.max) {
      fail(node, key,
           fmt::format("expected {} {}, got {}", kind_name(field), range_text(field), text));
    }
  }

  // "~" is the home folder and ${NAME} an environment variable; relative paths start at the
  // config file's folder, so a config works from any working directory.
  std::string resolve_path(const YAML::Node& node, const std::string& key, std::string text) {
    if (text.empty()) {
      fail(node, key, "expected a path, got an empty string");
    }
    size_t start;
    while ((start = text.find("${")) != std::string::npos) {
      const size_t end = text.find('}', start);
      if (end == std::string::npos) {
        fail(node, key, fmt::format("unterminated '${{' in '{}'", text));
      }
      const std::string name = text.substr(start + 2, end - start - 2);
      const char* value = std::getenv(name.c_str());
      if (value == nullptr) {
        fail(node, key, fmt::format("environment variable '{}' is not set", name));
      }
      text.replace(start, end - start + 1, value);
    }
    if (text[0] == '~') {
      const char* home = std::getenv("HOME");
      if (home != nullptr) {
        text = std::string(home) + text.substr(1);
      }
    }
    // A path given on the command line is relative to where the command runs.
    fs::path resolved(text);
    const bool from_command_line = where(node, key).rfind("override", 0) == 0;
    if (resolved.is_relative() && from_command_line) {
      resolved = fs::current_path() / resolved;
    } else if (resolved.is_relative() && !base_dir_.empty()) {
      resolved = fs::path(base_dir_) / resolved;
    }
    return resolved.lexically_normal().string();
  }

  std::string source_;
  std::string base_dir_;
  std::map<std::string, std::string> overrides_;
  std::map<std::string, std::string> locations_;
  bool in_default_ = false;
};

// "an integer >= 0", "list of a string: a, b", "a mapping of any YAML value".
std::string type_text(const Field& field) {
  if (field.kind == Kind::kList) {
    return "list of " + type_text(field.fields.at(0));
  }
  if (field.kind == Kind::kMap) {
    return "a mapping of " + type_text(field.fields.at(0));
  }
  std::string type = kind_name(field);
  if (!range_text(field).empty()) {
    type += " " + range_text(field);
  }
  if (!field.choices.empty()) {
    type += ": " + join(field.choices, ", ");
  }
  return type;
}

void describe_into(const Field& field, const std::string& prefix, std::string& out) {
  const std::string key = prefix.empty() ? field.name : prefix + "." + field.name;
  if (field.kind == Kind::kSection) {
    if (!key.empty()) {
      out += fmt::format("| `{}` | section | | {} |\n", key, field.doc);
    }
    for (const Field& child : field.fields) {
      describe_into(child, key, out);
    }
    return;
  }
  const std::string type = type_text(field);
  std::string default_text = "required";
  if (field.default_value.IsDefined() && !field.default_value.IsNull()) {
    YAML::Emitter emitter;
    emitter << YAML::Flow << field.default_value;
    default_text = fmt::format("`{}`", emitter.c_str());
  } else if (field.optional || field.kind == Kind::kMap) {
    default_text = "none";
  }
  out += fmt::format("| `{}` | {} | {} | {} |\n", key, type, default_text, field.doc);

  // The fields of each item of a list or mapping of sections: `impurities[].kind`.
  if ((field.kind == Kind::kList || field.kind == Kind::kMap) &&
      field.fields.at(0).kind == Kind::kSection) {
    const std::string item = key + (field.kind == Kind::kList ? "[]" : ".<name>");
    for (const Field& child : field.fields.at(0).fields) {
      describe_into(child, item, out);
    }
  }
}

void emit(YAML::Emitter& emitter, const YAML::Node& node) {
  if (node.IsMap()) {
    emitter << YAML::BeginMap;
    for (auto it = node.begin(); it != node.end(); ++it) {
      emitter << YAML::Key;
      emit(emitter, it->first);
      emitter << YAML::Value;
      emit(emitter, it->second);
    }
    emitter << YAML::EndMap;
    return;
  }
  if (node.IsSequence()) {
    emitter << YAML::BeginSeq;
    for (const YAML::Node& item : node) {
      emit(emitter, item);
    }
    emitter << YAML::EndSeq;
    return;
  }
  if (!node.IsDefined() || node.IsNull()) {
    emitter << YAML::Null;
    return;
  }
  // A string that would read back as a number, a boolean or null keeps its quotes.
  const std::string& text = node.Scalar();
  const std::string& tag = node.Tag();
  const bool is_string = tag == "!" || tag == type_tag(ScalarType::kString);
  if (is_string && resolve_plain(text) != ScalarType::kString) {
    emitter << YAML::DoubleQuoted;
  }
  emitter << text;
}

}  // namespace

Field section(std::string name, std::string doc, std::vector<Field> fields) {
  Field field;
  field.name = std::move(name);
  field.kind = Kind::kSection;
  field.doc = std::move(doc);
  field.fields = std::move(fields);
  return field;
}

Field boolean(std::string name, bool default_value, std::string doc) {
  Field field;
  field.name = std::move(name);
  field.kind = Kind::kBool;
  field.doc = std::move(doc);
  field.default_value = YAML::Node(default_value);
  return field;
}

Field integer(std::string name, int64_t default_value, std::string doc, double min, double max) {
  Field field;
  field.name = std::move(name);
  field.kind = Kind::kInt;
  field.doc = std::move(doc);
  field.default_value = YAML::Node(default_value);
  field.min = min;
  field.max = max;
  return field;
}

Field number(std::string name, double default_value, std::string doc, double min, double max) {
  Field field;
  field.name = std::move(name);
  field.kind = Kind::kFloat;
  field.doc = std::move(doc);
  field.default_value = float_node(default_value);
  field.min = min;
  field.max = max;
  return field;
}

Field text(std::string name, std::string default_value, std::string doc,
           std::vector<std::string> choices) {
  Field field;
  field.name = std::move(name);
  field.kind = Kind::kString;
  field.doc = std::move(doc);
  field.default_value = YAML::Node(default_value);
  field.choices = std::move(choices);
  return field;
}

Field path(std::string name, std::string doc) {
  Field field;
  field.name = std::move(name);
  field.kind = Kind::kPath;
  field.doc = std::move(doc);
  return field;
}

Field list(std::string name, Field item, YAML::Node default_value, std::string doc,
           int64_t length) {
  Field field;
  field.name = std::move(name);
  field.kind = Kind::kList;
  field.doc = std::move(doc);
  field.default_value = std::move(default_value);
  field.length = length;
  field.fields = {std::move(item)};
  return field;
}

Field map(std::string name, Field value, std::string doc) {
  Field field;
  field.name = std::move(name);
  field.kind = Kind::kMap;
  field.doc = std::move(doc);
  field.fields = {std::move(value)};
  return field;
}

Field any(std::string name, YAML::Node default_value, std::string doc) {
  Field field;
  field.name = std::move(name);
  field.kind = Kind::kAny;
  field.doc = std::move(doc);
  field.default_value = std::move(default_value);
  return field;
}

Field required(Field field) {
  field.default_value = YAML::Node();
  field.optional = false;
  return field;
}

Field optional(Field field) {
  field.default_value = YAML::Node(YAML::NodeType::Null);
  field.optional = true;
  return field;
}

Field nullable(Field field) {
  field.optional = true;
  return field;
}

// The schema of `name` inside `field` (a section's field, or a list's or map's item), or null.
const Field* child_schema(const Field* field, const std::string& name) {
  if (field == nullptr) {
    return nullptr;
  }
  if (field->kind == Kind::kList || field->kind == Kind::kMap) {
    return &field->fields.front();
  }
  if (field->kind == Kind::kSection) {
    for (const Field& child : field->fields) {
      if (child.name == name) {
        return &child;
      }
    }
  }
  return nullptr;
}

// Note [Dotted keys in overrides]
// Some maps take dotted run-config keys as their own keys: a study's grid and overrides
// (`grid: {features.input_size: [...]}`) and each level of an axis. An override that reaches
// one, `grid.features.input_size=[[256, 256]]`, means the key `features.input_size` of the
// grid, not a section `features` inside it: where the schema says so, the rest of the dotted
// key is one key.
bool takes_dotted_keys(const Field* field) {
  if (field == nullptr) {
    return false;
  }
  const bool free_values = field->kind == Kind::kMap && field->fields.front().kind == Kind::kAny &&
                           !field->fields.front().default_value.IsMap();
  const bool free_map = field->kind == Kind::kAny && field->default_value.IsMap();
  return free_values || free_map;
}

void apply_override(YAML::Node& document, const std::string& assignment, const Field* schema) {
  const size_t equals = assignment.find('=');
  if (equals == std::string::npos || equals == 0) {
    throw ConfigError(fmt::format(
        "override '{}': expected KEY=VALUE with a dotted key, e.g. coreset.capacity=1000",
        assignment));
  }
  const std::string key = assignment.substr(0, equals);
  YAML::Node value;
  try {
    value = YAML::Load(assignment.substr(equals + 1));
  } catch (const YAML::Exception& error) {
    throw ConfigError(fmt::format("override '{}': the value is not YAML: {}", assignment,
                                  error.msg));
  }

  if (!document.IsDefined() || document.IsNull()) {
    document = YAML::Node(YAML::NodeType::Map);
  }
  // Steps of the key: a mapping key, or a list index written `name[2]` (as in the locations).
  struct Step {
    std::string name;
    int64_t index = -1;
  };
  std::vector<Step> steps;
  std::stringstream stream(key);
  static const std::regex part_pattern(R"(([^\[\]]+)((\[[0-9]{1,9}\])*))");
  for (std::string part; std::getline(stream, part, '.');) {
    std::smatch match;
    if (!std::regex_match(part, match, part_pattern)) {
      throw ConfigError(fmt::format("override '{}': bad key segment '{}'; expected a name, "
                                    "optionally with list indices such as impurities[0]",
                                    assignment, part));
    }
    steps.push_back({match[1].str()});
    const std::string indices = match[2].str();
    for (size_t open = indices.find('['); open != std::string::npos;
         open = indices.find('[', open + 1)) {
      steps.push_back({steps.back().name, std::stoll(indices.substr(open + 1))});
    }
  }

  // yaml-cpp nodes are handles, so walking with copies edits the document in place. They are
  // kept in a vector because assigning to a Node would re-point the node it was copied from.
  std::vector<YAML::Node> path{document};
  const Field* field = schema;
  for (size_t i = 0; i < steps.size(); ++i) {
    const Step& step = steps[i];
    const bool last = i + 1 == steps.size();
    YAML::Node node = path.back();
    const auto plain = [](const Step& s) { return s.index < 0; };
    if (takes_dotted_keys(field) && node.IsMap() &&
        std::all_of(steps.begin() + static_cast<std::ptrdiff_t>(i), steps.end(), plain)) {
      std::string rest = steps[i].name;
      for (size_t j = i + 1; j < steps.size(); ++j) {
        rest += "." + steps[j].name;
      }
      node[rest] = value;
      return;
    }
    field = child_schema(field, step.name);
    if (step.index >= 0) {
      if (!node.IsSequence() || step.index >= static_cast<int64_t>(node.size())) {
        throw ConfigError(fmt::format("override '{}': '{}' has no item {}", assignment,
                                      step.name, step.index));
      }
      if (last) {
        node[step.index] = value;
        return;
      }
      path.push_back(node[step.index]);
      continue;
    }
    if (!node.IsMap()) {
      throw ConfigError(fmt::format("override '{}': '{}' is not a section", assignment,
                                    i > 0 ? steps[i - 1].name : key));
    }
    if (last) {
      node[step.name] = value;
      return;
    }
    if (!node[step.name].IsDefined() || node[step.name].IsNull()) {
      node[step.name] = YAML::Node(YAML::NodeType::Map);
    }
    path.push_back(node[step.name]);
  }
}

Loaded validate(const YAML::Node& document, const Field& schema, const std::string& source,
                const std::string& base_dir) {
  return Validator(source, base_dir, {}).run(document, schema);
}

Loaded load_file(const std::string& file, const Field& schema,
                 const std::vector<std::string>& overrides) {
  std::ifstream stream(file);
  if (!stream) {
    throw ConfigError(fmt::format("{}: cannot read the config file ({})", file,
                                  fs::exists(file) ? "permission denied" : "no such file"));
  }
  YAML::Node document;
  try {
    document = YAML::Load(stream);
  } catch (const YAML::Exception& error) {
    throw ConfigError(fmt::format("{}:{}:{}: not valid YAML: {}", file, error.mark.line + 1,
                                  error.mark.column + 1, error.msg));
  }
  std::map<std::string, std::string> overridden;
  for (const std::string& assignment : overrides) {
    apply_override(document, assignment, &schema);
    overridden[assignment.substr(0, assignment.find('='))] = assignment;
  }
  const std::string base_dir = fs::absolute(fs::path(file)).parent_path().string();
  return Validator(file, base_dir, overridden).run(document, schema);
}

ScalarType scalar_type(const YAML::Node& node) {
  if (!node.IsDefined() || node.IsNull()) {
    return ScalarType::kNull;
  }
  if (!node.IsScalar()) {
    throw ConfigError(fmt::format("expected a scalar, got a {}",
                                  node.IsMap() ? "mapping" : "list"));
  }
  const std::string& tag = node.Tag();
  if (tag.empty() || tag == "?") {
    return resolve_plain(node.Scalar());
  }
  if (tag == "!") {
    return ScalarType::kString;  // quoted
  }
  for (const ScalarType type : {ScalarType::kNull, ScalarType::kBool, ScalarType::kInt,
                                ScalarType::kFloat, ScalarType::kString}) {
    if (tag == type_tag(type)) {
      return type;
    }
  }
  throw ConfigError(fmt::format("unsupported tag '{}'; expected a plain or quoted value, or "
                                "one of !!null, !!bool, !!int, !!float, !!str",
                                tag));
}

std::string dump(const YAML::Node& node) {
  YAML::Emitter emitter;
  emit(emitter, node);
  return std::string(emitter.c_str()) + "\n";
}

std::string describe(const Field& schema) {
  std::string out = "| key | type | default | meaning |\n|---|---|---|---|\n";
  describe_into(schema, "", out);
  return out;
}

}  // namespace spc::config
