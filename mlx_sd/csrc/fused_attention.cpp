// Fused scaled dot-product attention for mlx's CPU backend (mlx_sd.cpu_kernels builds this file).
//
// mlx's CPU attention is a matmul, a softmax of several passes over the scores and another matmul:
// the element-wise passes run on one thread with scalar exp, and the scores of SD's 64x64 self-
// attention do not fit in any cache. Here each block of queries keeps its scores (keys x queries)
// in the core's L2 cache, the softmax is one vectorised pass and both products are register-tiled
// micro-kernels written with GCC vector extensions (AVX-512, AVX2 or NEON from one source).
//
// Layout: q (B, N, d), k (B, M, d), v (B, M, d), float32, row-contiguous; B = batch x heads.
// Scores are kept transposed (key-major), so the softmax over keys runs across whole vectors of
// queries and both products broadcast one operand: the keys from their natural layout, the values
// from a copy transposed once per call (channel-major). Besides that only a d x block copy of the
// queries is made.

#include <algorithm>
#include <memory>
#include <type_traits>
#include <utility>
#include <stdexcept>

#include "cpu_kernel_support.h"

namespace mlx_sd {
namespace {

#if defined(__AVX512F__)
constexpr int kQueryVectors = 3; // a block of 48 queries
constexpr int kKeyRows = 8;      // score tile: 8 keys x 48 queries in 24 accumulators
constexpr int kChannelRows = 8;  // output tile: 8 channels x 48 queries
#else
constexpr int kQueryVectors = 2;  // 16 queries: 12 accumulators fit 16 AVX2 registers
constexpr int kKeyRows = 6;
constexpr int kChannelRows = 6;
#endif
constexpr int kBlock = kQueryVectors * kLanes;  // queries per block
constexpr int kTransposeKeys = 64;

// scores[j, :] = k[j, :d] . qt[:d, :] for Rows consecutive keys (qt: d x kBlock)
template <int Rows>
inline void score_tile(const float* k, int d, const float* qt, float* scores) {
  vfloat acc[Rows][kQueryVectors] = {};
  for (int c = 0; c < d; ++c) {
    vfloat q[kQueryVectors];
    for (int n = 0; n < kQueryVectors; ++n) q[n] = load(qt + c * kBlock + n * kLanes);
    for (int r = 0; r < Rows; ++r) {
      const float key = k[r * d + c];
      for (int n = 0; n < kQueryVectors; ++n) acc[r][n] += key * q[n];
    }
  }
  for (int r = 0; r < Rows; ++r)
    for (int n = 0; n < kQueryVectors; ++n) store(scores + r * kBlock + n * kLanes, acc[r][n]);
}

// out_t[c, :] = sum_j v_t[c, j] weights[j, :] for Rows consecutive channels (v_t: channels x keys)
template <int Rows>
inline void value_tile(const float* v_t, const float* weights, int keys, float* out_t) {
  vfloat acc[Rows][kQueryVectors] = {};
  for (int j = 0; j < keys; ++j) {
    vfloat w[kQueryVectors];
    for (int n = 0; n < kQueryVectors; ++n) w[n] = load(weights + static_cast<size_t>(j) * kBlock + n * kLanes);
    for (int r = 0; r < Rows; ++r) {
      const float value = v_t[static_cast<size_t>(r) * keys + j];
      for (int n = 0; n < kQueryVectors; ++n) acc[r][n] += value * w[n];
    }
  }
  for (int r = 0; r < Rows; ++r)
    for (int n = 0; n < kQueryVectors; ++n) store(out_t + r * kBlock + n * kLanes, acc[r][n]);
}

// tile<Rows>(first) for [0, total) in tiles of `Full` rows and one tile of the remainder (a pass
// over the keys per tile: four single-row passes would cost more than one of four rows).
template <int Full, class Tile>
inline void in_tiles(int total, const Tile& tile) {
  int first = 0;
  for (; first + Full <= total; first += Full) tile(std::integral_constant<int, Full>{}, first);
  const int rest = total - first;
  if constexpr (Full > 1) {
    if (rest > 0) {
      [&]<int... R>(std::integer_sequence<int, R...>) {
        ((rest == R + 1 ? tile(std::integral_constant<int, R + 1>{}, first) : void()), ...);
      }(std::make_integer_sequence<int, Full - 1>{});
    }
  }
}

struct Scratch {
  std::vector<float> q_t, scores, out_t;
  Scratch(int keys, int d) : q_t(static_cast<size_t>(d) * kBlock), scores(static_cast<size_t>(keys) * kBlock), out_t(static_cast<size_t>(d) * kBlock) {}
};

// Queries [first, first + kBlock) of one (batch, head) pair: q (N, d), k (M, d), v_t (d, M) -> out (N, d).
// `scale` includes log2(e).
void attend_block(const float* q, const float* k, const float* v_t, float* out, int first, int queries, int keys, int d, float scale, Scratch& s) {
  const int rows = std::min(kBlock, queries - first);
  for (int c = 0; c < d; ++c)
    for (int i = 0; i < kBlock; ++i)
      s.q_t[c * kBlock + i] = i < rows ? q[static_cast<size_t>(first + i) * d + c] * scale : 0.0f;

  in_tiles<kKeyRows>(keys, [&](auto rows, int j) {
    score_tile<rows>(k + static_cast<size_t>(j) * d, d, s.q_t.data(), s.scores.data() + static_cast<size_t>(j) * kBlock);
  });

  vfloat peak[kQueryVectors], total[kQueryVectors];
  for (int n = 0; n < kQueryVectors; ++n) {
    peak[n] = load(s.scores.data() + n * kLanes);
    total[n] = vfloat{};
  }
  for (int j = 1; j < keys; ++j)
    for (int n = 0; n < kQueryVectors; ++n) {
      const vfloat x = load(s.scores.data() + static_cast<size_t>(j) * kBlock + n * kLanes);
      peak[n] = x > peak[n] ? x : peak[n];
    }
  for (int j = 0; j < keys; ++j)
    for (int n = 0; n < kQueryVectors; ++n) {
      float* p = s.scores.data() + static_cast<size_t>(j) * kBlock + n * kLanes;
      const vfloat e = exp2_clamped(load(p) - peak[n]);
      store(p, e);
      total[n] += e;
    }

  in_tiles<kChannelRows>(d, [&](auto rows, int c) {
    value_tile<rows>(v_t + static_cast<size_t>(c) * keys, s.scores.data(), keys, s.out_t.data() + c * kBlock);
  });

  float inverse[kBlock];
  for (int n = 0; n < kQueryVectors; ++n)
    for (int e = 0; e < kLanes; ++e) inverse[n * kLanes + e] = 1.0f / total[n][e];
  for (int i = 0; i < rows; ++i)
    for (int c = 0; c < d; ++c) out[static_cast<size_t>(first + i) * d + c] = s.out_t[c * kBlock + i] * inverse[i];
}

// Every block of queries of every (batch, head) pair, dealt round-robin to `threads` threads.
void attend(const float* q, const float* k, const float* v, float* out, int pairs, int queries, int keys, int d, float scale, int threads) {
  const int blocks_per_pair = (queries + kBlock - 1) / kBlock;
  const int blocks = pairs * blocks_per_pair;
  // v transposed once per pair: a block's products then read each value channel along the keys
  // (v's rows would bring a cache line per key for a few channels, pushing the scores out of L2)
  const std::unique_ptr<float[]> v_t(new float[static_cast<size_t>(pairs) * keys * d]);  // uninitialised: all written
  run_on_parts(pairs, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t pair = begin; pair < end; ++pair)
      for (int first = 0; first < keys; first += kTransposeKeys)  // these keys' rows stay in cache across channels
        for (int c = 0; c < d; ++c)
          for (int j = first; j < std::min(keys, first + kTransposeKeys); ++j) v_t[(pair * d + c) * keys + j] = v[(pair * keys + j) * d + c];
  });
  threads = std::max(1, std::min(threads, blocks));
  auto work = [&](int first_block) {
    Scratch scratch(keys, d);
    for (int b = first_block; b < blocks; b += threads) {
      const size_t pair = b / blocks_per_pair;
      attend_block(q + pair * queries * d, k + pair * keys * d, v_t.get() + pair * keys * d, out + pair * queries * d,
                   (b % blocks_per_pair) * kBlock, queries, keys, d, scale, scratch);
    }
  };
  run_on_threads(threads, work);
}

