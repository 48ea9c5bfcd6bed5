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

#ifdef SQZ_WITH_CUDA
#include <cuda_runtime_api.h>
#include <cstddef>
namespace sqz {

// Causal GQA attention on the GPU over an fp16 KV cache (the rope_cuda append wrote this
// step's K/V already, or, decode only, rope_theta > 0 fuses it). Same math as attention():
// per (token, head), out = softmax(q . k_p * 1/sqrt(head_dim), p = 0..pos) . v_p, fp32
// scores and softmax, fp32 accumulation, output rounded to fp16 (the input of the o
// projection).
struct AttentionCudaParams {
  int n_tokens = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  const float* q = nullptr;     // device; token t head h at q + t * q_stride + h * head_dim
  int q_stride = 0;             // floats between tokens (the fused qkv row width)
  uint16_t* k_cache = nullptr;  // device fp16 [n_seqs][ctx][kv_dim], this layer (written only
  uint16_t* v_cache = nullptr;  // by the decode kernel's fused append)
  int64_t seq_stride = 0;       // elements between two sequences: ctx * kv_dim
  const int* pos = nullptr;     // device [n_tokens]: attends to positions 0..pos[t]
  const int* seq = nullptr;     // device [n_tokens]: the cache slot of token t
  uint16_t* out = nullptr;      // device [n_tokens, n_heads * head_dim] fp16
  // Decode only: > 0 fuses rope_cuda's work into the kernel. q is the fused qkv row, unrotated:
  // [q heads | k heads | v heads], as rope_cuda takes it. The kernel rotates q and this
  // step's k with this theta (the same bits as rope_cuda) and stores k and v as fp16 at
  // cache[seq[t]][pos[t]] before reading the cache; qkv itself is left as it was. Every token
  // must then be a different sequence's (no token reads a key another block appends).
  float rope_theta = 0.0f;
};

// Prefill: batch tokens grouped into tiles of up to kAttentionTileTokens consecutive tokens
// of one sequence; a tile's keys are positions 0..max_pos of its sequence, each query masked
// to its own pos (so positions need not be consecutive or sorted).
constexpr int kAttentionTileTokens = 32;
struct AttentionTile {
  int t0 = 0;       // first batch token of the tile
  int n = 0;        // tokens in the tile (1..kAttentionTileTokens)
  int seq = 0;      // their sequence
  int max_pos = 0;  // largest pos among them
};
// Host: groups consecutive tokens of the same sequence into tiles; `tiles` has room for
// n_tokens. Returns the number of tiles.
int attention_make_tiles(const int* seq, const int* pos, int n_tokens, AttentionTile* tiles);
// head_dim <= 256. Tiles on the device. head_dim 64 or 128 (16-byte aligned caches,
// seq_stride % 8 == 0, q 8-byte aligned, q_stride even) runs on tensor cores: q and the
// softmax weights p are rounded to fp16 for q . k and p . v (sums in fp32), as in flash
// attention; the other shapes compute in fp32 throughout.
void attention_prefill_cuda(const AttentionCudaParams& p, const AttentionTile* tiles,
                            int n_tiles, cudaStream_t stream);

// Decode (flash-decoding): one block per (token, kv head, split of the cache). n_splits is
// the most splits; at run time (pos is read on the device, so a CUDA graph replays with any
// length) 0..pos[t] is cut into min(n_splits, ceil((pos + 1) / min_keys)) chunks of whole
// 32-key tiles (min_keys: see below), the blocks of the splits without keys return at once, and
// the last block of each (token, kv head) to finish merges the others in the same kernel;
// one split writes the output directly. Handles any batch (each token on its own; with
// rope_theta, every token a different sequence's). Needs (n_heads / n_kv_heads) * head_dim
// <= 2048.
// With n_splits > 1: scratch holds attention_decode_scratch_floats() floats, and counters
// n_tokens * n_kv_heads ints that must be zero before the first call (cudaMemset once at
// allocation); every call leaves them zero again.
// head_dim 64 or 128 with groups of up to 8 query heads (LLaMA's shapes; 16-byte aligned
// caches, seq_stride % 8 == 0) take a kernel whose 4 warps each walk their own 32-key tiles
// of a split, merged through shared memory: a split has at least kDecodeWarpSplitKeys keys,
// so a context of up to 128 keys needs no merge across blocks. With rope_theta, that kernel
// reads cache positions < pos[t] before its programmatic-dependent-launch wait: the kernel
// launched just before it must not write the cache (in the engine it is the qkv linear).
// The other shapes take a kernel whose whole block walks the tiles of a split, at least
// kAttentionDecodeSplitKeys keys each. (Measured on the H100 for that kernel, LLaMA-7B 3-bit
// tg128: 2.62 / 2.64 / 2.73 ms per batch-1 step with 32 / 64 / 128: one block's tile loop is
// slower than more blocks and the merge.)
constexpr int kAttentionDecodeSplitKeys = 32;
constexpr int kDecodeWarpSplitKeys = 128;
int attention_decode_splits(int n_tokens, int n_kv_heads, int ctx_size, int n_sms);
size_t attention_decode_scratch_floats(int n_tokens, int n_heads, int head_dim, int n_splits);
void attention_decode_cuda(const AttentionCudaParams& p, int n_splits, float* scratch,
                           int* counters, cudaStream_t stream);

}  // namespace sqz
#endif
