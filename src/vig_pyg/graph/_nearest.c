/* The dense kNN's distances and selection in one pass, for vig_pyg/graph/knn.py
   (_fused_nearest says when it is used). Compiled into one library with _select.c by
   vig_pyg/graph/select.py. Plain C99 with GCC/Clang vector extensions.

   For query rows q_i ([g, n, c], L2-normalised) and keys y_j ([g, m, c]) of the same
   image, with s_j = |y_j|^2 and an optional [n, m] term b shared by every image:

       d_ij = s_j - 2 q_i . y_j (+ b_ij)                     (torch.baddbmm, then += b)
       idx_i = the kd smallest d_ij, ascending, ties in index order   (_select.c)

   knn.py's unfused path writes the whole [g, n, m] block of d to memory, adds b in a
   second pass and selects in a third. pvig_ti's first stage holds 16 x 3136 x 196 of
   them (39 MiB); its matmul has only c = 48 products per entry, so writing and reading
   that block back costs more than the arithmetic. Here four query rows at a time get their
   m distances in a scratch buffer the size of a few rows, which the selection reads
   straight from the first-level cache.

   Each thread copies its image's keys transposed ([c, m] padded to whole vectors) once, so
   that a 16-wide vector of keys is one load; a tile of 4 queries x 64 keys keeps 16
   accumulators in registers, and every key vector loaded serves four queries. The dot
   products are summed over the channels in order with fused multiply-adds: an order
   other than the BLAS's, so a distance may differ from the unfused one in its last bits
   (the selection then differs only where two candidates' distances are that close). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")  /* a * b + c as one fused multiply-add */
#endif
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) && !defined(VIG_PORTABLE)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#define LANES 16
#define ROWS 8  /* query rows per tile */
#define WIDE 3  /* key vectors per tile: ROWS x WIDE accumulators */

typedef float vf16 __attribute__((vector_size(LANES * sizeof(float))));

void vig_select_row(const float* d, int64_t m, int64_t kd, int64_t* idx, float* cv,
                    int32_t* ci);  /* _select.c */

static inline vf16 load16(const float* p) { vf16 v; memcpy(&v, p, sizeof v); return v; }
/* *p in every lane: one load (vbroadcastss from memory) where the written-out form would
   load a scalar and then broadcast it on the port the multiply-adds need */
#if defined(__AVX512F__) && !defined(VIG_PORTABLE)
static inline vf16 splat(const float* p) { return (vf16)_mm512_set1_ps(*p); }
#else
static inline vf16 splat(const float* p) { return (vf16){0} + *p; }
#endif
static inline void store16(float* p, vf16 v) { memcpy(p, &v, sizeof v); }
static inline int64_t padded(int64_t m) { return (m + LANES - 1) / LANES * LANES; }

/* d_r[j] = s[j] - 2 acc (+ b_r[j]) for the keys j0 .. j0 + 15 that exist (j < m) */
static inline void finish(vf16 acc, const float* s, const float* b, float* d, int64_t j0,
                          int64_t m) {
  if (j0 + LANES <= m) {
    vf16 v = load16(s + j0) + acc * -2.0f;
    store16(d + j0, b ? v + load16(b + j0) : v);
    return;
  }
  for (int64_t j = j0; j < m; ++j) {  /* the row's last, partial vector */
    float v = s[j] + acc[j - j0] * -2.0f;
    d[j] = b ? v + b[j] : v;
  }
}

/* Distances of ROWS queries to the keys j0 .. j0 + 16 * width - 1 (width <= WIDE, a
   compile-time constant where inlined, so the accumulators stay in registers). */
