// roberta/kernels.py compiles this file for the running CPU on first use (torch.ops.roberta.*):
// int8's row quantizers, training's dropout, then (further down) fp32 inference's attention over
// packed rows and the passes around a layer's matmuls.
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
#include <vector>

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

// A vector of floats and the operations the kernels below use, for each instruction set: the
// kernels are written once against these.
#if defined(__AVX512F__) && defined(__AVX512BW__)
using Vec = __m512;
constexpr int64_t kW = 16;
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec vset(float x) { return _mm512_set1_ps(x); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Vec vmul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
inline Vec vsub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
inline Vec vadd(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline Vec vmax(Vec a, Vec b) { return _mm512_max_ps(a, b); }
inline Vec vmin(Vec a, Vec b) { return _mm512_min_ps(a, b); }
inline Vec vdiv(Vec a, Vec b) { return _mm512_div_ps(a, b); }
inline Vec vabs(Vec x) { return _mm512_abs_ps(x); }
inline float vreduce_max(Vec v) { return _mm512_reduce_max_ps(v); }
inline float vreduce_add(Vec v) { return _mm512_reduce_add_ps(v); }
inline Vec vpow2(Vec p, Vec n) { return _mm512_scalef_ps(p, n); }  // p * 2^n
inline Vec vround(Vec x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
#elif defined(__AVX2__)
using Vec = __m256;
constexpr int64_t kW = 8;
inline Vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline Vec vset(float x) { return _mm256_set1_ps(x); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec vmul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
inline Vec vsub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
inline Vec vadd(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline Vec vmax(Vec a, Vec b) { return _mm256_max_ps(a, b); }
inline Vec vmin(Vec a, Vec b) { return _mm256_min_ps(a, b); }
inline Vec vdiv(Vec a, Vec b) { return _mm256_div_ps(a, b); }
inline Vec vabs(Vec x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }
inline float vreduce_max(Vec v) {
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}
inline float vreduce_add(Vec v) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}
inline Vec vpow2(Vec p, Vec n) {  // p * 2^n for integral n in [-126, 127]
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
inline Vec vround(Vec x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__)
// kW integral floats -> int8 codes, each xor flip
inline void store_codes(Vec v, int8_t flip, int8_t* q) {
  const __m128i codes = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v));  // integral already: exact
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm_xor_si128(codes, _mm_set1_epi8(flip)));
}
#elif defined(__AVX2__)
inline void store_codes(Vec v, int8_t flip, int8_t* q) {
  const __m256i i32 = _mm256_cvtps_epi32(v);  // integral already: exact
  const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
  const __m128i codes = _mm_packs_epi16(i16, i16);  // the 8 codes in the low half
  _mm_storel_epi64(reinterpret_cast<__m128i*>(q), _mm_xor_si128(codes, _mm_set1_epi8(flip)));
}
#endif

#if defined(__AVX512F__) || defined(__AVX2__)

float row_absmax(const float* x, int64_t K, int64_t& k) {
  Vec m = vset(0.0f);
  for (; k + kW <= K; k += kW) m = vmax(m, vabs(vload(x + k)));
  return vreduce_max(m);
}

float row_max(const float* x, int64_t K, int64_t& k) {
  Vec m = vset(-INFINITY);
  for (; k + kW <= K; k += kW) m = vmax(m, vload(x + k));
  return vreduce_max(m);
}

void row_codes(const float* x, int64_t K, float low, float scale, int8_t flip, int8_t* q, int64_t& k) {
  const Vec vl = vset(low), vs = vset(scale);
  for (; k + kW <= K; k += kW) store_codes(vround(vdiv(vsub(vload(x + k), vl), vs)), flip, q + k);
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

// ---- attention over packed rows ------------------------------------------------------------------
//
//   torch.ops.roberta.varlen_attention(q, k, v, bounds, heads, rows, q_bias, v_bias)
//       q (M, C), k and v (N, C): fp32 rows (any row stride, each row contiguous), the heads side
//       by side (C = heads * head_dim). bounds (B, 4) int64: per sequence its queries' first row
//       and count in q, its keys' (and values') first row and count in k and v. Returns (rows, C):
//       at each query row softmax(q' kᵀ / √head_dim) v' over its own sequence's keys, each head
//       apart, with q' = q + q_bias and v' = v + v_bias (each (C,) or None: zeros); zeros at a
//       query with no key and at the rows after the last query.
//
// One task per (sequence, head), spread over torch's threads: the head's keys are copied transposed
// into a buffer (so that a query's scores against W keys are W lanes of one vector), then blocks of
// four queries take their scores, softmax and weighted sum of values with their accumulators in
// registers. Nothing is gathered or padded across sequences, and a batch is one call, however its
// lengths differ: what packing.py's per-group SDPA calls and their gathers cost on short sequences.

namespace {


#if defined(__AVX512F__) && defined(__AVX512BW__)
// dst[c * ds + r] = src[r * ss + c] for r, c < 16: a 16 x 16 block transposed in registers.
inline void transpose_block(const float* src, int64_t ss, float* dst, int64_t ds) {
  __m512 r0 = _mm512_loadu_ps(src), r1 = _mm512_loadu_ps(src + ss), r2 = _mm512_loadu_ps(src + 2 * ss),
         r3 = _mm512_loadu_ps(src + 3 * ss), r4 = _mm512_loadu_ps(src + 4 * ss), r5 = _mm512_loadu_ps(src + 5 * ss),
         r6 = _mm512_loadu_ps(src + 6 * ss), r7 = _mm512_loadu_ps(src + 7 * ss), r8 = _mm512_loadu_ps(src + 8 * ss),
         r9 = _mm512_loadu_ps(src + 9 * ss), r10 = _mm512_loadu_ps(src + 10 * ss), r11 = _mm512_loadu_ps(src + 11 * ss),
         r12 = _mm512_loadu_ps(src + 12 * ss), r13 = _mm512_loadu_ps(src + 13 * ss),
         r14 = _mm512_loadu_ps(src + 14 * ss), r15 = _mm512_loadu_ps(src + 15 * ss);
  // pairs of rows interleaved, then quads, then 128-bit lanes twice
  __m512 t0 = _mm512_unpacklo_ps(r0, r1), t1 = _mm512_unpackhi_ps(r0, r1), t2 = _mm512_unpacklo_ps(r2, r3),
         t3 = _mm512_unpackhi_ps(r2, r3), t4 = _mm512_unpacklo_ps(r4, r5), t5 = _mm512_unpackhi_ps(r4, r5),
         t6 = _mm512_unpacklo_ps(r6, r7), t7 = _mm512_unpackhi_ps(r6, r7), t8 = _mm512_unpacklo_ps(r8, r9),
         t9 = _mm512_unpackhi_ps(r8, r9), t10 = _mm512_unpacklo_ps(r10, r11), t11 = _mm512_unpackhi_ps(r10, r11),
         t12 = _mm512_unpacklo_ps(r12, r13), t13 = _mm512_unpackhi_ps(r12, r13),
         t14 = _mm512_unpacklo_ps(r14, r15), t15 = _mm512_unpackhi_ps(r14, r15);
  r0 = _mm512_shuffle_ps(t0, t2, 0x44); r1 = _mm512_shuffle_ps(t0, t2, 0xEE);
  r2 = _mm512_shuffle_ps(t1, t3, 0x44); r3 = _mm512_shuffle_ps(t1, t3, 0xEE);
  r4 = _mm512_shuffle_ps(t4, t6, 0x44); r5 = _mm512_shuffle_ps(t4, t6, 0xEE);
  r6 = _mm512_shuffle_ps(t5, t7, 0x44); r7 = _mm512_shuffle_ps(t5, t7, 0xEE);
  r8 = _mm512_shuffle_ps(t8, t10, 0x44); r9 = _mm512_shuffle_ps(t8, t10, 0xEE);
  r10 = _mm512_shuffle_ps(t9, t11, 0x44); r11 = _mm512_shuffle_ps(t9, t11, 0xEE);
  r12 = _mm512_shuffle_ps(t12, t14, 0x44); r13 = _mm512_shuffle_ps(t12, t14, 0xEE);
  r14 = _mm512_shuffle_ps(t13, t15, 0x44); r15 = _mm512_shuffle_ps(t13, t15, 0xEE);
  t0 = _mm512_shuffle_f32x4(r0, r4, 0x88); t1 = _mm512_shuffle_f32x4(r1, r5, 0x88);
  t2 = _mm512_shuffle_f32x4(r2, r6, 0x88); t3 = _mm512_shuffle_f32x4(r3, r7, 0x88);
  t4 = _mm512_shuffle_f32x4(r0, r4, 0xDD); t5 = _mm512_shuffle_f32x4(r1, r5, 0xDD);
  t6 = _mm512_shuffle_f32x4(r2, r6, 0xDD); t7 = _mm512_shuffle_f32x4(r3, r7, 0xDD);
  t8 = _mm512_shuffle_f32x4(r8, r12, 0x88); t9 = _mm512_shuffle_f32x4(r9, r13, 0x88);
  t10 = _mm512_shuffle_f32x4(r10, r14, 0x88); t11 = _mm512_shuffle_f32x4(r11, r15, 0x88);
  t12 = _mm512_shuffle_f32x4(r8, r12, 0xDD); t13 = _mm512_shuffle_f32x4(r9, r13, 0xDD);
  t14 = _mm512_shuffle_f32x4(r10, r14, 0xDD); t15 = _mm512_shuffle_f32x4(r11, r15, 0xDD);
  _mm512_storeu_ps(dst, _mm512_shuffle_f32x4(t0, t8, 0x88));
  _mm512_storeu_ps(dst + ds, _mm512_shuffle_f32x4(t1, t9, 0x88));
  _mm512_storeu_ps(dst + 2 * ds, _mm512_shuffle_f32x4(t2, t10, 0x88));
  _mm512_storeu_ps(dst + 3 * ds, _mm512_shuffle_f32x4(t3, t11, 0x88));
  _mm512_storeu_ps(dst + 4 * ds, _mm512_shuffle_f32x4(t4, t12, 0x88));
  _mm512_storeu_ps(dst + 5 * ds, _mm512_shuffle_f32x4(t5, t13, 0x88));
  _mm512_storeu_ps(dst + 6 * ds, _mm512_shuffle_f32x4(t6, t14, 0x88));
  _mm512_storeu_ps(dst + 7 * ds, _mm512_shuffle_f32x4(t7, t15, 0x88));
  _mm512_storeu_ps(dst + 8 * ds, _mm512_shuffle_f32x4(t0, t8, 0xDD));
  _mm512_storeu_ps(dst + 9 * ds, _mm512_shuffle_f32x4(t1, t9, 0xDD));
  _mm512_storeu_ps(dst + 10 * ds, _mm512_shuffle_f32x4(t2, t10, 0xDD));
  _mm512_storeu_ps(dst + 11 * ds, _mm512_shuffle_f32x4(t3, t11, 0xDD));
  _mm512_storeu_ps(dst + 12 * ds, _mm512_shuffle_f32x4(t4, t12, 0xDD));
  _mm512_storeu_ps(dst + 13 * ds, _mm512_shuffle_f32x4(t5, t13, 0xDD));
  _mm512_storeu_ps(dst + 14 * ds, _mm512_shuffle_f32x4(t6, t14, 0xDD));
  _mm512_storeu_ps(dst + 15 * ds, _mm512_shuffle_f32x4(t7, t15, 0xDD));
}
#elif defined(__AVX2__)
// dst[c * ds + r] = src[r * ss + c] for r, c < 8: an 8 x 8 block transposed in registers.
inline void transpose_block(const float* src, int64_t ss, float* dst, int64_t ds) {
  __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + ss), r2 = _mm256_loadu_ps(src + 2 * ss),
         r3 = _mm256_loadu_ps(src + 3 * ss), r4 = _mm256_loadu_ps(src + 4 * ss), r5 = _mm256_loadu_ps(src + 5 * ss),
         r6 = _mm256_loadu_ps(src + 6 * ss), r7 = _mm256_loadu_ps(src + 7 * ss);
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
         t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
         t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  r0 = _mm256_shuffle_ps(t0, t2, 0x44); r1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  r2 = _mm256_shuffle_ps(t1, t3, 0x44); r3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  r4 = _mm256_shuffle_ps(t4, t6, 0x44); r5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  r6 = _mm256_shuffle_ps(t5, t7, 0x44); r7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(dst, _mm256_permute2f128_ps(r0, r4, 0x20));
  _mm256_storeu_ps(dst + ds, _mm256_permute2f128_ps(r1, r5, 0x20));
  _mm256_storeu_ps(dst + 2 * ds, _mm256_permute2f128_ps(r2, r6, 0x20));
  _mm256_storeu_ps(dst + 3 * ds, _mm256_permute2f128_ps(r3, r7, 0x20));
  _mm256_storeu_ps(dst + 4 * ds, _mm256_permute2f128_ps(r0, r4, 0x31));
  _mm256_storeu_ps(dst + 5 * ds, _mm256_permute2f128_ps(r1, r5, 0x31));
  _mm256_storeu_ps(dst + 6 * ds, _mm256_permute2f128_ps(r2, r6, 0x31));
  _mm256_storeu_ps(dst + 7 * ds, _mm256_permute2f128_ps(r3, r7, 0x31));
}
#endif

#if defined(__AVX512F__) || defined(__AVX2__)

constexpr int64_t kQueries = 4;  // queries per block: their accumulators stay in registers

// e^x for x <= 0 (a softmax's scores less their maximum), to about 2 ulp: Cephes' expf, x = n ln2 + r
// with |r| <= ln2 / 2, e^r by its degree-6 polynomial, times 2^n. Below -87 it gives e^-87 (~1.6e-38).
inline Vec vexp(Vec x) {
  x = vmax(x, vset(-87.0f));
  const Vec n = vround(vmul(x, vset(1.44269504088896341f)));
  Vec r = vsub(x, vmul(n, vset(0.693359375f)));
  r = vsub(r, vmul(n, vset(-2.12194440e-4f)));
  Vec p = vset(1.9875691500e-4f);
  p = vfma(p, r, vset(1.3981999507e-3f));
  p = vfma(p, r, vset(8.3334519073e-3f));
  p = vfma(p, r, vset(4.1665795894e-2f));
  p = vfma(p, r, vset(1.6666665459e-1f));
  p = vfma(p, r, vset(5.0000001201e-1f));
  p = vfma(vmul(p, r), r, vadd(r, vset(1.0f)));
  return vpow2(p, n);
}

// out[i][c : c + NV * kW] = sum_j p[i][j] v[j] * inv_sum[i] + vb for a block's queries: NV vectors
// of features, their kQueries x NV accumulators in registers.
template <int NV>
inline void weigh_values(const float* p, int64_t L, int64_t Lp, const float* v, int64_t v_stride,
                         const float* inv_sum, const float* vb, float* const* orow, int64_t c) {
  Vec acc[kQueries][NV];
  for (int64_t i = 0; i < kQueries; ++i)
    for (int t = 0; t < NV; ++t) acc[i][t] = vset(0.0f);
  for (int64_t j = 0; j < L; ++j) {
    Vec vv[NV];
    for (int t = 0; t < NV; ++t) vv[t] = vload(v + j * v_stride + t * kW);
    for (int64_t i = 0; i < kQueries; ++i) {
      const Vec w = vset(p[i * Lp + j]);
      for (int t = 0; t < NV; ++t) acc[i][t] = vfma(w, vv[t], acc[i][t]);
    }
  }
  // every query of the block, a constant count that keeps the accumulators in registers: a short
  // block's repeated query writes its own row's values again
  for (int64_t i = 0; i < kQueries; ++i)
    for (int t = 0; t < NV; ++t) vstore(orow[i] + c + t * kW, vfma(acc[i][t], vset(inv_sum[i]), vload(vb + t * kW)));
}

// scores[i][0 : NK * kW] = q_i kᵀ * scale for a block's queries against NK * kW keys (kt: their
// columns of the transposed keys, rows Lp apart).
template <int NK>
inline void score_keys(const float* const* qrow, const float* kt, int64_t Lp, int64_t hd, float scale, float* scores) {
  Vec acc[kQueries][NK];
  for (int64_t i = 0; i < kQueries; ++i)
    for (int t = 0; t < NK; ++t) acc[i][t] = vset(0.0f);
  for (int64_t d = 0; d < hd; ++d) {
    Vec kv[NK];
    for (int t = 0; t < NK; ++t) kv[t] = vload(kt + d * Lp + t * kW);
    for (int64_t i = 0; i < kQueries; ++i) {
      const Vec qd = vset(qrow[i][d]);
      for (int t = 0; t < NK; ++t) acc[i][t] = vfma(qd, kv[t], acc[i][t]);
    }
  }
  for (int64_t i = 0; i < kQueries; ++i)
    for (int t = 0; t < NK; ++t) vstore(scores + i * Lp + t * kW, vmul(acc[i][t], vset(scale)));
}

// Ask for a row's cache lines ahead of their use.
inline void prefetch_row(const float* p, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) _mm_prefetch(reinterpret_cast<const char*>(p + i), _MM_HINT_T0);
}

// One block of kQueries queries of one head against its L keys (kt: head_dim x Lp, transposed,
// Lp = L rounded up to kW); writes their outputs. scores: kQueries x Lp scratch.
void attend_block(const float* const* qrow, float* const* orow, const float* kt, int64_t L, int64_t Lp,
                  const float* v0, int64_t v_stride, const float* vb, int64_t hd, float scale, float* scores) {
  // scores = q kᵀ * scale, 2 kW keys at a time (then kW), the padding keys -inf
  int64_t j = 0;
  for (; j + 2 * kW <= Lp; j += 2 * kW) score_keys<2>(qrow, kt + j, Lp, hd, scale, scores + j);
  if (j < Lp) score_keys<1>(qrow, kt + j, Lp, hd, scale, scores + j);
  float inv_sum[kQueries];
  for (int64_t i = 0; i < kQueries; ++i) {
    float* s = scores + i * Lp;
    for (int64_t j = L; j < Lp; ++j) s[j] = -INFINITY;
    Vec m = vset(-INFINITY);
    for (int64_t j = 0; j < Lp; j += kW) m = vmax(m, vload(s + j));
    const Vec mx = vset(vreduce_max(m));
    Vec sum = vset(0.0f);
    for (int64_t j = 0; j < Lp; j += kW) {
      const Vec e = vexp(vsub(vload(s + j), mx));
      vstore(s + j, e);
      sum = vadd(sum, e);
    }
    inv_sum[i] = 1.0f / vreduce_add(sum);  // the padding keys' e^-87 each: nothing next to the max's 1
  }
  // out = p v / sum, 4 vectors of the head's features at a time (then 2, then 1)
  int64_t c = 0;
  for (; c + 4 * kW <= hd; c += 4 * kW) weigh_values<4>(scores, L, Lp, v0 + c, v_stride, inv_sum, vb + c, orow, c);
  if (c + 2 * kW <= hd) {
    weigh_values<2>(scores, L, Lp, v0 + c, v_stride, inv_sum, vb + c, orow, c);
    c += 2 * kW;
  }
  if (c + kW <= hd) {
    weigh_values<1>(scores, L, Lp, v0 + c, v_stride, inv_sum, vb + c, orow, c);
    c += kW;
  }
  for (; c < hd; ++c)  // a head size that is not a multiple of kW: the rest one feature at a time
    for (int64_t i = 0; i < kQueries; ++i) {
      float acc = 0.0f;
      for (int64_t j = 0; j < L; ++j) acc += scores[i * Lp + j] * v0[j * v_stride + c];
      orow[i][c] = acc * inv_sum[i] + vb[c];
    }
}

#endif

}  // namespace

at::Tensor varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bounds,
                            int64_t heads, int64_t rows, const c10::optional<at::Tensor>& q_bias,
                            const c10::optional<at::Tensor>& v_bias) {
  for (const at::Tensor* t : {&q, &k, &v})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->dim() == 2 && t->stride(1) == 1,
                "q, k and v must be (rows, features) fp32 CPU tensors with contiguous rows");
  const int64_t C = q.size(1);
  TORCH_CHECK(k.size(1) == C && v.size(1) == C && k.size(0) == v.size(0), "k and v must match q's features");
  TORCH_CHECK(heads > 0 && C % heads == 0, "features ", C, " do not split into ", heads, " heads");
  const int64_t hd = C / heads;
  TORCH_CHECK(bounds.scalar_type() == at::kLong && bounds.dim() == 2 && bounds.size(1) == 4 && bounds.is_contiguous(),
              "bounds must be a contiguous (sequences, 4) int64 tensor");
  const bool both = q_bias.has_value() && v_bias.has_value();
  const at::Tensor zeros = both ? at::Tensor() : at::zeros({C}, q.options());  // for a bias not given
  const at::Tensor qb = q_bias.has_value() ? q_bias->contiguous() : zeros;
  const at::Tensor vb = v_bias.has_value() ? v_bias->contiguous() : zeros;
  for (const at::Tensor* t : {&qb, &vb})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->dim() == 1 && t->size(0) == C,
                "q_bias and v_bias must be fp32 CPU vectors of ", C);
  at::Tensor out = at::empty({rows, C}, q.options());
