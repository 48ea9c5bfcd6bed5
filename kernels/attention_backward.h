// Causal grouped-query attention over ONE sequence at positions 0..n_tokens-1, forward
// (saving the per-row log-sum-exp) and backward, on the CPU, for calibration (the serving
// path is kernels/attention.h over a KV cache; the math is the same).
// Per token t and head h (kv head g = h / (n_heads / n_kv_heads)), scale = 1/sqrt(head_dim):
//   S[t, p] = scale * q[t, h] . k[p, g],  p <= t
//   P[t, p] = exp(S[t, p] - lse[t, h]),   lse[t, h] = log sum_p exp(S[t, p])
//   out[t, h] = sum_p P[t, p] v[p, g]
// Backward, with D[t, h] = dout[t, h] . out[t, h]:
//   dP[t, p] = dout[t, h] . v[p, g];   dS[t, p] = P[t, p] (dP[t, p] - D[t, h])
//   dq[t, h] = scale sum_p dS[t, p] k[p, g]
//   dk[p, g] = scale sum_{h in g, t >= p} dS[t, p] q[t, h];  dv[p, g] = sum P[t, p] dout[t, h]
// P is recomputed from q, k and lse (never stored: it is n_heads * n^2 floats per layer).
#pragma once

namespace sqz {

class ThreadPool;

struct CausalAttentionArgs {
  int n_tokens = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  const float* q = nullptr;  // [n_tokens, n_heads * head_dim], after RoPE
  const float* k = nullptr;  // [n_tokens, n_kv_heads * head_dim], after RoPE
  const float* v = nullptr;  // [n_tokens, n_kv_heads * head_dim]
};

// out: [n_tokens, n_heads * head_dim]; lse: [n_tokens, n_heads]. Parallel over (token, head).
void attention_causal_forward(const CausalAttentionArgs& a, float* out, float* lse,
                              ThreadPool& pool);

// Given the forward's out and lse and dout [n_tokens, n_heads * head_dim], writes dq (same
// shape as q), dk and dv (same shape as k). Two passes, each free of write conflicts:
// dq parallel over (token, head), then dk/dv parallel over (position, kv head).
// Deterministic: the result does not depend on the number of threads.
void attention_causal_backward(const CausalAttentionArgs& a, const float* out, const float* lse,
                               const float* dout, float* dq, float* dk, float* dv,
                               ThreadPool& pool);

}  // namespace sqz

#ifdef SQZ_WITH_CUDA
#include <cuda_runtime_api.h>
namespace sqz {

// The same on the GPU (kernels/attention_backward.cu): every pointer (those in `a` too) on
// the device; head_dim <= 256. The backward needs `workspace`: device [n_tokens * n_heads]
// floats (the rows' D). Deterministic: no atomics, fixed summation order.
void attention_causal_forward_cuda(const CausalAttentionArgs& a, float* out, float* lse,
                                   cudaStream_t stream);
void attention_causal_backward_cuda(const CausalAttentionArgs& a, const float* out,
                                    const float* lse, const float* dout, float* dq, float* dk,
                                    float* dv, float* workspace, cudaStream_t stream);

}  // namespace sqz
#endif
