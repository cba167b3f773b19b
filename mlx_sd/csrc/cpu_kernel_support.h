// Shared by mlx-sd's CPU kernels: vector types of the target's width (GCC vector extensions give
// AVX-512, AVX2 or NEON code from one source), a polynomial exp2, a thread split and the checks
// every primitive makes of its inputs.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <utility>
#include <thread>
#include <vector>

#include <stdexcept>
#include <string>

#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace mlx_sd {

namespace mx = mlx::core;

#if defined(__AVX512F__)
constexpr int kLanes = 16;  // floats per vector register
#else
constexpr int kLanes = 8;
#endif

typedef float vfloat __attribute__((vector_size(kLanes * 4)));

// The register tile of the products (gemm.cpp, lora_merge.cpp): kTileRows rows x kTileVectors vectors
// of columns, in 24 of AVX-512's 32 registers or 12 of AVX2's 16.
#if defined(__AVX512F__)
constexpr int kTileRows = 12;
#else
constexpr int kTileRows = 6;
#endif
constexpr int kTileVectors = 2;
constexpr int kTileCols = kTileVectors * kLanes;

// The caches of the CPU the kernels are built on (mlx_sd.cpu.kernels passes the sizes sysfs reports;
// the defaults are a current x86 core's).
#ifndef MLX_SD_L2_BYTES
#define MLX_SD_L2_BYTES (512 * 1024)
#endif
#ifndef MLX_SD_L3_BYTES
#define MLX_SD_L3_BYTES (16 * 1024 * 1024)
#endif
typedef int32_t vint __attribute__((vector_size(kLanes * 4)));

constexpr float kLog2E = 1.4426950408889634f;

inline vfloat load(const float* p) {
  vfloat r;
  std::memcpy(&r, p, sizeof r);
  return r;
}

inline void store(float* p, vfloat x) {
  std::memcpy(p, &x, sizeof x);
}

inline vfloat splat(float x) {
  return x - vfloat{};
}

// kLanes float16 values as float32. GCC's vector conversion of _Float16 goes element by element
// (GCC 12): F16C converts a vector in one instruction.
inline vfloat load_half(const void* p) {
  vfloat r;
#if defined(__AVX512F__)
  const __m512 f = _mm512_cvtph_ps(_mm256_loadu_si256(static_cast<const __m256i*>(p)));
  std::memcpy(&r, &f, sizeof r);
#elif defined(__F16C__)
  const __m256 f = _mm256_cvtph_ps(_mm_loadu_si128(static_cast<const __m128i*>(p)));
  std::memcpy(&r, &f, sizeof r);
#else  // e.g. NEON, where compilers vectorise the conversion
  typedef _Float16 vhalf __attribute__((vector_size(kLanes * 2)));
  vhalf h;
  std::memcpy(&h, p, sizeof h);
  r = __builtin_convertvector(h, vfloat);
#endif
  return r;
}

// One float32 as float16 bits, as mlx's astype makes it: to nearest even, and every NaN 0x7D00
// with its sign (the hardware keeps the payload instead).
inline uint16_t half_bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  if (x != x) return static_cast<uint16_t>(((bits >> 16) & 0x8000) | 0x7D00);
  const _Float16 h = static_cast<_Float16>(x);
  uint16_t out;
  std::memcpy(&out, &h, sizeof out);
  return out;
}

// kLanes float32 values stored as float16, each as half_bits makes it.
inline void store_half(void* p, vfloat x) {
#if defined(__AVX512F__)
  __m512 f;
  std::memcpy(&f, &x, sizeof f);
  const __m256i h = _mm512_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const bool any_nan = _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q) != 0;
#elif defined(__F16C__)
  __m256 f;
  std::memcpy(&f, &x, sizeof f);
  const __m128i h = _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const bool any_nan = _mm256_movemask_ps(_mm256_cmp_ps(f, f, _CMP_UNORD_Q)) != 0;
#else
  uint16_t h[kLanes];
  for (int e = 0; e < kLanes; ++e) h[e] = half_bits(x[e]);
  const bool any_nan = false;
#endif
  std::memcpy(p, &h, kLanes * 2);
  if (__builtin_expect(any_nan, 0)) {
    uint16_t* out = static_cast<uint16_t*>(p);
    for (int e = 0; e < kLanes; ++e) out[e] = half_bits(x[e]);
  }
}

