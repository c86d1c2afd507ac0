/* Row-wise selection of the kd smallest values for the dense kNN backend of vig_pyg.
   vig_pyg/graph/selection.py explains the method and falls back to torch.topk where this
   file cannot be used; vig_pyg/native/build.py builds it. Plain C99, no Python or torch
   headers: it compiles in well under a second and is called through ctypes. Built with
   -fopenmp (where torch's own libgomp is loaded) the rows are split over torch's OpenMP
   threads here, else over Python threads (ctypes releases the GIL). With AVX-512 (and not
   VIG_PORTABLE) every pass uses 16-wide vectors; the portable loops give the same
   result, and the tests build and check both. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "vig_native.h"

#if defined(__AVX512F__) && !defined(VIG_PORTABLE)
#include <immintrin.h>
#define VIG_AVX512 1
#endif

#define LANES 16       /* the group count is a multiple of this */
#define MAX_GROUPS 64  /* above this, u is the largest group minimum (no counting) */
#define SHORT_RATIO 5  /* rows with fewer than 5 candidates per kept one: histogram pass */
#define BUCKETS 64     /* of the histogram */

static inline float key_of(float v) { return v != v ? INFINITY : v; }  /* NaN sorts last */

#ifdef VIG_AVX512
/* lanes j..j+15 that lie inside a row of m */
static inline __mmask16 tail_mask(int64_t j, int64_t m) {
  return j + LANES <= m ? 0xFFFF : (__mmask16)((1u << (m - j)) - 1);
}

/* d[j..j+15] as keys (NaN -> inf), +inf in the lanes past the row's end */
static inline __m512 load_keys(const float* d, int64_t j, int64_t m) {
  const __m512 inf = _mm512_set1_ps(INFINITY);
  __m512 v = _mm512_mask_loadu_ps(inf, tail_mask(j, m), d + j);
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), v, inf);
}

/* appends the kept lanes of v and their column indices at cv + c, ci + c; returns the new
   count. Compress in registers, then a plain store: compressing straight to memory is
   microcoded (slow) on some processors. */
static inline int64_t append_kept(__mmask16 keep, __m512 v, int64_t j, float* cv,
                                  int32_t* ci, int64_t c) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512i idx = _mm512_add_epi32(lane, _mm512_set1_epi32((int32_t)j));
  _mm512_storeu_ps(cv + c, _mm512_maskz_compress_ps(keep, v));
  _mm512_storeu_si512((void*)(ci + c), _mm512_maskz_compress_epi32(keep, idx));
  return c + __builtin_popcount((unsigned)keep);
}

#else
/* 8-wide vectors in GCC/Clang's portable notation (any target; AVX2 on most x86) */
typedef float vf8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));

/* #{s < n: a[s] < v} + #{s < t: a[s] == v}: the place of a value v found at position t in
   the stable ascending order of a[0:n]. a must hold +inf from n up to a multiple of 8
   (those never count: not below v, and not before t). */
static int32_t place_of(const float* a, int64_t n, float v, int64_t t) {
  const vf8 vv = {v, v, v, v, v, v, v, v};
  vi8 pos = {0, 1, 2, 3, 4, 5, 6, 7}, acc = {0, 0, 0, 0, 0, 0, 0, 0};
  const vi8 eight = {8, 8, 8, 8, 8, 8, 8, 8};
  const int32_t t32 = (int32_t)t;
  const vi8 tt = {t32, t32, t32, t32, t32, t32, t32, t32};
  for (int64_t s = 0; s < n; s += 8) {
    vf8 x;
    memcpy(&x, a + s, sizeof x);
    acc -= (x < vv) | ((x == vv) & (pos < tt));  /* a true compare is -1 */
    pos += eight;
  }
  int32_t total = 0;
  for (int i = 0; i < 8; ++i) total += acc[i];
  return total;
}

static int32_t count_below(const float* a, int64_t n, float v) { return place_of(a, n, v, 0); }
#endif

