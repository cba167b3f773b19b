// GEGLU for mlx's CPU backend: value * gelu(gate) of a projection's two halves, on every core.
//
// mlx's element-wise kernels (mlx_sd.cpu.elementwise.geglu: two compiled passes over strided halves)
// run on one thread: in SDXL's step at 1024 px they were 2.7% of the CPU time with the other core idle.
// The GELU is elementwise's rational form, its coefficients passed in from there: relu(g) - P(a) / Q(a)
// for a = |g| below `limit`, else relu(g).

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "cpu_kernel_support.h"

namespace mlx_sd {
namespace {

struct Rational {
  float p[8], q[8], limit;
};

// c[0] + c[1] x + ... + c[7] x^7 in Estrin's form, as elementwise._estrin7.
template <class T>
T estrin7(const float* c, T x) {
  const T x2 = x * x, x4 = x2 * x2;
  return ((c[0] + c[1] * x) + x2 * (c[2] + c[3] * x)) + x4 * ((c[4] + c[5] * x) + x2 * (c[6] + c[7] * x));
}

template <class T>
T geglu_of(const Rational& f, T value, T gate, T magnitude, T argument) {
  return value * ((0.5f * gate + 0.5f * magnitude) - estrin7(f.p, argument) / estrin7(f.q, argument));
}

void geglu_rows(const float* x, float* out, int64_t first, int64_t last, int64_t half, const Rational& f) {
  for (int64_t row = first; row < last; ++row) {
    const float* value = x + row * 2 * half;
    const float* gate = value + half;
    float* dst = out + row * half;
    int64_t c = 0;
    for (; c + kLanes <= half; c += kLanes) {
      const vfloat g = load(gate + c);
      const vfloat magnitude = g < 0.0f ? -g : g;
      const vfloat argument = magnitude < f.limit ? magnitude : splat(0.0f);
      store(dst + c, geglu_of(f, load(value + c), g, magnitude, argument));
    }
    for (; c < half; ++c) {
      const float magnitude = std::fabs(gate[c]);
      dst[c] = geglu_of(f, value[c], gate[c], magnitude, magnitude < f.limit ? magnitude : 0.0f);
    }
  }
}

class Geglu : public CpuOnlyPrimitive {
 public:
  Geglu(mx::Stream stream, Rational f, int threads) : CpuOnlyPrimitive(stream), f_(f), threads_(threads) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const auto& x = inputs[0];
    auto& out = outputs[0];
    auto& encoder = encoder_for(inputs, out);
    encoder.dispatch([x = x.data<float>(), out = out.data<float>(), rows = static_cast<int64_t>(x.shape(0)),
                      half = static_cast<int64_t>(x.shape(1) / 2), f = f_, threads = threads_]() {
      run_on_parts(rows, threads, 1, [&](int64_t begin, int64_t end) { geglu_rows(x, out, begin, end, half, f); });
    });
  }

  const char* name() const override {
    return "MlxSdGeglu";
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const Geglu&>(other);
    return std::equal(f_.p, f_.p + 8, o.f_.p) && std::equal(f_.q, f_.q + 8, o.f_.q) && f_.limit == o.f_.limit &&
           threads_ == o.threads_;
  }

 private:
  Rational f_;
  int threads_;
};

}  // namespace

mx::array geglu(const mx::array& x, const std::vector<float>& p, const std::vector<float>& q, float limit, int threads) {
  if (x.ndim() != 2 || x.shape(1) % 2 != 0) throw std::invalid_argument("geglu takes x (rows, 2 x channels)");
  if (p.size() != 8 || q.size() != 8) throw std::invalid_argument("geglu takes degree-7 numerator and denominator");
  Rational f{};
  std::copy(p.begin(), p.end(), f.p);
  std::copy(q.begin(), q.end(), f.q);
  f.limit = limit;
  const auto stream = mx::default_stream(mx::Device::cpu);
  return mx::array({x.shape(0), x.shape(1) / 2}, mx::float32, std::make_shared<Geglu>(stream, f, threads),
                   {contiguous_float32(x, stream)});
}

}  // namespace mlx_sd
