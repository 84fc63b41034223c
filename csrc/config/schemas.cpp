// The schemas of every config the project reads. docs/configs.md is generated from these
// (`seqpatchcore config --describe run`), so the doc strings are the user's reference.
#include <stdexcept>

#include "config/config.h"

namespace spc::config {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

YAML::Node sequence(std::initializer_list<const char*> items) {
  YAML::Node node(YAML::NodeType::Sequence);
  for (const char* item : items) {
    node.push_back(std::string(item));
  }
  return node;
}

YAML::Node int_sequence(std::initializer_list<int64_t> items) {
  YAML::Node node(YAML::NodeType::Sequence);
  for (const int64_t item : items) {
    node.push_back(item);
  }
  return node;
}

Field data_section() {
  return section(
      "data",
      "the dataset: magnetic-tile split.csv or the MVTec AD folder layout",
      {
          path("root", "dataset folder, relative to this config file"),
          text("format", "auto", "how to read root", {"auto", "split_csv", "mvtec"}),
          text("train_split", "train", "split fitted on"),
          text("val_split", "val", "split the thresholds are chosen on"),
          text("test_split", "test", "split reported"),
          number("val_fraction", 0.3,
                 "MVTec layouts without a val folder: share of test moved to val (stratified)",
                 0.0, 0.9),
          integer("limit_train", 0, "use only the first N training images (0 = all)", 0),
          integer("limit_eval", 0, "use only N images of each of val and test, "
                  "stratified by label (0 = all)", 0),
          integer("workers", 2, "threads decoding images", 0, 64),
      });
}

Field backbone_section() {
  return section(
      "backbone",
      "the frozen ImageNet feature extractor",
      {
          text("name", "mobilenet_v3_small_tflite", "which network",
               {"mobilenet_v3_small_tflite", "mobilenet_v2_tflite",
                "mobilenet_v3_small_torchvision", "mobilenet_v3_large_torchvision"}),
          optional(path("weights",
                        "weights file; when absent, $SEQPATCHCORE_WEIGHTS, then the shared "
                        "folder beside the project")),
      });
}

Field features_section() {
  return section(
      "features",
      "patch features: two levels (strides 8 and 16), pooled, upsampled and concatenated",
      {
          list("layers", text("layer", "", "block name"),
               sequence({"expanded_conv_2", "expanded_conv_7"}), "backbone blocks to combine"),
          nullable(list("input_size", integer("side", 256, "pixels", 16, 8192),
                        int_sequence({256, 256}),
                        "[height, width] images are resized to; null keeps each image's size",
                        2)),
          integer("pool_size", 3, "side of the average pooling over each feature map", 1, 15),
          integer("batch_size", 16, "images per backbone call", 1, 4096),
      });
}

Field coreset_section() {
  return section(
      "coreset",
      "the memory bank of normal patch features",
      {
          text("method", "sequential", "how the memory bank is built",
               {"sequential", "greedy", "random", "all"}),
          integer("capacity", 0, "members K; 0 = fraction of the training patches", 0),
          number("fraction", 0.01, "K as a share of all training patches when capacity = 0",
                 0.0, 1.0),
          integer("projection_dim", -1,
                  "compare distances in a seeded random projection to this many dimensions; "
                  "0 = never; -1 = the method's default (greedy 128, sequential 0)",
                  -1),
          text("distance", "matmul", "matmul (fast, exact decisions) or exact differences",
               {"matmul", "exact"}),
          integer("passes", 1, "sequential: stream the training set this many times", 1, 100),
          boolean("shuffle", false,
                  "sequential: shuffle the image order of the first pass too (later passes "
                  "always use a new seeded order)"),
          integer("chunk_size", 0, "features per matrix product; 0 = from the memory budget",
                  0),
          number("memory_budget_mb", 0.0,
                 "refuse builds whose coreset working memory exceeds this (0 = no limit)", 0.0),
          integer("checkpoint_every", 0,
                  "sequential: save a resumable state every N images (0 = never)", 0),
      });
}

Field scoring_section() {
  return section(
      "scoring",
      "from nearest-member distances to anomaly maps and image scores",
      {
          integer("k", 1, "neighbours; k > 1 applies PatchCore's reweighting", 1, 1000),
          number("sigma", 4.0, "Gaussian blur of the anomaly map, pixels (0 = none)", 0.0, 64.0),
          integer("chunk_rows", 0, "patches per distance chunk (0 = from a 64 MiB budget)", 0),
      });
}

Field evaluation_section() {
  return section(
      "evaluation",
      "metrics and thresholds",
      {
          number("good_quantile", 0.99,
                 "threshold when the validation split has no anomalies: this quantile of the "
                 "good images' scores",
                 0.5, 1.0),
          number("min_defect_fraction", 0.0,
                 "a defect counts as found when more than this share of its pixels is above "
                 "the pixel threshold (0 = any pixel)",
                 0.0, 1.0),
          number("aupro_fpr_limit", 0.3, "integration limit of AUPRO", 0.01, 1.0),
      });
}

Field output_section() {
  return section(
      "output",
      "the run folder",
      {
          optional(path("dir", "run folder; default runs/<name> under the working directory")),
          integer("heatmaps", 12, "heatmap overlays written for a sample of test images", 0),
          boolean("overwrite", false, "replace an existing run folder"),
          boolean("save_model", true, "write the fitted model into the run folder"),
      });
}

Field run_schema() {
  return section(
      "",
      "",
      {
          text("name", "run", "the run's name, used for its folder"),
          integer("seed", 0, "seeds every random choice of the run", 0),
          text("device", "cpu", "where the backbone and distances run", {"cpu", "cuda", "auto"}),
          data_section(),
          backbone_section(),
          features_section(),
          coreset_section(),
          scoring_section(),
          evaluation_section(),
          output_section(),
      });
}

}  // namespace

const Field& schema(const std::string& name) {
  static const Field run = run_schema();
  if (name == "run") {
    return run;
  }
  throw ConfigError("unknown config schema '" + name + "'; expected one of: run");
}

std::vector<std::string> schema_names() { return {"run"}; }

}  // namespace spc::config