/* u such that the kd smallest of d[0:m] are all <= u. Column j belongs to group j mod G
   (G = kd rounded up to LANES), so the group minima are an elementwise minimum of
   consecutive G-wide slices. The kd smallest group minima are kd distinct values, so
   the kd-th smallest minimum is a bound (tighter than the largest when G > kd). */
static float bound(const float* d, int64_t m, int64_t kd) {
  int64_t G = (kd + LANES - 1) / LANES * LANES;
  float lo[1024 + LANES];
#ifdef VIG_AVX512
  for (int64_t g = 0; g < G; g += LANES) {
    __m512 acc = _mm512_set1_ps(INFINITY);
    for (int64_t j = g; j < m; j += G) acc = _mm512_min_ps(acc, load_keys(d, j, m));
    _mm512_storeu_ps(lo + g, acc);
  }
#else
  for (int64_t g = 0; g < G; ++g) lo[g] = INFINITY;
  for (int64_t j0 = 0; j0 < m; j0 += G) {
    int64_t w = m - j0 < G ? m - j0 : G;
    for (int64_t g = 0; g < w; ++g) {
      float v = key_of(d[j0 + g]);
      lo[g] = v < lo[g] ? v : lo[g];
    }
  }
#endif
  if (G > MAX_GROUPS) {
    float u = -INFINITY;
    for (int64_t g = 0; g < G; ++g) u = lo[g] > u ? lo[g] : u;
    return u;
  }
  /* the kd-th smallest minimum is the largest one with fewer than kd minima below it.
     Counted without a branch on the counts (a branch per minimum mispredicted about every
     other time and cost more than the rest of the row). G is a multiple of LANES, so lo
     needs no padding. */
#ifdef VIG_AVX512
  /* every minimum's count at once, one lane each, as place_all does */
  const __m512i one = _mm512_set1_epi32(1);
  __m512i below[MAX_GROUPS / LANES];
  int64_t blocks = G / LANES;
  for (int64_t b = 0; b < blocks; ++b) below[b] = _mm512_setzero_si512();
  for (int64_t s = 0; s < G; ++s) {
    __m512 x = _mm512_set1_ps(lo[s]);
    for (int64_t b = 0; b < blocks; ++b)
      below[b] = _mm512_mask_add_epi32(below[b], _mm512_cmp_ps_mask(x, _mm512_loadu_ps(
          lo + b * LANES), _CMP_LT_OQ), below[b], one);
  }
  __m512 best = _mm512_set1_ps(-INFINITY);
  for (int64_t b = 0; b < blocks; ++b)
    best = _mm512_mask_max_ps(best, _mm512_cmplt_epi32_mask(below[b], _mm512_set1_epi32(
        (int32_t)kd)), best, _mm512_loadu_ps(lo + b * LANES));
  return _mm512_reduce_max_ps(best);
#else
  float u = -INFINITY;
  for (int64_t g = 0; g < G; ++g) {
    float v = count_below(lo, G, lo[g]) < kd ? lo[g] : -INFINITY;
    u = v > u ? v : u;
  }
  return u;
#endif
}

/* the values <= u (NaN as inf) and their indices, in index order; returns the count.
   cv, ci need room for m + LANES entries (the vector path stores whole vectors). */
static int64_t gather(const float* d, int64_t m, float u, float* cv, int32_t* ci) {
  int64_t c = 0;
#ifdef VIG_AVX512
  const __m512 uu = _mm512_set1_ps(u);
  for (int64_t j = 0; j < m; j += LANES) {
    __m512 v = load_keys(d, j, m);
    c = append_kept(_mm512_mask_cmp_ps_mask(tail_mask(j, m), v, uu, _CMP_LE_OQ), v, j, cv,
                    ci, c);
  }
#else
  for (int64_t j = 0; j < m; ++j) {  /* branch-free: always write, advance if kept */
    float v = key_of(d[j]);
    cv[c] = v;
    ci[c] = (int32_t)j;
    c += v <= u;
  }
#endif
  return c;
}

