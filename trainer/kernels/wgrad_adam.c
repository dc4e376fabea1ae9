/* The weight gradient of a data layer and its Adam step in one pass (see trainer/native.py).

   For every active model k and every row r of its weight W[k] [D, H]:
       dW[r, :] = sum_b x[k, b, r] * g[k, b, :]                    (x: the masked input, g: the output gradient)
       grad     = dW[r, :] + wd[k] * W[k, r, :]                     (L2 weight decay, as torch.optim.Adam)
       m        = m + (1 - beta1) * (grad - m)
       v        = beta2 * v + (1 - beta2) * grad^2
       W        = W - step_size[k] * m / (sqrt(v) / bc2_sqrt[k] + eps)
   which is torch's fused Adam on the gradient x[k]^T g[k], without writing dW to memory and reading it back.

   Blocks of RB rows of one model are the parallel tasks (OpenMP); every element is computed by one thread in one
   order, so the result does not depend on the thread count. Inside a block, four rows x 64 columns of dW are
   accumulated in sixteen 16-float vectors while the block's x columns sit transposed in a per-thread scratch
   buffer, four rows interleaved ([r / 4][b][4]: the tile's four values of a batch row side by side, and the
   transposition 16-byte copies rather than scalar ones, which took 13-20% of the pass); the Adam update then
   runs on those vectors.
   Columns past the last 64 go four rows x 16 at a time; rows past the last four and columns past the last 16
   (trainer.native sends only H % 16 == 0) take a scalar loop. Without AVX-512 a 4 x 64 tile runs as four
   4 x 16 ones (vec.h's WIDE_TILES), with the same sums.
   GCC vector extensions (no intrinsics, see vec.h): the compiler maps them to AVX-512, AVX2 or NEON. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "forward_tile.h"
#include "vec.h"

#define RB 64
#define PFD 8           /* rows ahead at which a tile prefetches W, m and v (see adam_tile4x64) */

struct adam { float beta1c, beta2, beta2c, eps, wd, step_size, bc2_sqrt; };

/* the Adam step of 16 consecutive parameters (dw: their gradient, NV vectors) */
static inline void adam_vec(float *w_, float *m_, float *v_, const vn *dw, const struct adam *a) {
    UNROLL_NV
    for (int j = 0; j < NV; j++) {
        vn w = loadn(w_ + j * VN), m = loadn(m_ + j * VN), v = loadn(v_ + j * VN), den = v;
        vn gr = dw[j] + a->wd * w;
        m = m + a->beta1c * (gr - m);
        v = a->beta2 * v + a->beta2c * gr * gr;
        for (int e = 0; e < VN; e++) den[e] = __builtin_sqrtf(v[e]);
        den = den / a->bc2_sqrt + a->eps;
        w = w - a->step_size * m / den;
        storen(w_ + j * VN, w); storen(m_ + j * VN, m); storen(v_ + j * VN, v);
    }
}

static inline void adam_one(float *w, float *m, float *v, float dw, const struct adam *a) {
    float gr = dw + a->wd * *w;
    *m = *m + a->beta1c * (gr - *m);
    *v = a->beta2 * *v + a->beta2c * gr * gr;
    *w = *w - a->step_size * *m / (__builtin_sqrtf(*v) / a->bc2_sqrt + a->eps);
}

/* Rows [r, r + 4) x columns [h0, h0 + 16): the columns left after the 64-wide tiles (H = 80, 96, 112, ...), and
   adam_tile4x64's quarters where !WIDE_TILES (vec.h); those (pf) prefetch the W, m and v lines of their 16 columns
   PFD rows on, one row of four per batch row (see adam_tile4x64). */
