// roberta/kernels.py compiles this file for the running CPU on first use (torch.ops.roberta.*).
//
// Per-row int8 quantization for roberta/quantize.py, one read of the input: each row's absmax (or
// max) and its int8 codes in one task while the row is in cache, rows spread over torch's threads.
// The results equal quantize.py's torch-op formulas bit for bit (tests/test_kernels.py), which
// stay the fallback.
//
//   torch.ops.roberta.quantize_rows(x, u8)    x (M, K) fp32 -> (codes (M, K), scale (M, 1))
//       scale = max(|row|.max(), FLT_MIN) / 127;  codes = nearbyint(x / scale) as int8 in
//       [-127, 127], or with u8 the same codes + 128 as uint8 (the same bits, sign bit flipped)
//   torch.ops.roberta.quantize_rows_above(x, floor, step)
//                                             x (M, K) fp32, every x > floor -> (codes uint8, scale)
//       scale = (row.max() - floor) * step;  low = scale * 128 + floor;
//       codes = nearbyint((x - low) / scale) as int8, + 128 as uint8: x ~ floor + codes * scale
//
// The arithmetic is the formulas' own, in fp32, in their order (a subtraction, a division, a
// round-half-to-even), so the vector code and the scalar tail give the same codes.
//
// Dropout for training (roberta/kernels.py's `dropout`), one pass instead of torch's three (a
// Bernoulli draw per element, its scaling, the product), with a counter-based random stream:
//
//   torch.ops.roberta.dropout(x, p, seed)     x contiguous fp32 -> x * keep / (1 - p)
//       keep[i] = hash(i, seed) >= p * 2^32: element i's draw depends on its index and the seed
//       alone, so the same call gives the gradient's mask in the backward pass (no mask is
//       stored) and every thread count and instruction set gives the same masks.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <string>
#include <tuple>

namespace {

constexpr int64_t kGrain = 16;  // rows per task at the least

// The instruction set this file was compiled for (`-march=native` on the running CPU).
std::string isa() {
#if defined(__AVX512F__) && defined(__AVX512BW__)
  return "avx512";
#elif defined(__AVX2__)
  return "avx2";
#else
  return "scalar";
#endif
}

#if defined(__AVX512F__) && defined(__AVX512BW__)

float row_absmax(const float* x, int64_t K, int64_t& k) {
  __m512 m = _mm512_setzero_ps();
  for (; k + 16 <= K; k += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
  return _mm512_reduce_max_ps(m);
}

float row_max(const float* x, int64_t K, int64_t& k) {
  __m512 m = _mm512_set1_ps(-INFINITY);
  for (; k + 16 <= K; k += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + k));
  return _mm512_reduce_max_ps(m);
}

void row_codes(const float* x, int64_t K, float low, float scale, int8_t flip, int8_t* q, int64_t& k) {
  const __m512 vl = _mm512_set1_ps(low), vs = _mm512_set1_ps(scale);
  const __m128i vf = _mm_set1_epi8(flip);
  for (; k + 16 <= K; k += 16) {
    __m512 v = _mm512_div_ps(_mm512_sub_ps(_mm512_loadu_ps(x + k), vl), vs);
    v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m128i codes = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v));  // integral already: exact
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + k), _mm_xor_si128(codes, vf));
  }
}

#elif defined(__AVX2__)

float reduce_max(__m256 m) {
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

float row_absmax(const float* x, int64_t K, int64_t& k) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps();
  for (; k + 8 <= K; k += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + k)));
  return reduce_max(m);
}

float row_max(const float* x, int64_t K, int64_t& k) {
  __m256 m = _mm256_set1_ps(-INFINITY);
  for (; k + 8 <= K; k += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + k));
  return reduce_max(m);
}

void row_codes(const float* x, int64_t K, float low, float scale, int8_t flip, int8_t* q, int64_t& k) {
  const __m256 vl = _mm256_set1_ps(low), vs = _mm256_set1_ps(scale);
  const __m128i vf = _mm_set1_epi8(flip);
  for (; k + 8 <= K; k += 8) {
    __m256 v = _mm256_div_ps(_mm256_sub_ps(_mm256_loadu_ps(x + k), vl), vs);
    v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256i i32 = _mm256_cvtps_epi32(v);  // integral already: exact
    const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
    const __m128i codes = _mm_packs_epi16(i16, i16);  // the 8 codes in the low half
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), _mm_xor_si128(codes, vf));
  }
}

#else

float row_absmax(const float*, int64_t, int64_t&) { return 0.0f; }
float row_max(const float*, int64_t, int64_t&) { return -INFINITY; }
void row_codes(const float*, int64_t, float, float, int8_t, int8_t*, int64_t&) {}

#endif

// The vector loop's partial result, then the rest of the row one element at a time.
float absmax_of(const float* x, int64_t K) {
  int64_t k = 0;
  float m = row_absmax(x, K, k);
  for (; k < K; ++k) m = std::max(m, std::fabs(x[k]));
  return m;
}

float max_of(const float* x, int64_t K) {
  int64_t k = 0;
  float m = row_max(x, K, k);
  for (; k < K; ++k) m = std::max(m, x[k]);
  return m;
}

void codes_of(const float* x, int64_t K, float low, float scale, int8_t flip, int8_t* q) {
  int64_t k = 0;
  row_codes(x, K, low, scale, flip, q, k);
  for (; k < K; ++k) q[k] = static_cast<int8_t>(static_cast<int8_t>(std::nearbyint((x[k] - low) / scale)) ^ flip);
}

