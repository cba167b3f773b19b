// float32 GEMM for mlx's CPU backend (mlx_sd.cpu_kernels builds this file).
//
// mlx's CPU matmul is the system BLAS's sgemm: OpenBLAS, whose kernels may be pinned to an older
// instruction set than the CPU has (issue 6: OPENBLAS_CORETYPE=Haswell runs SD's products at
// 170-220 GFLOPS on CPUs that reach twice that with AVX-512). This GEMM is compiled for the CPU it
// runs on: a register-tiled micro-kernel written with GCC vector extensions (12 rows x 32 columns
// in 24 AVX-512 accumulators, 6 x 16 with AVX2), cache-blocked as BLIS does (Van Zee and van de
// Geijn, 2015), except that A is not packed: a panel of 12 of its rows, read in place, stays in L1
// while packed column panels of B stream from L2.
//
// It also runs a stride-1 convolution without a patch buffer or a padded copy: for tap t = (dy, dx),
// row m = (y, x) of A_t is pixel (y + dy, x + dx) of the (height, width) image, or zeros outside it,
// and B stacks the taps' (in, out) weights. A 3x3 convolution with "same" padding is then one GEMM
// (mlx_sd.layers._shifted_matmuls); a plain matmul is the one tap (0, 0) on an image one row high.
//
// C (batch, M, N) = bias + sum over taps t of A_t (M, K) @ B[t K : (t + 1) K] (K, N); A is read
// with any batch and row strides (its channels contiguous), B with any strides.
//
// With `bf16` (CPUs with AVX512_BF16), A and B are rounded to bfloat16 (to nearest even) as they
// are packed and multiplied in pairs by vdpbf16ps, which accumulates in float32: twice the
// products per instruction, at bfloat16's 8-bit precision for the factors (as torch's bfloat16
// autocast on the CPU). Here A is packed: a 12-row panel is converted into pairs once per column block.

#include <algorithm>
#include <stdexcept>
#include <type_traits>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include "cpu_kernel_support.h"