#ifdef VIG_AVX512
/* gather() where u is finite (all but rows holding NaN or infinities): a NaN fails the
   ordered compare with u, as it should (NaN counts as +inf), so the row is read as it
   is. The compare and the compress of a vector take port 5 on Intel processors, and the
   loop was bound by it (the values' compress, the indices' compress, their broadcast,
   the NaN test): here only the indices are compressed, and the few kept values (a dozen
   of 196 at pvig_ti's first stage) are then loaded by index, sixteen at a time. */
static int64_t gather_below(const float* d, int64_t m, float u, float* cv, int32_t* ci) {
  const __m512 uu = _mm512_set1_ps(u);
  const __m512i step = _mm512_set1_epi32(LANES);
  __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t c = 0, j = 0;
  for (; j + LANES <= m; j += LANES) {
    __mmask16 keep = _mm512_cmp_ps_mask(_mm512_loadu_ps(d + j), uu, _CMP_LE_OQ);
    _mm512_storeu_si512((void*)(ci + c), _mm512_maskz_compress_epi32(keep, idx));
    c += __builtin_popcount((unsigned)keep);
    idx = _mm512_add_epi32(idx, step);
  }
  if (j < m) {
    __mmask16 in = tail_mask(j, m);
    __mmask16 keep = _mm512_mask_cmp_ps_mask(in, _mm512_maskz_loadu_ps(in, d + j), uu,
                                             _CMP_LE_OQ);
    _mm512_storeu_si512((void*)(ci + c), _mm512_maskz_compress_epi32(keep, idx));
    c += __builtin_popcount((unsigned)keep);
  }
  for (int64_t t = 0; t < c; t += LANES) {
    __mmask16 in = tail_mask(t, c);
    __m512i at = _mm512_maskz_loadu_epi32(in, ci + t);
    _mm512_storeu_ps(cv + t, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), in, at, d, 4));
  }
  return c;
}
#endif

/* gather(), by gather_below where it applies */
static int64_t gather_any(const float* d, int64_t m, float u, float* cv, int32_t* ci) {
#ifdef VIG_AVX512
  if (u < INFINITY) return gather_below(d, m, u, cv, ci);
#endif
  return gather(d, m, u, cv, ci);
}

/* The short-row pass (m < SHORT_RATIO * kd), replacing passes 1 and 2: there the group
   minima bound prunes little (54 of 196: most of the row passes it). Instead: a histogram
   of the row over BUCKETS equal slices of [min, max], the first bucket b at which the
   running count reaches kd, and a gather of every value whose bucket is <= b (the kd
   smallest plus, on average, part of one bucket). The bucket of a value is a monotone
   function of it computed the same way in both loops, so rounding cannot lose one: a
   value in a later bucket has at least kd values strictly below it. Rows that are
   constant or hold an infinity (or NaN) are gathered whole. */
static inline int bucket_of(float v, float lo, float scale) {
  int b = (int)((v - lo) * scale);
  return b < BUCKETS ? b : BUCKETS;  /* v = max lands on BUCKETS */
}

#ifdef VIG_AVX512
static inline __m512i buckets16(__m512 v, __m512 lo, __m512 scale) {
  __m512i b = _mm512_cvttps_epi32(_mm512_mul_ps(_mm512_sub_ps(v, lo), scale));
  return _mm512_min_epi32(b, _mm512_set1_epi32(BUCKETS));
}
#endif

