/* Every function the native library of vig_pyg exports, for the C files that define and
   call them and for vig_pyg/native/bindings.py, which reads the prototypes below and
   binds them with ctypes. That parser takes a small subset of C: prototypes of the types
   void, int, int32_t, int64_t, uint8_t, float and double, pointers to them (const
   anywhere), each prototype ending in ';', comments, and lines of the preprocessor,
   which it skips. Anything else in this file makes the bindings refuse to load, so keep
   to that subset.

   Arrays are row-major and float32 unless said otherwise; "threads" is the most OpenMP
   threads a call may use (1: none, and no parallel region) and is ignored by a build
   without OpenMP. Nothing here allocates, keeps a pointer after it returns, or checks
   its arguments: the Python callers size every buffer. */
#ifndef VIG_NATIVE_H
#define VIG_NATIVE_H

#include <stdint.h>

/* Rows vig_select_block takes (the kNN single pass's tile of query rows). */
#define VIG_SELECT_BLOCK_ROWS 8

/* ---- the selection (_select.c) ------------------------------------------------------- */

/* idx [rows, kd] (int64): for each row of dist [rows, m], the indices of its kd smallest
   values, ascending, ties in index order, NaN after every number. 1 <= kd <= min(m, 1024).
   scratch: 2 * (m + 16) floats. */
void vig_select_smallest(const float* dist, int64_t rows, int64_t m, int64_t kd,
                         int64_t* idx, float* scratch);

/* vig_select_smallest over `threads` OpenMP threads, each on its own block of rows and its
   own scratch (threads * 2 * (m + 16) floats in all). Built against the OpenMP runtime
   torch has loaded, these are torch's own worker threads. */
void vig_select_rows(const float* dist, int64_t rows, int64_t m, int64_t kd, int64_t* idx,
                     float* scratch, int32_t threads);

/* 1 when this build has OpenMP (the `threads` of every function here are OpenMP threads:
   torch's own where the build joined its runtime), else 0. */
int vig_select_openmp(void);

/* vig_select_smallest of the first `rows` (at most VIG_SELECT_BLOCK_ROWS) of the rows
   d[0 .. VIG_SELECT_BLOCK_ROWS - 1] (each m floats; all of them readable, those past
   `rows` only read), into idx[r * kd ...]. cv, ci: m + 16 floats and int32 each. */
void vig_select_block(const float* const* d, int64_t rows, int64_t m, int64_t kd,
                      int64_t* idx, float* cv, int32_t* ci);

/* ---- the kNN's single pass of distances + selection (_nearest.c) --------------------- */

/* Floats of scratch one caller of vig_nearest needs for a job of these shapes (self: the
   keys are the queries). */
int64_t vig_nearest_scratch(int64_t n, int64_t m, int64_t c, int64_t kd, int64_t self);

/* Query rows [row0, row1) of q ([g * n, c]; row = image * n + i) and keys y ([g * m, c];
   self: y is q), both as they come: each row is L2-normalised as vig_normalize_rows does.
   b: a [n, m] term added to every image's distances, or NULL. The distance of query i to
   key j of its image is |y_j|^2 - 2 q_i . y_j (+ b_ij) on the normalised rows, and its kd
   nearest keys (1 <= kd <= min(m, 1024)) are ordered as vig_select_smallest orders them,
   keep * step <= kd. For each row: out[row * keep + t] = its (t * step)-th nearest key,
   within the image; or, where offset (the edge count g * n * keep) is not 0, that key +
   image * m, with out[offset + row * keep + t] = row: out is then a whole edge_index
   [2, g * n * keep], sources and targets. scratch: vig_nearest_scratch floats. Returns
   1 | 2: a query's | a key's norm was not finite (NaN or an infinity in it; the rows are
   done all the same), else 0. */
int vig_nearest(const float* q, const float* y, const float* b, int64_t n, int64_t m,
                int64_t c, int64_t kd, int64_t self, int64_t keep, int64_t step,
                int64_t offset, int64_t row0, int64_t row1, int64_t* out, float* scratch);

