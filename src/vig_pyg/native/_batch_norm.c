/* Training-mode BatchNorm + activation (+ residual sum) over the rows of a channels-last
   map, for vig_pyg/layers/batch_norm.py (which says when it is used and why). Compiled
   into one library with the graph kernels by vig_pyg/native/build.py. Plain C99.

   z is a row-major [rows, c] float32 matrix (the memory of a channels-last [B, c, H, W]
   map). With xc = z - mean_j and invstd_j = 1 / sqrt(var_j + eps) per column j:

     forward   mean_j, var_j (biased)        one pass, sums in double
               y = xc * (gamma_j * invstd_j) + beta_j
               out = act(y) (+ residual)     one pass
     backward  p = g * act'(y)               pass 1: p written into dz, sum p and p * xc
               dbeta_j = sum p,  dgamma_j = invstd_j * sum p * xc
               dz = gamma_j * invstd_j * (p - dbeta_j / rows) - xc * k_j,
               k_j = gamma_j * invstd_j^2 * dgamma_j / rows   pass 2, in place

   torch runs the same as BatchNorm, then the activation, each with a pass or two and a fresh
   tensor of its own, forward and backward (the residual sum is one more); here the forward
   reads z twice and writes the output once, and the backward two passes over g (or p) and
   z, with dz its only tensor. Every pass splits the rows over the threads;
   the per-column sums are kept per thread (scratch) and added in thread order, so the result
   does not depend on scheduling.

   act: 0 none, 1 ReLU, 2 LeakyReLU(slope), 3 GELU (exact, erf form). GELU is
   y * Phi(y) with Phi(y) = erfc(-y / sqrt 2) / 2, erfc by Abramowitz and Stegun's rational
   form 7.1.26 (absolute error below 1.5e-7, about float32's rounding of Phi near 1) on |y|
   (the negative tail is then erfc itself, not 1 + erf cancelling to 0); the exponential is
   a degree-7 polynomial after reduction by powers of two, and its e^(-y^2 / 2) is the
   backward's phi(y) too. Both are branch-free and call no library function, so the loops
   over a row compile to vector code, 512 bits wide where the processor has AVX-512 (with
   GELU these loops are bound by arithmetic, not memory; torch's GELU and its backward,
   vectorised alike, are the speed to beat). */
#if defined(__GNUC__) && __GNUC__ >= 8 && !defined(__clang__) && defined(__AVX512F__)
#pragma GCC target("prefer-vector-width=512")
#endif
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "vig_native.h"

enum { ACT_NONE = 0, ACT_RELU = 1, ACT_LEAKY = 2, ACT_GELU = 3 };

/* e^x for x in about [-87, 88] (clamped there: below, e^x is under float's normal range and
   GELU's tails are 0 in float anyway). Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2,
   then a degree-7 Taylor polynomial (truncation below 6e-9 relative) and 2^n built in the
   exponent bits. */
static inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  /* n = x / ln2 rounded to the nearest integer: adding and taking away 1.5 * 2^23 leaves
     no fraction bits (floorf would be a library call that keeps the loop scalar) */
  float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f - n * -2.12194440e-4f;
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

/* erfc(a) / 2 for a = |y| / sqrt 2 >= 0 by Abramowitz and Stegun's 7.1.26:
   erfc(a) = (a1 t + a2 t^2 + ... + a5 t^5) e^(-a^2), t = 1 / (1 + p a), absolute error
   below 1.5e-7 for every a >= 0; e^(-a^2) is handed out too (the backward's phi). */
static inline float half_erfc(float a, float* gauss) {
  float t = 1.0f / (1.0f + 0.3275911f * a);
  float q = 1.061405429f;
  q = q * t - 1.453152027f;
  q = q * t + 1.421413741f;
  q = q * t - 0.284496736f;
  q = q * t + 0.254829592f;
  float e = exp_approx(-a * a);
  *gauss = e;
  return 0.5f * q * t * e;
}

#define INV_SQRT2 0.70710678118654752f
#define INV_SQRT_2PI 0.39894228040143268f

static inline float gelu(float y) {
  float gauss, h = half_erfc(fabsf(y) * INV_SQRT2, &gauss);
  return y * (y < 0.0f ? h : 1.0f - h);
}

/* d gelu / dy = Phi(y) + y phi(y), phi(y) = e^(-y^2 / 2) / sqrt(2 pi). */
static inline float gelu_grad(float y) {
  float gauss, h = half_erfc(fabsf(y) * INV_SQRT2, &gauss);
  return (y < 0.0f ? h : 1.0f - h) + y * gauss * INV_SQRT_2PI;
}

static inline float act_value(float y, int32_t act, float slope) {
  switch (act) {
    case ACT_RELU: return y > 0.0f ? y : 0.0f;
    case ACT_LEAKY: return y > 0.0f ? y : y * slope;
    case ACT_GELU: return gelu(y);
    default: return y;
  }
}

/* The row loops, one per activation, so that each inner loop is a straight vector loop. */
#define FOR_ACT(act, ...)                                               \
  switch (act) {                                                        \
    case ACT_RELU: { const int32_t A = ACT_RELU; __VA_ARGS__ } break;   \
    case ACT_LEAKY: { const int32_t A = ACT_LEAKY; __VA_ARGS__ } break; \
    case ACT_GELU: { const int32_t A = ACT_GELU; __VA_ARGS__ } break;   \
    default: { const int32_t A = ACT_NONE; __VA_ARGS__ } break;         \
  }

