// Greedy generation for the tests that compare token ids (backends, model files, packed
// models): one sequence, temperature 0, the generated ids only.
#pragma once
#include <vector>

#include "engine/backend.h"
#include "engine/generate.h"
#include "engine/sampler.h"

namespace sqz::test {

inline std::vector<int> greedy(Backend& be, int vocab, const std::vector<int>& prompt, int n) {
  SamplerOptions so;
  so.temp = 0;
  Sampler s(so, vocab);
  SeqState seq;
  GenerateOptions go;
  go.n_predict = n;
  std::vector<int> out;
  generate(be, {&seq}, {prompt}, {&s}, go, [&](int, int t) {
    out.push_back(t);
    return true;
  });
  return out;
}

}  // namespace sqz::test