static inline void adam_tile4x16(const float *xt, int r, int B, const float *gk, int H, int h0, float *W, float *m,
                            float *v, size_t row0, const struct adam *a, int pf) {
    vn acc[4][NV], z = {0};
    UNROLL_NV
    for (int j = 0; j < NV; j++) acc[0][j] = acc[1][j] = acc[2][j] = acc[3][j] = z;
    const float *xq = xt + (size_t)r * B;
    for (int b = 0; b < B; b++) {
        const float *gb = gk + (size_t)b * H + h0;
        if (pf && b < 4) {
            size_t o = (row0 + (size_t)(r + PFD + b)) * H + h0;
            __builtin_prefetch(W + o, 1, 3); __builtin_prefetch(m + o, 1, 3); __builtin_prefetch(v + o, 1, 3);
        }
        float s0 = xq[4 * b], s1 = xq[4 * b + 1], s2 = xq[4 * b + 2], s3 = xq[4 * b + 3];
        UNROLL_NV
        for (int j = 0; j < NV; j++) {
            vn g0 = loadn(gb + j * VN);
            KEEP_VN(g0);
            acc[0][j] += s0 * g0; acc[1][j] += s1 * g0; acc[2][j] += s2 * g0; acc[3][j] += s3 * g0;
        }
    }
    for (int i = 0; i < 4; i++) {
        size_t off = (row0 + (size_t)(r + i)) * H + h0;
        adam_vec(W + off, m + off, v + off, acc[i], a);
    }
}

/* Rows [r, r + 4) x columns [h0, h0 + 64) of one block: xt holds the block's x transposed, rows [r, r + 4) at
   xt + r B as [b][4]. While its FMAs run, the tile prefetches (for writing) the W, m and v lines of the same tile
   PFD rows further on (pf: those rows are the model's), one line of each per batch row for the first 16: the
   hardware prefetcher alone left the Adam updates waiting on memory (the pass ran 4-10% slower). */
static inline void adam_tile4x64(const float *xt, int r, int B, const float *gk, int H, int h0, float *W, float *m,
                            float *v, size_t row0, const struct adam *a, int pf) {
#if !WIDE_TILES
    for (int c = 0; c < 64; c += 16) adam_tile4x16(xt, r, B, gk, H, h0 + c, W, m, v, row0, a, pf);
#else
    v16 a00 = {0}, a01 = {0}, a02 = {0}, a03 = {0}, a10 = {0}, a11 = {0}, a12 = {0}, a13 = {0};
    v16 a20 = {0}, a21 = {0}, a22 = {0}, a23 = {0}, a30 = {0}, a31 = {0}, a32 = {0}, a33 = {0};
    const float *xq = xt + (size_t)r * B;
    for (int b = 0; b < B; b++) {
        const float *gb = gk + (size_t)b * H + h0;
        v16 g0, g1, g2, g3;
        __builtin_memcpy(&g0, gb, 64); __builtin_memcpy(&g1, gb + 16, 64);
        __builtin_memcpy(&g2, gb + 32, 64); __builtin_memcpy(&g3, gb + 48, 64);
        KEEP_IN_REGISTERS(g0, g1, g2, g3);   /* else GCC re-reads g for every row (load-bound loop) */
        if (pf && b < 16) {
            size_t o = (row0 + (size_t)(r + PFD + (b >> 2))) * H + h0 + (size_t)(b & 3) * 16;
            __builtin_prefetch(W + o, 1, 3); __builtin_prefetch(m + o, 1, 3); __builtin_prefetch(v + o, 1, 3);
        }
        float s0 = xq[4 * b], s1 = xq[4 * b + 1], s2 = xq[4 * b + 2], s3 = xq[4 * b + 3];
        a00 += s0 * g0; a01 += s0 * g1; a02 += s0 * g2; a03 += s0 * g3;
        a10 += s1 * g0; a11 += s1 * g1; a12 += s1 * g2; a13 += s1 * g3;
        a20 += s2 * g0; a21 += s2 * g1; a22 += s2 * g2; a23 += s2 * g3;
        a30 += s3 * g0; a31 += s3 * g1; a32 += s3 * g2; a33 += s3 * g3;
    }
    v16 acc[4][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}, {a20, a21, a22, a23}, {a30, a31, a32, a33}};
    for (int i = 0; i < 4; i++) {
        size_t off = (row0 + (size_t)(r + i)) * H + h0;
        for (int j = 0; j < 4; j++) adam_vec(W + off + 16 * j, m + off + 16 * j, v + off + 16 * j, &acc[i][j], a);
    }
#endif
}

