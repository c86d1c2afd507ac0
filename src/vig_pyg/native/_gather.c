/* Neighbour reductions over a fixed-degree graph, for vig_pyg/conv/functional.py (which
   says when they are used). Compiled into one library with _select.c by
   vig_pyg/native/build.py. Plain C99.

   Row i of the output reduces the k source rows idx[i*k], ..., idx[i*k + k-1] of x
   (row-major [*, c] float32) channel by channel:
     sum: out[i] = x[idx[i*k]] + ... + x[idx[i*k + k-1]], added in that order;
     max: out[i] = the largest, NaN if any is NaN (as torch.amax), and, where rank is not
          NULL, rank[i] = the last r < k whose row holds that value (a tie goes to the
          highest rank, as functional.py's backward expects).
   torch gathers the k rows into a [targets, k, c] block and reduces it in a second pass;
   here each source row is read once from the cache and added or compared in place: 2-3x
   faster on vig_ti's shapes, and 2-3.5x with the backward (benchmarks/bench_conv.py
   --gather). */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "vig_native.h"

static void sum_row(const float* x, const int64_t* id, int64_t k, int64_t c, float* o) {
  memcpy(o, x + id[0] * c, (size_t)c * sizeof(float));
  for (int64_t r = 1; r < k; ++r) {
    const float* v = x + id[r] * c;
    for (int64_t j = 0; j < c; ++j) o[j] += v[j];
  }
}

/* The max of row i; the loops over j compile to masked vector selects (no branches). */
static void max_row(const float* x, const int64_t* id, int64_t k, int64_t c, float* o) {
  memcpy(o, x + id[0] * c, (size_t)c * sizeof(float));
  for (int64_t r = 1; r < k; ++r) {
    const float* v = x + id[r] * c;
    for (int64_t j = 0; j < c; ++j) {
      float a = o[j], b = v[j];
      o[j] = (b > a || b != b) ? b : a;  /* a larger value or a NaN takes over; an earlier
                                            NaN stays, since b > NaN is false */
    }
  }
}

static void max_rank_row(const float* x, const int64_t* id, int64_t k, int64_t c, float* o,
                         uint8_t* rank) {
  memcpy(o, x + id[0] * c, (size_t)c * sizeof(float));
  memset(rank, 0, (size_t)c);
  for (int64_t r = 1; r < k; ++r) {
    const float* v = x + id[r] * c;
    for (int64_t j = 0; j < c; ++j) {
      float a = o[j], b = v[j];
      int take = b > a || b != b;
      o[j] = take ? b : a;
      rank[j] = (take || b == a) ? (uint8_t)r : rank[j];
    }
  }
}

/* The exported functions: vig_native.h says what each computes. */

void vig_gather_reduce(const float* x, const int64_t* idx, int64_t n, int64_t k, int64_t c,
                       int32_t reduce, float* out, uint8_t* rank, int32_t threads) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#else
  (void)threads;
#endif
  for (int64_t i = 0; i < n; ++i) {
    if (reduce && rank)
      max_rank_row(x, idx + i * k, k, c, out + i * c, rank + i * c);
    else if (reduce)
      max_row(x, idx + i * k, k, c, out + i * c);
    else
      sum_row(x, idx + i * k, k, c, out + i * c);
  }
}

/* Threads split the channels, not the targets, so no two threads ever add into the same
   value and no atomics are needed. */
void vig_gather_reduce_backward(const float* grad, const int64_t* idx, int64_t n, int64_t k,
                                int64_t c, const uint8_t* rank, float* grad_src,
                                int32_t threads) {
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
  (void)threads;
  {
    int64_t t = 0, nt = 1;
#endif
    int64_t step = (c + nt - 1) / nt, j0 = t * step, j1 = j0 + step < c ? j0 + step : c;
    for (int64_t i = 0; i < n; ++i) {
      const float* g = grad + i * c;
      const int64_t* id = idx + i * k;
      if (rank) {
        const uint8_t* rk = rank + i * c;
        for (int64_t j = j0; j < j1; ++j) grad_src[id[rk[j]] * c + j] += g[j];
      } else {
        for (int64_t r = 0; r < k; ++r) {
          float* o = grad_src + id[r] * c;
          for (int64_t j = j0; j < j1; ++j) o[j] += g[j];
        }
      }
    }
  }
}