namespace mlx_sd {
namespace {

constexpr int kRows = kTileRows;  // micro-tile (cpu_kernel_support.h)
constexpr int kColVectors = kTileVectors;
constexpr int kCols = kTileCols;
constexpr int clamp_down(long value, int low, int high, int multiple) {
  return static_cast<int>(std::max<long>(low, std::min<long>(high, value)) / multiple * multiple);
}
constexpr int kDepth = 384;  // most of a K block: an A micro-panel of 12 x 384 floats is 18 KB, in any L1 of 32 KB
// most of an N block: its packed B panels (kDepth x kBlockCols floats) fill L2, up to 384 columns.
// B streams past the A panel held in L1, so wide blocks (fewer A panels and B packs per product) win
// until B no longer fits: with a 512 KB L2 (AMD Zen 3) 9/16 of it (192 columns) ran SD's products
// 4-14% slower than the whole (336) or 384; 384 is what CPUs with a 1 MB L2 ran at (docs/performance.md).
constexpr int kBlockCols = clamp_down(MLX_SD_L2_BYTES / (kDepth * 4), 2 * kCols, 384, kCols);
// most of an M block: B is packed once per block, and C's block stays in 3/16 of the last-level cache
constexpr int kBlockRows = clamp_down(MLX_SD_L3_BYTES * 3L / 16 / (kBlockCols * 4), 16 * kRows, 16384, kRows);
constexpr int kSplitColumnsBelowRows = 512;  // per thread

struct Tap {
  int dy, dx;  // the input pixel an output pixel reads, relative to it
};

// B's element type: half-precision weights (the CPU keeps the text encoders' and the UNet's) are read as they are.
enum class BType { kFloat32, kFloat16, kBFloat16 };

struct Problem {
  const float* a;
  int64_t a_batch_stride, a_row_stride;
  std::vector<Tap> taps;
  int height, width;  // A's rows as an image: M = height x width
  const void* b;  // b_type elements, converted to float32 as they are packed
  BType b_type;
  int64_t b_row_stride, b_col_stride;
  const float* bias;  // (N,) or null
  float* c;
  int batch, rows, cols, depth;  // per tap depth K; B has taps x K rows
  bool bf16;  // products of bfloat16-rounded factors (only where kBf16 is true)
};

int round_up(int x, int to) {
  return (x + to - 1) / to * to;
}

// Splits `total` into equal blocks of at most `most`, each rounded up to `multiple`.
int block_size(int total, int most, int multiple) {
  const int blocks = (total + most - 1) / most;
  return round_up((total + blocks - 1) / blocks, multiple);
}

// kRows rows of A (row stride `stride`) from `data`, channels from k0 on.
struct Panel {
  const float* data;
  int64_t stride;
};

// Rows [m, m + rows) of A for `tap`, channels k0..k0+depth: read in place where they are
// consecutive pixels inside the image (packing A took 13% of a VAE decode, its 128-channel
// convolutions use each row for few columns), otherwise copied into `spare` (kRows x depth) with
// zeros outside the image.
Panel a_panel(const Problem& pr, const float* a, Tap tap, int m, int rows, int k0, int depth, float* spare) {
  const int y = m / pr.width + tap.dy, x = m % pr.width + tap.dx;
  if (rows == kRows && m % pr.width + kRows <= pr.width && y >= 0 && y < pr.height && x >= 0 && x + kRows <= pr.width)
    return {a + (static_cast<int64_t>(y) * pr.width + x) * pr.a_row_stride + k0, pr.a_row_stride};
  for (int r = 0; r < kRows; ++r) {
    const int yr = (m + r) / pr.width + tap.dy, xr = (m + r) % pr.width + tap.dx;
    float* dst = spare + static_cast<size_t>(r) * depth;
    if (r < rows && yr >= 0 && yr < pr.height && xr >= 0 && xr < pr.width)
      std::memcpy(dst, a + (static_cast<int64_t>(yr) * pr.width + xr) * pr.a_row_stride + k0, depth * sizeof(float));
    else
      std::memset(dst, 0, depth * sizeof(float));
  }
  return {spare, depth};
}

template <class T>
float to_float(T x) {
  if constexpr (std::is_same_v<T, uint16_t>) {  // bfloat16: the high half of a float32
    const uint32_t bits = static_cast<uint32_t>(x) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  } else {
    return static_cast<float>(x);
  }
}

// kLanes consecutive elements as float32.
template <class T>
vfloat load_as_float(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return load(p);
  } else if constexpr (std::is_same_v<T, uint16_t>) {
    typedef uint16_t vshort __attribute__((vector_size(kLanes * 2)));
    vshort h;
    std::memcpy(&h, p, sizeof h);
    const vint bits = __builtin_convertvector(h, vint) << 16;
    vfloat f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  } else {
    return load_half(p);
  }
}

template <class T>
void pack_b_as(const Problem& pr, int k0, int depth, int n0, int cols, float* packed) {
  const T* b = static_cast<const T*>(pr.b);
  for (int q = 0; q < cols; q += kCols) {
    float* panel = packed + static_cast<size_t>(q) * depth;
    const int width = std::min(kCols, cols - q);
    const T* src = b + k0 * pr.b_row_stride + (n0 + q) * pr.b_col_stride;
    if (pr.b_col_stride == 1) {  // an activation, or a weight stored (in, out)
      for (int k = 0; k < depth; ++k) {
        if constexpr (std::is_same_v<T, float>) {
          std::memcpy(panel + k * kCols, src + k * pr.b_row_stride, width * sizeof(float));
        } else {
          for (int n = 0; n < width; ++n) panel[k * kCols + n] = to_float(src[k * pr.b_row_stride + n]);
        }
      }
    } else if (pr.b_row_stride == 1) {  // a transposed weight: convert along its rows, a vector at a time
      for (int n = 0; n < width; ++n) {
        const T* row = src + n * pr.b_col_stride;
        int k = 0;
        for (; k + kLanes <= depth; k += kLanes) {
          const vfloat v = load_as_float(row + k);
          for (int e = 0; e < kLanes; ++e) panel[(k + e) * kCols + n] = v[e];
        }
        for (; k < depth; ++k) panel[k * kCols + n] = to_float(row[k]);
      }
    } else {
      for (int n = 0; n < width; ++n)
        for (int k = 0; k < depth; ++k) panel[k * kCols + n] = to_float(src[n * pr.b_col_stride + k * pr.b_row_stride]);
    }
    for (int k = 0; k < depth; ++k)
      for (int n = width; n < kCols; ++n) panel[k * kCols + n] = 0.0f;
  }
}

// work(T{}) for B's element type T.
template <class Work>
void with_b_element(BType type, const Work& work) {
  switch (type) {
    case BType::kFloat16: return work(_Float16{});
    case BType::kBFloat16: return work(uint16_t{});
    default: return work(float{});
  }
}

// B[k0..k0+depth, n0..n0+cols) -> column panels of kCols, each depth x kCols, zero-padded, in float32.
// Read along B's contiguous axis: its rows (an activation) or its columns (a transposed weight).
void pack_b(const Problem& pr, int k0, int depth, int n0, int cols, float* packed) {
  with_b_element(pr.b_type, [&](auto element) { pack_b_as<decltype(element)>(pr, k0, depth, n0, cols, packed); });
}

// c (rows x cols of a kRows x kCols tile, row stride ldc) = start + a_panel @ b_panel, where start is
// c itself (accumulate), the bias row, or zero.
enum class Start { kZero, kBias, kAccumulate };

void write_tile(vfloat (&acc)[kRows][kColVectors], float* c, int64_t ldc, int rows, int cols, Start start,
                const float* bias) {
  if (rows == kRows && cols == kCols) {
    for (int r = 0; r < kRows; ++r)
      for (int v = 0; v < kColVectors; ++v) {
        float* dst = c + r * ldc + v * kLanes;
        if (start == Start::kAccumulate) acc[r][v] += load(dst);
        else if (start == Start::kBias) acc[r][v] += load(bias + v * kLanes);
        store(dst, acc[r][v]);
      }
    return;
  }
  float tile[kRows][kCols];
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kColVectors; ++v) store(&tile[r][v * kLanes], acc[r][v]);
  for (int r = 0; r < rows; ++r)
    for (int n = 0; n < cols; ++n) {
      float& dst = c[r * ldc + n];
      dst = tile[r][n] + (start == Start::kAccumulate ? dst : start == Start::kBias ? bias[n] : 0.0f);
    }
}

