// What a quantized model looks like: the per-module-type table printed by `sqz quantize` and
// `sqz inspect`, and the self-contained HTML report with SVG plots (no scripts).
#pragma once
#include <string>
#include <vector>

#include "model/model.h"
#include "quantize/pipeline.h"

namespace sqz {

// Module reports recovered from a loaded (packed) model, for inspect: sizes and outliers
// only (errors are not stored in the file).
std::vector<ModuleReport> module_reports(const Model& m);

// The table: per module type the count, bits, average and max outlier %, bits per weight,
// size; then totals, effective bits per weight and compression vs FP16.
std::string size_table(const std::vector<ModuleReport>& modules, const Model& m);

struct SweepPoint {
  int bits = 3;
  double outliers_pct = 0, sensitive_pct = 0;
  std::string label;
  double size_mib = 0, bits_per_weight = 0, ppl = 0;
};

// Writes the HTML page: the chosen row's histogram with its centroids, outlier counts per
// layer and module type, the outlier map of the chosen module, the module table, and (when
// given) perplexity against size from a sweep.
void write_html_report(const std::string& path, const QuantizeResult& r,
                       const std::string& title, const std::vector<SweepPoint>& sweep = {});
std::string sweep_svg(const std::vector<SweepPoint>& pts);

}  // namespace sqz
