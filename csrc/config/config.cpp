#include "config/config.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
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
  }
  return "a value";
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

    if (!node.IsDefined() || node.IsNull()) {
      if (field.kind == Kind::kSection) {
        return visit_section(YAML::Node(YAML::NodeType::Map), field, key, located);
      }
      // An explicit null keeps a nullable field empty; an absent key takes the default.
      if (node.IsDefined() && field.optional) {
        return YAML::Node(YAML::NodeType::Null);
      }
      if (field.default_value.IsDefined() && !field.default_value.IsNull()) {
        YAML::Node value = visit(field.default_value, field, key, located);
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
      default:
        return visit_scalar(node, field, key);
    }
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
};

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
  std::string type = kind_name(field);
  if (field.kind == Kind::kList && !field.fields.empty()) {
    type = fmt::format("list of {}", kind_name(field.fields[0]));
  }
  const Field& bounded = field.kind == Kind::kList ? field.fields.at(0) : field;
  if (!range_text(bounded).empty()) {
    type += " " + range_text(bounded);
  }
  if (!field.choices.empty()) {
    type += ": " + join(field.choices, ", ");
  }
  std::string default_text = "required";
  if (field.default_value.IsDefined() && !field.default_value.IsNull()) {
    YAML::Emitter emitter;
    emitter << YAML::Flow << field.default_value;
    default_text = fmt::format("`{}`", emitter.c_str());
  } else if (field.optional || field.kind == Kind::kMap) {
    default_text = "none";
  }
  out += fmt::format("| `{}` | {} | {} | {} |\n", key, type, default_text, field.doc);
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

void apply_override(YAML::Node& document, const std::string& assignment) {
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
  std::vector<std::string> parts;
  std::stringstream stream(key);
  for (std::string part; std::getline(stream, part, '.');) {
    if (part.empty()) {
      throw ConfigError(fmt::format("override '{}': empty key segment", assignment));
    }
    parts.push_back(part);
  }
  // yaml-cpp nodes are handles, so walking with copies edits the document in place.
  std::vector<YAML::Node> path{document};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = path.back()[parts[i]];
    if (!next.IsDefined() || next.IsNull()) {
      path.back()[parts[i]] = YAML::Node(YAML::NodeType::Map);
      next = path.back()[parts[i]];
    } else if (!next.IsMap()) {
      throw ConfigError(fmt::format("override '{}': '{}' is not a section", assignment,
                                    parts[i]));
    }
    path.push_back(next);
  }
  path.back()[parts.back()] = value;
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
    apply_override(document, assignment);
    overridden[assignment.substr(0, assignment.find('='))] = assignment;
  }
  const std::string base_dir = fs::absolute(fs::path(file)).parent_path().string();
  return Validator(file, base_dir, overridden).run(document, schema);
}

std::string dump(const YAML::Node& node) {
  YAML::Emitter emitter;
  emitter << node;
  return std::string(emitter.c_str()) + "\n";
}

std::string describe(const Field& schema) {
  std::string out = "| key | type | default | meaning |\n|---|---|---|---|\n";
  describe_into(schema, "", out);
  return out;
}

}  // namespace spc::config