static inline __attribute__((always_inline)) void tile(
    const float* const* q, const float* yt, int64_t mp, int64_t c, const float* s,
    const float* const* b, float* const* d, int64_t j0, int64_t m, const int width) {
  vf16 acc[ROWS][WIDE];
  for (int r = 0; r < ROWS; ++r)
    for (int w = 0; w < width; ++w) acc[r][w] = (vf16){0};
  for (int64_t k = 0; k < c; ++k) {
    vf16 y[WIDE];
    for (int w = 0; w < width; ++w) y[w] = load16(yt + k * mp + j0 + w * LANES);
    for (int r = 0; r < ROWS; ++r) {
      vf16 qk = splat(q[r] + k);
      for (int w = 0; w < width; ++w) acc[r][w] += qk * y[w];
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int w = 0; w < width; ++w)
      finish(acc[r][w], s, b[r], d[r], j0 + w * LANES, m);
}

/* The m distances of ROWS query rows; rows past the image's end repeat its last row. */
static void distances(const float* const* q, const float* yt, int64_t mp, int64_t c,
                      const float* s, const float* const* b, float* const* d, int64_t m) {
  int64_t j0 = 0;
  for (; j0 + WIDE * LANES <= mp; j0 += WIDE * LANES) tile(q, yt, mp, c, s, b, d, j0, m, WIDE);
  for (; j0 < mp; j0 += LANES) tile(q, yt, mp, c, s, b, d, j0, m, 1);
}

/* Floats of scratch one caller of vig_nearest needs. */
int64_t vig_nearest_scratch(int64_t m, int64_t c) {
  int64_t mp = padded(m);
  return c * mp + mp + ROWS * mp + 2 * (m + LANES);
}

/* yt = the image's keys transposed to [c, mp] (zero past m), sp = s padded to mp. */
static void stage_keys(const float* y, const float* s, int64_t m, int64_t c, float* yt,
                       float* sp) {
  int64_t mp = padded(m);
  memset(yt, 0, (size_t)(c * mp) * sizeof(float));
  for (int64_t j = 0; j < m; ++j)
    for (int64_t k = 0; k < c; ++k) yt[k * mp + j] = y[j * c + k];
  memset(sp, 0, (size_t)mp * sizeof(float));
  memcpy(sp, s, (size_t)m * sizeof(float));
}

/* Query rows [row0, row1) of q ([g * n, c]; row = image * n + i): idx[row] = the kd
   nearest keys of the row's image (indices within the image). b is [n, m] or NULL. */
void vig_nearest(const float* q, const float* y, const float* s, const float* b, int64_t n,
                 int64_t m, int64_t c, int64_t kd, int64_t row0, int64_t row1, int64_t* idx,
                 float* scratch) {
  int64_t mp = padded(m);
  float *yt = scratch, *sp = yt + c * mp, *rows = sp + mp;
  float* cv = rows + ROWS * mp;
  int32_t* ci = (int32_t*)(cv + m + LANES);
  int64_t image = -1;
  for (int64_t r0 = row0; r0 < row1;) {
    int64_t g = r0 / n, end = (g + 1) * n < row1 ? (g + 1) * n : row1;  /* one image */
    if (g != image) stage_keys(y + g * m * c, s + g * m, m, c, yt, sp);
    image = g;
    const float *qr[ROWS], *br[ROWS];
    float* dr[ROWS];
    for (int r = 0; r < ROWS; ++r) {
      int64_t row = r0 + r < end ? r0 + r : end - 1;
      qr[r] = q + row * c;
      br[r] = b ? b + (row - g * n) * m : NULL;
      dr[r] = rows + r * mp;
    }
    distances(qr, yt, mp, c, sp, br, dr, m);
    for (int r = 0; r < ROWS && r0 + r < end; ++r)
      vig_select_row(dr[r], m, kd, idx + (r0 + r) * kd, cv, ci);
    r0 = r0 + ROWS < end ? r0 + ROWS : end;
  }
}

/* vig_nearest over every row, split over `threads` OpenMP threads (each with its own
   vig_nearest_scratch(m, c) floats of scratch). */
void vig_nearest_rows(const float* q, const float* y, const float* s, const float* b,
                      int64_t g, int64_t n, int64_t m, int64_t c, int64_t kd, int64_t* idx,
                      float* scratch, int32_t threads) {
  int64_t rows = g * n, per = vig_nearest_scratch(m, c);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t step = (rows + nt - 1) / nt, r0 = t * step;
    int64_t r1 = r0 + step < rows ? r0 + step : rows;
    if (r0 < r1) vig_nearest(q, y, s, b, n, m, c, kd, r0, r1, idx, scratch + t * per);
  }
#else
  (void)threads;
  (void)per;
  vig_nearest(q, y, s, b, n, m, c, kd, 0, rows, idx, scratch);
#endif
}
