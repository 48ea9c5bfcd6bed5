// Comparing a model with a reference through saved logits, as llama.cpp's --kl-divergence:
// `sqz perplexity --save-logits FILE` stores the reference's logits at every scored position;
// a later run with `--kl-base FILE` compares its own position by position.
//
// File: "SQZLOGIT", u32 version (1), u32 n (header JSON bytes), the header JSON {method, ctx,
// vocab, n_chunks, n_scored, n_tokens, tokens_fnv1a}, then per chunk: i32 targets[n_scored],
// f32 logits[n_scored, vocab]. fp32 so that small divergences are not lost to rounding.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "engine/perplexity.h"

namespace sqz {

struct LogitsHeader {
  std::string method;
  int ctx = 0, vocab = 0, n_chunks = 0, n_scored = 0;
  int64_t n_tokens = 0;
  uint64_t tokens_fnv1a = 0;  // hash of the token stream: both runs must score the same text
  std::string to_json() const;
};

uint64_t fnv1a(const std::vector<int>& tokens);

class LogitsWriter {
 public:
  LogitsWriter(const std::string& path, const LogitsHeader& h);
  ~LogitsWriter();
  void write_chunk(const float* logits, const int* targets);
  void close();  // flushes, renames into place; throws on I/O errors

 private:
  std::string path_, tmp_;
  LogitsHeader h_;
  FILE* f_ = nullptr;
};

class LogitsReader {
 public:
  explicit LogitsReader(const std::string& path);  // validates header and size
  ~LogitsReader();
  const LogitsHeader& header() const { return h_; }
  // Throws when the run being compared differs (method, ctx, vocab, tokens).
  void check_compatible(const LogitsHeader& run) const;
  void read_chunk(int chunk, float* logits, int* targets);

 private:
  std::string path_;
  LogitsHeader h_;
  FILE* f_ = nullptr;
  int64_t data_offset_ = 0;
};

// Accumulates per-position statistics of KL(base || run) and top-1 agreement.
class KlStats {
 public:
  void add(const float* base_logits, const float* run_logits, int vocab);
  std::string report(const NllStats& base, const NllStats& run) const;  // llama.cpp-like text
  double mean() const;
  double top1_agreement() const;

 private:
  std::vector<double> kl_;
  int64_t same_top_ = 0;
};

}  // namespace sqz
