// Each sampling stage alone, the chain's order, and reproducibility by seed.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/sampler.h"

namespace sqz {
namespace {

std::vector<Candidate> make(const std::vector<float>& logits) {
  std::vector<Candidate> c;
  for (size_t i = 0; i < logits.size(); i++) c.push_back({int(i), logits[i], 0});
  return c;
}

std::vector<int> ids(const std::vector<Candidate>& c) {
  std::vector<int> v;
  for (auto& x : c) v.push_back(x.id);
  return v;
}

TEST(Sampler, TopK) {
  auto c = make({1, 5, 3, 4, 2});
  sampling::top_k(c, 2);
  EXPECT_EQ(ids(c), (std::vector<int>{1, 3}));
  c = make({1, 5, 3});
  sampling::top_k(c, 0);  // off: all kept, sorted
  EXPECT_EQ(ids(c), (std::vector<int>{1, 2, 0}));
}

TEST(Sampler, TopP) {
  // probabilities 0.5, 0.25, 0.125, 0.125
  auto c = make({std::log(4.f), std::log(2.f), 0, 0});
  sampling::top_p(c, 0.7f);
  EXPECT_EQ(ids(c), (std::vector<int>{0, 1}));
  c = make({std::log(4.f), std::log(2.f), 0, 0});
  sampling::top_p(c, 0.5f);  // the first token alone reaches 0.5
  EXPECT_EQ(ids(c), (std::vector<int>{0}));
  c = make({1, 2, 3});
  sampling::top_p(c, 1.0f);  // off
  EXPECT_EQ(c.size(), 3u);
}

TEST(Sampler, MinP) {
  // p relative to max: 1, 0.5, 0.04
  auto c = make({0, std::log(0.5f), std::log(0.04f)});
  sampling::min_p(c, 0.05f);
  EXPECT_EQ(ids(c), (std::vector<int>{0, 1}));
  c = make({0, std::log(0.5f), std::log(0.04f)});
  sampling::min_p(c, 0.0f);
  EXPECT_EQ(c.size(), 3u);
}

TEST(Sampler, Temperature) {
  auto c = make({2, -4});
  sampling::temperature(c, 2.0f);
  EXPECT_FLOAT_EQ(c[0].logit, 1);
  EXPECT_FLOAT_EQ(c[1].logit, -2);
}

TEST(Sampler, Penalties) {
  auto c = make({2, -2, 1, 3});
  // token 0 twice, token 1 once
  sampling::penalties(c, {0, 1, 0}, 2.0f, 0.5f, 0.25f);
  EXPECT_FLOAT_EQ(c[0].logit, 2 / 2.0f - 2 * 0.25f - 0.5f);
  EXPECT_FLOAT_EQ(c[1].logit, -2 * 2.0f - 1 * 0.25f - 0.5f);
  EXPECT_FLOAT_EQ(c[2].logit, 1);
  EXPECT_FLOAT_EQ(c[3].logit, 3);
}

TEST(Sampler, GreedyIsArgmaxAfterPenalties) {
  SamplerOptions o;
  o.temp = 0;
  o.repeat_penalty = 4.0f;
  Sampler s(o, 3);
  std::vector<float> logits = {1.0f, 3.0f, 2.0f};
  EXPECT_EQ(s.sample(logits.data(), {}), 1);
  EXPECT_EQ(s.sample(logits.data(), {1}), 2);  // 3/4 < 2
}

TEST(Sampler, SameSeedSameTokens) {
  SamplerOptions o;
  o.temp = 1.0f;
  o.top_k = 0, o.top_p = 1.0f, o.min_p = 0;
  std::vector<float> logits(100);
  for (int i = 0; i < 100; i++) logits[i] = std::sin(i * 0.7f) * 2;
  auto draw = [&](uint64_t seed) {
    o.seed = seed;
    Sampler s(o, 100);
    std::vector<int> out;
    for (int i = 0; i < 50; i++) out.push_back(s.sample(logits.data(), out));
    return out;
  };
  EXPECT_EQ(draw(42), draw(42));
  EXPECT_NE(draw(42), draw(43));
}

TEST(Sampler, DrawsFollowTheDistribution) {
  SamplerOptions o;
  o.temp = 1.0f, o.top_k = 0, o.top_p = 1.0f, o.min_p = 0, o.seed = 7;
  Sampler s(o, 2);
  std::vector<float> logits = {0.0f, std::log(3.0f)};  // p = 0.25, 0.75
  int ones = 0;
  for (int i = 0; i < 4000; i++) ones += s.sample(logits.data(), {});
  EXPECT_NEAR(ones / 4000.0, 0.75, 0.03);
}

TEST(Sampler, TopKThenTemperatureKeepsOnlyK) {
  SamplerOptions o;
  o.temp = 5.0f, o.top_k = 1, o.top_p = 1.0f, o.min_p = 0, o.seed = 1;
  Sampler s(o, 4);
  std::vector<float> logits = {0.1f, 0.2f, 0.3f, 0.0f};
  for (int i = 0; i < 100; i++) EXPECT_EQ(s.sample(logits.data(), {}), 2);
}

}  // namespace
}  // namespace sqz