void micro_kernel(int depth, Panel a, const float* b, float* c, int64_t ldc, int rows, int cols, Start start,
                  const float* bias) {
  vfloat acc[kRows][kColVectors] = {};
  for (int k = 0; k < depth; ++k) {
    vfloat bv[kColVectors];
    for (int v = 0; v < kColVectors; ++v) bv[v] = load(b + k * kCols + v * kLanes);
    for (int r = 0; r < kRows; ++r) {
      const float x = a.data[r * a.stride + k];
      for (int v = 0; v < kColVectors; ++v) acc[r][v] += x * bv[v];
    }
  }
  write_tile(acc, c, ldc, rows, cols, start, bias);
}

#if defined(__AVX512BF16__)
constexpr bool kBf16 = true;
static_assert(kLanes == 16, "AVX512_BF16 implies AVX-512's 16 lanes");
typedef uint32_t vuint __attribute__((vector_size(kLanes * 4)));

// float32 -> bfloat16 bits (round to nearest even), in the low half of each lane.
inline vint bf16_bits(vfloat f) {
  vuint bits;
  std::memcpy(&bits, &f, sizeof bits);
  return (vint)((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}

// Lanes 2i and 2i + 1 of the 2 * kLanes values x[0..kLanes) y[0..kLanes) as one word each: a pair.
inline vint pairs_of(vint x, vint y) {
  const vint even = __builtin_shufflevector(x, y, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const vint odd = __builtin_shufflevector(x, y, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  return even | (odd << 16);
}

inline uint32_t pair_word(float x, float y) {
  const vint bits = bf16_bits(splat(0.0f) + vfloat{x, y});
  return static_cast<uint32_t>(bits[0]) | static_cast<uint32_t>(bits[1]) << 16;
}

// kRows rows of A as bfloat16 pairs: word p of row r holds channels k0 + 2p and k0 + 2p + 1 (zero
// past the depth, and for rows outside the image).
void pack_a_pairs(const Problem& pr, const float* a, Tap tap, int m, int rows, int k0, int depth, uint32_t* dst) {
  const int pairs = (depth + 1) / 2;
  for (int r = 0; r < kRows; ++r) {
    uint32_t* out = dst + static_cast<size_t>(r) * pairs;
    const int yr = (m + r) / pr.width + tap.dy, xr = (m + r) % pr.width + tap.dx;
    if (r >= rows || yr < 0 || yr >= pr.height || xr < 0 || xr >= pr.width) {
      std::memset(out, 0, pairs * sizeof(uint32_t));
      continue;
    }
    const float* src = a + (static_cast<int64_t>(yr) * pr.width + xr) * pr.a_row_stride + k0;
    int k = 0;
    for (; k + 2 * kLanes <= depth; k += 2 * kLanes) {
      const vint word = pairs_of(bf16_bits(load(src + k)), bf16_bits(load(src + k + kLanes)));
      std::memcpy(out + k / 2, &word, sizeof word);
    }
    for (; k < depth; k += 2) out[k / 2] = pair_word(src[k], k + 1 < depth ? src[k + 1] : 0.0f);
  }
}

// B[k0..k0+depth, n0..n0+cols) -> column panels of kCols, each (depth / 2 rounded up) x kCols words
// holding rows 2p and 2p + 1 of a column, zero-padded.
template <class T>
void pack_b_pairs_as(const Problem& pr, int k0, int depth, int n0, int cols, uint32_t* packed) {
  const T* b = static_cast<const T*>(pr.b);
  const int pairs = (depth + 1) / 2;
  for (int q = 0; q < cols; q += kCols) {
    uint32_t* panel = packed + static_cast<size_t>(q) * pairs;
    const int width = std::min(kCols, cols - q);
    const T* src = b + k0 * pr.b_row_stride + (n0 + q) * pr.b_col_stride;
    const auto at = [&](int k, int n) { return k < depth ? to_float(src[k * pr.b_row_stride + n * pr.b_col_stride]) : 0.0f; };
    if (pr.b_col_stride == 1 && width == kCols) {  // rows 2p and 2p + 1 side by side, a vector at a time
      for (int p = 0; p < pairs; ++p)
        for (int v = 0; v < kColVectors; ++v) {
          const T* row = src + 2 * p * pr.b_row_stride + v * kLanes;
          const vint low = bf16_bits(load_as_float(row));
          const vint high = 2 * p + 1 < depth ? bf16_bits(load_as_float(row + pr.b_row_stride)) : vint{};
          const vint word = low | (high << 16);
          std::memcpy(panel + p * kCols + v * kLanes, &word, sizeof word);
        }
    } else if (pr.b_row_stride == 1) {  // a transposed weight: a column's pairs are adjacent
      for (int n = 0; n < width; ++n) {
        const T* column = src + n * pr.b_col_stride;
        int k = 0;
        for (; k + 2 * kLanes <= depth; k += 2 * kLanes) {
          const vint word = pairs_of(bf16_bits(load_as_float(column + k)), bf16_bits(load_as_float(column + k + kLanes)));
          for (int e = 0; e < kLanes; ++e) panel[(k / 2 + e) * kCols + n] = word[e];
        }
        for (; k < depth; k += 2) panel[k / 2 * kCols + n] = pair_word(at(k, n), at(k + 1, n));
      }
    } else {
      for (int n = 0; n < width; ++n)
        for (int p = 0; p < pairs; ++p) panel[p * kCols + n] = pair_word(at(2 * p, n), at(2 * p + 1, n));
    }
    for (int p = 0; p < pairs; ++p)
      for (int n = width; n < kCols; ++n) panel[p * kCols + n] = 0;
  }
}

void pack_b_pairs(const Problem& pr, int k0, int depth, int n0, int cols, uint32_t* packed) {
  with_b_element(pr.b_type, [&](auto element) { pack_b_pairs_as<decltype(element)>(pr, k0, depth, n0, cols, packed); });
}

void micro_kernel_bf16(int pairs, const uint32_t* a, const uint32_t* b, float* c, int64_t ldc, int rows, int cols,
                       Start start, const float* bias) {
  __m512 acc[kRows][kColVectors] = {};
  for (int p = 0; p < pairs; ++p) {
    __m512bh bv[kColVectors];
    for (int v = 0; v < kColVectors; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + p * kCols + v * kLanes);
    for (int r = 0; r < kRows; ++r) {
      const __m512bh x = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r * pairs + p]));
      for (int v = 0; v < kColVectors; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], x, bv[v]);
    }
  }
  vfloat tile[kRows][kColVectors];
  std::memcpy(tile, acc, sizeof tile);
  write_tile(tile, c, ldc, rows, cols, start, bias);
}
#else
constexpr bool kBf16 = false;
#endif

