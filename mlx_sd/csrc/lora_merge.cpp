// A LoRA merged into a half-precision (or float32) weight in one pass (mlx_sd.cpu.lora_merge).
//
// out = (base in float32 + (delta + up @ down)) in base's dtype, for base and delta (rows, cols),
// up (rows, rank) and down (rank, cols), any of delta or up/down absent. As mlx ops the same merge
// is five passes over a float32 copy of every changed weight (widen, product, sum, add, narrow),
// mostly single-threaded; SD1.5 with a LoRA on every layer changes 890 M weights. Here each tile
// of the product stays in registers, is added to the widened base and narrowed as it is stored.
//
// Rounding: the product is summed over the rank first, then added to the base, in float32, as the
// plain formula does (mlx_sd.lora.merge); the narrowing is mlx's astype, bit for bit (store_half).

#include <algorithm>
#include <stdexcept>

#include "cpu_kernel_support.h"

namespace mlx_sd {
namespace {

struct Merge {
  const void* base;
  bool half;  // base and out are float16, else float32
  const float* delta;  // or null
  const float* up;  // (rows, rank), or null when rank is 0
  const float* down;  // (rank, cols)
  void* out;
  int64_t rows, cols;
  int rank;
};

vfloat load_base(const Merge& m, int64_t index) {
  return m.half ? load_half(static_cast<const uint16_t*>(m.base) + index) : load(static_cast<const float*>(m.base) + index);
}

void store_out(const Merge& m, int64_t index, vfloat value) {
  if (m.half) store_half(static_cast<uint16_t*>(m.out) + index, value);
  else store(static_cast<float*>(m.out) + index, value);
}

float base_at(const Merge& m, int64_t index) {
  if (!m.half) return static_cast<const float*>(m.base)[index];
  _Float16 h;
  std::memcpy(&h, static_cast<const uint16_t*>(m.base) + index, sizeof h);
  return static_cast<float>(h);
}

// Rows [row, row + R) x columns [col, col + kTileCols).
template <int R>
void tile(const Merge& m, int64_t row, int64_t col) {
  vfloat acc[R][kTileVectors] = {};
  for (int k = 0; k < m.rank; ++k) {
    const float* d = m.down + k * m.cols + col;
    vfloat factor[kTileVectors];
    for (int v = 0; v < kTileVectors; ++v) factor[v] = load(d + v * kLanes);
    for (int r = 0; r < R; ++r) {
      const vfloat u = splat(m.up[(row + r) * m.rank + k]);
      for (int v = 0; v < kTileVectors; ++v) acc[r][v] += u * factor[v];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < kTileVectors; ++v) {
      const int64_t index = (row + r) * m.cols + col + v * kLanes;
      vfloat change = acc[r][v];
      if (m.delta) change = load(m.delta + index) + change;
      store_out(m, index, load_base(m, index) + change);
    }
  }
}

template <int R>
void tiles(const Merge& m, int64_t row, int64_t col_begin, int64_t col_end) {
  for (int64_t col = col_begin; col < col_end; col += kTileCols) tile<R>(m, row, col);
}

// The columns past the last whole tile, one element at a time.
void tail(const Merge& m, int64_t row_begin, int64_t row_end, int64_t col_begin) {
  for (int64_t row = row_begin; row < row_end; ++row) {
    for (int64_t col = col_begin; col < m.cols; ++col) {
      float change = 0.0f;
      for (int k = 0; k < m.rank; ++k) change += m.up[row * m.rank + k] * m.down[k * m.cols + col];
      const int64_t index = row * m.cols + col;
      if (m.delta) change = m.delta[index] + change;
      const float value = base_at(m, index) + change;
      if (m.half) static_cast<uint16_t*>(m.out)[index] = half_bits(value);
      else static_cast<float*>(m.out)[index] = value;
    }
  }
}

// Rows [row_begin, row_end): down is read a column block at a time, so that the block (rank x
// block floats) stays in L2 while every row tile passes over it.
void merge_rows(const Merge& m, int64_t row_begin, int64_t row_end) {
  const int64_t whole = m.cols / kTileCols * kTileCols;
  const int64_t block = std::max<int64_t>(kTileCols, MLX_SD_L2_BYTES / 2 / (4 * std::max(1, m.rank)) / kTileCols * kTileCols);
  for (int64_t col = 0; col < whole; col += block) {
    const int64_t col_end = std::min(whole, col + block);
    int64_t row = row_begin;
    for (; row + kTileRows <= row_end; row += kTileRows) tiles<kTileRows>(m, row, col, col_end);
    for (; row < row_end; ++row) tiles<1>(m, row, col, col_end);
  }
  tail(m, row_begin, row_end, whole);
}

void merge(const Merge& m, int threads) {
  run_on_parts(m.rows, threads, kTileRows, [&](int64_t begin, int64_t end) { merge_rows(m, begin, end); });
}

class LoraMerge : public CpuOnlyPrimitive {
 public:
  LoraMerge(mx::Stream stream, bool has_delta, int rank, int threads)
      : CpuOnlyPrimitive(stream), has_delta_(has_delta), rank_(rank), threads_(threads) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const auto& base = inputs[0];
    auto& out = outputs[0];
    auto& encoder = encoder_for(inputs, out);
    size_t next = 1;
    const float* delta = has_delta_ ? inputs[next++].data<float>() : nullptr;
    const float* up = rank_ > 0 ? inputs[next++].data<float>() : nullptr;
    const float* down = rank_ > 0 ? inputs[next++].data<float>() : nullptr;
    const Merge m{base.data<void>(), base.dtype() == mx::float16, delta, up, down, out.data<void>(),
                  base.shape(0), base.shape(1), rank_};
    encoder.dispatch([m, threads = threads_]() { merge(m, threads); });
  }

  const char* name() const override {
    return "MlxSdLoraMerge";
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const LoraMerge&>(other);
    return has_delta_ == o.has_delta_ && rank_ == o.rank_ && threads_ == o.threads_;
  }

 private:
  bool has_delta_;
  int rank_;
  int threads_;
};

}  // namespace

mx::array lora_merge(const mx::array& base, const std::optional<mx::array>& delta, const std::optional<mx::array>& up,
                     const std::optional<mx::array>& down, int threads) {
  if (base.ndim() != 2 || (base.dtype() != mx::float16 && base.dtype() != mx::float32))
    throw std::invalid_argument("lora_merge takes a float16 or float32 base (rows, cols)");
  if (delta && delta->shape() != base.shape()) throw std::invalid_argument("lora_merge: delta is not of base's shape");
  if (up.has_value() != down.has_value()) throw std::invalid_argument("lora_merge takes both up and down or neither");
  if (up && (up->ndim() != 2 || down->ndim() != 2 || up->shape(0) != base.shape(0) || down->shape(1) != base.shape(1) ||
             up->shape(1) != down->shape(0)))
    throw std::invalid_argument("lora_merge: up (rows, rank) and down (rank, cols) do not fit base");
  const auto stream = mx::default_stream(mx::Device::cpu);
  std::vector<mx::array> inputs = {mx::contiguous(base, false, stream)};
  if (delta) inputs.push_back(contiguous_float32(*delta, stream));
  const int rank = up ? static_cast<int>(up->shape(1)) : 0;
  if (rank > 0) {
    inputs.push_back(contiguous_float32(*up, stream));
    inputs.push_back(contiguous_float32(*down, stream));
  }
  return mx::array(base.shape(), base.dtype(), std::make_shared<LoraMerge>(stream, delta.has_value(), rank, threads),
                   std::move(inputs));
}

}  // namespace mlx_sd