#if defined(__AVX512F__) || defined(__AVX2__)
  const int64_t B = bounds.size(0);
  const int64_t* bp = bounds.data_ptr<int64_t>();
  int64_t covered = 0, Lmax = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t q0 = bp[4 * b], nq = bp[4 * b + 1], k0 = bp[4 * b + 2], nk = bp[4 * b + 3];
    TORCH_CHECK(q0 >= 0 && nq >= 0 && q0 + nq <= std::min(q.size(0), rows) && k0 >= 0 && nk >= 0 && k0 + nk <= k.size(0),
                "bounds of sequence ", b, " fall outside q, k or the result");
    covered = std::max(covered, q0 + nq);
    Lmax = std::max(Lmax, nk);
  }
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float *qbp = qb.data_ptr<float>(), *vbp = vb.data_ptr<float>();
  const int64_t qs = q.stride(0), ks = k.stride(0), vs = v.stride(0);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int64_t Lpmax = (Lmax + kW - 1) / kW * kW;
  if (covered < rows) std::fill(op + covered * C, op + rows * C, 0.0f);
  // sequence after sequence, each one's heads in turn (their rows' lines are neighbours), split
  // between the threads by cost (queries x keys) rather than by count
  const int64_t T = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), B * heads));
  std::vector<int64_t> cut(T + 1, B * heads);
  {
    double total = 0.0;
    for (int64_t b = 0; b < B; ++b) total += static_cast<double>(bp[4 * b + 1]) * (bp[4 * b + 3] + kW) * heads;
    double acc = 0.0;
    int64_t t = 1;
    cut[0] = 0;
    for (int64_t task = 0; task < B * heads && t < T; ++task) {
      const int64_t b = task / heads;
      acc += static_cast<double>(bp[4 * b + 1]) * (bp[4 * b + 3] + kW);
      while (t < T && acc >= total * t / T) cut[t++] = task + 1;
    }
  }
  at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
    const int64_t begin = cut[t0], end = cut[t1];
    std::vector<float> kt_buf(hd * Lpmax + kW), sc_buf(kQueries * Lpmax + kW), tail_buf(kW * hd), q_buf(kQueries * hd);
    float* kt = kt_buf.data();
    float* tail = tail_buf.data();
    float* scores = sc_buf.data();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / heads, h = task % heads;
      const int64_t q0 = bp[4 * b], nq = bp[4 * b + 1], k0 = bp[4 * b + 2], L = bp[4 * b + 3];
      if (nq == 0) continue;
      if (L == 0) {
        for (int64_t i = 0; i < nq; ++i) std::fill(op + (q0 + i) * C + h * hd, op + (q0 + i) * C + (h + 1) * hd, 0.0f);
        continue;
      }
      const int64_t Lp = (L + kW - 1) / kW * kW;
      if (task + 1 < end) {  // the next task's rows, on their way while this one computes
        const int64_t b1 = (task + 1) / heads, h1 = (task + 1) % heads;
        const int64_t q1 = bp[4 * b1], n1 = bp[4 * b1 + 1], k1 = bp[4 * b1 + 2], L1 = bp[4 * b1 + 3];
        for (int64_t r = 0; r < n1; ++r) prefetch_row(qp + (q1 + r) * qs + h1 * hd, hd);
        for (int64_t r = 0; r < L1; ++r) {
          prefetch_row(kp + (k1 + r) * ks + h1 * hd, hd);
          prefetch_row(vp + (k1 + r) * vs + h1 * hd, hd);
        }
      }
      // kᵀ of this head, kW keys by kW features at a time; a last short block repeats its last key
      for (int64_t j = 0; j < Lp; j += kW) {
        const float* kr = kp + (k0 + j) * ks + h * hd;
        if (j + kW > L) {
          for (int64_t r = 0; r < kW; ++r) std::copy(kr + std::min(r, L - 1 - j) * ks, kr + std::min(r, L - 1 - j) * ks + hd, tail + r * hd);
          kr = tail;
        }
        const int64_t stride = j + kW > L ? hd : ks;
        int64_t d = 0;
        for (; d + kW <= hd; d += kW) transpose_block(kr + d, stride, kt + d * Lp + j, Lp);
        for (; d < hd; ++d)
          for (int64_t r = 0; r < kW; ++r) kt[d * Lp + j + r] = kr[r * stride + d];
      }
      const float* v0 = vp + k0 * vs + h * hd;
      for (int64_t i0 = 0; i0 < nq; i0 += kQueries) {
        const int64_t n = std::min(kQueries, nq - i0);
        const float* qrow[kQueries];
        float* orow[kQueries];
        for (int64_t i = 0; i < kQueries; ++i) {
          const int64_t r = q0 + i0 + std::min(i, n - 1);  // a short block repeats its last query
          float* qi = q_buf.data() + i * hd;  // the query plus its bias
          const float* src = qp + r * qs + h * hd;
          const float* bias = qbp + h * hd;
          int64_t d = 0;
          for (; d + kW <= hd; d += kW) vstore(qi + d, vadd(vload(src + d), vload(bias + d)));
          for (; d < hd; ++d) qi[d] = src[d] + bias[d];
          qrow[i] = qi;
          orow[i] = op + r * C + h * hd;
        }
        attend_block(qrow, orow, kt, L, Lp, v0, vs, vbp + h * hd, hd, scale, scores);
      }
    }
  });