struct Range {
  int first, last;
};

// The blocks of a thread's part of C.
struct Blocks {
  int depth, cols, rows;
  Blocks(const Problem& pr, Range rows_part, Range cols_part, int depth_multiple)
      : depth(block_size(pr.depth, kDepth, depth_multiple)),
        cols(block_size(std::max(1, cols_part.last - cols_part.first), kBlockCols, kCols)),
        rows(block_size(std::max(1, rows_part.last - rows_part.first), kBlockRows, kRows)) {}
};

// float32 products: A's panels read in place (a_panel), B packed as float32.
class Float32Products {
 public:
  static constexpr int kDepthMultiple = 1;
  explicit Float32Products(const Blocks& block)
      : spare_(static_cast<size_t>(kRows) * block.depth), packed_b_(static_cast<size_t>(block.cols) * block.depth) {}
  void pack_b_block(const Problem& pr, int k0, int depth, int n0, int cols) {
    pack_b(pr, k0, depth, n0, cols, packed_b_.data());
  }
  void take_a(const Problem& pr, const float* a, Tap tap, int m, int rows, int k0, int depth) {
    panel_ = a_panel(pr, a, tap, m, rows, k0, depth, spare_.data());
  }
  void multiply(int depth, int q, float* c, int64_t ldc, int rows, int cols, Start start, const float* bias) const {
    micro_kernel(depth, panel_, packed_b_.data() + static_cast<size_t>(q) * depth, c, ldc, rows, cols, start, bias);
  }

