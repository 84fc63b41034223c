// The schemas of every config the project reads. docs/configs.md is generated from these
// (`seqpatchcore config --describe run`, `... render`), so the doc strings are the user's
// reference.
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
          integer("limit_train", 0, "use only N training images (0 = all); see train_subset", 0),
          text("train_subset", "first", "which N training images: the first, or a random N "
               "drawn with the run's seed", {"first", "random"}),
          optional(path("train_root", "take the training split from this dataset instead of "
                        "root (e.g. a rendered synthetic set); val and test stay root's")),
          optional(path("pretrain_root", "stream this dataset's training split first, then "
                        "meld the training images into its coreset (pre-train, fine-tune)")),
          optional(path("impure_root", "a dataset of good images with impurity masks (e.g. "
                        "real test images with rendered stains): its test split is scored as a "
                        "second test condition, with impurity false alarms")),
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
          integer("chunk_rows", 0, "patches per search block (0 = up to 1024 per thread)", 0),
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

// The fields of the C++ parameter structs (SurfaceParams, WaterStainParams, ...) are not
// repeated here: parameter maps take any values, and seqpatchcore.render.normalize_spec
// checks them against the structs (Note [any values] in config.cpp).
Field params_map(std::string name, std::string doc) {
  return map(std::move(name), any("value", YAML::Node(), "a field of the parameter struct"),
             std::move(doc));
}

Field fit_section() {
  return section(
      "fit",
      "calibrated: fit the surface model to real good images (saved as surface_model.npz); "
      "give images or data",
      {
          optional(list("images", path("image", "an image file, a folder or a glob"),
                        YAML::Node(),
                        "image files, folders (every image in them) or globs such as "
                        "`MT_Free/*.jpg`, relative to this file; sorted, in this order")),
          optional(path("data",
                        "a dataset (split.csv or MVTec layout) whose good images of `split` are "
                        "fitted")),
          text("split", "train", "with data: the split whose good images are fitted",
               {"train", "val", "test"}),
          integer("limit", 0, "fit only the first N images (0 = all)", 0),
          integer("work_size", 256, "side of the square working grid, px", 16, 4096),
          text("scale", "image",
               "frequency units: image (resize each image to the grid) or pixel (native crops)",
               {"image", "pixel"}),
          integer("crops_per_image", 4, "scale pixel: random crops per image", 1, 64),
          integer("quantile_count", 256, "grey-level quantile steps per working image", 2,
                  65536),
          integer("seed", 0, "picks the crops", 0),
      });
}

Field surface_section() {
  return section(
      "surface",
      "synthetic: the normal surface every image starts from",
      {
          text("family", "brushed", "a procedural family, or calibrated to real images",
               {"brushed", "milled", "sandblasted", "calibrated"}),
          params_map("params",
                     "procedural families: SurfaceParams fields (docs/render.md), e.g. "
                     "roughness: 0.8"),
          optional(path("model", "calibrated: a saved surface model (.npz) instead of fit")),
          fit_section(),
          integer("quantile_row", -1,
                  "calibrated: whose grey levels to match (a fitted image's row); -1 draws "
                  "one per image",
                  -1),
      });
}

Field impurity_layer() {
  return section(
      "layer",
      "one impurity layer",
      {
          required(text("kind", "", "the impurity", {"water_stains", "fingerprints", "dust"})),
          optional(list("splits", text("split", "", "a split of `splits`"), YAML::Node(),
                        "splits that get this layer; default every split")),
          optional(list("labels", text("label", "", "good or a defect"), YAML::Node(),
                        "labels that get this layer; default every label")),
          number("probability", 1.0, "chance that an image gets this layer", 0.0, 1.0),
          any("count", YAML::Node(1), "instances per image: an int, or [min, max] drawn per image"),
          params_map("params",
                     "the kind's parameter fields except count (docs/render.md), e.g. "
                     "radius_px: 30"),
      });
}

