/* The dense kNN's distances and selection in one pass, for vig_pyg/graph/knn.py
   (_fused_nearest says when it is used). Compiled into one library with _select.c and
   _normalize.c, whose functions it calls, by vig_pyg/graph/select.py. Plain C99 with GCC/Clang vector extensions.

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
   the row-by-row path.

   On processors with AMX, rows with pooled keys, a table and enough channels are first
   prefiltered in bfloat16 ("Prefiltered rows", below). */
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && \
    defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__linux__) && !defined(VIG_PORTABLE)
#define VIG_AMX 1           /* the prefilter (see "Prefiltered rows" below) */
#define _DEFAULT_SOURCE 1   /* syscall() under -std=c99 */
#endif
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")  /* a * b + c as one fused multiply-add */
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
#ifdef VIG_AMX
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define LANES 16
#define ROWS 8  /* query rows per tile; divides LANES (image_symmetric's mirror needs it) */
#define WIDE 3  /* key vectors per tile: ROWS x WIDE accumulators */

typedef float vf16 __attribute__((vector_size(LANES * sizeof(float))));
typedef char rows_divide_lanes[LANES % ROWS == 0 ? 1 : -1];
typedef char rows_are_a_select_block[ROWS == 8 ? 1 : -1];  /* _select.c's BLOCK_ROWS */

void vig_select_row(const float* d, int64_t m, int64_t kd, int64_t* idx, float* cv,
                    int32_t* ci);  /* _select.c */
void vig_select_block(const float* const* d, int64_t rows, int64_t m, int64_t kd,
                      int64_t* idx, float* cv, int32_t* ci);  /* _select.c, ROWS rows */
void vig_select_bounds(const float* const* d, int64_t m, int64_t kd, float* u);
int64_t vig_select_gather(const float* d, int64_t m, float u, float* cv, int32_t* ci);
void vig_select_place(float* cv, const int32_t* ci, int64_t c, int64_t kd, int64_t* idx,
                      float* val);

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

int vig_normalize_rows(const float* x, int64_t rows, int64_t c, float* out, float* sq,
                       int32_t threads);  /* _normalize.c */

