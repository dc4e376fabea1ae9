/* The register tiles of a forward product y[k] += x[k] @ W[k] over a range of W's rows (data_forward.c, and
   wgrad_adam.c's next-step product), and the epilogue y * scale + b they share. */
#ifndef FEATSTORE_FORWARD_TILE_H
#define FEATSTORE_FORWARD_TILE_H
#include <stddef.h>
#include "vec.h"

/* y rows [r, r + 4) x columns [h0, h0 + 64) += x rows [r, r + 4) x W rows [d0, d1) */
static inline void fwd_tile4x64(const float *xk, int D, const float *wk, int ws, float *yk, int r, int h0, int d0,
                                int d1, int H) {
    float *y0 = yk + (size_t)r * H + h0, *y1 = y0 + H, *y2 = y1 + H, *y3 = y2 + H;
    v16 a00 = load16(y0), a01 = load16(y0 + 16), a02 = load16(y0 + 32), a03 = load16(y0 + 48);
    v16 a10 = load16(y1), a11 = load16(y1 + 16), a12 = load16(y1 + 32), a13 = load16(y1 + 48);
    v16 a20 = load16(y2), a21 = load16(y2 + 16), a22 = load16(y2 + 32), a23 = load16(y2 + 48);
    v16 a30 = load16(y3), a31 = load16(y3 + 16), a32 = load16(y3 + 32), a33 = load16(y3 + 48);
    const float *x0 = xk + (size_t)r * D, *x1 = x0 + D, *x2 = x1 + D, *x3 = x2 + D;
    for (int d = d0; d < d1; d++) {
        const float *wd = wk + (size_t)d * ws;
        v16 w0 = load16(wd), w1 = load16(wd + 16), w2 = load16(wd + 32), w3 = load16(wd + 48);
        KEEP_IN_REGISTERS(w0, w1, w2, w3);
        float s0 = x0[d], s1 = x1[d], s2 = x2[d], s3 = x3[d];
        a00 += s0 * w0; a01 += s0 * w1; a02 += s0 * w2; a03 += s0 * w3;
        a10 += s1 * w0; a11 += s1 * w1; a12 += s1 * w2; a13 += s1 * w3;
        a20 += s2 * w0; a21 += s2 * w1; a22 += s2 * w2; a23 += s2 * w3;
        a30 += s3 * w0; a31 += s3 * w1; a32 += s3 * w2; a33 += s3 * w3;
    }
    store16(y0, a00); store16(y0 + 16, a01); store16(y0 + 32, a02); store16(y0 + 48, a03);
    store16(y1, a10); store16(y1 + 16, a11); store16(y1 + 32, a12); store16(y1 + 48, a13);
    store16(y2, a20); store16(y2 + 16, a21); store16(y2 + 32, a22); store16(y2 + 48, a23);
    store16(y3, a30); store16(y3 + 16, a31); store16(y3 + 32, a32); store16(y3 + 48, a33);
}

/* y rows [r, r + 4) x columns [h0, h0 + 16) += ...: the columns past the last 64 (H = 80, 96, 112, ...) */
static inline void fwd_tile4x16(const float *xk, int D, const float *wk, int H, float *yk, int r, int h0, int d0,
                                int d1) {
    float *y0 = yk + (size_t)r * H + h0, *y1 = y0 + H, *y2 = y1 + H, *y3 = y2 + H;
    v16 a0 = load16(y0), a1 = load16(y1), a2 = load16(y2), a3 = load16(y3);
    const float *x0 = xk + (size_t)r * D, *x1 = x0 + D, *x2 = x1 + D, *x3 = x2 + D;
    for (int d = d0; d < d1; d++) {
        v16 w0 = load16(wk + (size_t)d * H + h0);
        a0 += x0[d] * w0; a1 += x1[d] * w0; a2 += x2[d] * w0; a3 += x3[d] * w0;
    }
    store16(y0, a0); store16(y1, a1); store16(y2, a2); store16(y3, a3);
}

/* y rows [r0, r1) x columns [h0, h1) += x rows [r0, r1) x W rows [d0, d1): 4 x 64 tiles where h1 - h0 = 64, else
   4 x 16 ones; rows past the last four in a scalar loop (each element summed over d in order either way) */
static inline void fwd_block(const float *xk, int D, const float *wk, int H, float *yk, int r0, int r1, int h0,
                             int h1, int d0, int d1) {
    int r = r0;
    for (; r + 4 <= r1; r += 4) {
        if (h1 - h0 == 64) fwd_tile4x64(xk, D, wk + h0, H, yk, r, h0, d0, d1, H);
        else
            for (int h = h0; h + 16 <= h1; h += 16) fwd_tile4x16(xk, D, wk, H, yk, r, h, d0, d1);
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
