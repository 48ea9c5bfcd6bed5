// Causal multi-head attention with grouped KV heads over a KV cache, on the CPU.
#pragma once
#include <cstdint>

namespace sqz {

class ThreadPool;

struct AttentionArgs {
  int n_tokens = 0;
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  const float* q = nullptr;       // [n_tokens, n_heads * head_dim]
  const float* const* k_cache = nullptr;  // per token: base of its sequence's K cache [ctx, kv_dim]
  const float* const* v_cache = nullptr;  // per token: base of its sequence's V cache
  const int* pos = nullptr;       // [n_tokens]: token t attends to cache positions 0..pos[t]
  float* out = nullptr;           // [n_tokens, n_heads * head_dim]
};

// out = softmax(q k^T / sqrt(head_dim)) v per (token, head); head h reads kv head
// h / (n_heads / n_kv_heads). Work is split over (token, head) pairs.
void attention(const AttentionArgs& a, ThreadPool& pool);

}  // namespace sqz