static int64_t gather_short(const float* d, int64_t m, int64_t kd, float* cv, int32_t* ci) {
  float lo = INFINITY, hi = -INFINITY;
#ifdef VIG_AVX512
  __m512 vlo = _mm512_set1_ps(INFINITY), vhi = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < m; j += LANES) {
    __mmask16 in = tail_mask(j, m);
    __m512 v = load_keys(d, j, m);
    vlo = _mm512_mask_min_ps(vlo, in, vlo, v);
    vhi = _mm512_mask_max_ps(vhi, in, vhi, v);
  }
  lo = _mm512_reduce_min_ps(vlo);
  hi = _mm512_reduce_max_ps(vhi);
#else
  for (int64_t j = 0; j < m; ++j) {
    float v = key_of(d[j]);
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
#endif
  float scale = (float)BUCKETS / (hi - lo);
  int64_t c = 0;
  if (!(hi > lo) || !(hi - lo < INFINITY) || !(scale < INFINITY)) {
    /* constant, holding an infinity, or too narrow for BUCKETS slices */
    for (int64_t j = 0; j < m; ++j) { cv[j] = key_of(d[j]); ci[j] = (int32_t)j; }
    return m;
  }
  int32_t count[BUCKETS + 1] = {0};
  int b = 0;
#ifdef VIG_AVX512
  /* buckets in vectors, parked in ci (the gather below recomputes them from d) */
  const __m512 vl = _mm512_set1_ps(lo), vs = _mm512_set1_ps(scale);
  for (int64_t j = 0; j < m; j += LANES)  /* the row is finite here; lanes past m unread */
    _mm512_storeu_si512((void*)(ci + j), buckets16(load_keys(d, j, m), vl, vs));
  for (int64_t j = 0; j < m; ++j) ++count[ci[j]];
  for (int32_t run = count[0]; run < kd; run += count[++b]) {}
  const __m512i bb = _mm512_set1_epi32(b);
  for (int64_t j = 0; j < m; j += LANES) {
    __m512 v = load_keys(d, j, m);
    c = append_kept(_mm512_mask_cmple_epi32_mask(tail_mask(j, m), buckets16(v, vl, vs), bb),
                    v, j, cv, ci, c);
  }
#else
  for (int64_t j = 0; j < m; ++j) ++count[bucket_of(key_of(d[j]), lo, scale)];
  for (int32_t run = count[0]; run < kd; run += count[++b]) {}
  for (int64_t j = 0; j < m; ++j) {  /* branch-free, as in gather */
    float v = key_of(d[j]);
    cv[c] = v;
    ci[c] = (int32_t)j;
    c += bucket_of(v, lo, scale) <= b;
  }
#endif
  return c;
}

/* where the candidate of place p goes: idx + p, or sink past the kd kept (a select, not
   a branch: whether a candidate is kept is a coin toss the predictor loses) */
static inline int64_t* slot(int64_t* idx, int64_t kd, int32_t p, int64_t* sink) {
  return p < kd ? idx + p : sink;
}

/* idx[p] = ci[t] for every candidate t whose place p in the stable ascending order of
   cv[0:c] is below kd. A place counts the smaller candidates and the equal ones before it
   (the candidates are in index order); the places are a permutation of 0..c-1, so
   idx[0:kd] is written exactly once each. The c x c compares vectorise and beat an
   insertion sort's mispredicted branches. cv needs LANES slots of room after c. */
