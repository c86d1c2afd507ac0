/* The dense kNN's distances and selection in one pass, for vig_pyg/graph/knn.py
   (_fused_nearest says when it is used). Compiled into one library with _select.c and
   _normalize.c, whose functions it calls, by vig_pyg/native/build.py. Plain C99 with
   GCC/Clang vector extensions.

   For query rows q_i ([g, n, c]) and keys y_j ([g, m, c]) of the same image, both
   L2-normalised here by _normalize.c's vig_normalize_rows (same arithmetic as knn.py's
   unfused path, and its NaN/Inf report), with s_j = |y_j|^2 and an optional [n, m] term b
   shared by every image:

       d_ij = s_j - 2 q_i . y_j (+ b_ij)                     (torch.baddbmm, then += b)
       sel_i = the kd smallest d_ij, ascending, ties in index order   (_select.c)
       out_i = sel_i[0], sel_i[step], ..., sel_i[(keep - 1) step]  (+ image * m)

   knn.py's unfused path normalises into fresh tensors, writes the whole [g, n, m] block
   of d to memory, adds b in a second pass, selects in a third and keeps every d-th rank
   and adds the image offsets in torch ops after that, each a fresh tensor. Here each
   thread normalises its rows into its scratch, eight query rows at a time get their m
   distances in a buffer the size of a few rows, which the selection reads straight from
   the cache, and the edges (sources and targets) are written directly.

   Each thread copies its image's keys transposed ([c, m] padded to whole vectors) once, so
   that a 16-wide vector of keys is one load; a tile of 8 queries x 48 keys keeps 24
   accumulators in registers, and every key vector loaded serves eight queries. The dot
   products are summed over the channels in order with fused multiply-adds: an order
   other than the BLAS's, so a distance may differ from the unfused one in its last bits
   (the selection then differs only where two candidates' distances are that close).

   When the keys are the queries (no pooling: vig_ti, pvig_ti's last stages) q_i . q_j is
   symmetric, and a whole image is done at once: the tiles on and below the diagonal
   (52% of the products on 196 nodes) fill -2 q_i . q_j into an [n, n] buffer, the rest is
   copied across the diagonal, and then the rows get s_j (+ b_ij) in place and their
   selection, eight rows at a time (_select.c's vig_select_block, as on the row path). The
   buffer is kept to SYMMETRIC_MAX floats (1 MiB; a 500-node image), larger images take
   the row-by-row path. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")  /* a * b + c as one fused multiply-add */
#endif
/* Without AVX-512 the compilers note that a 16-float vector passed by value has another
   ABI there; only this file's static functions pass them, so no ABI crosses the file. */
#if defined(__clang__)
#if __has_warning("-Wpsabi")
#pragma clang diagnostic ignored "-Wpsabi"
#endif
#elif defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) && !defined(VIG_PORTABLE)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#include "vig_native.h"

#define LANES 16
#define ROWS 8  /* query rows per tile; divides LANES (image_symmetric's mirror needs it) */
#define WIDE 3  /* key vectors per tile: ROWS x WIDE accumulators */

typedef float vf16 __attribute__((vector_size(LANES * sizeof(float))));
typedef char rows_divide_lanes[LANES % ROWS == 0 ? 1 : -1];
/* vig_select_block (_select.c) takes VIG_SELECT_BLOCK_ROWS rows */
typedef char rows_are_a_select_block[ROWS == VIG_SELECT_BLOCK_ROWS ? 1 : -1];

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

/* d_r[j] = s[j] - 2 acc (+ b_r[j]) for the keys j0 .. j0 + 15 that exist (j < m). With
   AVX-512 the whole vector is stored: d's rows and s are padded to whole vectors (s with
   zeros), so the lanes past m hold values the selection never reads, and the accumulators
   stay in registers (the lane-by-lane tail below takes them through memory). */