/* one call's shapes and output (the exported functions' arguments) */
typedef struct {
  const float *q, *y, *b;  /* raw queries [g * n, c] and keys [g * m, c] (y == q: self) */
  int64_t n, m, c, kd, self, keep, step, offset;
  int64_t* out;
  int64_t prefilter;  /* the row path's prefiltered rows where they apply (VIG_AMX) */
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

#define AMX_ROWS 16     /* query rows of a tile of the prefilter */
#define AMX_BLOCK 256   /* query rows of an image the prefilter's tiles take at once, at
                           most: AMX sleeps when idle and took about twice as long for a
                           block of 32 rows woken between blocks (C harness) */
#define AMX_BLOCK_FLOATS (1 << 16)  /* a block's distances (and its table rows) at most, as
                           far as 32 rows allow: 256 rows of thousands of keys (detection-
                           size maps) overflowed the L2 cache and ran 1.3-1.5x slower */
static int64_t amx_block(int64_t m) {
  int64_t rows = AMX_BLOCK_FLOATS / padded(m) / 32 * 32;
  return rows < 32 ? 32 : rows > AMX_BLOCK ? AMX_BLOCK : rows;
}
#define AMX_MIN_C 32    /* fewer channels: the float32 products are cheaper than the
                           prefilter's approximations, bounds and exact distances */
#define SPLIT_MAX_C 64  /* fewer channels: each value as two bfloat16 parts (see below) */
static int64_t split(int64_t c) { return c < SPLIT_MAX_C; }
/* the K of the prefilter's tile products (a multiple of 32): the channels as split() has
   them, and two for s_j */
static int64_t amx_k(int64_t c) { return ((split(c) ? 3 * c : c) + 2 + 31) / 32 * 32; }
static int64_t prefilter_shape(int64_t c, int64_t self) { return !self && c >= AMX_MIN_C; }
/* Split keys take more room than float32 ones (K / 2 words a key, and the float32 rows for
   the exact distances): only where they fit a core's L2 cache (2 MiB on every AMX
   processor so far) is the split prefilter faster. Beyond (2 x 100x166 queries, 4150 keys
   of 48 channels) it ran 0.82-0.90 of the float32 products; at 2500 keys 1.2x faster. */
#define SPLIT_MAX_KEY_FLOATS (1 << 19)
static int64_t split_fits(int64_t m, int64_t c) {
  return (amx_k(c) / 2 + c) * padded(m) <= SPLIT_MAX_KEY_FLOATS;
}

/* the scratch's parts in floats (one caller of vig_nearest), each a whole number of
   vectors, so that every part starts on a 64-byte line where the scratch does: a tile
   row (64 bytes) read from a part 32 bytes off a line spans two lines, which made the
   prefilter's tiles take twice as long (its key and query tiles came after cv, ci and
   sel, whose sizes were not whole vectors) */
typedef struct {
  int64_t yt, sp, zero, rows, yn, qn, cv, ci, sel, ynk, kb, qa, pairs, bt, bmax;
} layout_t;

static layout_t layout(int64_t n, int64_t m, int64_t c, int64_t kd, int64_t self) {
  int64_t mp = padded(m), images = block_images(m, c, self);
  job_t J = {.n = n, .self = self};
  int64_t block = ROWS;
#ifdef VIG_AMX
  if (prefilter_shape(c, self)) block = amx_block(m);
#endif
  int64_t queries = n > block ? n : block;
  layout_t L = {.yt = images * c * mp, .sp = images * mp, .zero = mp,
                .rows = (symmetric(&J) ? n + ROWS : block) * mp, .yn = padded(m * c),
                .qn = padded(queries * c), .cv = padded(m + LANES), .ci = padded(m + LANES),
                .sel = padded(2 * ROWS * kd)};
#ifdef VIG_AMX
  if (prefilter_shape(c, self)) {  /* the prefilter's keys both ways, queries, table */
    L.ynk = images * padded(m * c);
    L.kb = images * amx_k(c) / 2 * mp;
    L.qa = block * amx_k(c) / 2;
    L.pairs = mp * amx_k(c) / 2;
    L.bt = block * mp;
    L.bmax = padded(block);
  }
#endif
  return L;
}

/* Floats of scratch one caller of vig_nearest needs. */
int64_t vig_nearest_scratch(int64_t n, int64_t m, int64_t c, int64_t kd, int64_t self) {
  layout_t L = layout(n, m, c, kd, self && n == m);
  return L.yt + L.sp + L.zero + L.rows + L.yn + L.qn + L.cv + L.ci + L.sel + L.ynk + L.kb +
         L.qa + L.pairs + L.bt + L.bmax;
}

typedef struct {  /* one thread's part of the scratch */
  float *yt, *sp, *zero, *rows, *yn, *qn, *cv;
  int32_t* ci;
  int64_t* sel;  /* [ROWS, kd]: the selections of a block of rows */
  float* ynk;    /* the prefilter's: images x the normalised keys [m, c], */
  uint32_t* kb;  /* images x [K / 2, mp] their bfloat16 pairs (K = amx_k), */
  uint16_t* qa;  /* [amx_block, K] a block of queries in bfloat16, */
  uint16_t* pairs;  /* [mp, K] an image's keys in bfloat16, before their transpose, */
  float* bt;     /* [amx_block, mp] the block's rows of the table, zero past m, */
  float* bmax;   /* [amx_block] and the largest |b_ij| of each (NaN left out) */
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
  S.ynk = (float*)S.sel + L.sel;
  S.kb = (uint32_t*)(S.ynk + L.ynk);
  S.qa = (uint16_t*)((float*)S.kb + L.kb);
  S.pairs = (uint16_t*)((float*)S.qa + L.qa);
  S.bt = (float*)S.pairs + L.pairs;
  S.bmax = S.bt + L.bt;
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

/* How image_block stages an image's keys in a slot (0 when a norm is not finite), and
   what it does with `rows` normalised query rows (S->qn) of image g from its row i0. */
typedef int stage_fn(const job_t* J, int64_t g, const scratch_t* S, int64_t slot);
typedef void block_fn(const job_t* J, int64_t g, int64_t i0, int64_t rows,
                      const scratch_t* S, int64_t slot);

/* the float32 products and selection of such a block (rows_of) */
static void block_float32(const job_t* J, int64_t g, int64_t i0, int64_t rows,
                          const scratch_t* S, int64_t slot) {
  int64_t r0 = g * J->n + i0;
  rows_of(J, g, r0, r0 + rows, S->qn, S, slot);
}

/* Rows [first, last) of images g .. g + images - 1 of a job with keys of their own and a
   table b, `step` query rows of each image at a time (see block_images); returns the
   flags of vig_nearest. */
static int image_block(const job_t* J, int64_t g, int64_t images, const scratch_t* S,
                       int64_t step, stage_fn* stage, block_fn* block, int64_t first,
                       int64_t last) {
  int64_t n = J->n, c = J->c;
  int flags = 0;
  for (int64_t i = 0; i < images; ++i)
    if (!stage(J, g + i, S, i)) flags |= 2;
  for (int64_t i0 = first; i0 < last; i0 += step) {
    int64_t rows = last - i0 < step ? last - i0 : step;
    for (int64_t i = 0; i < images; ++i) {
      int64_t r0 = (g + i) * n + i0;
      if (i0 + step < last) {  /* this image's next rows, read after the other images' */
        const char* next = (const char*)(J->q + (r0 + step) * c);
        int64_t ahead = step < ROWS ? step : ROWS;  /* a float32 block's rows; of the
          prefilter's 256-row blocks as many (all 256 took a seventh of its own time) */
        int64_t bytes = (last - i0 - step < ahead ? last - i0 - step : ahead) * c *
                        (int64_t)sizeof(float);
        for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(next + o);
      }
      if (!vig_normalize_rows(J->q + r0 * c, rows, c, S->qn, NULL, 1)) flags |= 1;
      block(J, g + i, i0, rows, S, i);
    }
  }
  return flags;
}

/* Prefiltered rows (VIG_AMX: processors with AMX tiles and bfloat16, on Linux).

   On the row path with a table b (pvig_ti's first two stages: 3136 and 784 queries
   against 196 pooled keys of 48 and 96 channels), the products are most of the work and
   the selection keeps 9 of 196. Here AMX's tiles compute every distance from bfloat16
   values (8 significant bits; products summed in float32), which gives approximations
   a_ij, and the selection runs on those with a window that no approximation's error can
   cross.

   The tiles hold a_ij itself: each starts from b_ij (the block's table rows, copied to
   whole lines: bt) and sums the products of a query row [-2 q', 1, 1] and a key row
   [y', sh_j, sl_j], where sh_j + sl_j is s_j in two bfloat16 parts and q', y' are the
   channels in bfloat16. With fewer than SPLIT_MAX_C channels (pvig_ti's 48) each value
   is split too, x = xh + xl + r with xh = bf16(x), xl = bf16(x - xh): q' = [qh, qh, ql]
   against y' = [yh, yl, yh], three times the products, which AMX does at about fifteen
   times the rate of float32 multiply-adds. With more channels q' = qh, y' = yh.

   E, the most an approximation is off from its distance (both s_j - 2 q.y + b_ij in
   exact arithmetic and the float32 value of the exact distances below), for a row whose
   table entries are at most B in size (B the row's largest |b_ij|, NaN left out;
   infinite B: infinite E):

       E = P + 2^-15 + K 2^-24 (B + 4) + 2^-23 (c + B + 4)

   P, the products: rounding to bfloat16 moves each value by at most 2^-8 of itself, so
   q_k y_k by at most (2^-7 + 2^-16) |q_k y_k| and, as sum_k |q_k y_k| <= |q| |y| <= 1 for
   the unit rows, -2 q.y by at most P = 2 (2^-7 + 2^-16) = 2^-6 + 2^-15. Split, what is
   left out (ql yl, qh ry and rq yh, about 2^-16 |q_k y_k| each, and smaller terms) is
   below 2^-14 |q_k y_k|: P = 2^-13. 2^-15: s_j in two parts is off by at most 2^-16 s_j.
   The tiles' float32 sums of K terms (K = amx_k; each product of two bfloat16 values is
   exact in float32), whose partial sums stay below B + 4, are off by at most
   K 2^-24 (B + 4) (AMX flushes subnormal results to zero: 2^-126 each, far inside the
   slack); the exact distances' float32 sums of c products (twice, in a distance) and
   the two additions of s_j and b_ij, by at most 2^-23 (c + B + 4). (Test
   test_prefilter_approximations_within_their_window: errors up to 0.65 E in one part,
   0.13 E split, on values just off bfloat16 midpoints.)

   A row's bound u (the selection's, on the approximations) admits the keys with
   a_ij <= u + 2E. Every key among the kd nearest is admitted: its approximation is at
   most E above its distance, which is at most the kd-th smallest distance, and that is
   at most E above the kd-th smallest approximation, which is at most u. The admitted
   keys (a dozen or two of 196 with bfloat16 values, barely more than kd split) are
   placed by their approximations. Two keys whose approximations lie more than 2E apart
   have their distances in the same order, so where no other admitted key lies within 2E
   of the last of the kd placed, those are the kd nearest, and only runs of them joined
   by gaps of at most 2E need their distances to be ordered (`settle`; split, in half of
   one first-stage block of a pvig_ti forward: 77% of the rows have no such gap, 19% a
   run inside, 5% a key near the last). The other rows (every row with more channels)
   get the admitted keys' float32 distances, and the selection proper runs on those.
   Float32 distances are summed in sixteen lanes, an order of their own: a float32
   near-tie may fall the other way than on the tile path.

   Rows holding NaN or an infinity keep the rule too: an approximation is NaN or infinite
   exactly where its distance is (the same b, the same non-finite normalised rows), an
   infinite bound admits every key, and no such row is clear. */
#ifdef VIG_AMX
typedef struct {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} tile_config_t;

/* 1 where the kernel lets this process use AMX tile data (asked once: Linux keeps the
   large register state off until a process asks for it); else 0, and the tile path */
static int amx_permitted(void) {
  static int state = 0;  /* 0: not asked yet, 1: yes, -1: no */
  int now = __atomic_load_n(&state, __ATOMIC_ACQUIRE);
  if (!now) {
    now = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                  18 /* XFEATURE_XTILEDATA */) == 0 ? 1 : -1;
    __atomic_store_n(&state, now, __ATOMIC_RELEASE);
  }
  return now > 0;
}

/* whether a job's rows take the prefilter: pooled keys with a table, enough channels,
   and rows long enough for the selection's bound to admit few keys (as its histogram
   pass's rule), where AMX is allowed */
static int prefiltered(const job_t* J) {
  return J->prefilter && prefilter_shape(J->c, J->self) && J->b && J->m >= 5 * J->kd &&
         (!split(J->c) || split_fits(J->m, J->c)) && amx_permitted();
}

/* tiles 0, 1: AMX_ROWS queries x 32 values; 2, 3: 16 value pairs x 16 keys; 4-7: the
   AMX_ROWS x 16 sums of two query tiles by two key tiles. The thread's configuration
   before (oneDNN's, where torch ran bfloat16 or int8 kernels on AMX here) is saved in
   *saved, for amx_restore: a kernel that configured the tiles once need not expect
   anyone else to touch them. */
static void amx_configure(tile_config_t* saved) {
  tile_config_t cfg;
  _tile_storeconfig(saved);
  memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = AMX_ROWS;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

/* the configuration amx_configure found, or none (the large register state off) */
static void amx_restore(const tile_config_t* saved) {
  if (saved->palette) _tile_loadconfig(saved);
  else _tile_release();
}

/* the lanes of the 16 values from k on that lie below c */
static inline __mmask16 below(int64_t k, int64_t c) {
  return k >= c ? 0 : c - k >= LANES ? 0xFFFF : (__mmask16)((1u << (c - k)) - 1);
}

/* the bfloat16 of v's lanes (nearest even) */
static inline __m256i bf16_bits(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }

/* sixteen bfloat16 values as float32 (exact) */
static inline __m512 bf16_float(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* A tile row of the prefilter (see its comment): the c values x scaled by `scale` (exact:
   1 or -2) as the job's K values [x', e0, e1] in bfloat16, zero up to kp, where x' is xh,
   or with split(c) [xh, xh, xl] for a query and [xh, xl, xh] for a key (`key`). */
static void encode(const float* x, int64_t c, float scale, int key, float e0, float e1,
                   int64_t kp, uint16_t* out) {
  int64_t n = split(c) ? 3 * c : c;
  for (int64_t k = 0; k < c; k += LANES) {
    __mmask16 in = below(k, c);
    __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(in, x + k), _mm512_set1_ps(scale));
    __m256i h = bf16_bits(v);
    _mm256_mask_storeu_epi16(out + k, in, h);
    if (n == c) continue;
    __m256i l = bf16_bits(_mm512_sub_ps(v, bf16_float(h)));  /* x - xh: exact */
    _mm256_mask_storeu_epi16(out + c + k, in, key ? l : h);
    _mm256_mask_storeu_epi16(out + 2 * c + k, in, key ? h : l);
  }
  __m256i e = bf16_bits(_mm512_setr_ps(e0, e1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0));
  for (int64_t k = n; k < kp; k += LANES)  /* e0, e1, then zeros */
    _mm256_mask_storeu_epi16(out + k, below(k, kp), k == n ? e : _mm256_setzero_si256());
}

/* The keys of image g for the prefilter, in slot: normalised rows (ynk, for the exact
   distances), s_j, and their tile rows [yh (, yl, yh), sh_j, sl_j] in bfloat16 pairs
   transposed to [K / 2, mp] (kb, the layout of AMX's second operand: a row of 16 keys x
   one pair; zero past m). 0 when a key's norm is not finite. The rows of yt are not
   made: nothing reads them here. */
static int stage_keys_amx(const job_t* J, int64_t g, const scratch_t* S, int64_t slot) {
  int64_t m = J->m, c = J->c, mp = padded(m), kp = amx_k(c);
  float *yn = S->ynk + slot * padded(m * c), *sp = S->sp + slot * mp;
  uint32_t* kb = S->kb + slot * kp / 2 * mp;
  memset(sp, 0, (size_t)mp * sizeof(float));
  int finite = vig_normalize_rows(J->y + g * m * c, m, c, yn, sp, 1);
  uint16_t* pairs = S->pairs;  /* [mp, kp] bfloat16: a key's values in a row */
  for (int64_t j = 0; j < mp; ++j) {
    float sh = _mm512_cvtss_f32(bf16_float(bf16_bits(_mm512_set1_ps(sp[j]))));
    if (j < m) encode(yn + j * c, c, 1.0f, 1, sh, sp[j] - sh, kp, pairs + j * kp);
    else memset(pairs + j * kp, 0, (size_t)kp * sizeof(uint16_t));
  }
  for (int64_t j = 0; j < mp; j += LANES)  /* pairs as 32-bit words, transposed */
    for (int64_t k = 0; k < kp / 2; k += LANES)
      transpose_block((const float*)pairs + j * kp / 2 + k, kp / 2, LANES,
                      kp / 2 - k < LANES ? kp / 2 - k : LANES, (float*)kb + k * mp + j, mp);
  return finite;
}

/* The table's rows i0 .. i0 + rows - 1 for the tiles (bt, whole lines of mp, zero past
   m; rows up to a whole tile repeat the last) and the largest |b_ij| of each (bmax; NaN
   left out: it reaches no other entry's sum). Once per block of rows: every image of an
   image block reads them. */
static void stage_table(const job_t* J, int64_t i0, int64_t rows, const scratch_t* S) {
  int64_t m = J->m, mp = padded(m), tiles = (rows + AMX_ROWS - 1) / AMX_ROWS * AMX_ROWS;
  for (int64_t r = 0; r < tiles; ++r) {
    const float* b = J->b + (i0 + (r < rows ? r : rows - 1)) * m;
    __m512 big = _mm512_setzero_ps();
    for (int64_t j = 0; j < mp; j += LANES) {
      __m512 v = _mm512_maskz_loadu_ps(below(j, m), b + j);
      _mm512_storeu_ps(S->bt + r * mp + j, v);
      big = _mm512_max_ps(_mm512_abs_ps(v), big);  /* a NaN lane keeps big's value */
    }
    S->bmax[r] = _mm512_reduce_max_ps(big);
  }
}

/* The approximations a_ij of `rows` normalised query rows qn (a block of an image: rows
   up to a whole tile repeat the last) to the keys in slot, in d (rows of mp). Two query
   tiles by two key tiles at a time, so that each tile loaded serves two products; each
   sum starts from its rows of the table (bt). */
static void approximate(const job_t* J, const float* qn, int64_t rows, const scratch_t* S,
                        int64_t slot, float* d) {
  int64_t c = J->c, mp = padded(J->m), kp = amx_k(c), tiles = (rows + 15) / AMX_ROWS;
  const uint32_t* kb = S->kb + slot * kp / 2 * mp;
  for (int64_t r = 0; r < tiles * AMX_ROWS; ++r)
    encode(qn + (r < rows ? r : rows - 1) * c, c, -2.0f, 0, 1.0f, 1.0f, kp, S->qa + r * kp);
  int64_t as = kp * 2, ks = mp * 4, tile = AMX_ROWS * mp;
  for (int64_t t = 0; t < tiles; t += 2) {
    const uint16_t* a = S->qa + t * AMX_ROWS * kp;
    const float* b = S->bt + t * tile;
    float* out = d + t * tile;
    int both = t + 1 < tiles;  /* a second query tile */
    for (int64_t j0 = 0; j0 < mp; j0 += 2 * LANES) {
      int two = j0 + LANES < mp;  /* a second key tile */
      _tile_loadd(4, b + j0, ks);
      if (two) _tile_loadd(5, b + j0 + LANES, ks);
      if (both) _tile_loadd(6, b + tile + j0, ks);
      if (both && two) _tile_loadd(7, b + tile + j0 + LANES, ks);
      for (int64_t k = 0; k < kp / 32; ++k) {
        const uint32_t* y = kb + 16 * k * mp + j0;
        _tile_loadd(0, a + 32 * k, as);
        _tile_loadd(2, y, ks);
        _tile_dpbf16ps(4, 0, 2);
        if (two) {
          _tile_loadd(3, y + LANES, ks);
          _tile_dpbf16ps(5, 0, 3);
        }
        if (both) {
          _tile_loadd(1, a + AMX_ROWS * kp + 32 * k, as);
          _tile_dpbf16ps(6, 1, 2);
          if (two) _tile_dpbf16ps(7, 1, 3);
        }
      }
      _tile_stored(4, out + j0, ks);
      if (two) _tile_stored(5, out + j0 + LANES, ks);
      if (both) _tile_stored(6, out + tile + j0, ks);
      if (both && two) _tile_stored(7, out + tile + j0 + LANES, ks);
    }
  }
}

/* cv[i] = s_j - 2 q . y_j + b_j in float32 for the keys j = ci[i], i < count (q and the
   rows y_j of yn normalised, c channels; b the query's row of the table), NaN as +inf
   (as the selection reads it). Four keys at a time, so that four chains of dependent
   multiply-adds overlap and each vector of q serves four. (Sixteen keys at a time, their
   sums added across vectors, measured no faster.) */
static void exact_distances(const float* q, const float* yn, int64_t c, const float* sp,
                            const float* b, const int32_t* ci, int64_t count, float* cv) {
  for (int64_t i = 0; i < count; i += 4) {
    const float* y[4];
    __m512 acc[4];
    for (int t = 0; t < 4; ++t) {  /* past count, the last key again */
      y[t] = yn + (int64_t)ci[i + t < count ? i + t : count - 1] * c;
      acc[t] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < c; k += LANES) {
      __mmask16 in = below(k, c);
      __m512 qk = _mm512_maskz_loadu_ps(in, q + k);
      for (int t = 0; t < 4; ++t)
        acc[t] = _mm512_fmadd_ps(qk, _mm512_maskz_loadu_ps(in, y[t] + k), acc[t]);
    }
    for (int t = 0; t < 4 && i + t < count; ++t) {
      int64_t j = ci[i + t];
      float v = (sp[j] + _mm512_reduce_add_ps(acc[t]) * -2.0f) + b[j];
      cv[i + t] = v != v ? INFINITY : v;
    }
  }
}

/* 2E (the top of the file's section) for a row whose table entries are at most bmax */
static float window(const job_t* J, float bmax) {
  float c = (float)J->c, k = (float)amx_k(J->c);
  float p = split(J->c) ? 0x1p-13f : 0x1p-6f + 0x1p-15f;
  return 2.0f * (p + 0x1p-15f + k * 0x1p-24f * (bmax + 4.0f) +
                 0x1p-23f * (c + bmax + 4.0f));
}

/* Row r's kd keys sel, placed by their approximations v (ascending; cv[0:n]: the
   admitted keys' approximations, NaN as +inf), put in the order of their distances where
   that takes no more than the distances of a few of them; returns 0 (sel as it was)
   where it does not. The approximations of keys whose gaps are above w are in the order
   of their distances (see "Prefiltered rows"): so where every other admitted key lies
   more than w above the last of sel, the kd nearest are sel's keys, and each run of them
   joined by gaps of at most w (most rows have none, most others one pair) is ordered by
   its keys' exact distances, ties by index; the runs keep their order. q, b: the row's
   query and table row; yn, sp: the keys' normalised rows and s_j. cv, ci are
   overwritten. */
static int settle(const job_t* J, const float* v, int64_t* sel, float* cv, int32_t* ci,
                  int64_t n, float w, const float* q, const float* b, const float* yn,
                  const float* sp) {
  int64_t kd = J->kd, within = 0;
  for (int64_t i = 0; i < n; i += LANES)
    within += __builtin_popcount(_mm512_mask_cmp_ps_mask(below(i, n), _mm512_loadu_ps(
        cv + i), _mm512_set1_ps(v[kd - 1] + w), _CMP_LE_OQ));
  if (within != kd) return 0;  /* a key past the kd nearest may belong among them */
  int apart = 1;  /* every gap above w (most rows): sixteen gaps at a time */
  for (int64_t p = 0; p + 1 < kd; p += LANES) {
    __mmask16 in = below(p, kd - 1);
    __m512 gap = _mm512_sub_ps(_mm512_maskz_loadu_ps(in, v + p + 1),
                               _mm512_maskz_loadu_ps(in, v + p));
    apart &= _mm512_mask_cmp_ps_mask(in, gap, _mm512_set1_ps(w), _CMP_GT_OQ) == in;
  }
  if (apart) return 1;
  for (int64_t s = 0, e; s < kd; s = e + 1) {
    for (e = s; e + 1 < kd && !(v[e + 1] - v[e] > w); ++e) {}  /* NaN joins */
    if (e == s) continue;
    for (int64_t p = s; p <= e; ++p) ci[p - s] = (int32_t)sel[p];
    exact_distances(q, yn, J->c, sp, b, ci, e - s + 1, cv);
    for (int64_t p = 1; p <= e - s; ++p) {  /* insertion sort by (distance, index) */
      float x = cv[p];
      int32_t j = ci[p];
      int64_t t = p;
      for (; t > 0 && (cv[t - 1] > x || (cv[t - 1] == x && ci[t - 1] > j)); --t)
        cv[t] = cv[t - 1], ci[t] = ci[t - 1];
      cv[t] = x, ci[t] = j;
    }
    for (int64_t p = s; p <= e; ++p) sel[p] = ci[p - s];
  }
  return 1;
}

/* ROWS rows (the first `rows` selected) of approximations d, their queries qr, table
   rows br and table bounds bmax: each row's admitted keys, placed by their approximations
   where `settle` can (split rows), else by their exact distances */
static void select_prefiltered(const job_t* J, const float* const* d, int64_t rows,
                               const float* const* qr, const float* const* br,
                               const float* bmax, const scratch_t* S, int64_t slot) {
  int64_t c = J->c, m = J->m, kd = J->kd;
  const float *yn = S->ynk + slot * padded(m * c), *sp = S->sp + slot * padded(m);
  float u[ROWS];
  vig_select_bounds(d, m, kd, u);
  for (int64_t r = 0; r < rows; ++r) {
    float w = window(J, bmax[r]);
    float t = isfinite(u[r]) ? u[r] + w : u[r];
    int64_t n = vig_select_gather(d[r], m, t, S->cv, S->ci), *sel = S->sel + r * kd;
    if (split(c)) {
      float v[1024];  /* kd <= 1024: knn.py's bound */
      vig_select_place(S->cv, S->ci, n, kd, sel, v);
      if (settle(J, v, sel, S->cv, S->ci, n, w, qr[r], br[r], yn, sp)) continue;
    }
    exact_distances(qr[r], yn, c, sp, br[r], S->ci, n, S->cv);
    vig_select_place(S->cv, S->ci, n, kd, sel, NULL);
  }
}

/* block_fn of the prefilter: the approximations of the block's rows (the table's rows
   staged with the block's first image), then their selection ROWS rows at a time */
static void block_prefiltered(const job_t* J, int64_t g, int64_t i0, int64_t rows,
                              const scratch_t* S, int64_t slot) {
  int64_t c = J->c, mp = padded(J->m);
  if (slot == 0) stage_table(J, i0, rows, S);
  approximate(J, S->qn, rows, S, slot, S->rows);
  for (int64_t h = 0; h < rows; h += ROWS) {
    const float *dr[ROWS], *qr[ROWS], *br[ROWS];
    for (int r = 0; r < ROWS; ++r) {
      int64_t k = h + r < rows ? h + r : rows - 1;
      dr[r] = S->rows + k * mp;  /* rows past `rows` repeat the last */
      qr[r] = S->qn + k * c;
      br[r] = J->b + (i0 + k) * J->m;
    }
    int64_t sel = rows - h < ROWS ? rows - h : ROWS;
    select_prefiltered(J, dr, sel, qr, br, S->bmax + h, S, slot);
    for (int r = 0; r < sel; ++r) emit(J, g, g * J->n + i0 + h + r, S->sel + r * J->kd);
  }
}
#endif

/* Query rows [row0, row1); returns the flags of vig_nearest. */
static int run(const job_t* J, int64_t row0, int64_t row1, float* scratch) {
  scratch_t S = carve(J, scratch);
  int64_t n = J->n, c = J->c, block = J->b ? block_images(J->m, c, J->self) : 1;
  int flags = 0;
#ifdef VIG_AMX
  tile_config_t saved;
  int amx = prefiltered(J);
  if (amx) amx_configure(&saved);
#endif
  for (int64_t r0 = row0; r0 < row1;) {
    int64_t g = r0 / n, end = (g + 1) * n < row1 ? (g + 1) * n : row1;  /* one image */
    int64_t whole = r0 == g * n ? (row1 - r0) / n : 0;  /* whole images from here */
#ifdef VIG_AMX
    if (amx) {  /* whole images (prefiltered: a table, so block >= 1), or part of one */
      int64_t images = whole < 1 ? 1 : whole < block ? whole : block;
      int64_t first = whole < 1 ? r0 - g * n : 0, last = whole < 1 ? end - g * n : n;
      flags |= image_block(J, g, images, &S, amx_block(J->m), stage_keys_amx,
                           block_prefiltered, first, last);
      r0 = whole < 1 ? end : (g + images) * n;
      continue;
    }
#endif
    if (block > 1 && whole > 1) {
      int64_t images = whole < block ? whole : block;
      flags |= image_block(J, g, images, &S, ROWS, stage_keys, block_float32, 0, n);
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
#ifdef VIG_AMX
  if (amx) amx_restore(&saved);
#endif
  return flags;
}

/* Query rows [row0, row1) of q ([g * n, c]; row = image * n + i) and keys y ([g * m, c];
   self: y is q), both as they come: each row is L2-normalised here as _normalize.c does.
   b [n, m] or NULL. For each row: out[row * keep + t] = its (t * step)-th nearest key,
   within the image; or, where offset (the edge count g * n * keep) is not 0, that key +
   image * m, with out[offset + row * keep + t] = row: out is then a whole edge_index
   [2, g * n * keep], sources and targets. Returns 1 | 2: a query's | a key's norm was not
   finite (NaN or an infinity in it; the rows are done all the same), else 0. */
int vig_nearest(const float* q, const float* y, const float* b, int64_t n, int64_t m,
                int64_t c, int64_t kd, int64_t self, int64_t keep, int64_t step,
                int64_t offset, int64_t prefilter, int64_t row0, int64_t row1, int64_t* out,
                float* scratch) {
  job_t J = {q, y, b, n, m, c, kd, self && n == m && q == y, keep, step, offset, out,
             prefilter};
  return run(&J, row0, row1, scratch);
}

/* First row of thread t's part of g images of n rows: whole images where there are at
   least as many images as threads (the symmetric path needs them), else equal rows. */
int64_t vig_nearest_split(int64_t g, int64_t n, int64_t threads, int64_t t) {
  int64_t rows = g * n;
  int64_t step = g >= threads ? (g + threads - 1) / threads * n : (rows + threads - 1) / threads;
  return t * step < rows ? t * step : rows;
}

/* vig_nearest over all g * n rows, split over `threads` OpenMP threads (each with its own
   vig_nearest_scratch floats of scratch); the flags of every part or-ed. */
int vig_nearest_rows(const float* q, const float* y, const float* b, int64_t g, int64_t n,
                     int64_t m, int64_t c, int64_t kd, int64_t self, int64_t keep,
                     int64_t step, int64_t offset, int64_t prefilter, int64_t* out,
                     float* scratch, int32_t threads) {
  job_t J = {q, y, b, n, m, c, kd, self && n == m && q == y, keep, step, offset, out,
             prefilter};
#ifdef VIG_AMX
  if (prefilter) amx_permitted();  /* asked here, before the threads start */
#endif
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

/* 1 where a job of these shapes (a table b or not) takes the prefilter: built with AMX
   and bfloat16, the kernel lets this process use the tiles, and the job is one
   prefiltered() takes; else 0 */
int vig_nearest_prefilter(int64_t n, int64_t m, int64_t c, int64_t kd, int64_t self,
                          int64_t with_b) {
#ifdef VIG_AMX
  static const float table = 0.0f;
  job_t J = {.n = n, .m = m, .c = c, .kd = kd, .self = self && n == m,
             .b = with_b ? &table : NULL, .prefilter = 1};
  return prefiltered(&J);
#else
  (void)n, (void)m, (void)c, (void)kd, (void)self, (void)with_b;
  return 0;
#endif
}

/* For the tests of the prefilter's window: its approximations a_ij of the n query rows q
   ([n, c], one image) to the m keys y ([m, c]) with the table b ([n, m]), in out ([n, m]),
   and each row's window 2E in w ([n]). scratch: vig_nearest_scratch(n, m, c, 1, 0)
   floats. Returns 1, or 0 (nothing written) where the prefilter does not run here: no
   AMX build or permission, or too few channels. */
int vig_nearest_approximations(const float* q, const float* y, const float* b, int64_t n,
                               int64_t m, int64_t c, float* out, float* w, float* scratch) {
#ifdef VIG_AMX
  job_t J = {.q = q, .y = y, .b = b, .n = n, .m = m, .c = c, .kd = 1, .prefilter = 1};
  if (!prefilter_shape(c, 0) || !amx_permitted()) return 0;
  scratch_t S = carve(&J, scratch);
  int64_t mp = padded(m);
  tile_config_t saved;
  amx_configure(&saved);
  stage_keys_amx(&J, 0, &S, 0);
  for (int64_t i0 = 0, step = amx_block(m); i0 < n; i0 += step) {
    int64_t rows = n - i0 < step ? n - i0 : step;
    vig_normalize_rows(q + i0 * c, rows, c, S.qn, NULL, 1);
    stage_table(&J, i0, rows, &S);
    approximate(&J, S.qn, rows, &S, 0, S.rows);
    for (int64_t r = 0; r < rows; ++r) {
      memcpy(out + (i0 + r) * m, S.rows + r * mp, (size_t)m * sizeof(float));
      w[i0 + r] = window(&J, S.bmax[r]);
    }
  }
  amx_restore(&saved);
  return 1;
#else
  (void)q, (void)y, (void)b, (void)n, (void)m, (void)c, (void)out, (void)w, (void)scratch;
  return 0;
#endif
}
