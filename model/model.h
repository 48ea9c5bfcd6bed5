// A loaded model: config, weights as views into mapped files (or owned buffers where a
// reader had to convert), and whatever the file carries besides (tokenizer, metadata).
// Formats are recognised from file contents, never from the file name.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/safetensors.h"

namespace sqz {

enum class WeightKind { DENSE, PACKED };

// A linear layer y = W x with W of shape [rows (out), cols (in)], whatever its storage.
struct LinearWeight {
  std::string name;
  int rows = 0;  // out features
  int cols = 0;  // in features
  WeightKind kind = WeightKind::DENSE;

  // DENSE: row-major [rows, cols] of dtype F32, F16 or BF16.
  DType dtype = DType::F32;
  const void* data = nullptr;

  // PACKED (SqueezeLLM dense-and-sparse, see model/packed.h for the index layout):
  int bits = 0;                       // 2, 3 or 4
  const uint8_t* indices = nullptr;   // [rows, row_bytes]
  int64_t row_bytes = 0;              // bytes of packed indices per row
  const uint16_t* lut = nullptr;      // [rows, 2^bits] FP16 centroids
  const int32_t* row_ptr = nullptr;   // [rows + 1] CSR row pointers
  const int32_t* col_idx = nullptr;   // [nnz] CSR column indices
  const uint16_t* values = nullptr;   // [nnz] FP16 outlier values (w - lut[row][idx])
  int64_t nnz = 0;

  int64_t n_bytes() const;  // bytes this weight occupies (all parts)
};

struct LayerWeights {
  TensorView attn_norm;  // [dim]
  TensorView ffn_norm;   // [dim]
  LinearWeight wq;       // [q_dim, dim]
  LinearWeight wk;       // [kv_dim, dim]
  LinearWeight wv;       // [kv_dim, dim]
  LinearWeight wo;       // [dim, q_dim]
  LinearWeight w_gate;   // [hidden_dim, dim]  (llama2.c w1)
  LinearWeight w_down;   // [dim, hidden_dim]  (llama2.c w2)
  LinearWeight w_up;     // [hidden_dim, dim]  (llama2.c w3)
};

struct Model {
  std::string path;
  std::string format;  // "hf", "llama2c", "llama2c-v1", "sqz"
  Config config;
  TensorView tok_embeddings;  // [vocab_size, dim], F32/F16/BF16
  TensorView final_norm;      // [dim]
  LinearWeight classifier;    // [vocab_size, dim]; views tok_embeddings when shared
  std::vector<LayerWeights> layers;
  std::string tokenizer_model;  // SentencePiece model bytes, empty when the file holds none
  std::string tokenizer_path;   // a tokenizer.model found beside the checkpoint, if any
  std::map<std::string, std::string> metadata;  // packed-file metadata (sqz format)
  std::vector<std::shared_ptr<void>> storage;   // keeps mapped files and owned buffers alive

  // Every linear in forward order, for tools that walk them (quantize, inspect).
  std::vector<LinearWeight*> linears();
  std::vector<const LinearWeight*> linears() const;
  int64_t n_params() const;
  int64_t n_bytes() const;  // bytes of all weights as stored
};

// Loads an HF folder (config.json + model.safetensors or sharded index), an HF
// model.safetensors path, a llama2.c .bin (legacy or v1) or a packed .sqz file.
// Validates shapes against the config and norms/embeddings for NaN/Inf.
// Throws format_error naming the file and what was wrong.
Model load_model(const std::string& path);

// Individual readers (load_model dispatches on contents).
Model load_hf(const std::string& path);
Model load_llama2c(const std::string& path);
Model load_packed(const std::string& path);  // model/packed.cpp

// Throws format_error naming `file` and the tensor when `v` (F32, F16 or BF16) holds a NaN
// or Inf. Readers run it on norms and embeddings (checked on bits, no conversion).
void check_finite(const TensorView& v, const std::string& file);

// Row r of an HF q/k projection (rotate-half RoPE layout) is this row in Meta's
// interleaved-pair layout, which sqz uses everywhere (also for gradients of q/k).
inline int rope_row_hf_to_interleaved(int r, int head_dim) {
  const int h = r / head_dim, j = r % head_dim, half_dim = head_dim / 2;
  return h * head_dim + 2 * (j % half_dim) + j / half_dim;
}

// HF checkpoint tensor names, for readers and writers of gradients / packed files.
std::string hf_linear_name(int layer, const char* which);  // which: "q_proj", "gate_proj", ...

}  // namespace sqz