static void place_all(float* cv, const int32_t* ci, int64_t c, int64_t kd, int64_t* idx) {
  int64_t sink;
  for (int i = 0; i < LANES; ++i) cv[c + i] = INFINITY;  /* padding: never counts */
#ifdef VIG_AVX512
  /* 16 candidates t0..t0+15 at a time, one lane each, against every candidate s in turn:
     s before the block counts where <= (it comes earlier), s after it where <, and s
     inside it by the full rule. No horizontal sums, no per-step masks to build. */
  const __m512i one = _mm512_set1_epi32(1);
  for (int64_t t0 = 0; t0 < c; t0 += LANES) {
    const __m512 v = _mm512_loadu_ps(cv + t0);
    __m512i place = _mm512_setzero_si512();
    for (int64_t s = 0; s < t0; ++s)
      place = _mm512_mask_add_epi32(place, _mm512_cmp_ps_mask(_mm512_set1_ps(cv[s]), v,
                                    _CMP_LE_OQ), place, one);
    int64_t end = t0 + LANES < c ? t0 + LANES : c;
    for (int64_t s = t0; s < end; ++s) {
      __m512 x = _mm512_set1_ps(cv[s]);
      __mmask16 later = (__mmask16)(0xFFFEu << (s - t0));  /* the lanes after s's own */
      __mmask16 hit = _mm512_cmp_ps_mask(x, v, _CMP_LT_OQ) |
                      _mm512_mask_cmp_ps_mask(later, x, v, _CMP_EQ_OQ);
      place = _mm512_mask_add_epi32(place, hit, place, one);
    }
    for (int64_t s = end; s < c; ++s)
      place = _mm512_mask_add_epi32(place, _mm512_cmp_ps_mask(_mm512_set1_ps(cv[s]), v,
                                    _CMP_LT_OQ), place, one);
    int32_t p[LANES];
    _mm512_storeu_si512((void*)p, place);
    for (int64_t t = t0; t < end; ++t) *slot(idx, kd, p[t - t0], &sink) = ci[t];
  }
#else
  for (int64_t t = 0; t < c; ++t) {
    *slot(idx, kd, place_of(cv, c, cv[t], t), &sink) = ci[t];
  }
#endif
}

/* idx[0:kd] = indices of the kd smallest of d[0:m], ascending, ties in index order. */
static void select_row(const float* d, int64_t m, int64_t kd, int64_t* idx,
                       float* cv, int32_t* ci) {
  int64_t c = m < SHORT_RATIO * kd ? gather_short(d, m, kd, cv, ci)
                                    : gather_any(d, m, bound(d, m, kd), cv, ci);
  place_all(cv, ci, c, kd, idx);
}

#define BLOCK_ROWS VIG_SELECT_BLOCK_ROWS  /* rows of vig_select_block */

#ifdef VIG_AVX512
/* bound() of `ROWS_AT` rows d[0 .. ROWS_AT - 1] at once, for G = NG * LANES (both
   compile-time constants where inlined, so that the minima and counts stay in registers):
   the same minima and the same kd-th smallest, with NaN as +inf (vminps returns its second
   operand, the running minimum, when the first is NaN). One row's bound is a chain of
   dependent minima, counts and a horizontal maximum, so a row at a time mostly waited on
   latency (a third of the fused pass's selection at pvig_ti's first stage); several rows'
   chains interleaved keep the vector units busy. */
static inline __attribute__((always_inline)) void bounds_rows(
    const float* const* d, int64_t m, int64_t kd, float* u, const int ROWS_AT, const int NG) {
  const __m512i one = _mm512_set1_epi32(1);
  __m512 lo[BLOCK_ROWS][2];
  __m512i below[BLOCK_ROWS][2];
  float at[BLOCK_ROWS][2 * LANES];
  for (int r = 0; r < ROWS_AT; ++r)
    for (int b = 0; b < NG; ++b) lo[r][b] = _mm512_set1_ps(INFINITY);
  for (int64_t j = 0; j < m; j += NG * LANES)
    for (int b = 0; b < NG; ++b) {
      __mmask16 in = j + b * LANES < m ? tail_mask(j + b * LANES, m) : 0;
      for (int r = 0; r < ROWS_AT; ++r)
        lo[r][b] = _mm512_mask_min_ps(lo[r][b], in, _mm512_maskz_loadu_ps(
            in, d[r] + j + b * LANES), lo[r][b]);
    }
  for (int r = 0; r < ROWS_AT; ++r)
    for (int b = 0; b < NG; ++b) {
      _mm512_storeu_ps(at[r] + b * LANES, lo[r][b]);
      below[r][b] = _mm512_setzero_si512();
    }
  for (int s = 0; s < NG * LANES; ++s)
    for (int r = 0; r < ROWS_AT; ++r) {
      __m512 x = _mm512_set1_ps(at[r][s]);
      for (int b = 0; b < NG; ++b)
        below[r][b] = _mm512_mask_add_epi32(below[r][b], _mm512_cmp_ps_mask(
            x, lo[r][b], _CMP_LT_OQ), below[r][b], one);
    }
  const __m512i kk = _mm512_set1_epi32((int32_t)kd);
  for (int r = 0; r < ROWS_AT; ++r) {
    float best = -INFINITY;
    for (int b = 0; b < NG; ++b) {
      float v = _mm512_mask_reduce_max_ps(_mm512_cmplt_epi32_mask(below[r][b], kk), lo[r][b]);
      best = v > best ? v : best;
    }
    u[r] = best;
  }
}