 private:
  std::vector<float> spare_, packed_b_;
  Panel panel_{nullptr, 0};
};

#if defined(__AVX512BF16__)
// bfloat16 products: A's panels are packed too, as pairs, and so is B.
class BFloat16Products {
 public:
  static constexpr int kDepthMultiple = 2;  // depth blocks of whole pairs
  explicit BFloat16Products(const Blocks& block)
      : packed_a_(static_cast<size_t>(kRows) * ((block.depth + 1) / 2)),
        packed_b_(static_cast<size_t>(block.cols) * ((block.depth + 1) / 2)) {}
  void pack_b_block(const Problem& pr, int k0, int depth, int n0, int cols) {
    pack_b_pairs(pr, k0, depth, n0, cols, packed_b_.data());
  }
  void take_a(const Problem& pr, const float* a, Tap tap, int m, int rows, int k0, int depth) {
    pack_a_pairs(pr, a, tap, m, rows, k0, depth, packed_a_.data());
  }
  void multiply(int depth, int q, float* c, int64_t ldc, int rows, int cols, Start start, const float* bias) const {
    const int pairs = (depth + 1) / 2;
    micro_kernel_bf16(pairs, packed_a_.data(), packed_b_.data() + static_cast<size_t>(q) * pairs, c, ldc, rows, cols, start,
                      bias);
  }