void check_input(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2 && x.is_contiguous(),
              "x must be a contiguous (rows, features) fp32 CPU tensor, got ", x.scalar_type(), " ",
              x.sizes(), x.is_contiguous() ? "" : " (not contiguous)");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> quantize_rows(const at::Tensor& x, bool u8) {
  check_input(x);
  const int64_t M = x.size(0), K = x.size(1);
  at::Tensor codes = at::empty({M, K}, x.options().dtype(u8 ? at::kByte : at::kChar));
  at::Tensor scale = at::empty({M, 1}, x.options());
  const float* xp = x.data_ptr<float>();
  int8_t* qp = static_cast<int8_t*>(codes.data_ptr());
  float* sp = scale.data_ptr<float>();
  const int8_t flip = u8 ? static_cast<int8_t>(-128) : 0;  // x ^ 0x80: int8 code -> code + 128 as uint8
  at::parallel_for(0, M, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float s = std::max(absmax_of(xp + i * K, K), FLT_MIN) / 127.0f;
      sp[i] = s;
      codes_of(xp + i * K, K, 0.0f, s, flip, qp + i * K);
    }
  });
  return {codes, scale};
}

std::tuple<at::Tensor, at::Tensor> quantize_rows_above(const at::Tensor& x, double floor, double step) {
  check_input(x);
  const int64_t M = x.size(0), K = x.size(1);
  at::Tensor codes = at::empty({M, K}, x.options().dtype(at::kByte));
  at::Tensor scale = at::empty({M, 1}, x.options());
  const float* xp = x.data_ptr<float>();
  int8_t* qp = static_cast<int8_t*>(codes.data_ptr());
  float* sp = scale.data_ptr<float>();
  const float f = static_cast<float>(floor), st = static_cast<float>(step);
  at::parallel_for(0, M, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float s = (max_of(xp + i * K, K) - f) * st;
      sp[i] = s;
      codes_of(xp + i * K, K, s * 128.0f + f, s, static_cast<int8_t>(-128), qp + i * K);
    }
  });
  return {codes, scale};
}

namespace {

// lowbias32 (C. Wellons' hash prospector): a 32-bit integer hash whose output bits each flip with
// probability ~1/2 for any flipped input bit. Two rounds over the index's halves and the seed.
inline uint32_t mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

inline uint32_t draw(int64_t i, uint32_t s0, uint32_t s1) {
  return mix(mix(static_cast<uint32_t>(i) ^ s0) + static_cast<uint32_t>(static_cast<uint64_t>(i) >> 32) + s1);
}

}  // namespace

at::Tensor dropout(const at::Tensor& x, double p, int64_t seed) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "x must be a contiguous fp32 CPU tensor");
  TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout probability must be in [0, 1), got ", p);
  at::Tensor y = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t n = x.numel();
  const uint64_t t = static_cast<uint64_t>(std::llround(p * 4294967296.0));
  const uint32_t threshold = t > 0xffffffffULL ? 0xffffffffU : static_cast<uint32_t>(t);
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  const uint32_t s0 = static_cast<uint32_t>(seed), s1 = static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32);
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
#if defined(__AVX512F__)
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i m1 = _mm512_set1_epi32(0x7feb352d), m2 = _mm512_set1_epi32(static_cast<int>(0x846ca68bU));
    const __m512i vs0 = _mm512_set1_epi32(static_cast<int>(s0)), vthr = _mm512_set1_epi32(static_cast<int>(threshold));
    const __m512 vscale = _mm512_set1_ps(scale);
    auto vmix = [&](__m512i h) {
      h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
      h = _mm512_mullo_epi32(h, m1);
      h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 15));
      h = _mm512_mullo_epi32(h, m2);
      return _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
    };
    for (; i + 16 <= end && (static_cast<uint64_t>(i) >> 32) == (static_cast<uint64_t>(i + 15) >> 32); i += 16) {
      const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(i))), lanes);
      const uint32_t high = static_cast<uint32_t>(static_cast<uint64_t>(i) >> 32) + s1;
      const __m512i h = vmix(_mm512_add_epi32(vmix(_mm512_xor_si512(idx, vs0)), _mm512_set1_epi32(static_cast<int>(high))));
      const __mmask16 keep = _mm512_cmpge_epu32_mask(h, vthr);
      _mm512_storeu_ps(yp + i, _mm512_maskz_mul_ps(keep, _mm512_loadu_ps(xp + i), vscale));
    }
#endif
    for (; i < end; ++i) yp[i] = draw(i, s0, s1) >= threshold ? xp[i] * scale : 0.0f;
  });
  return y;
}

// torch.ops.roberta.*: dispatcher ops with CPU kernels, so that torch.profiler and dispatch modes
// see them by name (benchmarks/profile_a.py)
TORCH_LIBRARY(roberta, m) {
  m.def("isa() -> str", &isa);
  m.def("quantize_rows(Tensor x, bool u8) -> (Tensor, Tensor)");
  m.def("quantize_rows_above(Tensor x, float floor, float step) -> (Tensor, Tensor)");
  m.def("dropout(Tensor x, float p, int seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(roberta, CPU, m) {
  m.impl("quantize_rows", &quantize_rows);
  m.impl("quantize_rows_above", &quantize_rows_above);
  m.impl("dropout", &dropout);
}
