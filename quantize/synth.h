// Synthetic models with real LLaMA shapes, for speed measurements without real weights
// (speed does not depend on the values; quality is always measured on real models).
#pragma once
#include <cstdint>
#include <string>

#include "model/config.h"

namespace sqz {

struct SynthOptions {
  std::string shape = "llama-7b";  // llama-7b, llama-13b, llama-2-7b, llama-2-13b, tiny
  int bits = 3;
  double outliers_pct = 0.45;      // share of each module's weights stored as outliers
  std::string tokenizer_path;      // embedded in the packed file (vocab must match)
  std::string out_packed;          // .sqz
  std::string out_fp16_dir;        // HF folder (config.json + model.safetensors), "" = none
  uint64_t seed = 1;
  int n_threads = 0;
};

// The config of a named shape; throws std::invalid_argument listing the known names.
Config synth_config(const std::string& shape);
const char* synth_shapes();

// Writes the packed model (random indices, sorted N(0, 0.02) LUT rows, outliers at random
// positions: a binomial count per row around the target share) and, when asked, an FP16 HF
// twin with N(0, 0.02) weights.
void write_synthetic(const SynthOptions& o);

}  // namespace sqz