 private:
  std::vector<uint32_t> packed_a_, packed_b_;
};
#endif

// Rows `rows_part` and columns `cols_part` of every batch entry's C, with `Products`' packing and micro-kernel.
template <class Products>
void gemm_blocks(const Problem& pr, Range rows_part, Range cols_part) {
  const int taps = static_cast<int>(pr.taps.size());
  const Blocks block(pr, rows_part, cols_part, Products::kDepthMultiple);
  Products products(block);
  for (int m0 = rows_part.first; m0 < rows_part.last; m0 += block.rows) {
    const int rows = std::min(block.rows, rows_part.last - m0);
    for (int t = 0; t < taps; ++t)
      for (int k0 = 0; k0 < pr.depth; k0 += block.depth) {
        const int depth = std::min(block.depth, pr.depth - k0);
        const Start start = t > 0 || k0 > 0 ? Start::kAccumulate : pr.bias ? Start::kBias : Start::kZero;
        for (int n0 = cols_part.first; n0 < cols_part.last; n0 += block.cols) {
          const int cols = std::min(block.cols, cols_part.last - n0);
          products.pack_b_block(pr, t * pr.depth + k0, depth, n0, cols);  // once for every batch entry
          for (int batch = 0; batch < pr.batch; ++batch) {
            const float* a = pr.a + batch * pr.a_batch_stride;
            float* c = pr.c + static_cast<size_t>(batch) * pr.rows * pr.cols;
            for (int p = 0; p < rows; p += kRows) {
              products.take_a(pr, a, pr.taps[t], m0 + p, std::min(kRows, rows - p), k0, depth);
              for (int q = 0; q < cols; q += kCols)
                products.multiply(depth, q, c + static_cast<size_t>(m0 + p) * pr.cols + n0 + q, pr.cols,
                                  std::min(kRows, rows - p), std::min(kCols, cols - q), start,
                                  pr.bias ? pr.bias + n0 + q : nullptr);
            }
          }
        }
      }
  }
}

void gemm_part(const Problem& pr, Range rows_part, Range cols_part) {
#if defined(__AVX512BF16__)
  if (pr.bf16) return gemm_blocks<BFloat16Products>(pr, rows_part, cols_part);
#endif
  gemm_blocks<Float32Products>(pr, rows_part, cols_part);  // tap_product refuses bf16 where it is not built
}

// Threads split the rows; with few rows (each thread packs all of B it uses) they split the columns.
void gemm(const Problem& pr, int threads) {
  const bool by_rows = pr.rows >= kSplitColumnsBelowRows * threads || pr.cols < kCols * threads;
  if (by_rows) {
    run_on_parts(pr.rows, threads, kRows, [&](int64_t begin, int64_t end) {
      gemm_part(pr, {static_cast<int>(begin), static_cast<int>(end)}, {0, pr.cols});
    });
  } else {
    run_on_parts(pr.cols, threads, kCols, [&](int64_t begin, int64_t end) {
      gemm_part(pr, {0, pr.rows}, {static_cast<int>(begin), static_cast<int>(end)});
    });
  }
}

BType b_type(const mx::array& b) {
  return b.dtype() == mx::float16 ? BType::kFloat16 : b.dtype() == mx::bfloat16 ? BType::kBFloat16 : BType::kFloat32;
}