/* First row of thread t's part of g images of n rows (t = threads: g * n): whole images
   where there are at least as many images as threads (the symmetric path needs them),
   else equal parts of the rows. */
int64_t vig_nearest_split(int64_t g, int64_t n, int64_t threads, int64_t t);

/* vig_nearest over all g * n rows, split by vig_nearest_split over `threads` OpenMP
   threads, each with its own vig_nearest_scratch floats of scratch (threads times that in
   all); the flags of every part or-ed. */
int vig_nearest_rows(const float* q, const float* y, const float* b, int64_t g, int64_t n,
                     int64_t m, int64_t c, int64_t kd, int64_t self, int64_t keep,
                     int64_t step, int64_t offset, int64_t* out, float* scratch,
                     int32_t threads);

/* ---- the kNN's row normalisation (_normalize.c) -------------------------------------- */

/* For each row x of x [rows, c]: out = x / max(|x|, 1e-12) and, where sq is not NULL,
   sq[row] = |out|^2 (squares summed in double). Returns 1 when every row's norm is finite
   in float32 (no NaN or infinity in x, no norm beyond the float range), else 0; such rows
   are written all the same. */
int vig_normalize_rows(const float* x, int64_t rows, int64_t c, float* out, float* sq,
                       int32_t threads);

/* ---- neighbour reductions of fixed-degree graphs (_gather.c) ------------------------- */

/* Row i of out [n, c] reduces the k source rows idx[i * k], ..., idx[i * k + k - 1] of x
   ([*, c]) channel by channel. reduce 0: their sum, added in that order; reduce 1: their
   maximum, NaN if any is NaN (as torch.amax), and, where rank ([n, c] bytes, k <= 256) is
   not NULL, rank[i] = the last r < k whose row holds that value. */
void vig_gather_reduce(const float* x, const int64_t* idx, int64_t n, int64_t k, int64_t c,
                       int32_t reduce, float* out, uint8_t* rank, int32_t threads);

/* The gradient of vig_gather_reduce: grad_src ([*, c], zeroed by the caller) += the output
   gradient grad ([n, c]) of every target at each of its k source rows (rank NULL: the
   sum), or at the one source row rank chose (the maximum: rank [n, c] bytes). */
void vig_gather_reduce_backward(const float* grad, const int64_t* idx, int64_t n, int64_t k,
                                int64_t c, const uint8_t* rank, float* grad_src,
                                int32_t threads);

/* ---- training-mode BatchNorm + activation (_batch_norm.c) ---------------------------- */

/* out = act(BN(z)) (+ residual, which may be NULL) for z [rows, c] (a channels-last map),
   with the batch statistics: mean, var (biased) and invstd = 1 / sqrt(var + eps) written
   per column; gamma, beta: the affine transform. act: 0 none, 1 ReLU, 2 LeakyReLU(slope),
   3 GELU (exact, erf form). scratch: threads * 2 * c doubles, then room for 3 * c
   floats. */
void vig_bn_act_forward(const float* z, int64_t rows, int64_t c, const float* gamma,
                        const float* beta, const float* residual, double eps, int32_t act,
                        float slope, float* out, float* mean, float* var, float* invstd,
                        double* scratch, int32_t threads);

/* dz [rows, c], dgamma and dbeta [c] from g = dL/dout [rows, c] of vig_bn_act_forward
   (its z, mean, invstd, gamma, beta, act and slope; the residual's gradient is g itself).
   dz may not alias g. scratch as in the forward. */
void vig_bn_act_backward(const float* g, const float* z, int64_t rows, int64_t c,
                         const float* mean, const float* invstd, const float* gamma,
                         const float* beta, int32_t act, float slope, float* dz,
                         float* dgamma, float* dbeta, double* scratch, int32_t threads);

#endif /* VIG_NATIVE_H */