#else
  TORCH_CHECK(false, "varlen_attention needs AVX-512 or AVX2");
#endif
  return out;
}

// ---- the elementwise passes around a layer's matmuls, at inference -----------------------------
//
//   torch.ops.roberta.bias_gelu_(h, bias)          h (M, F) fp32: h = GELU(h + bias), in place
//       GELU(x) = x/2 (1 + erf(x / √2)), erf by a rational function (`vgelu`) where torch's
//       vectorised GELU takes an exponential and a division (Abramowitz & Stegun 7.1.26): the same
//       to 5e-7, a third fewer instructions.
//   torch.ops.roberta.add_layer_norm_(y, bias, residual, weight, beta, eps)
//       y (M, C) fp32: y = LayerNorm(y + bias + residual) * weight + beta, in place, a row at a time
//       (the sum, its mean and variance, the normalised row: three passes over a row in cache).
// What a post-LN block does after its matmul, in one pass over the matmul's output instead of the
// bias copy into it before, the residual's sum and LayerNorm's two after.

namespace {

#if defined(__AVX512F__) || defined(__AVX2__)

// GELU(x) = x/2 (1 + erf(x/√2)); erf(z) = z P(z²) / Q(z²) on |z| <= 4, ±1 beyond (where erf is
// within 2e-8 of it): a rational fit to erf, |error| < 5e-7 in fp32 (python benchmarks/fit_erf.py).
inline Vec vgelu(Vec x) {
  const Vec z = vmax(vset(-4.0f), vmin(vset(4.0f), vmul(x, vset(0.70710678118654752f))));
  const Vec t = vmul(z, z);
  Vec p = vset(1.9217953450834102e-08f);
  p = vfma(p, t, vset(-1.990526925510494e-06f));
  p = vfma(p, t, vset(0.00015556976723019034f));
  p = vfma(p, t, vset(0.004294255748391151f));
  p = vfma(p, t, vset(0.052437152713537216f));
  p = vfma(p, t, vset(0.2139715850353241f));
  p = vfma(p, t, vset(1.1283786296844482f));
  Vec q = vset(0.0010983432875946164f);
  q = vfma(q, t, vset(0.01555347628891468f));
  q = vfma(q, t, vset(0.1208108589053154f));
  q = vfma(q, t, vset(0.522955060005188f));
  q = vfma(q, t, vset(1.0f));
  const Vec erf = vdiv(vmul(z, p), q);
  return vmul(vmul(x, vset(0.5f)), vadd(vset(1.0f), erf));
}

#endif

inline float gelu_scalar(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }

void check_rows(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2 && x.is_contiguous(),
              name, " must be a contiguous (rows, features) fp32 CPU tensor");
}

