#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

#include "config/config.h"

namespace spc::config {
namespace {

namespace fs = std::filesystem;

class ConfigFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("spc_config_test_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
            "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& text) {
    const fs::path file = dir_ / "config.yaml";
    std::ofstream(file) << text;
    return file.string();
  }

  // The message of the ConfigError that loading `text` raises.
  std::string error_of(const std::string& text, const std::vector<std::string>& overrides = {}) {
    try {
      load_file(write(text), schema("run"), overrides);
    } catch (const ConfigError& error) {
      return error.what();
    }
    ADD_FAILURE() << "expected a ConfigError for:\n" << text;
    return "";
  }

  fs::path dir_;
};

TEST_F(ConfigFile, DefaultsAreFilledAndPathsResolvedAgainstTheFile) {
  const Loaded loaded = load_file(write("data:\n  root: images\n"), schema("run"));
  EXPECT_EQ(loaded.value["data"]["root"].as<std::string>(), (dir_ / "images").string());
  EXPECT_EQ(loaded.value["coreset"]["method"].as<std::string>(), "sequential");
  EXPECT_EQ(loaded.value["scoring"]["sigma"].as<double>(), 4.0);
  EXPECT_EQ(loaded.value["features"]["input_size"][1].as<int64_t>(), 256);
  EXPECT_EQ(loaded.locations.at("data.root"), write("data:\n  root: images\n") + ":2:9");
  EXPECT_EQ(loaded.locations.at("coreset.method"), "default");
}

TEST_F(ConfigFile, UnknownKeyNamesFileLineAndSuggestion) {
  const std::string message = error_of("data:\n  root: x\ncoreset:\n  capacty: 10\n");
  EXPECT_NE(message.find("config.yaml:4:3"), std::string::npos) << message;
  EXPECT_NE(message.find("unknown key 'coreset.capacty'"), std::string::npos) << message;
  EXPECT_NE(message.find("did you mean 'capacity'"), std::string::npos) << message;
}

TEST_F(ConfigFile, UnknownTopLevelSection) {
  const std::string message = error_of("data:\n  root: x\nmodel: {}\n");
  EXPECT_NE(message.find(":3:1: unknown key 'model' in the config"), std::string::npos)
      << message;
}

TEST_F(ConfigFile, WrongTypesAndRanges) {
  EXPECT_NE(error_of("data:\n  root: x\ncoreset:\n  capacity: ten\n")
                .find("coreset.capacity: expected an integer, got 'ten'"),
            std::string::npos);
  EXPECT_NE(error_of("data:\n  root: x\ncoreset:\n  capacity: 2.5\n")
                .find("expected an integer, got '2.5'"),
            std::string::npos);
  EXPECT_NE(error_of("data:\n  root: x\nscoring:\n  sigma: -1\n")
                .find("scoring.sigma: expected a number in [0, 64], got -1"),
            std::string::npos);
  EXPECT_NE(error_of("data:\n  root: x\ncoreset:\n  shuffle: maybe\n")
                .find("expected a boolean (true or false), got 'maybe'"),
            std::string::npos);
  EXPECT_NE(error_of("data:\n  root: x\ncoreset:\n  method: magic\n")
                .find("expected one of sequential, greedy, random, all, got 'magic'"),
            std::string::npos);
  EXPECT_NE(error_of("data:\n  root: x\nfeatures:\n  input_size: [256]\n")
                .find("expected a list of 2 items, got 1"),
            std::string::npos);
  EXPECT_NE(error_of("data: [1, 2]\n").find("data: expected a mapping, got a list"),
            std::string::npos);
}

TEST_F(ConfigFile, MissingRequiredKey) {
  const std::string message = error_of("name: x\n");
  EXPECT_NE(message.find("data.root: is required"), std::string::npos) << message;
}

TEST_F(ConfigFile, NullableKeepsAnExplicitNull) {
  const Loaded loaded =
      load_file(write("data:\n  root: x\nfeatures:\n  input_size: null\n"), schema("run"));
  EXPECT_TRUE(loaded.value["features"]["input_size"].IsNull());
}

TEST_F(ConfigFile, InvalidYamlNamesTheLine) {
  const std::string message = error_of("data:\n  root: [x\n");
  EXPECT_NE(message.find("config.yaml:"), std::string::npos) << message;
  EXPECT_NE(message.find("not valid YAML"), std::string::npos) << message;
}

TEST_F(ConfigFile, OverridesAreAppliedAndBlamed) {
  const Loaded loaded =
      load_file(write("data:\n  root: x\n"), schema("run"), {"coreset.capacity=7"});
  EXPECT_EQ(loaded.value["coreset"]["capacity"].as<int64_t>(), 7);
  EXPECT_EQ(loaded.locations.at("coreset.capacity"), "override 'coreset.capacity=7'");
  const std::string message = error_of("data:\n  root: x\n", {"coreset.capacity=-1"});
  EXPECT_NE(message.find("override 'coreset.capacity=-1': coreset.capacity"), std::string::npos)
      << message;
  EXPECT_NE(error_of("data:\n  root: x\n", {"nonsense"}).find("expected KEY=VALUE"),
            std::string::npos);
}

TEST_F(ConfigFile, OverridesReachListItems) {
  const std::string file = write(
      "impurities:\n  - kind: dust\n  - kind: water_stains\n    params: {radius_px: 9}\n"
      "size: [64, 64]\n");
  const Loaded loaded = load_file(
      file, schema("render"),
      {"impurities[1].params.radius_px=30", "impurities[0].count=[2, 3]", "size[0]=32"});
  EXPECT_EQ(loaded.value["impurities"][1]["params"]["radius_px"].as<int64_t>(), 30);
  EXPECT_EQ(loaded.value["impurities"][1]["kind"].as<std::string>(), "water_stains");
  EXPECT_EQ(loaded.value["impurities"][0]["count"][1].as<int64_t>(), 3);
  EXPECT_EQ(loaded.value["impurities"][0]["kind"].as<std::string>(), "dust");
  EXPECT_EQ(loaded.value["size"][0].as<int64_t>(), 32);
  EXPECT_EQ(loaded.value["size"][1].as<int64_t>(), 64);
  EXPECT_EQ(loaded.locations.at("impurities[1].params.radius_px"),
            "override 'impurities[1].params.radius_px=30'");
  EXPECT_EQ(loaded.locations.at("impurities[1].kind"), file + ":3:11");

  const auto override_error = [&](const std::string& assignment) {
    try {
      load_file(file, schema("render"), {assignment});
    } catch (const ConfigError& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(override_error("impurities[2].count=1").find("'impurities' has no item 2"),
            std::string::npos);
  EXPECT_NE(override_error("size.x=1").find("'size' is not a section"), std::string::npos);
  EXPECT_NE(override_error("impurities[x].count=1").find("bad key segment 'impurities[x]'"),
            std::string::npos);
  EXPECT_NE(override_error("impurities[12345678901234567890].count=1").find("bad key segment"),
            std::string::npos);
}

TEST_F(ConfigFile, OverridesOfStudyMapsKeepDottedKeysWhole) {
  const std::string file = write(
      "name: s\nbase: run.yaml\noverrides:\n  coreset.capacity: 10\n"
      "axes:\n  method:\n    sequential: {coreset.method: sequential}\n"
      "grid:\n  features.input_size: [[256, 256], [512, 512]]\n  data.limit_train: [100, 652]\n");
  const Loaded loaded = load_file(
      file, schema("study"),
      {"grid.features.input_size=[[128, 128]]", "grid.coreset.capacity=[5, 6]",
       "overrides.coreset.capacity=20", "axes.method.sequential.coreset.chunk_size=64"});
  const YAML::Node grid = loaded.value["grid"];
  ASSERT_EQ(grid["features.input_size"].size(), 1u);
  EXPECT_EQ(grid["features.input_size"][0][0].as<int64_t>(), 128);
  EXPECT_FALSE(grid["features"].IsDefined());
  EXPECT_EQ(grid["coreset.capacity"][1].as<int64_t>(), 6);
  EXPECT_EQ(grid["data.limit_train"][1].as<int64_t>(), 652);
  EXPECT_EQ(loaded.value["overrides"]["coreset.capacity"].as<int64_t>(), 20);
  const YAML::Node level = loaded.value["axes"]["method"]["sequential"];
  EXPECT_EQ(level["coreset.chunk_size"].as<int64_t>(), 64);
  EXPECT_EQ(level["coreset.method"].as<std::string>(), "sequential");
  EXPECT_FALSE(level["coreset"].IsDefined());
}

TEST_F(ConfigFile, EnvironmentVariablesInPaths) {
  ::setenv("SPC_TEST_DATA", "/data/here", 1);
  const Loaded loaded = load_file(write("data:\n  root: ${SPC_TEST_DATA}/tiles\n"), schema("run"));
  EXPECT_EQ(loaded.value["data"]["root"].as<std::string>(), "/data/here/tiles");
  EXPECT_NE(error_of("data:\n  root: ${SPC_TEST_UNSET_VARIABLE}/x\n")
                .find("environment variable 'SPC_TEST_UNSET_VARIABLE' is not set"),
            std::string::npos);
}

TEST(Config, MissingFile) {
  try {
    load_file("/nonexistent/config.yaml", schema("run"));
    FAIL();
  } catch (const ConfigError& error) {
    EXPECT_NE(std::string(error.what()).find("/nonexistent/config.yaml: cannot read"),
              std::string::npos);
  }
}

TEST(Config, DescribeListsEveryKey) {
  const std::string table = describe(schema("run"));
  EXPECT_NE(table.find("| `coreset.capacity` | an integer >= 0 | `0` |"), std::string::npos)
      << table;
  EXPECT_NE(table.find("`data.root` | a path | required"), std::string::npos) << table;
}

// --- any values (Note [any values] in config.cpp) --------------------------------------------

// A schema with one any-value field of each shape: free, defaulted, and inside a mapping.
Field any_schema() {
  return section("", "",
                 {any("value", YAML::Node(), "anything"),
                  any("count", YAML::Node(1), "an int or [min, max]"),
                  map("params", any("field", YAML::Node(), "a struct field"), "fields")});
}

Loaded load_any(const std::string& text) {
  return validate(YAML::Load(text), any_schema(), "any.yaml", "");
}

std::string any_error(const std::string& text) {
  try {
    load_any(text);
  } catch (const ConfigError& error) {
    return error.what();
  }
  ADD_FAILURE() << "expected a ConfigError for:\n" << text;
  return "";
}

// Each plain or quoted scalar with the type and value the YAML 1.2 core schema gives it
// (spec section 10.3.2), written out by hand.
TEST(ConfigAny, ScalarsAreTypedByTheCoreSchema) {
  const Loaded loaded = load_any(
      "value: 0\n"
      "params:\n"
      "  decimal: 12\n  plus: +12\n  negative: -7\n  octal: 0o17\n  hex: 0x1F\n"
      "  fraction: 1.5\n  exponent: 1e3\n  trailing_dot: 3.\n  leading_dot: -.5\n"
      "  infinity: .inf\n  minus_infinity: -.Inf\n  not_a_number: .NaN\n"
      "  yes_bool: true\n  no_bool: False\n  upper_bool: TRUE\n"
      "  tilde: ~\n  null_word: null\n  empty:\n"
      "  yaml11_yes: yes\n  underscore: 1_000\n  signed_hex: -0x1F\n  word: hello\n"
      "  quoted_int: '12'\n  quoted_bool: \"true\"\n  quoted_null: 'null'\n"
      "  tagged_str: !!str 5\n  tagged_float: !!float 3\n");
  const YAML::Node params = loaded.value["params"];
  const auto type = [&](const char* key) { return scalar_type(params[key]); };

  for (const char* key : {"decimal", "plus", "negative", "octal", "hex"}) {
    EXPECT_EQ(type(key), ScalarType::kInt) << key;
  }
  EXPECT_EQ(params["decimal"].as<int64_t>(), 12);
  EXPECT_EQ(params["plus"].as<int64_t>(), 12);
  EXPECT_EQ(params["negative"].as<int64_t>(), -7);
  EXPECT_EQ(params["octal"].as<int64_t>(), 15);
  EXPECT_EQ(params["hex"].as<int64_t>(), 31);

  for (const char* key : {"fraction", "exponent", "trailing_dot", "leading_dot", "infinity",
                          "minus_infinity", "not_a_number", "tagged_float"}) {
    EXPECT_EQ(type(key), ScalarType::kFloat) << key;
  }
  EXPECT_EQ(params["fraction"].as<double>(), 1.5);
  EXPECT_EQ(params["exponent"].as<double>(), 1000.0);
  EXPECT_EQ(params["trailing_dot"].as<double>(), 3.0);
  EXPECT_EQ(params["leading_dot"].as<double>(), -0.5);
  EXPECT_EQ(params["infinity"].as<double>(), std::numeric_limits<double>::infinity());
  EXPECT_EQ(params["minus_infinity"].as<double>(), -std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isnan(params["not_a_number"].as<double>()));
  EXPECT_EQ(params["tagged_float"].as<double>(), 3.0);

  for (const char* key : {"yes_bool", "no_bool", "upper_bool"}) {
    EXPECT_EQ(type(key), ScalarType::kBool) << key;
  }
  EXPECT_TRUE(params["yes_bool"].as<bool>());
  EXPECT_FALSE(params["no_bool"].as<bool>());
  EXPECT_TRUE(params["upper_bool"].as<bool>());

  for (const char* key : {"tilde", "null_word", "empty"}) {
    EXPECT_EQ(type(key), ScalarType::kNull) << key;
  }

  const std::map<std::string, std::string> strings = {
      {"yaml11_yes", "yes"},  {"underscore", "1_000"}, {"signed_hex", "-0x1F"},
      {"word", "hello"},      {"quoted_int", "12"},    {"quoted_bool", "true"},
      {"quoted_null", "null"}, {"tagged_str", "5"}};
  for (const auto& [key, text] : strings) {
    EXPECT_EQ(type(key.c_str()), ScalarType::kString) << key;
    EXPECT_EQ(params[key].Scalar(), text) << key;
  }
}

TEST(ConfigAny, ListsAndMappingsNestAndEveryKeyHasALocation) {
  const Loaded loaded = load_any("value:\n  radius: [1, 2.5, x]\n  inner: {a: true}\n");
  const YAML::Node value = loaded.value["value"];
  ASSERT_TRUE(value["radius"].IsSequence());
  EXPECT_EQ(scalar_type(value["radius"][0]), ScalarType::kInt);
  EXPECT_EQ(scalar_type(value["radius"][1]), ScalarType::kFloat);
  EXPECT_EQ(scalar_type(value["radius"][2]), ScalarType::kString);
  EXPECT_EQ(scalar_type(value["inner"]["a"]), ScalarType::kBool);

  EXPECT_EQ(loaded.locations.at("value"), "any.yaml:2:3");
  EXPECT_EQ(loaded.locations.at("value.radius"), "any.yaml:2:11");
  EXPECT_EQ(loaded.locations.at("value.radius[1]"), "any.yaml:2:15");
  EXPECT_EQ(loaded.locations.at("value.inner.a"), "any.yaml:3:14");
}

TEST(ConfigAny, DefaultsRequiredAndExplicitNull) {
  const Loaded loaded = load_any("value: null\n");
  EXPECT_TRUE(loaded.value["value"].IsNull());
  EXPECT_EQ(loaded.value["count"].as<int64_t>(), 1);
  EXPECT_EQ(loaded.locations.at("count"), "default");
  EXPECT_TRUE(loaded.value["params"].IsMap());
  EXPECT_EQ(loaded.value["params"].size(), 0u);

  EXPECT_NE(any_error("count: 2\n").find("value: is required: expected any YAML value"),
            std::string::npos);
  EXPECT_NE(any_error("value: 1\nparams: [1]\n").find("any.yaml:2:9: params: expected a mapping"),
            std::string::npos);
}

TEST(ConfigAny, BadScalarsNameTheLine) {
  EXPECT_NE(any_error("value: 1\nparams:\n  seed: 99999999999999999999\n")
                .find("any.yaml:3:9: params.seed: integer 99999999999999999999 is outside the "
                      "64-bit range"),
            std::string::npos);
  EXPECT_NE(any_error("value: 0x8000000000000000\n").find("outside the 64-bit range"),
            std::string::npos);
  EXPECT_NE(any_error("value: 1e999\n").find("value: number 1e999 is outside the range"),
            std::string::npos);
  EXPECT_NE(any_error("value: !color red\n").find("value: unsupported tag '!color'"),
            std::string::npos);
  EXPECT_NE(any_error("value: !!int ten\n").find("value: expected an integer, got 'ten'"),
            std::string::npos);
  EXPECT_NE(any_error("value: !!bool yes\n").find("expected a boolean, got 'yes'"),
            std::string::npos);
  EXPECT_NE(any_error("value: {[1, 2]: 3}\n").find("value: expected text keys, got a list"),
            std::string::npos);
}

TEST(ConfigAny, DumpReadsBackAsTheSameValues) {
  const Loaded first = load_any(
      "value: {int: 7, float: 2.0, big: 1e300, inf: -.inf, bool: true, none: ~, "
      "text: hi, digits: '12', word_true: 'true', blank: '', list: [1, '1']}\n");
  const std::string text = dump(first.value);
  EXPECT_NE(text.find("float: 2.0"), std::string::npos) << text;  // not "2", an int
  EXPECT_NE(text.find("digits: \"12\""), std::string::npos) << text;
  EXPECT_NE(text.find("word_true: \"true\""), std::string::npos) << text;

  const Loaded second = load_any(text);
  const YAML::Node a = first.value["value"];
  const YAML::Node b = second.value["value"];
  for (const char* key : {"int", "float", "big", "inf", "bool", "none", "text", "digits",
                          "word_true", "blank"}) {
    EXPECT_EQ(scalar_type(a[key]), scalar_type(b[key])) << key;
    EXPECT_EQ(a[key].IsNull() ? "" : a[key].Scalar(), b[key].IsNull() ? "" : b[key].Scalar())
        << key;
  }
  EXPECT_EQ(scalar_type(b["blank"]), ScalarType::kString);
  EXPECT_EQ(scalar_type(b["list"][0]), ScalarType::kInt);
  EXPECT_EQ(scalar_type(b["list"][1]), ScalarType::kString);
}

TEST(ConfigAny, DescribeNamesTheKind) {
  const std::string table = describe(any_schema());
  EXPECT_NE(table.find("| `value` | any YAML value | required |"), std::string::npos) << table;
  EXPECT_NE(table.find("| `count` | any YAML value | `1` |"), std::string::npos) << table;
  EXPECT_NE(table.find("| `params` | a mapping of any YAML value | none |"), std::string::npos)
      << table;
}

// --- the render schema -----------------------------------------------------------------------

TEST_F(ConfigFile, RenderSchemaDefaultsPathsAndParameterMaps) {
  const std::string file = write(
      "surface:\n  family: calibrated\n  fit:\n    images: [tiles/*.jpg]\n"
      "impurities:\n  - kind: water_stains\n    count: [1, 3]\n"
      "    params: {radius_px: 30, strength: -0.3}\n");
  const Loaded loaded = load_file(file, schema("render"));
  EXPECT_EQ(loaded.value["kind"].as<std::string>(), "synthetic");
  EXPECT_EQ(loaded.value["splits"]["train"]["good"].as<int64_t>(), 10);
  EXPECT_EQ(loaded.value["surface"]["fit"]["images"][0].as<std::string>(),
            (dir_ / "tiles/*.jpg").string());
  EXPECT_EQ(loaded.value["surface"]["fit"]["work_size"].as<int64_t>(), 256);
  const YAML::Node layer = loaded.value["impurities"][0];
  EXPECT_EQ(scalar_type(layer["count"][1]), ScalarType::kInt);
  EXPECT_EQ(scalar_type(layer["params"]["radius_px"]), ScalarType::kInt);
  EXPECT_EQ(layer["params"]["strength"].as<double>(), -0.3);
  EXPECT_EQ(loaded.locations.at("impurities[0].params.strength"), file + ":8:39");
  EXPECT_EQ(loaded.locations.at("real.copy[0]"), "default");  // an item of a default list
  EXPECT_EQ(loaded.locations.at("splits.train.good"), "default");
  EXPECT_TRUE(loaded.value["real"]["data"].IsNull());
  EXPECT_TRUE(loaded.value["real"]["params"].IsNull());
}

TEST_F(ConfigFile, RenderSchemaErrors) {
  const auto render_error = [&](const std::string& text) {
    try {
      load_file(write(text), schema("render"));
    } catch (const ConfigError& error) {
      return std::string(error.what());
    }
    ADD_FAILURE() << "expected a ConfigError for:\n" << text;
    return std::string();
  };
  std::string message = render_error("surface:\n  famly: brushed\n");
  EXPECT_NE(message.find(":2:3: unknown key 'surface.famly'"), std::string::npos) << message;
  EXPECT_NE(message.find("did you mean 'family'"), std::string::npos) << message;
  message = render_error("splits:\n  test: {good: -2}\n");
  EXPECT_NE(message.find(":2:16: splits.test.good: expected an integer >= 0, got -2"),
            std::string::npos)
      << message;
  message = render_error("impurities:\n  - count: 2\n");
  EXPECT_NE(message.find("impurities[0].kind: is required"), std::string::npos) << message;
  message = render_error("kind: real\n");
  EXPECT_NE(message.find("expected one of synthetic, real_stains, got 'real'"),
            std::string::npos)
      << message;
}

TEST(Config, RenderSchemaIsListedAndDescribed) {
  EXPECT_EQ(schema_names(), (std::vector<std::string>{"run", "render", "study"}));
  const std::string table = describe(schema("render"));
  EXPECT_NE(table.find("| `impurities[].kind` | a string: water_stains, fingerprints, dust | "
                       "required |"),
            std::string::npos)
      << table;
  EXPECT_NE(table.find("| `surface.params` | a mapping of any YAML value |"), std::string::npos)
      << table;
  EXPECT_NE(table.find("| `splits` | a mapping of a mapping of an integer >= 0 | "
                       "`{train: {good: 10}}` |"),
            std::string::npos)
      << table;
}

}  // namespace
}  // namespace spc::config