Field real_section() {
  return section(
      "real",
      "real_stains: add one impurity kind to the real images of one split and label",
      {
          optional(path("data", "the real dataset (split.csv or MVTec layout); required for "
                                "kind real_stains")),
          text("split", "test", "split of the images that get impurities",
               {"train", "val", "test"}),
          text("label", "good", "label of the images that get impurities"),
          text("impurity", "water_stains", "the impurity kind",
               {"water_stains", "fingerprints", "dust"}),
          optional(params_map(
              "params",
              "the kind's parameter fields (docs/render.md); count may be [min, max]; default "
              "for water stains: render.REAL_STAIN_DEFAULTS, else the struct's defaults")),
          integer("limit", 0, "stain only the first N images (0 = all)", 0),
          list("copy", text("split", "", "a split"), sequence({"train", "val", "test"}),
               "splits whose other images (and defect masks) are copied unchanged, so the "
               "folder is a complete dataset for `seqpatchcore run`; [] = stained images only"),
      });
}

Field render_schema() {
  Field splits = map("splits",
                     map("label", integer("count", 0, "images", 0), "label -> image count"),
                     "synthetic: split -> {label: image count}; labels good, scratch, dent, "
                     "blowhole, crack");
  YAML::Node default_splits(YAML::NodeType::Map);
  default_splits["train"]["good"] = 10;
  splits.default_value = default_splits;

  return section(
      "",
      "",
      {
          text("kind", "synthetic",
               "synthetic: a whole dataset from surfaces, defects and impurities; "
               "real_stains: impurities on real images",
               {"synthetic", "real_stains"}),
          integer("seed", 0, "master seed; every image derives its seeds from it", 0),
          optional(path("output", "the dataset folder; --output overrides it")),
          list("size", integer("side", 256, "px", 1, 16384), int_sequence({256, 256}),
               "synthetic: [height, width] of every image", 2),
          integer("channels", 1, "synthetic: 1 (grey) or 3 (grey replicated to RGB)", 1, 3),
          surface_section(),
          splits,
          map("defects",
              map("field", any("value", YAML::Node(), "a field of the parameter struct"),
                  "parameter fields"),
              "synthetic: defect kind -> its parameter fields (docs/render.md), e.g. "
              "scratch: {width_px: 2.0}"),
          list("impurities", impurity_layer(), YAML::Node(YAML::NodeType::Sequence),
               "synthetic: impurity layers, applied in order after the defect"),
          real_section(),
      });
}

Field study_schema() {
  return section(
      "",
      "",
      {
          text("name", "study", "the study's name, used for its folder"),
          path("base", "the run config every cell starts from, relative to this file"),
          optional(path("output", "study folder; default runs/studies/<name>")),
          map("overrides", any("value", YAML::Node(), "a value"),
              "run-config overrides applied to every cell: dotted key -> value"),
          map("axes",
              map("level", any("overrides", YAML::Node(YAML::NodeType::Map),
                               "run-config key -> value"),
                  "named levels of one axis, each a map of run-config overrides"),
              "axes of the study: axis -> level -> {dotted run-config key: value}; the cells "
              "are the product of all axes; a level's value wins over the grid's"),
          map("grid", any("values", YAML::Node(), "a list of values"),
              "plain sweeps: dotted run-config key -> list of values, crossed with the axes"),
          list("seeds", integer("seed", 0, "a run seed", 0), int_sequence({0}),
               "every cell runs once per seed (the run config's seed)"),
          list("metrics", text("metric", "", "a dotted key of metrics.json"),
               sequence({"test.image_auroc", "test.pixel_auroc", "test.aupro",
                         "test.image_f1_max", "test.image_at_threshold.f1",
                         "test.defect_recall.recall", "seconds.fit", "peak_rss_mb_fit"}),
               "columns of the results table, dotted keys of each cell's metrics.json"),
          optional(text("device", "cpu", "override every cell's device",
                        {"cpu", "cuda", "auto"})),
          boolean("save_models", false, "keep each cell's model.spc"),
      });
}

}  // namespace

const Field& schema(const std::string& name) {
  static const Field run = run_schema();
  static const Field render = render_schema();
  static const Field study = study_schema();
  if (name == "run") {
    return run;
  }
  if (name == "render") {
    return render;
  }
  if (name == "study") {
    return study;
  }
  throw ConfigError("unknown config schema '" + name + "'; expected one of: run, render, study");
}

std::vector<std::string> schema_names() { return {"run", "render", "study"}; }

}  // namespace spc::config