void check_vector(const at::Tensor& v, int64_t n, const char* name) {
  TORCH_CHECK(v.device().is_cpu() && v.scalar_type() == at::kFloat && v.dim() == 1 && v.size(0) == n && v.is_contiguous(),
              name, " must be a contiguous fp32 CPU vector of ", n);
}

}  // namespace

at::Tensor& bias_gelu_(at::Tensor& h, const at::Tensor& bias) {
  check_rows(h, "h");
  const int64_t M = h.size(0), F = h.size(1);
  check_vector(bias, F, "bias");
  float* hp = h.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  at::parallel_for(0, M, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* row = hp + i * F;
      int64_t k = 0;
#if defined(__AVX512F__) || defined(__AVX2__)
      for (; k + kW <= F; k += kW) vstore(row + k, vgelu(vadd(vload(row + k), vload(bp + k))));
#endif
      for (; k < F; ++k) row[k] = gelu_scalar(row[k] + bp[k]);
    }
  });
  return h;
}

at::Tensor& add_layer_norm_(at::Tensor& y, const at::Tensor& bias, const at::Tensor& residual,
                            const at::Tensor& weight, const at::Tensor& beta, double eps) {
  check_rows(y, "y");
  check_rows(residual, "residual");
  const int64_t M = y.size(0), C = y.size(1);
  TORCH_CHECK(residual.size(0) == M && residual.size(1) == C, "residual must have y's shape");
  check_vector(bias, C, "bias");
  check_vector(weight, C, "weight");
  check_vector(beta, C, "beta");
  float* yp = y.data_ptr<float>();
  const float* rp = residual.data_ptr<float>();
  const float *bp = bias.data_ptr<float>(), *wp = weight.data_ptr<float>(), *ep = beta.data_ptr<float>();
  const float e = static_cast<float>(eps);
  at::parallel_for(0, M, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* row = yp + i * C;
      const float* res = rp + i * C;
      float sum = 0.0f;
      int64_t k = 0;
#if defined(__AVX512F__) || defined(__AVX2__)
      Vec vs = vset(0.0f);
      for (; k + kW <= C; k += kW) {
        const Vec z = vadd(vadd(vload(row + k), vload(bp + k)), vload(res + k));
        vstore(row + k, z);
        vs = vadd(vs, z);
      }
      sum = vreduce_add(vs);
#endif
      for (; k < C; ++k) {
        row[k] = row[k] + bp[k] + res[k];
        sum += row[k];
      }
      const float mean = sum / static_cast<float>(C);
      float sq = 0.0f;
      k = 0;
#if defined(__AVX512F__) || defined(__AVX2__)
      Vec vq = vset(0.0f);
      const Vec vm = vset(mean);
      for (; k + kW <= C; k += kW) {
        const Vec d = vsub(vload(row + k), vm);
        vq = vfma(d, d, vq);
      }
      sq = vreduce_add(vq);
#endif
      for (; k < C; ++k) sq += (row[k] - mean) * (row[k] - mean);
      const float rstd = 1.0f / std::sqrt(sq / static_cast<float>(C) + e);
      k = 0;
#if defined(__AVX512F__) || defined(__AVX2__)
      const Vec vr = vset(rstd);
      for (; k + kW <= C; k += kW)
        vstore(row + k, vfma(vmul(vsub(vload(row + k), vm), vr), vload(wp + k), vload(ep + k)));
#endif
      for (; k < C; ++k) row[k] = (row[k] - mean) * rstd * wp[k] + ep[k];
    }
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
  m.def("varlen_attention(Tensor q, Tensor k, Tensor v, Tensor bounds, int heads, int rows, Tensor? q_bias=None, Tensor? v_bias=None) -> Tensor");
  m.def("bias_gelu_(Tensor(a!) h, Tensor bias) -> Tensor(a!)");
  m.def("add_layer_norm_(Tensor(a!) y, Tensor bias, Tensor residual, Tensor weight, Tensor beta, float eps) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(roberta, CPU, m) {
  m.impl("quantize_rows", &quantize_rows);
  m.impl("quantize_rows_above", &quantize_rows_above);
  m.impl("dropout", &dropout);
  m.impl("varlen_attention", &varlen_attention);
  m.impl("bias_gelu_", &bias_gelu_);
  m.impl("add_layer_norm_", &add_layer_norm_);
}