class FusedAttention : public CpuOnlyPrimitive {
 public:
  FusedAttention(mx::Stream stream, float scale, int threads) : CpuOnlyPrimitive(stream), scale_(scale), threads_(threads) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const auto& q = inputs[0];
    const auto& k = inputs[1];
    const auto& v = inputs[2];
    auto& out = outputs[0];
    auto& encoder = encoder_for(inputs, out);
    encoder.dispatch([q = q.data<float>(), k = k.data<float>(), v = v.data<float>(), out = out.data<float>(),
                      pairs = static_cast<int>(q.shape(0)), queries = static_cast<int>(q.shape(1)),
                      keys = static_cast<int>(k.shape(1)), d = static_cast<int>(q.shape(2)),
                      scale = scale_, threads = threads_]() { attend(q, k, v, out, pairs, queries, keys, d, scale, threads); });
  }

  const char* name() const override {
    return "MlxSdFusedAttention";
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const FusedAttention&>(other);
    return scale_ == o.scale_ && threads_ == o.threads_;
  }

 private:
  float scale_;
  int threads_;
};

}  // namespace

mx::array fused_attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale, int threads) {
  if (q.ndim() != 3 || k.ndim() != 3 || v.ndim() != 3)
    throw std::invalid_argument("fused_attention takes (pairs, tokens, dim) arrays");
  if (k.shape(0) != q.shape(0) || v.shape(0) != q.shape(0) || k.shape(2) != q.shape(2) || v.shape(2) != q.shape(2) || v.shape(1) != k.shape(1))
    throw std::invalid_argument("fused_attention: q, k and v shapes do not match");
  const auto stream = mx::default_stream(mx::Device::cpu);
  std::vector<mx::array> inputs = {contiguous_float32(q, stream), contiguous_float32(k, stream), contiguous_float32(v, stream)};
  return mx::array(q.shape(), mx::float32, std::make_shared<FusedAttention>(stream, scale * kLog2E, threads), std::move(inputs));
}

}  // namespace mlx_sd
