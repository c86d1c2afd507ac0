/* Row-wise selection of the kd smallest values for the dense kNN backend of vig_pyg.
   vig_pyg/graph/select.py explains the method, builds this file and falls back to
   torch.topk where it cannot. Plain C99, no Python or torch headers: it compiles in
   well under a second and is called through ctypes (which releases the GIL, so the
   rows are split over threads on the Python side). */
#include <math.h>
#include <stdint.h>

static inline float key_of(float v) { return v != v ? INFINITY : v; }  /* NaN sorts last */

/* idx[0:kd] = indices of the kd smallest of d[0:m], ascending, ties in index order.
   cv, ci: scratch for m values and m indices. */
static void select_row(const float* d, int64_t m, int64_t kd, int64_t* idx,
                       float* cv, int32_t* ci) {
  /* pass 1: kd groups j = g (mod kd), so the group minima are an elementwise minimum of
     consecutive kd-wide slices (vectorised); u = the largest group minimum: kd distinct
     values are <= u, so the kd smallest all are */
  float lo[1024];
  for (int64_t g = 0; g < kd; ++g) lo[g] = key_of(d[g]);
  int64_t j0 = kd;
  for (; j0 + kd <= m; j0 += kd)
    for (int64_t g = 0; g < kd; ++g) {
      float v = key_of(d[j0 + g]);
      lo[g] = v < lo[g] ? v : lo[g];
    }
  for (int64_t g = 0; j0 + g < m; ++g) {
    float v = key_of(d[j0 + g]);
    lo[g] = v < lo[g] ? v : lo[g];
  }
  float u = -INFINITY;
  for (int64_t g = 0; g < kd; ++g) u = lo[g] > u ? lo[g] : u;
  /* pass 2: the candidates (values <= u), in index order, written branch-free */
  int64_t c = 0;
  for (int64_t j = 0; j < m; ++j) {
    float v = key_of(d[j]);
    cv[c] = v;
    ci[c] = (int32_t)j;
    c += v <= u;
  }
  /* pass 3: insertion into the sorted prefix cv[0:n] (n <= t, so nothing unread is
     overwritten); a value goes after equal ones, so ties keep index order */
  int64_t n = 0;
  for (int64_t t = 0; t < c; ++t) {
    float v = cv[t];
    int32_t vi = ci[t];
    if (n == kd && !(v < cv[kd - 1])) continue;
    int64_t p = n < kd ? n : kd - 1;
    while (p > 0 && cv[p - 1] > v) {
      cv[p] = cv[p - 1];
      ci[p] = ci[p - 1];
      --p;
    }
    cv[p] = v;
    ci[p] = vi;
    if (n < kd) ++n;
  }
  for (int64_t t = 0; t < kd; ++t) idx[t] = ci[t];
}

/* rows [0, rows) of a row-major [rows, m] float32 matrix; 1 <= kd <= min(m, 1024).
   scratch: 2 * m words. */
void vig_select_smallest(const float* dist, int64_t rows, int64_t m, int64_t kd,
                         int64_t* idx, float* scratch) {
  for (int64_t r = 0; r < rows; ++r)
    select_row(dist + r * m, m, kd, idx + r * kd, scratch, (int32_t*)(scratch + m));
}
