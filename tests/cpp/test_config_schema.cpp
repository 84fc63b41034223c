#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
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

}  // namespace
}  // namespace spc::config
