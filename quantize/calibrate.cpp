#include "quantize/calibrate.h"

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>

#include "engine/engine.h"
#include "model/errors.h"
#include "model/safetensors.h"
#include "tokenizer/tokenizer.h"

namespace sqz {

CalibSampling calib_sampling_from_name(const std::string& name) {
  if (name == "random") return CalibSampling::RANDOM;
  if (name == "sequential") return CalibSampling::SEQUENTIAL;
  throw std::invalid_argument("--sampling must be random or sequential, not '" + name + "'");
}

const char* calib_sampling_name(CalibSampling s) {
  return s == CalibSampling::RANDOM ? "random" : "sequential";
}

std::vector<int32_t> make_calibration_samples(const std::vector<int>& tokens, int n_samples,
                                              int seqlen, CalibSampling sampling, uint64_t seed,
                                              int bos_id) {
  if (n_samples < 1) throw std::invalid_argument("--samples must be >= 1");
  if (seqlen < 2) throw std::invalid_argument("--seqlen must be >= 2 (BOS and one token)");
  const int64_t n_text = int64_t(tokens.size()), span = seqlen - 1;
  const int64_t need = sampling == CalibSampling::SEQUENTIAL ? int64_t(n_samples) * span : span;
  if (n_text < need)
    throw std::invalid_argument(
        "the calibration text is too short: " + std::to_string(n_samples) + " " +
        calib_sampling_name(sampling) + " samples of " + std::to_string(seqlen) + " tokens need " +
        std::to_string(need) + " text tokens, it has " + std::to_string(n_text) +
        " (use a longer text, fewer --samples or a shorter --seqlen)");
  std::vector<int32_t> out(size_t(n_samples) * seqlen);
  std::mt19937_64 rng(seed);
  for (int i = 0; i < n_samples; i++) {
    // uniform in [0, n_text - span] (the modulo bias is below 2^-40 for any real text)
    const int64_t off = sampling == CalibSampling::SEQUENTIAL
                            ? int64_t(i) * span
                            : int64_t(rng() % uint64_t(n_text - span + 1));
    int32_t* row = out.data() + size_t(i) * seqlen;
    row[0] = bos_id;
    for (int64_t j = 0; j < span; j++) row[1 + j] = tokens[size_t(off + j)];
  }
  return out;
}

void write_samples_i32(const std::string& path, const std::vector<int32_t>& samples) {
  std::vector<uint8_t> bytes(samples.size() * 4);
  for (size_t i = 0; i < samples.size(); i++) {
    const uint32_t v = uint32_t(samples[i]);
    for (int b = 0; b < 4; b++) bytes[i * 4 + b] = uint8_t(v >> (8 * b));
  }
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  if (!f) throw std::runtime_error(path + ": cannot write the samples file");
}

void write_gradients(const std::string& path, const Model& m, GradientBackend& backend,
                     const std::map<std::string, std::string>& metadata) {
  const Config& c = m.config;
  std::vector<TensorToWrite> tensors;
  std::vector<std::vector<float>> permuted;  // q/k of HF checkpoints, back in HF row order
  permuted.reserve(size_t(c.n_layers) * 2);
  for (int l = 0; l < c.n_layers; l++)
    for (int i = 0; i < kLinearsPerLayer; i++) {
      const LinearWeight& w = layer_linear(m.layers[l], i);
      const float* f = backend.fisher(l, i);
      const size_t row_elems = size_t(w.cols);
      if (m.format == "hf" && i < 2) {
        // Our row rope_row_hf_to_interleaved(r) holds the checkpoint's row r.
        permuted.emplace_back(size_t(w.rows) * w.cols);
        float* dst = permuted.back().data();
        for (int r = 0; r < w.rows; r++)
          std::memcpy(dst + size_t(r) * row_elems,
                      f + size_t(rope_row_hf_to_interleaved(r, c.head_dim)) * row_elems,
                      row_elems * 4);
        f = dst;
      }
      tensors.push_back({hf_linear_name(l, linear_hf_type(i)), DType::F32,
                         {int64_t(w.rows), int64_t(w.cols)}, f, size_t(w.rows) * w.cols * 4});
    }
  write_safetensors(path, tensors, metadata);
}

namespace {

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(path + ": cannot open the calibration text");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string basename(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const size_t s = p.find_last_of('/');
  return s == std::string::npos ? p : p.substr(s + 1);
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

CalibrateResult calibrate(const CalibrateOptions& o, const CalibrateProgress& progress) {
  if (o.n_samples < 1) throw std::invalid_argument("--samples must be >= 1");
  if (o.seqlen < 2) throw std::invalid_argument("--seqlen must be >= 2 (BOS and one token)");
  if (o.n_threads < 0) throw std::invalid_argument("-t/--threads must be >= 0");
  if (o.output_path.empty()) throw std::invalid_argument("-o/--output is required");
  check_gradient_device(o.device);
  const std::string text = read_text(o.data_path);  // before the model: fail fast
  Model m = load_model(o.model_path);
  Tokenizer tok = open_tokenizer(m, o.tokenizer_path);
  if (o.seqlen > m.config.seq_len)
    std::fprintf(stderr, "warning: --seqlen %d is longer than the model's trained context %d\n",
                 o.seqlen, m.config.seq_len);

  CalibrateResult res;
  const std::vector<int> tokens = tok.encode(text, false);
  res.n_text_tokens = int64_t(tokens.size());
  std::vector<int32_t> samples;
  try {
    samples = make_calibration_samples(tokens, o.n_samples, o.seqlen, o.sampling, o.seed,
                                       tok.bos_id());
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(o.data_path + ": " + e.what());
  }
  if (!o.samples_path.empty()) write_samples_i32(o.samples_path, samples);

  GradientOptions go;
  go.n_threads = o.n_threads;
  std::unique_ptr<GradientBackend> be = make_gradient_backend(m, go, o.device);
  res.backend = be->name();
  const double t0 = now_s();
  std::vector<int> ids(o.seqlen);
  double sum = 0;
  if (progress) progress(0, o.n_samples, 0.0);  // loading and tokenizing are done
  for (int i = 0; i < o.n_samples; i++) {
    std::copy_n(samples.data() + size_t(i) * o.seqlen, o.seqlen, ids.begin());
    const double loss = be->accumulate(ids.data(), o.seqlen);
    res.losses.push_back(loss);
    sum += loss;
    if (progress) progress(i + 1, o.n_samples, loss);
  }
  res.seconds = now_s() - t0;
  res.mean_loss = sum / o.n_samples;

  char mean[32];
  std::snprintf(mean, sizeof mean, "%.6f", res.mean_loss);
  res.metadata = {{"samples", std::to_string(o.n_samples)},
                  {"seqlen", std::to_string(o.seqlen)},
                  {"sampling", calib_sampling_name(o.sampling)},
                  {"seed", std::to_string(o.seed)},
                  {"loss", "mean NLL over predicted positions"},
                  {"data", basename(o.data_path)},
                  {"mean_loss", mean},
                  {"model", basename(o.model_path)},
                  {"tool", "sqz calibrate (" + res.backend + ", fp32)"}};
  write_gradients(o.output_path, m, *be, res.metadata);
  return res;
}

}  // namespace sqz
