/* Row normalisation for the dense kNN backend of vig_pyg (graph/knn.py, _normalize, says
   why). Compiled into one library with _select.c by vig_pyg/native/build.py. Plain C99.

   For each row x of a row-major [rows, c] float32 matrix:
     q  = x / max(|x|, 1e-12)      (the L2-normalised row, written to out)
     sq = |q|^2                    (its squared norm, the |y_j|^2 of the distance)
   in one read of x and one write of q, where torch needs a square, a sum, a square root,
   a division and a second square and sum, each a pass with a fresh tensor. Squares are
   summed in double: |x| carries no more rounding than torch's float32 sum, and an entry
   whose square overflows float32 does not turn a finite row into an infinite norm.

   With AVX-512 (not VIG_PORTABLE) four rows are done at once, so that one row's chain of
   dependent steps (its sum, the square root, the scale, the second sum) overlaps the
   others', and the division is a multiplication by 1/n and one correction step, which
   gives the correctly rounded quotient, the same bits as x / n (see `divide`). Inside the
   fused kNN pass the rows' normalisation had been a sixth of pvig_ti's third-stage kNN
   and a quarter of its fourth: this form takes 0.55-0.75 of the one-row loop's cycles on
   48-384 channels (a C harness, rows in the L1 cache). */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "vig_native.h"
#if defined(__AVX512F__) && defined(__AVX512VL__) && !defined(VIG_PORTABLE)
#include <immintrin.h>
#define VIG_NORMALIZE_AVX512 1
#endif

#define LANES 16

#ifndef VIG_NORMALIZE_AVX512
/* the portable sum of squares: 16 double lanes (so the compiler vectorises the loop) */
static double sum_squares(const float* v, int64_t c) {
  double acc[LANES] = {0};
  int64_t j = 0;
  for (; j + LANES <= c; j += LANES)
    for (int l = 0; l < LANES; ++l) acc[l] += (double)v[j + l] * v[j + l];
  double s = 0;
  for (int l = 0; l < LANES; ++l) s += acc[l];
  for (; j < c; ++j) s += (double)v[j] * v[j];
  return s;
}

/* out = v / norm (a NaN norm, which the clamp in vig_normalize_rows keeps as torch's
   clamp_min does, makes the row NaN) */
static void scale(const float* v, int64_t c, float norm, float* out) {
  for (int64_t j = 0; j < c; ++j) out[j] = v[j] / norm;
}

/* one row: out = x / norm, *sq = |out|^2 (sq may be NULL); 1 when its norm is finite */
static int normalize_row(const float* x, int64_t c, float* out, float* sq) {
  float norm = (float)sqrt(sum_squares(x, c));
  scale(x, c, norm < 1e-12f ? 1e-12f : norm, out);
  if (sq) *sq = (float)sum_squares(out, c);
  return isfinite(norm);  /* NaN or an infinity in the row, or overflow */
}

#else
/* a + the squares of v[j .. j + 15] (the lanes `in`), in double: two 8-wide halves */
static inline __m512d add_squares(const float* v, int64_t j, __mmask16 in, __m512d a) {
  __m512d lo = _mm512_cvtps_pd(_mm256_maskz_loadu_ps((__mmask8)in, v + j));
  __m512d hi = _mm512_cvtps_pd(_mm256_maskz_loadu_ps((__mmask8)(in >> 8), v + j + 8));
  return _mm512_fmadd_pd(hi, hi, _mm512_fmadd_pd(lo, lo, a));
}

static inline __mmask16 lanes_in(int64_t j, int64_t c) {
  return j + 16 <= c ? 0xFFFF : (__mmask16)((1u << (c - j)) - 1);
}

/* a / n, correctly rounded, as a * y (y = 1/n) and one correction: with y the rounded
   reciprocal and q = a * y within an ulp of a / n, the residual e = a - q n is exact in a
   fused multiply-add and q + e y rounds to the quotient (Markstein's theorem, binary
   floating point, round to nearest), barring underflow and overflow. `plain` rows (a norm
   outside [2^-60, 2^60], an infinity or NaN among them) divide outright, and so do the
   lanes with |a| < 2^-100 (zero included: the correction would turn -0 into +0), where
   the residual could underflow; a division costs about four cycles a vector here. */
