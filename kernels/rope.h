// Rotary position embedding in Meta's interleaved-pair layout (HF rotate-half weights are
// permuted into this layout at load): for each head and pair i of (x[2i], x[2i+1]),
// angle = pos * theta^(-2i/head_dim), rotated by that angle.
#pragma once

namespace sqz {

// x: [n_tokens, n_heads * head_dim], rotated in place; pos[t] is token t's position.
void rope(float* x, const int* pos, int n_tokens, int n_heads, int head_dim, float theta);

}  // namespace sqz

#ifdef SQZ_WITH_CUDA
#include <cuda_runtime_api.h>
#include <cstdint>
namespace sqz {

// RoPE on the GPU over the fused q|k|v output of one layer, with the KV-cache append fused
// in. Row t of qkv is [q: n_heads * head_dim | k: n_kv_heads * head_dim | v: same] fp32;
// q and k heads are rotated in place exactly as rope() does (inv_freq in double, rounded to
// float; angle = float(pos) * inv_freq in fp32). When k_cache/v_cache are set, the rotated
// k and the v of token t are also stored as fp16 at cache[seq[t]][pos[t]][0 .. kv_dim).
// With n_kv_heads = 0 and no cache, qkv is just [n_tokens, n_heads * head_dim] (stride
// n_heads * head_dim): the CPU rope() on one tensor.
struct RopeCudaParams {
  float* qkv = nullptr;            // device [n_tokens, stride] fp32
  int n_tokens = 0, stride = 0;
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  float theta = 10000.0f;
  const int* pos = nullptr;        // device [n_tokens]
  // Optional KV-cache append (fp16, [n_seqs][ctx][kv_dim] for this layer).
  const int* seq = nullptr;        // device [n_tokens]
  uint16_t* k_cache = nullptr;
  uint16_t* v_cache = nullptr;
  int64_t seq_stride = 0;          // elements between two sequences: ctx * kv_dim
};
void rope_cuda(const RopeCudaParams& p, cudaStream_t stream);

}  // namespace sqz
#endif