/* The Adam step of rows [r0, r0 + nr) x columns [h0, h1) of model k's W (global row row0 = k D + r0): the block's
   x columns transposed into xt (groups of four rows as [b][4]; rows past the last four as [row][b]), then 4 x 64
   tiles, 4 x 16 ones, and scalar loops for what is left. Each group of four rows prefetches two batch rows' worth
   of the next block's x columns and, given the next step's input xnk (else NULL), of this block's xnk columns,
   which the next-step product reads after the Adam step: strided lines the hardware prefetcher does not foresee. */
static void adam_block(const float *xk, const float *gk, float *xt, int B, int D, int H, int r0, int nr, int h0,
                       int h1, float *W, float *m, float *v, size_t row0, const struct adam *a, const float *xnk) {
    int n4 = nr / 4 * 4;
    for (int b = 0; b < B; b++) {
        const float *xb = xk + (size_t)b * D + r0;
        for (int r = 0; r < n4; r += 4) __builtin_memcpy(xt + (size_t)r * B + 4 * b, xb + r, 16);
        for (int r = n4; r < nr; r++) xt[(size_t)r * B + b] = xb[r];
    }
    int r = 0;
    for (; r + 4 <= nr; r += 4) {
        for (int b = r / 2; b < r / 2 + 2 && b < B; b++)
            for (int l = 0; l < RB; l += 16) {
                if (r0 + RB + l < D) __builtin_prefetch(xk + (size_t)b * D + r0 + RB + l, 0, 3);
                if (xnk && l < nr) __builtin_prefetch(xnk + (size_t)b * D + r0 + l, 0, 3);
            }
        int h = h0, pf = r0 + r + PFD + 4 <= D;
        for (; h + 64 <= h1; h += 64) adam_tile4x64(xt, r, B, gk, H, h, W, m, v, row0, a, pf);
        for (; h + 16 <= h1; h += 16) adam_tile4x16(xt, r, B, gk, H, h, W, m, v, row0, a, 0);
        for (int i = 0; i < 4; i++)
            for (int hh = h; hh < h1; hh++) {
                float s = 0.0f;
                for (int b = 0; b < B; b++) s += xt[(size_t)r * B + 4 * b + i] * gk[(size_t)b * H + hh];
                size_t off = (row0 + r + i) * H + hh;
                adam_one(W + off, m + off, v + off, s, a);
            }
    }
    for (; r < nr; r++)
        for (int h = h0; h < h1; h++) {
            float s = 0.0f;
            for (int b = 0; b < B; b++) s += xt[(size_t)r * B + b] * gk[(size_t)b * H + h];
            size_t off = (row0 + r) * H + h;
            adam_one(W + off, m + off, v + off, s, a);
        }
}

/* one scratch block of RB x B floats per thread (NULL when an allocation failed: nothing is updated then) */
static float **alloc_scratch(int threads, int B) {
    float **scratch = calloc((size_t)(threads > 0 ? threads : 1), sizeof(float *));
    if (!scratch) return NULL;
    for (int t = 0; t < threads; t++)
        if (!(scratch[t] = malloc(sizeof(float) * RB * (size_t)B))) {
            for (int u = 0; u <= t; u++) free(scratch[u]);
            free(scratch);
            return NULL;
        }
    return scratch;
}

static void free_scratch(float **scratch, int threads) {
    for (int t = 0; t < threads; t++) free(scratch[t]);
    free(scratch);
}

static inline float *thread_scratch(float **scratch) {
#ifdef _OPENMP
    return scratch[omp_get_thread_num()];
#else
    return scratch[0];
#endif
}

/* 1 - beta1 and 1 - beta2 come from the caller (computed in double, as torch does: 1 - 0.999f in float is
   1.3e-5 off). Returns 0, or -1 when a scratch buffer could not be allocated (nothing is updated then). */