static inline float act_grad(float y, int32_t act, float slope) {
  switch (act) {
    case ACT_RELU: return y > 0.0f ? 1.0f : 0.0f;
    case ACT_LEAKY: return y > 0.0f ? 1.0f : slope;
    case ACT_GELU: return gelu_grad(y);
    default: return 1.0f;
  }
}

static void rows_of(int64_t rows, int nt, int tid, int64_t* lo, int64_t* hi) {
  int64_t step = (rows + nt - 1) / nt;
  *lo = step * tid < rows ? step * tid : rows;
  *hi = *lo + step < rows ? *lo + step : rows;
}

static int thread_id(void) {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

static int team_size(void) {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

/* Adds the per-thread sums (threads blocks of [2, c] doubles) into the first block. */
static void add_up(double* scratch, int64_t c, int32_t threads) {
  for (int32_t t = 1; t < threads; ++t)
    for (int64_t j = 0; j < 2 * c; ++j) scratch[j] += scratch[t * 2 * c + j];
}

/* The exported functions: vig_native.h says what each computes. */

void vig_bn_act_forward(const float* z, int64_t rows, int64_t c, const float* gamma,
                        const float* beta, const float* residual, double eps, int32_t act,
                        float slope, float* out, float* mean, float* var, float* invstd,
                        double* scratch, int32_t threads) {
  memset(scratch, 0, sizeof(double) * 2 * c * threads);
  float* scale = (float*)(scratch + 2 * c * threads);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
  {
    int tid = thread_id(), nt = team_size();
    int64_t lo, hi;
    rows_of(rows, nt, tid, &lo, &hi);
    double* s1 = scratch + tid * 2 * c;
    double* s2 = s1 + c;
    for (int64_t i = lo; i < hi; ++i) {
      const float* v = z + i * c;
      for (int64_t j = 0; j < c; ++j) {
        s1[j] += v[j];
        s2[j] += (double)v[j] * v[j];
      }
    }
#ifdef _OPENMP
#pragma omp barrier
#pragma omp single
#endif
    {
      add_up(scratch, c, threads);
      for (int64_t j = 0; j < c; ++j) {
        double m = scratch[j] / rows;
        double v = scratch[c + j] / rows - m * m;
        v = v > 0.0 ? v : 0.0;  /* rounding can leave a constant column a hair below 0 */
        mean[j] = (float)m;
        var[j] = (float)v;
        invstd[j] = (float)(1.0 / sqrt(v + eps));
        scale[j] = (float)((double)gamma[j] * invstd[j]);  /* as the backward recomputes it */
      }
    }  /* the single's closing barrier: every thread sees the statistics */
    FOR_ACT(act, {
      for (int64_t i = lo; i < hi; ++i) {
        const float* v = z + i * c;
        float* o = out + i * c;
        for (int64_t j = 0; j < c; ++j)
          o[j] = act_value((v[j] - mean[j]) * scale[j] + beta[j], A, slope);
        if (residual) {
          const float* r = residual + i * c;
          for (int64_t j = 0; j < c; ++j) o[j] += r[j];
        }
      }
    })
  }
}

void vig_bn_act_backward(const float* g, const float* z, int64_t rows, int64_t c,
                         const float* mean, const float* invstd, const float* gamma,
                         const float* beta, int32_t act, float slope, float* dz,
                         float* dgamma, float* dbeta, double* scratch, int32_t threads) {
  memset(scratch, 0, sizeof(double) * 2 * c * threads);
  float* k1 = (float*)(scratch + 2 * c * threads);  /* the forward's gamma * invstd */
  float* k2 = k1 + c;
  float* mp = k2 + c;
  for (int64_t j = 0; j < c; ++j) k1[j] = (float)((double)gamma[j] * invstd[j]);
  /* without an activation p is g: pass 2 reads it from g instead of a copy in dz */
  const float* p_src = act == ACT_NONE ? g : dz;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
  {
    int tid = thread_id(), nt = team_size();
    int64_t lo, hi;
    rows_of(rows, nt, tid, &lo, &hi);
    double* sp = scratch + tid * 2 * c;
    double* spx = sp + c;
    FOR_ACT(act, {
      for (int64_t i = lo; i < hi; ++i) {
        const float* v = z + i * c;
        const float* gi = g + i * c;
        float* pi = dz + i * c;
        for (int64_t j = 0; j < c; ++j) {
          float xc = v[j] - mean[j];
          float p = A == ACT_NONE ? gi[j]
                    : gi[j] * act_grad(xc * k1[j] + beta[j], A, slope);
          if (A != ACT_NONE) pi[j] = p;
          sp[j] += p;
          spx[j] += (double)p * xc;
        }
      }
    })
#ifdef _OPENMP
#pragma omp barrier
#pragma omp single
#endif
    {
      add_up(scratch, c, threads);
      for (int64_t j = 0; j < c; ++j) {
        double is = invstd[j], dg = is * scratch[c + j];
        dbeta[j] = (float)scratch[j];
        dgamma[j] = (float)dg;
        k2[j] = (float)(gamma[j] * is * is * dg / rows);
        mp[j] = (float)(scratch[j] / rows);
      }
    }
    for (int64_t i = lo; i < hi; ++i) {
      const float* v = z + i * c;
      const float* pi = p_src + i * c;
      float* d = dz + i * c;
      for (int64_t j = 0; j < c; ++j)
        d[j] = k1[j] * (pi[j] - mp[j]) - (v[j] - mean[j]) * k2[j];
    }
  }
}
