// Squared gradients for SqueezeLLM calibration (DESIGN.md section 1, step 1): for one
// sample of token ids, the language-modelling loss (mean NLL over the n-1 predicted
// positions: logits[:-1] against ids[1:], as HF's labels=input_ids), one forward pass that
// saves what the backward needs, one backward pass down to layer 0's linears, and
// F += g * g for every linear weight g = dLoss/dW (q k v o gate up down of every layer;
// not embeddings, norms or the head). fp32 arithmetic and accumulation whatever the
// weights' dtype. F sums over samples (not a mean), one sample per backward pass.
//
// A GradientBackend is the device that does this; the CPU one is the reference. A GPU one
// plugs in behind make_gradient_backend without changing its callers.
#pragma once
#include <memory>
#include <string>

#include "model/model.h"

namespace sqz {

// The linears of a layer in forward order, with their HF type names.
constexpr int kLinearsPerLayer = 7;
const char* linear_hf_type(int which);  // 0..6: "q_proj" "k_proj" "v_proj" "o_proj" "gate_proj" "up_proj" "down_proj"
const LinearWeight& layer_linear(const LayerWeights& l, int which);

struct GradientOptions {
  int n_threads = 0;  // CPU threads (0: all cores)
  // GPU only: let cuBLAS round the GEMMs' inputs to TF32 (tensor cores; several times faster,
  // about 1e-3 relative error per product). Off: exact fp32 GEMMs, the CPU's numbers.
  bool tf32 = false;
};

class GradientBackend {
 public:
  virtual ~GradientBackend() = default;
  virtual std::string name() const = 0;
  // One sample tokens[0, n_tokens), n_tokens >= 2, positions 0..n_tokens-1: forward,
  // backward, F += g * g for every linear. Returns the sample's loss (mean NLL, nats).
  virtual double accumulate(const int* tokens, int n_tokens) = 0;
  // The accumulated F of layer `layer`, linear `which` (0..6): host fp32 [rows, cols] in
  // the loaded model's row order (q/k rows in sqz's interleaved RoPE layout). Valid until
  // the next accumulate().
  virtual const float* fisher(int layer, int which) = 0;
  virtual void reset() = 0;  // F = 0
  // For tests: the gradients themselves of one sample, grads[layer * 7 + which] each
  // [rows, cols] (loaded row order); F is not touched. Returns the loss.
  virtual double gradients(const int* tokens, int n_tokens, float* const* grads) = 0;
  // The loss alone (forward only).
  virtual double loss(const int* tokens, int n_tokens) = 0;
};

// Throws format_error when a linear or the head is not a dense F32/F16/BF16 weight (a packed
// .sqz model cannot be calibrated: calibrate its source checkpoint).
std::unique_ptr<GradientBackend> make_cpu_gradients(const Model& m, const GradientOptions& o);

// The GPU backend (engine/gradients_cuda.cu; CUDA builds only): the same forward, backward
// and F as the CPU one, fp32 weights and GEMMs on the device, F accumulated there and copied
// back by fisher(). Throws a one-line error (bytes needed and free) when the weights, F and
// activations do not fit in the GPU's memory.
std::unique_ptr<GradientBackend> make_cuda_gradients(const Model& m, const GradientOptions& o);

// Throws (one line) unless a calibration sample has at least 2 tokens (one predicted
// position) and every token lies in [0, vocab_size). Both gradient backends call it.
void check_calibration_tokens(const int* tokens, int n, int vocab_size);

// device: "cpu", "cuda" or "auto" (the GPU when cuda_available(), else the CPU). "cuda"
// throws a one-line error when this build has no CUDA or no GPU is present.
// check_gradient_device throws the same error without a model, so tools can fail before
// loading one.
void check_gradient_device(const std::string& device);
std::unique_ptr<GradientBackend> make_gradient_backend(const Model& m, const GradientOptions& o,
                                                       const std::string& device);

}  // namespace sqz