static inline __m512 divide(__m512 a, __m512 n, __m512 y, int plain, __mmask16 in) {
  if (plain) return _mm512_div_ps(a, n);
  __m512 q = _mm512_mul_ps(a, y);
  q = _mm512_fmadd_ps(_mm512_fnmadd_ps(q, n, a), y, q);
  __mmask16 tiny = _mm512_mask_cmp_ps_mask(in, _mm512_abs_ps(a), _mm512_set1_ps(0x1p-100f),
                                           _CMP_LT_OQ);
  return tiny ? _mm512_mask_div_ps(q, tiny, a, n) : q;
}

/* normalize_row for R rows x + r c at once (R a compile-time constant where inlined, so
   the accumulators stay in registers); 1 when every norm is finite */
static inline __attribute__((always_inline)) int normalize_rows_at(
    const float* x, int64_t c, float* out, float* sq, const int R) {
  __m512d acc[4];
  __m512 n[4], y[4];
  int plain[4], finite = 1;
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_pd();
  for (int64_t j = 0; j < c; j += 16)
    for (int r = 0; r < R; ++r) acc[r] = add_squares(x + r * c, j, lanes_in(j, c), acc[r]);
  for (int r = 0; r < R; ++r) {
    float norm = (float)sqrt(_mm512_reduce_add_pd(acc[r]));
    finite &= isfinite(norm);
    norm = norm < 1e-12f ? 1e-12f : norm;  /* a NaN norm stays NaN, as in torch's clamp */
    plain[r] = !(norm >= 0x1p-60f && norm <= 0x1p60f);
    n[r] = _mm512_set1_ps(norm);
    y[r] = _mm512_set1_ps(1.0f / norm);
    acc[r] = _mm512_setzero_pd();
  }
  for (int64_t j = 0; j < c; j += 16) {
    __mmask16 in = lanes_in(j, c);
    for (int r = 0; r < R; ++r) {
      __m512 q = divide(_mm512_maskz_loadu_ps(in, x + r * c + j), n[r], y[r], plain[r], in);
      _mm512_mask_storeu_ps(out + r * c + j, in, q);
    }
    if (sq)  /* the squares of the rounded quotients, read back from the L1 cache */
      for (int r = 0; r < R; ++r) acc[r] = add_squares(out + r * c, j, in, acc[r]);
  }
  if (sq)
    for (int r = 0; r < R; ++r) sq[r] = (float)_mm512_reduce_add_pd(acc[r]);
  return finite;
}

/* rows [0, rows) four at a time, then one at a time */
static int normalize_block(const float* x, int64_t rows, int64_t c, float* out, float* sq) {
  int finite = 1;
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4)
    finite &= normalize_rows_at(x + r * c, c, out + r * c, sq ? sq + r : NULL, 4);
  for (; r < rows; ++r)
    finite &= normalize_rows_at(x + r * c, c, out + r * c, sq ? sq + r : NULL, 1);
  return finite;
}
#endif

/* vig_native.h says what this computes. */
int vig_normalize_rows(const float* x, int64_t rows, int64_t c, float* out, float* sq,
                       int32_t threads) {
  int finite = 1;
#ifdef VIG_NORMALIZE_AVX512
  if (threads <= 1)  /* no parallel region: the fused kNN pass calls this per few rows */
    return normalize_block(x, rows, c, out, sq);
  const int64_t step = 64;  /* rows a task: a multiple of the four done at once */
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) reduction(&&: finite)
#endif
  for (int64_t r = 0; r < rows; r += step)
    finite = normalize_block(x + r * c, rows - r < step ? rows - r : step, c, out + r * c,
                             sq ? sq + r : NULL) && finite;
  return finite;
#else
  if (threads <= 1) {  /* no parallel region: the fused kNN pass calls this per few rows */
    for (int64_t r = 0; r < rows; ++r)
      finite &= normalize_row(x + r * c, c, out + r * c, sq ? sq + r : NULL);
    return finite;
  }
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) reduction(&&: finite)
#endif
  for (int64_t r = 0; r < rows; ++r)
    finite = normalize_row(x + r * c, c, out + r * c, sq ? sq + r : NULL) && finite;
  return finite;
#endif
}