class Gemm : public CpuOnlyPrimitive {
 public:
  Gemm(mx::Stream stream, std::vector<Tap> taps, int height, int width, int threads, bool bf16)
      : CpuOnlyPrimitive(stream), taps_(std::move(taps)), height_(height), width_(width), threads_(threads), bf16_(bf16) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const auto& a = inputs[0];
    const auto& b = inputs[1];
    auto& out = outputs[0];
    auto& encoder = encoder_for(inputs, out);
    Problem pr{a.data<float>(), a.strides(0), a.strides(1), taps_, height_, width_, b.data<void>(), b_type(b), b.strides(0),
               b.strides(1), inputs.size() > 2 ? inputs[2].data<float>() : nullptr, out.data<float>(),
               static_cast<int>(a.shape(0)), height_ * width_, static_cast<int>(b.shape(1)), static_cast<int>(a.shape(2)),
               bf16_};
    encoder.dispatch([pr = std::move(pr), threads = threads_]() { gemm(pr, threads); });
  }

  const char* name() const override {
    return "MlxSdGemm";
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const Gemm&>(other);
    const auto same_tap = [](Tap x, Tap y) { return x.dy == y.dy && x.dx == y.dx; };
    return std::equal(taps_.begin(), taps_.end(), o.taps_.begin(), o.taps_.end(), same_tap) && height_ == o.height_ &&
           width_ == o.width_ && threads_ == o.threads_ && bf16_ == o.bf16_;
  }

 private:
  std::vector<Tap> taps_;
  int height_, width_;
  int threads_;
  bool bf16_;
};

// float32 with its last axis contiguous (strided rows and batches are read in place).
mx::array rows_contiguous(const mx::array& x, mx::Stream stream) {
  if (x.dtype() == mx::float32 && x.strides().back() == 1) return x;
  return contiguous_float32(x, stream);
}

// a (batch, height x width, K) -> (batch, height x width, N)
mx::array tap_product(const mx::array& a, const mx::array& b, const std::optional<mx::array>& bias, std::vector<Tap> taps,
                      int height, int width, int threads, bool bf16) {
  if (bf16 && !kBf16) throw std::invalid_argument("bfloat16 products need a CPU with AVX512_BF16");
  if (b.ndim() != 2 || b.shape(0) != static_cast<int64_t>(taps.size()) * a.shape(2))
    throw std::invalid_argument("b is not (taps x in, out)");
  if (bias && (bias->ndim() != 1 || bias->shape(0) != b.shape(1))) throw std::invalid_argument("bias is not (out,)");
  const auto stream = mx::default_stream(mx::Device::cpu);
  const bool half = b.dtype() == mx::float16 || b.dtype() == mx::bfloat16;
  std::vector<mx::array> inputs = {rows_contiguous(a, stream), half ? b : mx::astype(b, mx::float32, stream)};
  if (bias) inputs.push_back(contiguous_float32(*bias, stream));
  return mx::array({a.shape(0), a.shape(1), b.shape(1)}, mx::float32,
                   std::make_shared<Gemm>(stream, std::move(taps), height, width, threads, bf16), std::move(inputs));
}

}  // namespace

bool bf16_products() {
  return kBf16;
}

mx::array gemm(const mx::array& a, const mx::array& b, const std::optional<mx::array>& bias, int threads, bool bf16) {
  if (a.ndim() != 3) throw std::invalid_argument("gemm takes a (batch, rows, in)");
  return tap_product(a, b, bias, {{0, 0}}, 1, static_cast<int>(a.shape(1)), threads, bf16);
}

mx::array conv_taps(const mx::array& x, const mx::array& b, const std::optional<mx::array>& bias,
                    const std::vector<std::pair<int, int>>& taps, int threads, bool bf16) {
  if (x.ndim() != 4 || taps.empty()) throw std::invalid_argument("conv_taps takes x (batch, height, width, in) and taps");
  const int height = static_cast<int>(x.shape(1)), width = static_cast<int>(x.shape(2));
  std::vector<Tap> offsets;
  for (const auto& [dy, dx] : taps) offsets.push_back({dy, dx});
  const auto rows = mx::reshape(x, {x.shape(0), x.shape(1) * x.shape(2), x.shape(3)}, mx::default_stream(mx::Device::cpu));
  const auto out = tap_product(rows, b, bias, std::move(offsets), height, width, threads, bf16);
  return mx::reshape(out, {x.shape(0), x.shape(1), x.shape(2), b.shape(1)}, mx::default_stream(mx::Device::cpu));
}

}  // namespace mlx_sd