static inline void finish(vf16 acc, const float* s, const float* b, float* d, int64_t j0,
                          int64_t m) {
#if defined(__AVX512F__) && !defined(VIG_PORTABLE)
  vf16 v = load16(s + j0) + acc * -2.0f;
  if (b) {
    __mmask16 in = j0 + LANES <= m ? 0xFFFF : (__mmask16)((1u << (m - j0)) - 1);
    v += (vf16)_mm512_maskz_loadu_ps(in, b + j0);
  }
  store16(d + j0, v);
  return;
#endif
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

/* The distances of ROWS query rows to the keys before jend (a multiple of LANES, at most
   mp); rows past the image's end repeat its last row. */
static void distances(const float* const* q, const float* yt, int64_t mp, int64_t c,
                      const float* s, const float* const* b, float* const* d, int64_t m,
                      int64_t jend) {
  int64_t j0 = 0;
  for (; j0 + WIDE * LANES <= jend; j0 += WIDE * LANES)
    tile(q, yt, mp, c, s, b, d, j0, m, WIDE);
  for (; j0 < jend; j0 += LANES) tile(q, yt, mp, c, s, b, d, j0, m, 1);
}

#define SYMMETRIC_MAX (1 << 18)  /* floats of the [n, n] buffer of the symmetric path */

/* one call's shapes and output (the exported functions' arguments) */
typedef struct {
  const float *q, *y, *b;  /* raw queries [g * n, c] and keys [g * m, c] (y == q: self) */
  int64_t n, m, c, kd, self, keep, step, offset;
  int64_t* out;
} job_t;

static int symmetric(const job_t* J) {
  return J->self && (J->n + ROWS) * padded(J->n) <= SYMMETRIC_MAX;
}

/* Images whose keys a thread stages at once where the keys are not the queries: each block
   of ROWS query rows then visits those images in turn, so that its rows of the relative-
   position table b (the same for every image) are read from memory once for all of them
   rather than once per image (b is [n, m]: 2.4 MB at pvig_ti's first stage, more than the
   L2 cache). At most MAX_BLOCK_IMAGES, and keys of at most KEY_BLOCK_FLOATS in all. */
#define MAX_BLOCK_IMAGES 8
#define KEY_BLOCK_FLOATS (1 << 17)
static int64_t block_images(int64_t m, int64_t c, int64_t self) {
  int64_t fit = KEY_BLOCK_FLOATS / (c * padded(m) + padded(m));
  return self || fit < 1 ? 1 : fit < MAX_BLOCK_IMAGES ? fit : MAX_BLOCK_IMAGES;
}

/* the scratch's parts in floats (one caller of vig_nearest), each a whole number of
   vectors, so that every part starts on a 64-byte line where the scratch does: a whole
   vector read from a part 32 bytes off a line would span two lines */
typedef struct {
  int64_t yt, sp, zero, rows, yn, qn, cv, ci, sel;
} layout_t;

static layout_t layout(int64_t n, int64_t m, int64_t c, int64_t kd, int64_t self) {
  int64_t mp = padded(m), images = block_images(m, c, self);
  job_t J = {.n = n, .self = self};
  int64_t queries = n > ROWS ? n : ROWS;
  layout_t L = {.yt = images * c * mp, .sp = images * mp, .zero = mp,
                .rows = (symmetric(&J) ? n + ROWS : ROWS) * mp, .yn = padded(m * c),
                .qn = padded(queries * c), .cv = padded(m + LANES), .ci = padded(m + LANES),
                .sel = padded(2 * ROWS * kd)};
  return L;
}

int64_t vig_nearest_scratch(int64_t n, int64_t m, int64_t c, int64_t kd, int64_t self) {
  layout_t L = layout(n, m, c, kd, self && n == m);
  return L.yt + L.sp + L.zero + L.rows + L.yn + L.qn + L.cv + L.ci + L.sel;
}

typedef struct {  /* one thread's part of the scratch */
  float *yt, *sp, *zero, *rows, *yn, *qn, *cv;
  int32_t* ci;
  int64_t* sel;  /* [ROWS, kd]: the selections of a block of rows */
} scratch_t;

static scratch_t carve(const job_t* J, float* p) {
  layout_t L = layout(J->n, J->m, J->c, J->kd, J->self);
  scratch_t S;
  S.yt = p;  /* images x [c, mp], then images x [mp] for sp */
  S.sp = S.yt + L.yt;
  S.zero = S.sp + L.sp;
  S.rows = S.zero + L.zero;
  S.yn = S.rows + L.rows;
  S.qn = S.yn + L.yn;  /* whole vectors: the int64 sel stays aligned */
  S.cv = S.qn + L.qn;
  S.ci = (int32_t*)(S.cv + L.cv);
  S.sel = (int64_t*)(S.ci + L.ci);
  return S;
}

/* dst[k * ds + j] = src[j * ss + k] for j < rows, k < cols (both at most LANES): one
   LANES x LANES block transposed. Each of the cols rows of dst written takes a whole
   vector, zero in its lanes j >= rows. Element by element a transpose is one load and one
   store per value; in registers it is about a quarter of an operation per value (four
   rounds of shuffles). That mattered where an image's keys are many values for its
   products: at pvig_ti's third stage (196 keys x 240 channels) the keys' transpose took
   about 0.17 ms and the mirror about 0.1 ms of a 1.42 ms block, one value at a time. */
static void transpose_block(const float* src, int64_t ss, int64_t rows, int64_t cols,
                            float* dst, int64_t ds) {
#if defined(__AVX512F__) && !defined(VIG_PORTABLE)
  __mmask16 in = cols < LANES ? (__mmask16)((1u << cols) - 1) : 0xFFFF;
  __m512 r[LANES], t[LANES];
  for (int i = 0; i < LANES; ++i)
    r[i] = i < rows ? _mm512_maskz_loadu_ps(in, src + i * ss) : _mm512_setzero_ps();
  /* r[i] lane group L (four values) holds columns 4L..4L+3 of row i; after the two
     unpack rounds, r[4q + s] holds in group L column 4L + s of rows 4q..4q+3 */
  for (int i = 0; i < LANES; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < LANES; i += 4)
    for (int h = 0; h < 2; ++h) {
      __m512d a = _mm512_castps_pd(t[i + h]), b = _mm512_castps_pd(t[i + h + 2]);
      r[i + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
      r[i + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    }
  /* then two rounds of 128-bit group shuffles gather column s's four groups */
  for (int s = 0; s < 4; ++s) {
    __m512 u0 = _mm512_shuffle_f32x4(r[s], r[4 + s], 0x88);
    __m512 u1 = _mm512_shuffle_f32x4(r[s], r[4 + s], 0xdd);
    __m512 v0 = _mm512_shuffle_f32x4(r[8 + s], r[12 + s], 0x88);
    __m512 v1 = _mm512_shuffle_f32x4(r[8 + s], r[12 + s], 0xdd);
    t[s] = _mm512_shuffle_f32x4(u0, v0, 0x88);
    t[8 + s] = _mm512_shuffle_f32x4(u0, v0, 0xdd);
    t[4 + s] = _mm512_shuffle_f32x4(u1, v1, 0x88);
    t[12 + s] = _mm512_shuffle_f32x4(u1, v1, 0xdd);
  }
  for (int k = 0; k < cols; ++k) _mm512_storeu_ps(dst + k * ds, t[k]);
#else
  for (int64_t k = 0; k < cols; ++k)
    for (int64_t j = 0; j < LANES; ++j) dst[k * ds + j] = j < rows ? src[j * ss + k] : 0.0f;
#endif
}

/* The keys of image g normalised (yn, and their squared norms padded in slot's sp, as
   _normalize.c computes them) and transposed to slot's yt [c, mp] (zero past m). Returns
   0 when a key's norm is not finite. */
static int stage_keys(const job_t* J, int64_t g, const scratch_t* S, int64_t slot) {
  int64_t m = J->m, c = J->c, mp = padded(m);
  float *yt = S->yt + slot * c * mp, *sp = S->sp + slot * mp;
  memset(sp, 0, (size_t)mp * sizeof(float));
  int finite = vig_normalize_rows(J->y + g * m * c, m, c, S->yn, sp, 1);
  for (int64_t j = 0; j < mp; j += LANES)  /* every column block, so zero past m */
    for (int64_t k = 0; k < c; k += LANES)
      transpose_block(S->yn + j * c + k, c, m - j < LANES ? m - j : LANES,
                      c - k < LANES ? c - k : LANES, yt + k * mp + j, mp);
  return finite;
}

/* one row's selection sel (its kd nearest, ascending), written out as the job asks, of
   image g (whose keys start at g * m) */
static void emit(const job_t* J, int64_t g, int64_t row, const int64_t* sel) {
  int64_t base = J->offset ? g * J->m : 0, *out = J->out + row * J->keep;
#if defined(__AVX512F__) && !defined(VIG_PORTABLE)
  if (J->step == 1) {  /* eight at a time (a strided gather for other steps was slower) */
    for (int64_t t = 0; t < J->keep; t += 8) {
      __mmask8 in = J->keep - t >= 8 ? 0xFF : (__mmask8)((1u << (J->keep - t)) - 1);
      __m512i v = _mm512_maskz_loadu_epi64(in, sel + t);
      _mm512_mask_storeu_epi64(out + t, in, _mm512_add_epi64(v, _mm512_set1_epi64(base)));
      if (J->offset)  /* the edge_index's target row, J->offset further on */
        _mm512_mask_storeu_epi64(out + J->offset + t, in, _mm512_set1_epi64(row));
    }
    return;
  }
#endif
  for (int64_t t = 0; t < J->keep; ++t) out[t] = sel[t * J->step] + base;
  if (J->offset)  /* the edge_index's target row, J->offset further on */
    for (int64_t t = 0; t < J->keep; ++t) out[J->offset + t] = row;
}

/* rows [r0, end) of image g (end at most the image's end), ROWS at a time, from the
   normalised query rows qn (row r0 of the image at qn[0]) and the keys staged in slot */
static void rows_of(const job_t* J, int64_t g, int64_t r0, int64_t end, const float* qn,
                    const scratch_t* S, int64_t slot) {
  int64_t mp = padded(J->m);
  const float *yt = S->yt + slot * J->c * mp, *sp = S->sp + slot * mp;
  for (int64_t first = r0; r0 < end; r0 += ROWS) {
    const float *qr[ROWS], *br[ROWS];
    float* dr[ROWS];
    for (int r = 0; r < ROWS; ++r) {
      int64_t row = r0 + r < end ? r0 + r : end - 1;
      qr[r] = qn + (row - first) * J->c;
      br[r] = J->b ? J->b + (row - g * J->n) * J->m : NULL;
      dr[r] = S->rows + r * mp;
    }
    distances(qr, yt, mp, J->c, sp, br, dr, J->m, mp);
    int64_t rows = end - r0 < ROWS ? end - r0 : ROWS;
    vig_select_block((const float* const*)dr, rows, J->m, J->kd, S->sel, S->cv, S->ci);
    for (int r = 0; r < rows; ++r) emit(J, g, r0 + r, S->sel + r * J->kd);
  }
}

/* the first column past what the tiles of the row block holding row i computed */
static int64_t computed_end(int64_t i, int64_t np) {
  int64_t last = i / ROWS * ROWS + ROWS;  /* one past the block's last row */
  return padded(last) < np ? padded(last) : np;
}

/* one whole image of a job whose keys are its queries (see the top of the file), its
   rows normalised in yn */
static void image_symmetric(const job_t* J, int64_t g, const scratch_t* S) {
  int64_t n = J->n, np = padded(n);
  const float* none[ROWS] = {NULL};
  float* P = S->rows;  /* [n + ROWS, np]: the rows past n take a last block's repeats */
  memset(S->zero, 0, (size_t)np * sizeof(float));
  for (int64_t i0 = 0; i0 < n; i0 += ROWS) {  /* -2 q_i . q_j for j up to the diagonal */
    const float* qr[ROWS];
    float* dr[ROWS];
    for (int r = 0; r < ROWS; ++r) {
      qr[r] = S->yn + (i0 + r < n ? i0 + r : n - 1) * J->c;
      dr[r] = P + (i0 + r) * np;
    }
    distances(qr, S->yt, np, J->c, S->zero, none, dr, n, computed_end(i0, np));
  }
  /* the rest from across the diagonal: the tiles of rows i0..i0+15 (two blocks of ROWS)
     computed the columns before i0 + 16, so the blocks from there on are mirrored */
  for (int64_t i0 = 0; i0 < n; i0 += LANES)
    for (int64_t j0 = i0 + LANES; j0 < n; j0 += LANES)
      transpose_block(P + j0 * np + i0, np, n - j0 < LANES ? n - j0 : LANES,
                      n - i0 < LANES ? n - i0 : LANES, P + i0 * np + j0, np);
  for (int64_t i = 0; i < n; ++i) {  /* P's rows become the distances, in place */
    const float* b = J->b ? J->b + i * n : NULL;
    for (int64_t j = 0; j < n; ++j) {
      float v = S->sp[j] + P[i * np + j];  /* as finish: s_j - 2 q_i . q_j, then + b */
      P[i * np + j] = b ? v + b[j] : v;
    }
  }
  for (int64_t i0 = 0; i0 < n; i0 += ROWS) {  /* rows past n are read, not selected */
    const float* dr[ROWS];
    int64_t rows = n - i0 < ROWS ? n - i0 : ROWS;
    for (int r = 0; r < ROWS; ++r) dr[r] = P + (i0 + r) * np;
    vig_select_block(dr, rows, n, J->kd, S->sel, S->cv, S->ci);
    for (int r = 0; r < rows; ++r) emit(J, g, g * n + i0 + r, S->sel + r * J->kd);
  }
}

/* Images g .. g + images - 1 of a job with keys of their own and a table b, ROWS query
   rows of each image at a time (see block_images); returns the flags of vig_nearest. */
static int image_block(const job_t* J, int64_t g, int64_t images, const scratch_t* S) {
  int64_t n = J->n, c = J->c;
  int flags = 0;
  for (int64_t i = 0; i < images; ++i)
    if (!stage_keys(J, g + i, S, i)) flags |= 2;
  for (int64_t i0 = 0; i0 < n; i0 += ROWS) {
    int64_t rows = n - i0 < ROWS ? n - i0 : ROWS;
    for (int64_t i = 0; i < images; ++i) {
      int64_t r0 = (g + i) * n + i0;
      if (i0 + ROWS < n) {  /* this image's next rows, read after the other images' */
        const char* next = (const char*)(J->q + (r0 + ROWS) * c);
        int64_t bytes = (n - i0 - ROWS < ROWS ? n - i0 - ROWS : ROWS) * c *
                        (int64_t)sizeof(float);
        for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(next + o);
      }
      if (!vig_normalize_rows(J->q + r0 * c, rows, c, S->qn, NULL, 1)) flags |= 1;
      rows_of(J, g + i, r0, r0 + rows, S->qn, S, i);
    }
  }
  return flags;
}

/* Query rows [row0, row1); returns the flags of vig_nearest. */
static int run(const job_t* J, int64_t row0, int64_t row1, float* scratch) {
  scratch_t S = carve(J, scratch);
  int64_t n = J->n, c = J->c, block = J->b ? block_images(J->m, c, J->self) : 1;
  int flags = 0;
  for (int64_t r0 = row0; r0 < row1;) {
    int64_t g = r0 / n, end = (g + 1) * n < row1 ? (g + 1) * n : row1;  /* one image */
    int64_t whole = r0 == g * n ? (row1 - r0) / n : 0;  /* whole images from here */
    if (block > 1 && whole > 1) {
      int64_t images = whole < block ? whole : block;
      flags |= image_block(J, g, images, &S);
      r0 = (g + images) * n;
      continue;
    }
    if (J->self && end < row1) {  /* the next image's rows, read while this one is done */
      const char* next = (const char*)(J->y + end * c);
      int64_t bytes = ((row1 - end < n ? row1 - end : n) * c) * (int64_t)sizeof(float);
      for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(next + o);
    }
    if (!stage_keys(J, g, &S, 0)) flags |= J->self ? 1 : 2;
    if (J->self && symmetric(J) && r0 == g * n && end == (g + 1) * n) {
      image_symmetric(J, g, &S);
    } else if (J->self) {  /* the normalised keys are the rows */
      rows_of(J, g, r0, end, S.yn + (r0 - g * n) * c, &S, 0);
    } else {
      if (!vig_normalize_rows(J->q + r0 * c, end - r0, c, S.qn, NULL, 1)) flags |= 1;
      rows_of(J, g, r0, end, S.qn, &S, 0);
    }
    r0 = end;
  }
  return flags;
}

/* The exported functions: vig_native.h says what each computes. */

int vig_nearest(const float* q, const float* y, const float* b, int64_t n, int64_t m,
                int64_t c, int64_t kd, int64_t self, int64_t keep, int64_t step,
                int64_t offset, int64_t row0, int64_t row1, int64_t* out, float* scratch) {
  job_t J = {q, y, b, n, m, c, kd, self && n == m && q == y, keep, step, offset, out};
  return run(&J, row0, row1, scratch);
}

int64_t vig_nearest_split(int64_t g, int64_t n, int64_t threads, int64_t t) {
  int64_t rows = g * n;
  int64_t step = g >= threads ? (g + threads - 1) / threads * n : (rows + threads - 1) / threads;
  return t * step < rows ? t * step : rows;
}

int vig_nearest_rows(const float* q, const float* y, const float* b, int64_t g, int64_t n,
                     int64_t m, int64_t c, int64_t kd, int64_t self, int64_t keep,
                     int64_t step, int64_t offset, int64_t* out, float* scratch,
                     int32_t threads) {
  job_t J = {q, y, b, n, m, c, kd, self && n == m && q == y, keep, step, offset, out};
  int64_t per = vig_nearest_scratch(n, m, c, kd, self);
  int flags = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1) reduction(|: flags)
  {
    int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t r0 = vig_nearest_split(g, n, nt, t), r1 = vig_nearest_split(g, n, nt, t + 1);
    if (r0 < r1) flags |= run(&J, r0, r1, scratch + t * per);
  }
#else
  (void)threads;
  (void)per;
  flags = run(&J, 0, g * n, scratch);
#endif
  return flags;
}
