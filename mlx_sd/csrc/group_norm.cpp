// GroupNorm (and the SiLU every resnet applies next) for mlx's CPU backend (mlx_sd.cpu_kernels).
//
// mlx's fused form (mlx_sd.layers.GroupNorm._fused) takes five passes over x, its reductions
// scalar: the VAE's GroupNorm+SiLU at 512x512 (128 MB) took 85-100 ms. Here two vectorised passes
// (channel sums and sums of squares in float64; then normalise, affine and SiLU) take 17-23 ms,
// at this machine's memory bandwidth: a second thread makes it slower, not faster.
//
// Layout: x (B, N, C) float32 row-contiguous, groups of C / G consecutive channels.

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "cpu_kernel_support.h"

namespace mlx_sd {
namespace {

struct ChannelMoments {
  std::vector<double> sum, squares;  // per channel, over the rows
};

// One pass over x, accumulating in float64: the variance taken from
// the mean square then stays exact to float32 unless a group's mean is about 1e4 times its
// standard deviation (float64's 1e-16 times their squared ratio).
ChannelMoments channel_moments(const float* x, size_t rows, int channels) {
  ChannelMoments moments{std::vector<double>(channels, 0.0), std::vector<double>(channels, 0.0)};
  double* sum = moments.sum.data();
  double* squares = moments.squares.data();
  for (size_t n = 0; n < rows; ++n) {
    const float* row = x + n * channels;
    for (int c = 0; c < channels; ++c) {
      const double v = row[c];
      sum[c] += v;
      squares[c] += v * v;
    }
  }
  return moments;
}

// Per channel, its group's total of `values` over `count` entries of each channel.
std::vector<double> group_means(const std::vector<double>& values, int groups, double count) {
  const int channels = static_cast<int>(values.size()), width = channels / groups;
  std::vector<double> out(channels);
  for (int g = 0; g < groups; ++g) {
    double total = 0.0;
    for (int c = g * width; c < (g + 1) * width; ++c) total += values[c];
    std::fill(out.begin() + g * width, out.begin() + (g + 1) * width, total / (count * width));
  }
  return out;
}

void normalize(const float* x, const float* weight, const float* bias, float* out, size_t rows, int channels, int groups,
               float eps, bool silu) {
  const ChannelMoments moments = channel_moments(x, rows, channels);
  const std::vector<double> mean64 = group_means(moments.sum, groups, static_cast<double>(rows));
  const std::vector<double> square64 = group_means(moments.squares, groups, static_cast<double>(rows));
  std::vector<float> mean(channels), scale(channels);
  for (int c = 0; c < channels; ++c) {
    const double var = std::max(0.0, square64[c] - mean64[c] * mean64[c]);
    mean[c] = static_cast<float>(mean64[c]);
    scale[c] = static_cast<float>(weight[c] / std::sqrt(var + eps));
  }

  for (size_t n = 0; n < rows; ++n) {
    const float* row = x + n * channels;
    float* dst = out + n * channels;
    int c = 0;
    for (; c + kLanes <= channels; c += kLanes) {
      vfloat y = (load(row + c) - load(mean.data() + c)) * load(scale.data() + c) + load(bias + c);
      if (silu) y = y / (1.0f + exp2_clamped(y * -kLog2E));
      store(dst + c, y);
    }
    for (; c < channels; ++c) {
      const float y = (row[c] - mean[c]) * scale[c] + bias[c];
      dst[c] = silu ? y / (1.0f + std::exp(-y)) : y;
    }
  }
}

class GroupNormKernel : public CpuOnlyPrimitive {
 public:
  GroupNormKernel(mx::Stream stream, int groups, float eps, bool silu)
      : CpuOnlyPrimitive(stream), groups_(groups), eps_(eps), silu_(silu) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const auto& x = inputs[0];
    auto& out = outputs[0];
    auto& encoder = encoder_for(inputs, out);
    encoder.dispatch([x = x.data<float>(), weight = inputs[1].data<float>(), bias = inputs[2].data<float>(), out = out.data<float>(),
                      batch = static_cast<size_t>(x.shape(0)), rows = static_cast<size_t>(x.shape(1)), channels = static_cast<int>(x.shape(2)),
                      groups = groups_, eps = eps_, silu = silu_]() {
      for (size_t b = 0; b < batch; ++b)
        normalize(x + b * rows * channels, weight, bias, out + b * rows * channels, rows, channels, groups, eps, silu);
    });
  }

  const char* name() const override {
    return "MlxSdGroupNorm";
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const GroupNormKernel&>(other);
    return groups_ == o.groups_ && eps_ == o.eps_ && silu_ == o.silu_;
  }

 private:
  int groups_;
  float eps_;
  bool silu_;
};

}  // namespace

mx::array group_norm(const mx::array& x, const mx::array& weight, const mx::array& bias, int groups, float eps, bool silu) {
  if (x.ndim() != 3 || weight.ndim() != 1 || bias.ndim() != 1 || weight.shape(0) != x.shape(2) || bias.shape(0) != x.shape(2))
    throw std::invalid_argument("group_norm takes x (batch, rows, channels) and (channels,) weight and bias");
  if (groups < 1 || x.shape(2) % groups != 0)
    throw std::invalid_argument("group_norm: the channels do not split into the groups");
  const auto stream = mx::default_stream(mx::Device::cpu);
  std::vector<mx::array> inputs = {contiguous_float32(x, stream), contiguous_float32(weight, stream), contiguous_float32(bias, stream)};
  return mx::array(x.shape(), mx::float32, std::make_shared<GroupNormKernel>(stream, groups, eps, silu), std::move(inputs));
}

}  // namespace mlx_sd