/* Batcher's odd-even merge sort of 16 inputs: 63 compare-exchanges in 10 layers (a row
   per layer), e.g. Knuth, TAOCP vol. 3, 5.3.4. test_select checks it sorts every 0/1
   input, which proves it sorts everything (the 0-1 principle). */
static const unsigned char NET16[63][2] = {
    {0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}, {10, 11}, {12, 13}, {14, 15},
    {0, 2}, {1, 3}, {4, 6}, {5, 7}, {8, 10}, {9, 11}, {12, 14}, {13, 15},
    {1, 2}, {5, 6}, {9, 10}, {13, 14},
    {0, 4}, {1, 5}, {2, 6}, {3, 7}, {8, 12}, {9, 13}, {10, 14}, {11, 15},
    {2, 4}, {3, 5}, {10, 12}, {11, 13},
    {1, 2}, {3, 4}, {5, 6}, {9, 10}, {11, 12}, {13, 14},
    {0, 8}, {1, 9}, {2, 10}, {3, 11}, {4, 12}, {5, 13}, {6, 14}, {7, 15},
    {4, 8}, {5, 9}, {6, 10}, {7, 11},
    {2, 4}, {3, 5}, {6, 8}, {7, 9}, {10, 12}, {11, 13},
    {1, 2}, {3, 4}, {5, 6}, {7, 8}, {9, 10}, {11, 12}, {13, 14}};

/* v[0..15] sorted lane by lane (each lane its own 16 numbers; no NaN) */
static inline __attribute__((always_inline)) void sort16(__m256* v) {
#pragma GCC unroll 63
  for (int i = 0; i < 63; ++i) {  /* unrolled, so v stays in registers */
    __m256 a = v[NET16[i][0]], b = v[NET16[i][1]];
    v[NET16[i][0]] = _mm256_min_ps(a, b);
    v[NET16[i][1]] = _mm256_max_ps(a, b);
  }
}

/* the 8 x 8 block r[0..7] (row i in r[i]) transposed into c[0..7] (column j in c[j]) */
static inline void transpose8(const __m256* r, __m256* c) {
  __m256 t[8], s[8];
  for (int i = 0; i < 8; i += 2) {  /* t: pairs of rows interleaved */
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4)  /* s[i + j]: column j (and j + 4) of rows i .. i + 3 */
    for (int h = 0; h < 2; ++h) {
      s[i + 2 * h] = _mm256_shuffle_ps(t[i + h], t[i + h + 2], 0x44);
      s[i + 2 * h + 1] = _mm256_shuffle_ps(t[i + h], t[i + h + 2], 0xEE);
    }
  for (int j = 0; j < 4; ++j) {  /* the two four-row halves of each column joined */
    c[j] = _mm256_permute2f128_ps(s[j], s[j + 4], 0x20);
    c[j + 4] = _mm256_permute2f128_ps(s[j], s[j + 4], 0x31);
  }
}

