/* The register tiles of the kernels' products (data_forward.c, wgrad_adam.c's next-step product, the attention
   trunk's layers), a forward product's block over a range of W's rows, and the epilogue y * scale + b. */
#ifndef FEATSTORE_FORWARD_TILE_H
#define FEATSTORE_FORWARD_TILE_H
#include <stddef.h>
#include "vec.h"

/* tile4x64 (below), 16 columns wide: the columns past the last 64 (widths 80, 96, 112, ...), and tile4x64's
   quarters where !WIDE_TILES */
static inline void tile4x16(const float *a0, const float *a1, const float *a2, const float *a3, size_t sa,
                            const float *b, size_t ldb, int steps, float *y0, float *y1, float *y2, float *y3,
                            int add) {
    vn c0[NV], c1[NV], c2[NV], c3[NV], z = {0};
    UNROLL_NV
    for (int j = 0; j < NV; j++) {
        c0[j] = add ? loadn(y0 + j * VN) : z; c1[j] = add ? loadn(y1 + j * VN) : z;
        c2[j] = add ? loadn(y2 + j * VN) : z; c3[j] = add ? loadn(y3 + j * VN) : z;
    }
    for (int i = 0; i < steps; i++) {
        const float *bi = b + (size_t)i * ldb;
        float s0 = a0[i * sa], s1 = a1[i * sa], s2 = a2[i * sa], s3 = a3[i * sa];
        UNROLL_NV
        for (int j = 0; j < NV; j++) {
            vn w = loadn(bi + j * VN);
            KEEP_VN(w);
            c0[j] += s0 * w; c1[j] += s1 * w; c2[j] += s2 * w; c3[j] += s3 * w;
        }
    }
    UNROLL_NV
    for (int j = 0; j < NV; j++) {
        storen(y0 + j * VN, c0[j]); storen(y1 + j * VN, c1[j]);
        storen(y2 + j * VN, c2[j]); storen(y3 + j * VN, c3[j]);
    }
}

/* Four rows of a product in registers: y_j[0:64] (+)= sum_i a_j[i sa] b[i ldb + 0:64] for j = 0..3, i < steps
   (add = 0: y is overwritten). With a_j = rows of x (sa = 1) and b = rows of W it is a forward product's tile;
   with a_j = columns of x (sa = row stride) and b = rows of an output gradient, a weight gradient's. Where
   !WIDE_TILES (vec.h) it runs as four 4 x 16 tiles. */
static inline void tile4x64(const float *a0, const float *a1, const float *a2, const float *a3, size_t sa,
                            const float *b, size_t ldb, int steps, float *y0, float *y1, float *y2, float *y3,
                            int add) {
#if !WIDE_TILES
    for (int c = 0; c < 64; c += 16)
        tile4x16(a0, a1, a2, a3, sa, b + c, ldb, steps, y0 + c, y1 + c, y2 + c, y3 + c, add);
#else
    v16 z = {0};
    v16 a00 = add ? load16(y0) : z, a01 = add ? load16(y0 + 16) : z, a02 = add ? load16(y0 + 32) : z;
    v16 a03 = add ? load16(y0 + 48) : z, a10 = add ? load16(y1) : z, a11 = add ? load16(y1 + 16) : z;
    v16 a12 = add ? load16(y1 + 32) : z, a13 = add ? load16(y1 + 48) : z, a20 = add ? load16(y2) : z;
    v16 a21 = add ? load16(y2 + 16) : z, a22 = add ? load16(y2 + 32) : z, a23 = add ? load16(y2 + 48) : z;
    v16 a30 = add ? load16(y3) : z, a31 = add ? load16(y3 + 16) : z, a32 = add ? load16(y3 + 32) : z;
    v16 a33 = add ? load16(y3 + 48) : z;
    for (int i = 0; i < steps; i++) {
        const float *bi = b + (size_t)i * ldb;
        v16 w0 = load16(bi), w1 = load16(bi + 16), w2 = load16(bi + 32), w3 = load16(bi + 48);
        KEEP_IN_REGISTERS(w0, w1, w2, w3);
        float s0 = a0[i * sa], s1 = a1[i * sa], s2 = a2[i * sa], s3 = a3[i * sa];
        a00 += s0 * w0; a01 += s0 * w1; a02 += s0 * w2; a03 += s0 * w3;
        a10 += s1 * w0; a11 += s1 * w1; a12 += s1 * w2; a13 += s1 * w3;
        a20 += s2 * w0; a21 += s2 * w1; a22 += s2 * w2; a23 += s2 * w3;
        a30 += s3 * w0; a31 += s3 * w1; a32 += s3 * w2; a33 += s3 * w3;
    }
    store16(y0, a00); store16(y0 + 16, a01); store16(y0 + 32, a02); store16(y0 + 48, a03);
    store16(y1, a10); store16(y1 + 16, a11); store16(y1 + 32, a12); store16(y1 + 48, a13);
    store16(y2, a20); store16(y2 + 16, a21); store16(y2 + 32, a22); store16(y2 + 48, a23);
    store16(y3, a30); store16(y3 + 16, a31); store16(y3 + 32, a32); store16(y3 + 48, a33);
#endif
}

/* y rows [r0, r1) x columns [h0, h1) += x rows [r0, r1) x W rows [d0, d1): 4 x 64 tiles where h1 - h0 = 64, else
   4 x 16 ones; rows past the last four in a scalar loop (each element summed over d in order either way) */
static inline void fwd_block(const float *xk, int D, const float *wk, int H, float *yk, int r0, int r1, int h0,
                             int h1, int d0, int d1) {
    int r = r0;
    for (; r + 4 <= r1; r += 4) {
        const float *x0 = xk + (size_t)r * D + d0, *x1 = x0 + D, *x2 = x1 + D, *x3 = x2 + D;
        float *y0 = yk + (size_t)r * H, *y1 = y0 + H, *y2 = y1 + H, *y3 = y2 + H;
        const float *w = wk + (size_t)d0 * H;
        if (h1 - h0 == 64) tile4x64(x0, x1, x2, x3, 1, w + h0, H, d1 - d0, y0 + h0, y1 + h0, y2 + h0, y3 + h0, 1);
        else
            for (int h = h0; h + 16 <= h1; h += 16)
                tile4x16(x0, x1, x2, x3, 1, w + h, H, d1 - d0, y0 + h, y1 + h, y2 + h, y3 + h, 1);
    }
    for (; r < r1; r++)
        for (int h = h0; h < h1; h++) {
            float s = yk[(size_t)r * H + h];
            for (int d = d0; d < d1; d++) s += xk[(size_t)r * D + d] * wk[(size_t)d * H + h];
            yk[(size_t)r * H + h] = s;
        }
}

/* y rows [r0, r1) x columns [h0, h1) of model k: y * sc + b[h] (b NULL: no bias) */
static inline void scale_bias_rows(float *yk, int H, int r0, int r1, int h0, int h1, float sc, const float *bk) {
    for (int r = r0; r < r1; r++)
        for (int h = h0; h < h1; h++) yk[(size_t)r * H + h] = yk[(size_t)r * H + h] * sc + (bk ? bk[h] : 0.0f);
}

#endif
