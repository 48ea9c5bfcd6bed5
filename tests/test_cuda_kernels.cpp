// CUDA ops against their CPU versions over odd shapes (label gpu; every test skips when no GPU
// is present): embedding, rmsnorm (+ gathered rows), rope (+ KV-cache
// append), attention prefill (1..300 tokens, GQA groups 1/2/4, several sequences) and decode
// (cache lengths 1..4000, any split count), swiglu, top-k vs a host sort with ties.
// Outputs start NaN-poisoned, so every element must have been written to pass.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "kernels/attention.h"
#include "kernels/cuda_common.h"
#include "kernels/embedding.h"
#include "kernels/parallel.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "kernels/topk.h"
#include "model/dtype.h"
#include "tests/cuda_test_util.h"

namespace sqz {
namespace {

using test::DeviceBuffer;

// Tolerances: |got - ref| <= abs + rel * |ref|.
constexpr float kF16OutRel = 2e-3f;  // fp16 output: half-ulp 2^-11 plus fp32 order effects
constexpr float kF16OutAbs = 1e-4f;
constexpr float kRopeAbs = 2e-5f;  // fp32 rotation; sincosf vs libm differ by ulps
constexpr float kAttnAbs = 2e-3f;  // fp16 output of a weighted mean of O(1) values
constexpr int kH100Sms = 132;      // split count used for the "auto" decode case

std::vector<float> randn(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::vector<float> f16_to_f32_vec(const std::vector<uint16_t>& h) {
  std::vector<float> f(h.size());
  for (size_t i = 0; i < h.size(); i++) f[i] = f16_to_f32(h[i]);
  return f;
}

std::vector<uint16_t> f32_to_f16_vec(const std::vector<float>& f) {
  std::vector<uint16_t> h(f.size());
  for (size_t i = 0; i < f.size(); i++) h[i] = f32_to_f16(f[i]);
  return h;
}

// Every element within abs + rel * |ref| (NaN fails); up to 10 mismatches reported.
// Returns the largest absolute difference.
float expect_close(const std::vector<float>& got, const std::vector<float>& ref, float abs_tol,
                   float rel_tol, const std::string& what) {
  EXPECT_EQ(got.size(), ref.size()) << what;
  int bad = 0;
  float max_diff = 0;
  for (size_t i = 0; i < std::min(got.size(), ref.size()); i++) {
    const float d = std::fabs(got[i] - ref[i]);
    if (!(d <= abs_tol + rel_tol * std::fabs(ref[i]))) {
      if (bad++ < 10)
        ADD_FAILURE() << what << ": element " << i << " got " << got[i] << " want " << ref[i];
    }
    if (d > max_diff || std::isnan(d)) max_diff = std::isnan(d) ? INFINITY : d;
  }
  if (bad > 10) ADD_FAILURE() << what << ": " << bad << " mismatches in all";
  return max_diff;
}

// ---- embedding ---------------------------------------------------------------------------

TEST(EmbeddingCuda, AllTableTypesExact) {
  SQZ_REQUIRE_GPU();
  std::mt19937 rng(1);
  const int vocab = 37;
  for (int dim : {1, 7, 300}) {
    std::vector<int> tokens = {0, 36, 5, 5, 17};
    const int n = int(tokens.size());
    std::vector<float> table = randn(size_t(vocab) * dim, rng);
    for (MatType t : {MatType::F32, MatType::F16, MatType::BF16}) {
      std::vector<uint16_t> t16(table.size());
      std::vector<float> exact(table);  // what the table holds, as fp32
      for (size_t i = 0; i < table.size(); i++) {
        if (t == MatType::F16) t16[i] = f32_to_f16(table[i]), exact[i] = f16_to_f32(t16[i]);
        if (t == MatType::BF16) t16[i] = f32_to_bf16(table[i]), exact[i] = bf16_to_f32(t16[i]);
      }
      DeviceBuffer<float> d32(table);
      DeviceBuffer<uint16_t> d16(t16);
      DeviceBuffer<int> dtok(tokens);
      DeviceBuffer<float> out(size_t(n) * dim);
      out.poison();
      const void* tab = t == MatType::F32 ? static_cast<const void*>(d32.p) : d16.p;
      embedding_cuda(tab, t, dim, dtok.p, n, out.p, nullptr);
      std::vector<float> got = out.download(), ref(size_t(n) * dim);
      for (int i = 0; i < n; i++)
        std::copy_n(exact.data() + size_t(tokens[i]) * dim, dim, ref.data() + size_t(i) * dim);
      expect_close(got, ref, 0, 0, "embedding dim " + std::to_string(dim));
    }
  }
}

// ---- rmsnorm -----------------------------------------------------------------------------

TEST(RmsNormCuda, OddDimsAndGather) {
  SQZ_REQUIRE_GPU();
  std::mt19937 rng(2);
  const int n = 3;
  for (int dim : {1, 7, 64, 4097}) {
    std::vector<float> x = randn(size_t(n) * dim, rng, 3.0f);
    std::vector<float> w = randn(dim, rng);
    DeviceBuffer<float> dx(x), dw(w);
    DeviceBuffer<uint16_t> out(size_t(n) * dim);
    const std::string tag = " dim " + std::to_string(dim);

    // Plain: out = rmsnorm(x); x untouched.
    out.poison();
    RmsNormCudaParams p;
    p.x = dx.p, p.weight = dw.p, p.out = out.p, p.n_rows = n, p.dim = dim, p.eps = 1e-5f;
    rmsnorm_cuda(p, nullptr);
    std::vector<float> ref(x.size());
    rmsnorm(x.data(), w.data(), n, dim, 1e-5f, ref.data());
    expect_close(f16_to_f32_vec(out.download()), ref, kF16OutAbs, kF16OutRel, "plain" + tag);
    expect_close(dx.download(), x, 0, 0, "x unchanged" + tag);

    // Gathered rows {2, 0} of x (the final norm): x still untouched.
    std::vector<int> rows = {2, 0};
    DeviceBuffer<int> drows(rows);
    out.poison();
    p.row_index = drows.p, p.n_rows = 2;
    rmsnorm_cuda(p, nullptr);
    std::vector<float> ref_g;
    for (int j : rows)
      ref_g.insert(ref_g.end(), ref.begin() + size_t(j) * dim, ref.begin() + size_t(j + 1) * dim);
    std::vector<float> got = f16_to_f32_vec(out.download());
    got.resize(ref_g.size());
    expect_close(got, ref_g, kF16OutAbs, kF16OutRel, "gathered" + tag);
    expect_close(dx.download(), x, 0, 0, "x unchanged by gather" + tag);
  }
}

// ---- rope --------------------------------------------------------------------------------

TEST(RopeCuda, MatchesCpuAtManyPositions) {
  SQZ_REQUIRE_GPU();
  std::mt19937 rng(3);
  std::vector<int> pos = {0, 1, 17, 1000, 4095, 100000};
  const int n = int(pos.size());
  for (int hd : {2, 8, 64, 128}) {
    for (float theta : {10000.0f, 500000.0f}) {
      const int heads = 3;
      std::vector<float> x = randn(size_t(n) * heads * hd, rng);
      DeviceBuffer<float> dx(x);
      DeviceBuffer<int> dpos(pos);
      RopeCudaParams p;
      p.qkv = dx.p, p.n_tokens = n, p.stride = heads * hd, p.n_heads = heads, p.head_dim = hd;
      p.theta = theta, p.pos = dpos.p;
      rope_cuda(p, nullptr);
      std::vector<float> ref(x);
      rope(ref.data(), pos.data(), n, heads, hd, theta);
      expect_close(dx.download(), ref, kRopeAbs, 0, "rope hd " + std::to_string(hd));
    }
  }
}

TEST(RopeCuda, FusedQkvAndCacheAppend) {
  SQZ_REQUIRE_GPU();
  std::mt19937 rng(4);
  const int heads = 4, kv_heads = 2, hd = 64, kv_dim = kv_heads * hd, ctx = 50, n_seqs = 3;
  const int stride = heads * hd + 2 * kv_dim;
  std::vector<int> pos = {0, 1, 49, 7}, seq = {0, 0, 2, 1};
  const int n = int(pos.size());
  std::vector<float> qkv = randn(size_t(n) * stride, rng);
  DeviceBuffer<float> dqkv(qkv);
  DeviceBuffer<int> dpos(pos), dseq(seq);
  DeviceBuffer<uint16_t> kc(size_t(n_seqs) * ctx * kv_dim), vc(kc.n);
  kc.poison(), vc.poison();
  RopeCudaParams p;
  p.qkv = dqkv.p, p.n_tokens = n, p.stride = stride, p.n_heads = heads, p.n_kv_heads = kv_heads;
  p.head_dim = hd, p.pos = dpos.p, p.seq = dseq.p, p.k_cache = kc.p, p.v_cache = vc.p;
  p.seq_stride = int64_t(ctx) * kv_dim;
  rope_cuda(p, nullptr);

  // Reference: rope() on the q part and on the k part of each row; v unchanged.
  std::vector<float> q(size_t(n) * heads * hd), k(size_t(n) * kv_dim), ref(qkv);
  for (int t = 0; t < n; t++) {
    std::copy_n(&qkv[size_t(t) * stride], heads * hd, &q[size_t(t) * heads * hd]);
    std::copy_n(&qkv[size_t(t) * stride + heads * hd], kv_dim, &k[size_t(t) * kv_dim]);
  }
  rope(q.data(), pos.data(), n, heads, hd, 10000.0f);
  rope(k.data(), pos.data(), n, kv_heads, hd, 10000.0f);
  for (int t = 0; t < n; t++) {
    std::copy_n(&q[size_t(t) * heads * hd], heads * hd, &ref[size_t(t) * stride]);
    std::copy_n(&k[size_t(t) * kv_dim], kv_dim, &ref[size_t(t) * stride + heads * hd]);
  }
  expect_close(dqkv.download(), ref, kRopeAbs, 0, "rotated qkv");

  std::vector<uint16_t> kh = kc.download(), vh = vc.download();
  std::vector<float> got_k, got_v, want_k, want_v;
  for (int t = 0; t < n; t++) {
    const size_t at = (size_t(seq[t]) * ctx + pos[t]) * kv_dim;
    for (int e = 0; e < kv_dim; e++) {
      got_k.push_back(f16_to_f32(kh[at + e]));
      got_v.push_back(f16_to_f32(vh[at + e]));
      want_k.push_back(k[size_t(t) * kv_dim + e]);
      want_v.push_back(qkv[size_t(t) * stride + heads * hd + kv_dim + e]);
    }
  }
  expect_close(got_k, want_k, kF16OutAbs, kF16OutRel, "k cache");
  expect_close(got_v, want_v, kF16OutAbs, kF16OutRel, "v cache");
}

// ---- attention ---------------------------------------------------------------------------

// One attention problem: KV caches of n_seqs x ctx (fp16, NaN past each sequence's last
// position so that reading beyond it shows), a batch of (seq, pos) tokens with q taken from
// a wider fused row (q_stride > n_heads * head_dim), and the CPU reference on the same fp16
// values.
struct AttnCase {
  int n_heads, n_kv_heads, head_dim, n_seqs, ctx;
  std::vector<int> seq, pos;
  std::string name;
};

struct AttnData {
  int kv_dim, q_stride, n;
  std::vector<uint16_t> kc, vc;
  std::vector<float> q, ref;
};

AttnData make_attention(const AttnCase& c, std::mt19937& rng) {
  AttnData d;
  d.kv_dim = c.n_kv_heads * c.head_dim;
  d.q_stride = c.n_heads * c.head_dim + 2 * d.kv_dim;
  d.n = int(c.seq.size());
  std::vector<int> last(c.n_seqs, -1);
  for (int t = 0; t < d.n; t++) last[c.seq[t]] = std::max(last[c.seq[t]], c.pos[t]);
  const size_t cache_elems = size_t(c.n_seqs) * c.ctx * d.kv_dim;
  d.kc = f32_to_f16_vec(randn(cache_elems, rng));
  d.vc = f32_to_f16_vec(randn(cache_elems, rng));
  for (int s = 0; s < c.n_seqs; s++)
    for (size_t i = (size_t(s) * c.ctx + last[s] + 1) * d.kv_dim;
         i < size_t(s + 1) * c.ctx * d.kv_dim; i++)
      d.kc[i] = d.vc[i] = 0x7e00;  // NaN: never read
  d.q = randn(size_t(d.n) * d.q_stride, rng, 0.5f);

  std::vector<float> kf = f16_to_f32_vec(d.kc), vf = f16_to_f32_vec(d.vc);
  std::vector<float> qc(size_t(d.n) * c.n_heads * c.head_dim);
  std::vector<const float*> kp(d.n), vp(d.n);
  for (int t = 0; t < d.n; t++) {
    std::copy_n(&d.q[size_t(t) * d.q_stride], c.n_heads * c.head_dim,
                &qc[size_t(t) * c.n_heads * c.head_dim]);
    kp[t] = kf.data() + size_t(c.seq[t]) * c.ctx * d.kv_dim;
    vp[t] = vf.data() + size_t(c.seq[t]) * c.ctx * d.kv_dim;
  }
  d.ref.assign(qc.size(), 0.0f);
  AttentionArgs a;
  a.n_tokens = d.n, a.n_heads = c.n_heads, a.n_kv_heads = c.n_kv_heads, a.head_dim = c.head_dim;
  a.q = qc.data(), a.k_cache = kp.data(), a.v_cache = vp.data(), a.pos = c.pos.data();
  a.out = d.ref.data();
  ThreadPool pool(4);
  attention(a, pool);
  return d;
}

enum class AttnPath { PREFILL, DECODE };

// One attention problem on the device (caches, q rows, positions, a poisoned output) and the
// params that point at it.
struct AttnOnDevice {
  DeviceBuffer<uint16_t> kc, vc, out;
  DeviceBuffer<float> q;
  DeviceBuffer<int> pos, seq;
  AttentionCudaParams p;
  AttnOnDevice(const AttnCase& c, const AttnData& d)
      : kc(d.kc), vc(d.vc), out(size_t(d.n) * c.n_heads * c.head_dim), q(d.q), pos(c.pos),
        seq(c.seq) {
    p.n_tokens = d.n, p.n_heads = c.n_heads, p.n_kv_heads = c.n_kv_heads;
    p.head_dim = c.head_dim, p.q = q.p, p.q_stride = d.q_stride, p.k_cache = kc.p;
    p.v_cache = vc.p, p.seq_stride = int64_t(c.ctx) * d.kv_dim, p.pos = pos.p, p.seq = seq.p;
    p.out = out.p;
  }
};

// The decode kernel's split partials and its counters, zeroed as attention_decode_cuda needs.
struct DecodeScratch {
  DeviceBuffer<float> partials;
  DeviceBuffer<int> counters;
  DecodeScratch(const AttnCase& c, int n, int n_splits)
      : partials(std::max<size_t>(
            1, attention_decode_scratch_floats(n, c.n_heads, c.head_dim, n_splits))),
        counters(size_t(n) * c.n_kv_heads) {
    CUDA_CHECK(cudaMemset(counters.p, 0, counters.n * sizeof(int)));
  }
};

void check_attention(const AttnCase& c, const AttnData& d, AttnPath path, int n_splits) {
  SCOPED_TRACE(c.name + (path == AttnPath::PREFILL ? " prefill"
                                                   : " decode splits " + std::to_string(n_splits)));
  AttnOnDevice a(c, d);
  if (path == AttnPath::PREFILL) {
    std::vector<AttentionTile> tiles(d.n);
    int n_tiles = attention_make_tiles(c.seq.data(), c.pos.data(), d.n, tiles.data());
    tiles.resize(n_tiles);
    std::vector<int> raw(size_t(n_tiles) * 4);
    std::memcpy(raw.data(), tiles.data(), raw.size() * sizeof(int));
    DeviceBuffer<int> dt(raw);
    attention_prefill_cuda(a.p, reinterpret_cast<const AttentionTile*>(dt.p), n_tiles, nullptr);
    expect_close(f16_to_f32_vec(a.out.download()), d.ref, kAttnAbs, kF16OutRel, "attention");
  } else {
    DecodeScratch ds(c, d.n, n_splits);
    attention_decode_cuda(a.p, n_splits, ds.partials.p, ds.counters.p, nullptr);
    expect_close(f16_to_f32_vec(a.out.download()), d.ref, kAttnAbs, kF16OutRel, "attention");
    // Every call leaves the counters at zero, so a second call gives the same output.
    EXPECT_EQ(ds.counters.download(), std::vector<int>(size_t(d.n) * c.n_kv_heads, 0)) << c.name;
    const std::vector<uint16_t> first = a.out.download();
    a.out.poison();
    attention_decode_cuda(a.p, n_splits, ds.partials.p, ds.counters.p, nullptr);
    EXPECT_EQ(a.out.download(), first) << c.name << ": second call differs";
  }
}

void check_attention(const AttnCase& c, AttnPath path, int n_splits, std::mt19937& rng) {
  check_attention(c, make_attention(c, rng), path, n_splits);
}

// n consecutive tokens of one sequence starting at p0.
AttnCase prefill_case(int n, int p0, int n_heads, int n_kv_heads, int head_dim) {
  AttnCase c{n_heads, n_kv_heads, head_dim, 2, p0 + n + 3, {}, {}, ""};
  for (int i = 0; i < n; i++) c.seq.push_back(1), c.pos.push_back(p0 + i);
  c.name = "n " + std::to_string(n) + " p0 " + std::to_string(p0) + " heads " +
           std::to_string(n_heads) + "/" + std::to_string(n_kv_heads) + " hd " +
           std::to_string(head_dim);
  return c;
}

TEST(AttentionCuda, PrefillOneSequence) {
  SQZ_REQUIRE_GPU();
  std::mt19937 rng(5);
  for (int group : {1, 2, 4})
    for (int n : {1, 2, 31, 32, 33, 100, 300})
      for (int p0 : {0, 5})
        check_attention(prefill_case(n, p0, 4, 4 / group, 64), AttnPath::PREFILL, 1, rng);
}

TEST(AttentionCuda, PrefillHeadDims) {
  SQZ_REQUIRE_GPU();
  std::mt19937 rng(6);
  // Scalar kernel (head_dim % 16 != 0) and the float4 kernel (16, 48: a partial chunk count).
  for (int hd : {2, 8, 16, 36, 48, 128, 256})
    check_attention(prefill_case(37, 3, 4, 2, hd), AttnPath::PREFILL, 1, rng);
}

TEST(AttentionCuda, PrefillSeveralSequencesUnorderedPositions) {
  SQZ_REQUIRE_GPU();
  std::mt19937 rng(7);
  AttnCase c{8, 2, 64, 3, 80, {}, {}, "three sequences"};
  for (int i = 0; i < 40; i++) c.seq.push_back(0), c.pos.push_back(i);   // a prompt
  c.seq.push_back(2), c.pos.push_back(63);                               // a decode token
  for (int i = 3; i <= 20; i++) c.seq.push_back(1), c.pos.push_back(i);  // a continued prompt
  c.seq.push_back(0), c.pos.push_back(45);                               // seq 0 again
  c.seq.push_back(0), c.pos.push_back(41);                               // positions not sorted
  const AttnData d = make_attention(c, rng);
  check_attention(c, d, AttnPath::PREFILL, 1);
  check_attention(c, d, AttnPath::DECODE, 3);  // the decode kernel handles any batch too
}

TEST(AttentionCuda, DecodeLongCaches) {
  SQZ_REQUIRE_GPU();
  std::mt19937 rng(8);
  // hd 64 / 128: the warp-tile kernel, 1-4 / 1-2 query heads per block (groups 3 and 8: a
  // partial block of heads, several blocks per kv head).
  for (int group : {1, 2, 3, 4, 8}) {
    for (int hd : {64, 128}) {
      const int kv_heads = 2;
      AttnCase c{kv_heads * group, kv_heads, hd, 4, 4000, {0, 1, 2, 3}, {0, 16, 999, 3999}, ""};
      c.name = "group " + std::to_string(group) + " hd " + std::to_string(hd);
      const int n_auto = attention_decode_splits(4, kv_heads, c.ctx, kH100Sms);
      const AttnData d = make_attention(c, rng);
      for (int splits : {1, 7, 64, n_auto}) check_attention(c, d, AttnPath::DECODE, splits);
      check_attention(c, d, AttnPath::PREFILL, 1);  // single-token tiles on the prefill kernel
    }
  }
}

TEST(AttentionCuda, DecodeSmallHeads) {
  SQZ_REQUIRE_GPU();
  std::mt19937 rng(9);
  AttnCase c{8, 4, 8, 2, 70, {1, 0}, {69, 0}, "stories-like hd 8"};  // stories260K's shape
  const AttnData d = make_attention(c, rng);
  for (int splits : {1, 2, 3, 64}) check_attention(c, d, AttnPath::DECODE, splits);
  // head_dim % 8 != 0: scalar K/V loads instead of the register double-buffering.
  AttnCase odd{4, 2, 36, 2, 300, {0, 1}, {299, 40}, "hd 36"};
  const AttnData d_odd = make_attention(odd, rng);
  for (int splits : {1, 5}) check_attention(odd, d_odd, AttnPath::DECODE, splits);
}

// Decode with the RoPE + KV append fused (rope_theta) against rope_cuda followed by the
// plain decode: the same cache bits and the same output bits, for every split count, and the
// tokens' other cache rows untouched. The cache is random up to each token's pos (pos itself
// too: the append must overwrite it) and NaN after it.
void check_fused_append(const AttnCase& c, int n_splits, float theta, std::mt19937& rng) {
  SCOPED_TRACE(c.name + " fused append, splits " + std::to_string(n_splits));
  const AttnData d = make_attention(c, rng);
  DecodeScratch ds(c, d.n, n_splits);
  auto run = [&](bool fused, std::vector<uint16_t>& kc_out, std::vector<uint16_t>& vc_out) {
    AttnOnDevice a(c, d);
    if (fused) {
      a.p.rope_theta = theta;
    } else {
      RopeCudaParams rp;
      rp.qkv = a.q.p, rp.n_tokens = d.n, rp.stride = d.q_stride, rp.n_heads = c.n_heads;
      rp.n_kv_heads = c.n_kv_heads, rp.head_dim = c.head_dim, rp.theta = theta;
      rp.pos = a.pos.p, rp.seq = a.seq.p, rp.k_cache = a.kc.p, rp.v_cache = a.vc.p;
      rp.seq_stride = a.p.seq_stride;
      rope_cuda(rp, nullptr);
    }
    attention_decode_cuda(a.p, n_splits, ds.partials.p, ds.counters.p, nullptr);
    kc_out = a.kc.download(), vc_out = a.vc.download();
    return a.out.download();
  };
  std::vector<uint16_t> kc_ref, vc_ref, kc_got, vc_got;
  const std::vector<uint16_t> ref = run(false, kc_ref, vc_ref);
  const std::vector<uint16_t> got = run(true, kc_got, vc_got);
  EXPECT_EQ(got, ref) << "attention output";
  EXPECT_EQ(kc_got, kc_ref) << "k cache";
  EXPECT_EQ(vc_got, vc_ref) << "v cache";
  EXPECT_NE(kc_got, d.kc) << "nothing appended";
  EXPECT_EQ(ds.counters.download(), std::vector<int>(ds.counters.n, 0));
}

TEST(AttentionCuda, DecodeFusedRopeAppendMatchesRopeThenDecode) {
  SQZ_REQUIRE_GPU();
  std::mt19937 rng(11);
  // Lengths around the tile (32 keys) and the smallest splits (32 keys, 128 for hd 64 / 128).
  const std::vector<int> lens = {1, 31, 32, 33, 127, 128, 129, 300, 1000};
  for (int group : {1, 2, 3, 4}) {
    for (int hd : {8, 64, 128}) {
      const int kv_heads = 2, n = int(lens.size());
      AttnCase c{kv_heads * group, kv_heads, hd, n, 1003, {}, {}, ""};
      for (int t = 0; t < n; t++) c.seq.push_back(n - 1 - t), c.pos.push_back(lens[t] - 1);
      c.name = "group " + std::to_string(group) + " hd " + std::to_string(hd);
      const int n_auto = attention_decode_splits(n, kv_heads, c.ctx, kH100Sms);
      for (int splits : {1, 3, 64, n_auto}) check_fused_append(c, splits, 10000.0f, rng);
    }
  }
  AttnCase odd{6, 3, 36, 2, 300, {1, 0}, {299, 140}, "hd 36, theta 5e5"};  // scalar K/V loads
  check_fused_append(odd, 5, 500000.0f, rng);
}

// ---- swiglu ------------------------------------------------------------------------------

TEST(SwigluCuda, OddWidths) {
  SQZ_REQUIRE_GPU();
  std::mt19937 rng(10);
  const int n = 3;
  for (int hidden : {1, 7, 4097}) {
    std::vector<float> gu = randn(size_t(n) * 2 * hidden, rng, 3.0f);
    DeviceBuffer<float> dgu(gu);
    DeviceBuffer<uint16_t> out(size_t(n) * hidden);
    out.poison();
    swiglu_cuda(dgu.p, n, hidden, hidden, out.p, nullptr);
    std::vector<float> ref(size_t(n) * hidden);
    for (int t = 0; t < n; t++)
      swiglu(&gu[size_t(t) * 2 * hidden], &gu[size_t(t) * 2 * hidden + hidden], hidden,
             &ref[size_t(t) * hidden]);
    expect_close(f16_to_f32_vec(out.download()), ref, kF16OutAbs, kF16OutRel,
                 "swiglu hidden " + std::to_string(hidden));
  }
}

// Gate/up interleaved in blocks of 8 (the fused decode GEMV's row order): the same values
// as the plain layout, bit for bit.
TEST(SwigluCuda, InterleavedBlocks) {
  SQZ_REQUIRE_GPU();
  std::mt19937 rng(11);
  const int n = 2, hidden = 8 * 37, block = 8;
  std::vector<float> plain = randn(size_t(n) * 2 * hidden, rng, 3.0f), inter(plain.size());
  for (int t = 0; t < n; t++)
    for (int i = 0; i < hidden; i++) {
      const size_t row = size_t(t) * 2 * hidden,
                   at = row + size_t(i / block) * 2 * block + i % block;
      inter[at] = plain[row + i], inter[at + block] = plain[row + hidden + i];
    }
  DeviceBuffer<float> dp(plain), di(inter);
  DeviceBuffer<uint16_t> op(size_t(n) * hidden), oi(size_t(n) * hidden);
  op.poison(), oi.poison();
  swiglu_cuda(dp.p, n, hidden, hidden, op.p, nullptr);
  swiglu_cuda(di.p, n, hidden, block, oi.p, nullptr);
  EXPECT_EQ(op.download(), oi.download());
  EXPECT_THROW(swiglu_cuda(di.p, n, hidden, 7, oi.p, nullptr), std::invalid_argument);
}

// ---- top-k -------------------------------------------------------------------------------

// Host reference: sort ids by (logit descending, id ascending), keep k.
void check_topk(const std::vector<float>& logits, int n_rows, int vocab, int k) {
  SCOPED_TRACE("vocab " + std::to_string(vocab) + " k " + std::to_string(k));
  DeviceBuffer<float> dl(logits);
  DeviceBuffer<int> ids(size_t(n_rows) * k);
  DeviceBuffer<float> vals(size_t(n_rows) * k);
  ids.poison(), vals.poison();
  topk_cuda(dl.p, n_rows, vocab, k, ids.p, vals.p, nullptr);
  std::vector<int> got_ids = ids.download();
  std::vector<float> got_vals = vals.download();
  for (int r = 0; r < n_rows; r++) {
    const float* row = logits.data() + size_t(r) * vocab;
    std::vector<int> order(vocab);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return row[a] > row[b]; });
    for (int j = 0; j < k; j++) {
      ASSERT_EQ(got_ids[size_t(r) * k + j], order[j]) << "row " << r << " rank " << j;
      ASSERT_EQ(got_vals[size_t(r) * k + j], row[order[j]]) << "row " << r << " rank " << j;
    }
  }
}

TEST(TopKCuda, MatchesHostSortWithTies) {
  SQZ_REQUIRE_GPU();
  std::mt19937 rng(11);
  for (int vocab : {1, 7, 1000, 5001, 32000}) {  // 16-byte loads when vocab % 4 == 0
    const int n_rows = 3;
    std::vector<float> distinct = randn(size_t(n_rows) * vocab, rng, 4.0f);
    std::vector<float> tied(distinct);
    for (auto& x : tied) x = std::round(x * 2.0f) / 2.0f;  // ~30 values: ties at every rank
    for (size_t i = 0; i < tied.size(); i += 3)
      if (tied[i] == 0.0f) tied[i] = -0.0f;  // -0 and +0 are equal
    for (int k : {1, 2, 40, 64, 256}) {
      if (k > vocab) continue;
      check_topk(distinct, n_rows, vocab, k);
      check_topk(tied, n_rows, vocab, k);
    }
  }
  // All equal (and negative): the first k ids.
  std::vector<float> flat(5000, -3.5f);
  check_topk(flat, 1, 5000, 64);
  check_topk(flat, 1, 5000, 1);
}

TEST(TopKCuda, RejectsBadK) {
  SQZ_REQUIRE_GPU();
  DeviceBuffer<float> l(10);
  DeviceBuffer<int> ids(1000);
  DeviceBuffer<float> vals(1000);
  EXPECT_THROW(topk_cuda(l.p, 1, 10, 0, ids.p, vals.p, nullptr), std::invalid_argument);
  EXPECT_THROW(topk_cuda(l.p, 1, 10, 11, ids.p, vals.p, nullptr), std::invalid_argument);
  EXPECT_THROW(topk_cuda(l.p, 1, 10000, kTopKMax + 1, ids.p, vals.p, nullptr),
               std::invalid_argument);
}

}  // namespace
}  // namespace sqz