// 2**t, as mlx_sd.layers._exp2_in_range: its degree-5 polynomial (_EXP2) for the fraction times
// 2**whole built in the exponent bits, with t clamped to [-126, 127] (2**-126 stands for 0).
inline vfloat exp2_clamped(vfloat t) {
  t = t < -126.0f ? splat(-126.0f) : t;
  t = t > 127.0f ? splat(127.0f) : t;
  const vfloat whole = (t + 12582912.0f) - 12582912.0f;  // round to nearest
  const vfloat f = t - whole;
  const vint bits = (__builtin_convertvector(whole, vint) + 127) << 23;
  vfloat scale;
  std::memcpy(&scale, &bits, sizeof scale);
  vfloat p = splat(0.001327721345430341f);
  p = p * f + 0.009675547701276307f;
  p = p * f + 0.055507109837855645f;
  p = p * f + 0.24022119565453876f;
  p = p * f + 0.693146968461803f;
  p = p * f + 1.0000000717034576f;
  return p * scale;
}

// work(t) for t in [0, threads), on this thread and threads - 1 helpers.
template <class Work>
void run_on_threads(int threads, const Work& work) {
  std::vector<std::thread> helpers;
  for (int t = 1; t < threads; ++t) helpers.emplace_back(work, t);
  work(0);
  for (auto& helper : helpers) helper.join();
}

// work(begin, end) over [0, total) in one part per thread, cut at multiples of `unit` (a register
// tile's rows: no tile straddles two threads); no more parts than units.
template <class Work>
void run_on_parts(int64_t total, int threads, int64_t unit, const Work& work) {
  const int64_t units = (total + unit - 1) / unit;
  const int parts = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, units)));
  const int64_t size = (units + parts - 1) / parts * unit;
  run_on_threads(parts, [&](int t) { work(std::min(total, t * size), std::min(total, (t + 1) * size)); });
}

// The base of mlx-sd's primitives: they have CPU code only (the GPU keeps mlx's own kernels).
class CpuOnlyPrimitive : public mx::Primitive {
 public:
  using mx::Primitive::Primitive;

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error(std::string(name()) + " runs on the CPU only");
  }

 protected:
  // Allocates `out` and registers it and the inputs with this stream's encoder, which the caller
  // then dispatches its work to.
  mx::cpu::CommandEncoder& encoder_for(const std::vector<mx::array>& inputs, mx::array& out) {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& input : inputs) encoder.set_input_array(input);
    encoder.set_output_array(out);
    return encoder;
  }
};

// A contiguous float32 copy of x on `stream` (no copy when it already is one).
inline mx::array contiguous_float32(const mx::array& x, mx::Stream stream) {
  return mx::contiguous(mx::astype(x, mx::float32, stream), false, stream);
}

mx::array fused_attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale, int threads);
bool bf16_products();
mx::array gemm(const mx::array& a, const mx::array& b, const std::optional<mx::array>& bias, int threads, bool bf16);
mx::array conv_taps(const mx::array& x, const mx::array& b, const std::optional<mx::array>& bias,
                    const std::vector<std::pair<int, int>>& taps, int threads, bool bf16);
mx::array group_norm(const mx::array& x, const mx::array& weight, const mx::array& bias, int groups, float eps, bool silu);
mx::array geglu(const mx::array& x, const std::vector<float>& p, const std::vector<float>& q, float limit, int threads);
mx::array layer_norm(const mx::array& x, const mx::array& weight, const mx::array& bias, float eps, int threads);
mx::array lora_merge(const mx::array& base, const std::optional<mx::array>& delta, const std::optional<mx::array>& up,
                     const std::optional<mx::array>& down, int threads);

// A file mapped into memory, unmapped with its last user (mapped_weights.cpp).
struct Mapping {
  void* base = nullptr;
  size_t size = 0;
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping();
};
std::shared_ptr<Mapping> map_file(const std::string& path);
mx::array mapped_array(const std::shared_ptr<Mapping>& mapping, size_t offset, const std::vector<int>& shape, mx::Dtype dtype);

}  // namespace mlx_sd
