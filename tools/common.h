// Option groups shared by the subcommands (flag names follow llama.cpp), and small helpers.
#pragma once
#include <cxxopts.hpp>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/sampler.h"

namespace sqz::tools {

// A user error: printed as one line, exit code 1 (as every other exception).
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void add_model_options(cxxopts::Options& o);     // -m, --tokenizer, -c, -t, --device
void add_sampling_options(cxxopts::Options& o);  // --temp ... -s
EngineOptions engine_options(const cxxopts::ParseResult& r);
SamplerOptions sampler_options(const cxxopts::ParseResult& r);

// Parses argv for a subcommand: rewrites llama.cpp's multi-letter short flags (-sys) and
// turns cxxopts errors into usage_error. Prints help and returns false on --help.
bool parse(cxxopts::Options& o, int argc, char** argv, cxxopts::ParseResult* out);

std::string read_text_file(const std::string& path);  // throws format_error naming the file
double now_seconds();
std::string json_escape(const std::string& s);

// Progress with an ETA on stderr, redrawn in place when stderr is a terminal.
class Progress {
 public:
  Progress(std::string what, int64_t total);
  void update(int64_t done, const std::string& extra = "");
  void finish(const std::string& extra = "");

 private:
  std::string what_;
  int64_t total_;
  double t0_;
  bool tty_;
};

}  // namespace sqz::tools
