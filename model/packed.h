// The packed .sqz format: one safetensors file holding a SqueezeLLM-quantized LLaMA.
//
// Metadata (__metadata__, all strings):
//   sqz.format_version  "2"
//   sqz.config          Config::to_json()
//   sqz.quant           JSON: method, bits, outlier settings, per-module overrides
//   sqz.provenance      JSON: source checkpoint path + sha256, gradients file + sha256, date
//   sqz.rope_layout     "interleaved" (q/k rows are stored in Meta's interleaved-pair order)
// Tensors:
//   tokenizer.model                      U8   [n]          SentencePiece model bytes
//   tok_embeddings.weight                F16  [vocab, dim]
//   norm.weight                          F16  [dim]
//   output.weight                        F16  [vocab, dim]  (absent when shared with embeddings)
//   layers.L.attention_norm.weight       F16  [dim]
//   layers.L.ffn_norm.weight             F16  [dim]
//   layers.L.<lin>.indices  U8  [rows, row_bytes]     packed b-bit indices (layout below)
//   layers.L.<lin>.lut      F16 [rows, 2^bits]        per-row centroids
//   layers.L.<lin>.row_ptr  I32 [rows + 1]            CSR outliers
//   layers.L.<lin>.col_idx  I32 [nnz]
//   layers.L.<lin>.values   F16 [nnz]                 w - lut[row][idx] at outlier positions
// where <lin> is wq wk wv wo w_gate w_down w_up. A linear may instead be stored dense as
// layers.L.<lin>.weight F16 [rows, cols] (per-module override "fp16").
//
// The index layout (units of 128 columns, b aligned 16-byte words each) is drawn in
// kernels/packed_layout.h, next to the packer; the reader checks row_bytes against it.
#pragma once
#include <cstdint>
#include <map>
#include <string>

namespace sqz {

constexpr int kPackedFormatVersion = 2;  // 2: the 3-bit index layout of kernels/packed_layout.h
constexpr int kPackUnitCols = 128;

// Same formula as kernels/packed_layout.h (model/ does not include kernels/).
inline int64_t packed_file_row_bytes(int cols, int bits) {
  return int64_t((cols + kPackUnitCols - 1) / kPackUnitCols) * 16 * bits;
}


struct Model;
// Writes `m` as a packed file: its packed linears as they are, dense linears, norms and
// embeddings as F16, the tokenizer bytes, and the format metadata plus `extra_metadata`
// (sqz.quant, sqz.provenance, ...). Written to a temporary name, then renamed.
void save_packed(const std::string& path, const Model& m,
                 const std::map<std::string, std::string>& extra_metadata);

}  // namespace sqz
