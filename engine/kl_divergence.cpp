#include "engine/kl_divergence.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <sstream>
#include <stdexcept>

#include "model/errors.h"

namespace sqz {

namespace {
constexpr char kMagic[8] = {'S', 'Q', 'Z', 'L', 'O', 'G', 'I', 'T'};
constexpr uint32_t kVersion = 1;
}  // namespace

std::string LogitsHeader::to_json() const {
  nlohmann::json j = {{"method", method},     {"ctx", ctx},          {"vocab", vocab},
                      {"n_chunks", n_chunks}, {"n_scored", n_scored}, {"n_tokens", n_tokens},
                      {"tokens_fnv1a", tokens_fnv1a}};
  return j.dump();
}

uint64_t fnv1a(const std::vector<int>& tokens) {
  uint64_t h = 1469598103934665603ull;
  for (int t : tokens)
    for (int b = 0; b < 4; b++) h = (h ^ ((uint32_t(t) >> (8 * b)) & 0xff)) * 1099511628211ull;
  return h;
}

LogitsWriter::LogitsWriter(const std::string& path, const LogitsHeader& h)
    : path_(path), tmp_(path + ".tmp"), h_(h) {
  f_ = std::fopen(tmp_.c_str(), "wb");
  if (!f_) throw format_error(path + ": cannot open for writing: " + std::strerror(errno));
  std::string js = h.to_json();
  uint32_t n = uint32_t(js.size());
  std::fwrite(kMagic, 1, 8, f_);
  std::fwrite(&kVersion, 4, 1, f_);
  std::fwrite(&n, 4, 1, f_);
  std::fwrite(js.data(), 1, js.size(), f_);
}

LogitsWriter::~LogitsWriter() {
  if (f_) {
    std::fclose(f_);
    std::remove(tmp_.c_str());
  }
}

void LogitsWriter::write_chunk(const float* logits, const int* targets) {
  std::fwrite(targets, 4, size_t(h_.n_scored), f_);
  if (std::fwrite(logits, 4, size_t(h_.n_scored) * h_.vocab, f_) != size_t(h_.n_scored) * h_.vocab)
    throw format_error(path_ + ": write failed (disk full?)");
}

void LogitsWriter::close() {
  bool ok = std::fflush(f_) == 0;
  ok &= std::fclose(f_) == 0;
  f_ = nullptr;
  if (!ok || std::rename(tmp_.c_str(), path_.c_str()) != 0)
    throw format_error(path_ + ": could not finish writing the logits file");
}

LogitsReader::LogitsReader(const std::string& path) : path_(path) {
  f_ = std::fopen(path.c_str(), "rb");
  if (!f_) throw format_error(path + ": cannot open: " + std::strerror(errno));
  char magic[8];
  uint32_t ver = 0, n = 0;
  if (std::fread(magic, 1, 8, f_) != 8 || std::memcmp(magic, kMagic, 8) != 0)
    throw format_error(path + ": not a logits file written by --save-logits (bad magic)");
  if (std::fread(&ver, 4, 1, f_) != 1 || ver != kVersion)
    throw format_error(path + ": logits file version " + std::to_string(ver) + ", expected 1");
  if (std::fread(&n, 4, 1, f_) != 1 || n == 0 || n > (1u << 20))
    throw format_error(path + ": logits file header length " + std::to_string(n) + " is invalid");
  std::string js(n, '\0');
  if (std::fread(js.data(), 1, n, f_) != n) throw format_error(path + ": truncated header");
  try {
    auto j = nlohmann::json::parse(js);
    h_.method = j.at("method").get<std::string>();
    h_.ctx = j.at("ctx").get<int>(), h_.vocab = j.at("vocab").get<int>();
    h_.n_chunks = j.at("n_chunks").get<int>(), h_.n_scored = j.at("n_scored").get<int>();
    h_.n_tokens = j.at("n_tokens").get<int64_t>(), h_.tokens_fnv1a = j.at("tokens_fnv1a").get<uint64_t>();
  } catch (const nlohmann::json::exception& e) {
    throw format_error(path + ": bad header JSON (" + e.what() + ")");
  }
  if (h_.vocab <= 0 || h_.n_scored <= 0 || h_.n_chunks <= 0)
    throw format_error(path + ": header has non-positive sizes");
  data_offset_ = 16 + int64_t(n);
  std::fseek(f_, 0, SEEK_END);
  int64_t size = std::ftell(f_);
  int64_t want = data_offset_ + int64_t(h_.n_chunks) * h_.n_scored * (4 + 4 * int64_t(h_.vocab));
  if (size != want)
    throw format_error(path + ": file is " + std::to_string(size) + " bytes, expected " +
                       std::to_string(want) + " for its header (truncated?)");
}

LogitsReader::~LogitsReader() {
  if (f_) std::fclose(f_);
}

void LogitsReader::check_compatible(const LogitsHeader& run) const {
  auto bad = [&](const std::string& what) {
    throw format_error(path_ + ": saved with " + what + "; run perplexity with the same text, "
                       "--ppl-method and -c as when the logits were saved");
  };
  if (run.method != h_.method) bad("--ppl-method " + h_.method);
  if (run.ctx != h_.ctx) bad("ctx " + std::to_string(h_.ctx));
  if (run.vocab != h_.vocab) bad("a vocabulary of " + std::to_string(h_.vocab));
  if (run.tokens_fnv1a != h_.tokens_fnv1a || run.n_tokens != h_.n_tokens) bad("a different text");
  if (run.n_chunks > h_.n_chunks) bad(std::to_string(h_.n_chunks) + " chunks only (use --chunks)");
}

void LogitsReader::read_chunk(int chunk, float* logits, int* targets) {
  int64_t off = data_offset_ + int64_t(chunk) * h_.n_scored * (4 + 4 * int64_t(h_.vocab));
  std::fseek(f_, long(off), SEEK_SET);
  if (std::fread(targets, 4, size_t(h_.n_scored), f_) != size_t(h_.n_scored) ||
      std::fread(logits, 4, size_t(h_.n_scored) * h_.vocab, f_) != size_t(h_.n_scored) * h_.vocab)
    throw format_error(path_ + ": read failed at chunk " + std::to_string(chunk));
}

void KlStats::add(const float* base, const float* run, int vocab) {
  double lb = log_sum_exp(base, vocab), lr = log_sum_exp(run, vocab), kl = 0;
  int ab = 0, ar = 0;
  for (int i = 0; i < vocab; i++) {
    double pb = double(base[i]) - lb, pr = double(run[i]) - lr;
    kl += std::exp(pb) * (pb - pr);
    if (base[i] > base[ab]) ab = i;
    if (run[i] > run[ar]) ar = i;
  }
  kl_.push_back(std::max(0.0, kl));
  same_top_ += ab == ar;
}

double KlStats::mean() const {
  double s = 0;
  for (double v : kl_) s += v;
  return kl_.empty() ? 0 : s / double(kl_.size());
}

double KlStats::top1_agreement() const {
  return kl_.empty() ? 0 : double(same_top_) / double(kl_.size());
}

std::string KlStats::report(const NllStats& base, const NllStats& run) const {
  std::vector<double> v = kl_;
  std::sort(v.begin(), v.end());
  auto q = [&](double p) { return v.empty() ? 0 : v[size_t(p * double(v.size() - 1) + 0.5)]; };
  const double n = double(v.size()), m = mean();
  double var = 0;
  for (double x : v) var += (x - m) * (x - m);
  const double se = n > 1 ? std::sqrt(var / (n - 1) / n) : 0;
  const double agree = top1_agreement();
  char b[1024];
  std::snprintf(b, sizeof b,
                "====== Perplexity statistics ======\n"
                "Mean PPL(Q)    : %10.6f +/- %.6f\n"
                "Mean PPL(base) : %10.6f +/- %.6f\n"
                "PPL ratio      : %10.6f\n"
                "====== KL divergence statistics ======\n"
                "Mean    KLD: %10.6f +/- %.6f\n"
                "Maximum KLD: %10.6f\n"
                "99.9%%   KLD: %10.6f\n"
                "99.0%%   KLD: %10.6f\n"
                "Median  KLD: %10.6f\n"
                "Minimum KLD: %10.6f\n"
                "====== Token probability statistics ======\n"
                "Same top p: %.3f +/- %.3f %% (%lld positions)\n",
                run.ppl(), run.ppl_stderr(), base.ppl(), base.ppl_stderr(), run.ppl() / base.ppl(),
                m, se, v.empty() ? 0 : v.back(), q(0.999), q(0.99), q(0.5), v.empty() ? 0 : v[0],
                100 * agree, n > 1 ? 100 * std::sqrt(agree * (1 - agree) / (n - 1)) : 0, (long long)n);
  return b;
}

}  // namespace sqz
