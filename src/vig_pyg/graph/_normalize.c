/* Row normalisation for the dense kNN backend of vig_pyg (graph/knn.py, _normalize, says
   why). Compiled into one library with _select.c by vig_pyg/graph/select.py. Plain C99.

   For each row x of a row-major [rows, c] float32 matrix:
     q  = x / max(|x|, 1e-12)      (the L2-normalised row, written to out)
     sq = |q|^2                    (its squared norm, the |y_j|^2 of the distance)
   in one read of x and one write of q, where torch needs a square, a sum, a square root,
   a division and a second square and sum, each a pass with a fresh tensor. Squares are
   summed in double, in 16 independent lanes (so the compiler vectorises the loop): |x|
   carries no more rounding than torch's float32 sum, and an entry whose square overflows
   float32 does not turn a finite row into an infinite norm. The pass is bound by memory,
   not by the double arithmetic. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define LANES 16

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

/* Returns 1 when every row's norm is finite in float32 (no NaN or infinity in x, no norm
   beyond the float range), else 0; such rows are written all the same. sq may be NULL
   (the fused kNN pass's queries, whose |q|^2 cannot change their neighbours' order). */
int vig_normalize_rows(const float* x, int64_t rows, int64_t c, float* out, float* sq,
                       int32_t threads) {
  int finite = 1;
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
}