/* bound() of BLOCK_ROWS rows where G = LANES (kd <= 16): the group minima as bounds_rows
   finds them, then, instead of counting (16 compares a row, each on port 5, and a
   horizontal maximum), the minima transposed so that each of 16 vectors holds one group
   of the eight rows, and sorted across the vectors by a network of minima and maxima:
   the kd-th vector holds the eight bounds. 91 -> ~40 cycles a row (C harness, pvig_ti's
   first stage). */
static void bounds_sorted(const float* const* d, int64_t m, int64_t kd, float* u) {
  __m512 lo[BLOCK_ROWS];
  for (int r = 0; r < BLOCK_ROWS; ++r) lo[r] = _mm512_set1_ps(INFINITY);
  for (int64_t j = 0; j < m; j += LANES) {
    __mmask16 in = tail_mask(j, m);
    for (int r = 0; r < BLOCK_ROWS; ++r)
      lo[r] = _mm512_mask_min_ps(lo[r], in, _mm512_maskz_loadu_ps(in, d[r] + j), lo[r]);
  }
  __m256 half[BLOCK_ROWS], v[2 * BLOCK_ROWS];
  for (int r = 0; r < BLOCK_ROWS; ++r) half[r] = _mm512_castps512_ps256(lo[r]);
  transpose8(half, v);
  for (int r = 0; r < BLOCK_ROWS; ++r)
    half[r] = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(lo[r]), 1));
  transpose8(half, v + BLOCK_ROWS);
  sort16(v);
  _mm256_storeu_ps(u, v[kd - 1]);
}

/* bounds_rows of BLOCK_ROWS rows where G is LANES or 2 LANES (kd <= 32); 0 elsewhere */
static int bounds_block(const float* const* d, int64_t m, int64_t kd, float* u) {
  if (kd <= LANES) {
    bounds_sorted(d, m, kd, u);
    return 1;
  }
  if (kd <= 2 * LANES) {  /* twice the registers a row: half the rows at a time */
    bounds_rows(d, m, kd, u, BLOCK_ROWS / 2, 2);
    bounds_rows(d + BLOCK_ROWS / 2, m, kd, u + BLOCK_ROWS / 2, BLOCK_ROWS / 2, 2);
    return 1;
  }
  return 0;
}
#endif

/* The exported functions: vig_native.h says what each computes. */

void vig_select_block(const float* const* d, int64_t rows, int64_t m, int64_t kd,
                      int64_t* idx, float* cv, int32_t* ci) {
#ifdef VIG_AVX512
  float u[BLOCK_ROWS];
  if (m >= SHORT_RATIO * kd && bounds_block(d, m, kd, u)) {
    for (int64_t r = 0; r < rows; ++r)
      place_all(cv, ci, gather_any(d[r], m, u[r], cv, ci), kd, idx + r * kd);
    return;
  }
#endif
  for (int64_t r = 0; r < rows; ++r) select_row(d[r], m, kd, idx + r * kd, cv, ci);
}

void vig_select_smallest(const float* dist, int64_t rows, int64_t m, int64_t kd,
                         int64_t* idx, float* scratch) {
  float* cv = scratch;
  int32_t* ci = (int32_t*)(scratch + m + LANES);
  for (int64_t r = 0; r < rows; ++r) select_row(dist + r * m, m, kd, idx + r * kd, cv, ci);
}

int vig_select_openmp(void) {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

void vig_select_rows(const float* dist, int64_t rows, int64_t m, int64_t kd, int64_t* idx,
                     float* scratch, int32_t threads) {
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
  {
    int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
    int64_t step = (rows + n - 1) / n, r0 = t * step;
    int64_t r1 = r0 + step < rows ? r0 + step : rows;
    if (r0 < r1)
      vig_select_smallest(dist + r0 * m, r1 - r0, m, kd, idx + r0 * kd,
                          scratch + t * 2 * (m + LANES));
  }
#else
  (void)threads;
  vig_select_smallest(dist, rows, m, kd, idx, scratch);
#endif
}