int wgrad_adam(const float *x, long long x_model_stride, const float *g, float *W, float *m, float *v,
               int K, int B, int D, int H, const float *step_size, const float *bc2_sqrt, const float *wd,
               const unsigned char *active, float one_minus_beta1, float beta2, float one_minus_beta2,
               float eps, int threads) {
    int nblk = (D + RB - 1) / RB;
    float **scratch = alloc_scratch(threads, B);
    if (!scratch) return -1;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int task = 0; task < K * nblk; task++) {
        int k = task / nblk, r0 = (task % nblk) * RB;
        if (!active[k]) continue;
        int nr = (r0 + RB < D ? r0 + RB : D) - r0;
        struct adam a = {one_minus_beta1, beta2, one_minus_beta2, eps, wd[k], step_size[k], bc2_sqrt[k]};
        adam_block(x + (size_t)k * (size_t)x_model_stride, g + (size_t)k * B * H, thread_scratch(scratch), B, D, H,
                   r0, nr, 0, H, W, m, v, (size_t)k * D + r0, &a, NULL);
    }
    free_scratch(scratch, threads);
    return 0;
}

/* wgrad_adam, then the next training step's forward product on the updated weights, in the same pass over W:

       zn[k] = xn[k] @ W_new[k]        xn: the next step's (masked) input [B, D]; zn: [K, B, H], written

   so that the next step's forward does not read W from memory again, and its FMAs run while Adam waits on memory.
   Tasks are (model, one of NP ranges of rows) streaming whole rows of W, RB rows at a time: the block's Adam step
   (as wgrad_adam; an idle model's W does not move), then the block's share of the product while it sits in L1,
   into the range's partial sum (zp: NP x [K, B, H] scratch); zn is then the sum of the NP partials, in order.
   NP is fixed, so the result depends neither on the thread count nor on the other models.
   Returns 0, or -1 when scratch could not be allocated (nothing is updated then). */
#define NP 2
int wgrad_adam_next(const float *x, long long x_model_stride, const float *g, float *W, float *m, float *v,
                    int K, int B, int D, int H, const float *step_size, const float *bc2_sqrt, const float *wd,
                    const unsigned char *active, float one_minus_beta1, float beta2, float one_minus_beta2,
                    float eps, const float *xn, long long xn_model_stride, float *zn, int threads) {
    int nblk = (D + RB - 1) / RB, per = (nblk + NP - 1) / NP;
    float **scratch = alloc_scratch(threads, B);
    float *zp = malloc(sizeof(float) * NP * (size_t)K * B * H);
    if (!scratch || !zp) {
        if (scratch) free_scratch(scratch, threads);
        free(zp);
        return -1;
    }
    #pragma omp parallel num_threads(threads)
    {
        #pragma omp for schedule(static)
        for (int task = 0; task < K * NP; task++) {
            int k = task / NP, p = task % NP;
            const float *xk = x + (size_t)k * (size_t)x_model_stride, *gk = g + (size_t)k * B * H;
            const float *xnk = xn + (size_t)k * (size_t)xn_model_stride, *wk = W + (size_t)k * D * H;
            float *zk = zp + ((size_t)p * K + k) * B * H, *xt = thread_scratch(scratch);
            struct adam a = {one_minus_beta1, beta2, one_minus_beta2, eps, wd[k], step_size[k], bc2_sqrt[k]};
            for (size_t i = 0; i < (size_t)B * H; i++) zk[i] = 0.0f;
            for (int blk = p * per; blk < (p + 1) * per && blk < nblk; blk++) {
                int r0 = blk * RB, nr = (r0 + RB < D ? r0 + RB : D) - r0;
                if (active[k]) adam_block(xk, gk, xt, B, D, H, r0, nr, 0, H, W, m, v, (size_t)k * D + r0, &a, xnk);
                for (int h0 = 0; h0 < H; h0 += 64)
                    fwd_block(xnk, D, wk, H, zk, 0, B, h0, h0 + 64 < H ? h0 + 64 : H, r0, r0 + nr);
            }
        }
        #pragma omp for schedule(static)
        for (int k = 0; k < K; k++)
            for (size_t i = 0; i < (size_t)B * H; i++) {
                float s = zp[(size_t)k * B * H + i];
                for (int p = 1; p < NP; p++) s += zp[((size_t)p * K + k) * B * H + i];
                zn[(size_t)k * B * H + i] = s;
            }
    }
    free(zp);
    free_scratch(scratch, threads);
    return 0;
}
