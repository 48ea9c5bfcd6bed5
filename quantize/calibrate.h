// Calibration: the squared gradients (diagonal Fisher) that weight SqueezeLLM's k-means and
// pick its sensitive outliers, computed by sqz itself (engine/gradients.h) from a text.
//
// Conventions (those of models/doc-llama-26m/calibration/README.md, the PyTorch reference):
// - the whole text is tokenized once, WITHOUT BOS;
// - each sample is BOS followed by seqlen-1 consecutive tokens of the text:
//   sequential: sample i = tokens [i (L-1), (i+1) (L-1));
//   random (the official recipe's choice of windows): offset_i = rng() % (n_tokens - (L-1) + 1)
//   with rng = std::mt19937_64(seed), drawn in sample order; sample i = tokens
//   [offset_i, offset_i + L-1);
// - loss per sample: mean NLL over the L-1 predicted positions; F = sum over samples of g*g;
// - output: safetensors, F32, the checkpoint's HF tensor names
//   (model.layers.N.self_attn.q_proj.weight ...) and row order (HF checkpoints: q/k rows
//   back in HF's rotate-half order; llama2.c checkpoints: as loaded), metadata samples,
//   seqlen, sampling, seed, loss, data, mean_loss.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "engine/gradients.h"
#include "model/model.h"

namespace sqz {

enum class CalibSampling { RANDOM, SEQUENTIAL };
CalibSampling calib_sampling_from_name(const std::string& name);  // "random" | "sequential"
const char* calib_sampling_name(CalibSampling s);

// The samples, row-major [n_samples, seqlen] (see above). Throws std::invalid_argument
// (one line: how many tokens are needed and how many the text has) when the text is too
// short, n_samples < 1 or seqlen < 2.
std::vector<int32_t> make_calibration_samples(const std::vector<int>& tokens, int n_samples,
                                              int seqlen, CalibSampling sampling, uint64_t seed,
                                              int bos_id);

struct CalibrateOptions {
  std::string model_path;      // dense checkpoint: HF folder / .safetensors, llama2.c .bin
  std::string tokenizer_path;  // when the checkpoint holds none and none lies beside it
  std::string data_path;       // the calibration text (UTF-8)
  std::string output_path;     // grads.safetensors
  std::string samples_path;    // optional: the sample ids, raw little-endian int32 [N, L]
  int n_samples = 100;         // official recipe: 100 samples of 512 tokens
  int seqlen = 512;
  uint64_t seed = 0;
  CalibSampling sampling = CalibSampling::RANDOM;
  std::string device = "auto";  // auto | cpu | cuda
  int n_threads = 0;            // 0: all cores
};

struct CalibrateResult {
  int64_t n_text_tokens = 0;
  std::vector<double> losses;  // per sample
  double mean_loss = 0;
  double seconds = 0;          // forward + backward of all samples
  std::string backend;
  std::map<std::string, std::string> metadata;  // as written to the output
};

// Called once with done = 0 when the samples are ready to run, then after each sample:
// samples done, total, that sample's loss.
using CalibrateProgress = std::function<void(int done, int total, double loss)>;

// Loads the model and tokenizer, samples the text, runs every sample through the gradient
// backend and writes the output (and the samples file when asked). Throws one-line errors.
CalibrateResult calibrate(const CalibrateOptions& o, const CalibrateProgress& progress);

// Writes the backend's F for every linear of `m` under the checkpoint's names and row order.
void write_gradients(const std::string& path, const Model& m, GradientBackend& backend,
                     const std::map<std::string, std::string>& metadata);

// Writes samples as raw little-endian int32.
void write_samples_i32(const std::string& path, const std::vector<int32_t>& samples);

}  // namespace sqz
