// What every backend shares: the batch checks and the mapping of weight dtypes to kernels.
#include "engine/backend.h"

#include <stdexcept>
#include <string>

#include "model/errors.h"

namespace sqz {

int Batch::n_logits() const {
  int n = 0;
  for (uint8_t w : want_logits) n += w != 0;
  return n;
}

void Batch::validate(int max_batch, int n_seqs, int ctx, int vocab_size) const {
  const int n = size();
  if (pos.size() != size_t(n) || seq.size() != size_t(n) || want_logits.size() != size_t(n))
    throw std::invalid_argument("batch: tokens, pos, seq and want_logits differ in length");
  if (n > max_batch)
    throw std::invalid_argument("batch of " + std::to_string(n) + " tokens exceeds max_batch " +
                                std::to_string(max_batch));
  for (int t = 0; t < n; t++) {
    if (seq[t] < 0 || seq[t] >= n_seqs || pos[t] < 0 || pos[t] >= ctx)
      throw std::out_of_range("token " + std::to_string(t) + " at seq " + std::to_string(seq[t]) +
                              " pos " + std::to_string(pos[t]) + " is outside the KV cache (" +
                              std::to_string(n_seqs) + " sequences x " + std::to_string(ctx) +
                              " positions)");
    if (tokens[t] < 0 || tokens[t] >= vocab_size)
      throw std::out_of_range("token id " + std::to_string(tokens[t]) +
                              " outside the vocabulary of " + std::to_string(vocab_size));
  }
}
MatType mat_type(DType t, const std::string& what) {
  switch (t) {
    case DType::F32: return MatType::F32;
    case DType::F16: return MatType::F16;
    case DType::BF16: return MatType::BF16;
    default: throw format_error(what + " must be F32, F16 or BF16, not " + dtype_name(t));
  }
}

}  // namespace sqz
