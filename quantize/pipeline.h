// Quantizing a whole model: every linear of a checkpoint through quantize_linear (with the
// checkpoint's squared gradients when given), per-module overrides, and the statistics the
// report prints. The result is an in-memory Model whose linears are packed views, ready to
// run (sweep, tests) or to write with save_packed.
#pragma once
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "quantize/quantizer.h"

namespace sqz {

// Settings of one module, after overrides. kind: "squeeze", "rtn" or "fp16" (kept dense).
struct ModuleSettings {
  std::string kind = "squeeze";
  LinearQuantOptions q;
};

struct QuantizeOptions {
  std::string model_path;
  std::string tokenizer_path;   // when the checkpoint holds none and none lies beside it
  std::string gradients_path;   // squared gradients (safetensors, checkpoint tensor names)
  // Non-empty: the gradients file is temporary (quantize --calibrate); the provenance records
  // this note instead of its path and hash (its metadata, with the calibration settings, is kept).
  std::string gradients_note;
  std::string overrides_path;   // JSON: per-module settings
  ModuleSettings base;
  bool quantize_head = false;   // the output head stays FP16 unless asked
  int n_threads = 0;
  // For the HTML report: the module whose row histogram and outlier map are drawn.
  std::string report_module = "layers.0.wq";
  int report_row = 0;
};

struct ModuleReport {
  std::string name;      // "layers.3.w_down"
  std::string type;      // "down_proj"
  int layer = -1;
  int rows = 0, cols = 0;
  std::string kind;      // squeeze / rtn / fp16
  int bits = 16;
  int64_t n_outliers = 0, n_sensitive = 0, n_magnitude = 0;
  int64_t n_off_grid = 0;  // packed rows whose LUT is off the grid (QuantizedLinear)
  double weighted_err = 0, sq_err = 0, sq_norm = 0;
  int64_t n_bytes = 0;   // as stored in the packed file (RTN: see effective_bits)
  double effective_bits = 16;  // bits per weight incl. LUT/CSR (RTN: bits + 32/group)
  double seconds = 0;
  // where the time went: converting the weights and gradients, choosing outliers, the
  // GPU k-means (0 on the CPU, where it is part of rows), the per-row work
  double seconds_load = 0, seconds_outliers = 0, seconds_kmeans = 0, seconds_rows = 0;
};

struct QuantizeResult {
  Model model;  // packed views; owns its buffers through model.storage
  std::vector<ModuleReport> modules;
  std::map<std::string, std::string> metadata;  // sqz.quant, sqz.provenance
  // The chosen module's row and outlier positions for the HTML report.
  std::vector<float> report_row_values;
  std::vector<float> report_row_centroids;
  std::vector<uint8_t> report_row_is_outlier;
  int report_rows = 0, report_cols = 0;
  std::vector<int64_t> report_outliers;  // flat positions in the chosen module
  double seconds = 0;
  double seconds_hash_wait = 0;  // waiting at the end for the provenance hashes
  int64_t fp16_bytes() const;   // the same model all in FP16
  int64_t linear_params() const;
};

using QuantizeProgress = std::function<void(int64_t done_weights, int64_t total_weights,
                                            const std::string& module)>;

// Throws format_error / std::runtime_error with one-line messages (a gradients tensor with
// the wrong shape, an override naming no module, ...).
QuantizeResult quantize_model(const QuantizeOptions& o, const QuantizeProgress& progress);

// The overrides file (--overrides) is a JSON object; each key names modules and each value
// sets some of: bits, outliers (PCT), outlier_range (r), sensitive (PCT), method ("squeeze",
// "rtn" or "fp16"). Keys: a module type ("down_proj" or "w_down"), a layer-qualified name
// ("layers.0.down_proj"), or "output" for the head. Type keys apply first, then layer keys.
// Example: {"down_proj": {"bits": 4}, "layers.0.q_proj": {"sensitive": 0.2}}

// Reads the whole file at `path` (tokenizer bytes for embedding).
std::string read_bytes(const std::string& path);
// sha256 of a file, hex (provenance); "" once *cancel becomes true.
std::string sha256_file(const std::string& path, const std::atomic<bool>* cancel = nullptr);

}  // namespace sqz
