/* The forward product of a data layer, K models at once (see trainer/native.py):

       y[k] = (x[k] @ W[k]) * scale[k] + b[k]          x[k]: [B, D] (the masked input), W[k]: [D, H], y[k]: [B, H]

   torch's bmm over K = 5 models runs each model's product on one thread (3 + 2 over two cores); here the parallel
   tasks are (model, rows, 64 columns) tiles -- all B rows, or fewer when that gives under four tasks a thread -- so
   two threads get equal shares. Inside a task the reduction over D goes in chunks of DC rows of W (a 128-KB block
   of its 64 columns that stays in the core's L2 while every group of four input rows passes over it); four rows
   x 64 columns of y sit in sixteen 16-float vectors. Each element of y is summed by one thread in one order
   (d = 0, 1, ..., D - 1), so the result does not depend on the thread count.
   H must be a multiple of 16 (trainer.native sends nothing else); rows past the last four take a scalar loop.
   GCC vector extensions (no intrinsics): the compiler maps them to AVX-512, AVX2 or NEON. */
#include <stddef.h>

typedef float v16 __attribute__((vector_size(64), aligned(4)));
#define DC 512          /* rows of W per chunk */

#if defined(__x86_64__) || defined(__i386__)
#define KEEP_IN_REGISTERS(a, b, c, d) __asm__("" : "+v"(a), "+v"(b), "+v"(c), "+v"(d))
#else
#define KEEP_IN_REGISTERS(a, b, c, d) ((void)0)
#endif

static inline v16 load16(const float *p) { v16 v; __builtin_memcpy(&v, p, 64); return v; }
static inline void store16(float *p, v16 v) { __builtin_memcpy(p, &v, 64); }

/* y rows [r, r + 4) x columns [h0, h0 + 64) += x rows [r, r + 4) x W rows [d0, d1) */
static inline void tile4x64(const float *xk, int D, const float *wk, int ws, float *yk, int r, int h0, int d0,
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
static inline void tile4x16(const float *xk, int D, const float *wk, int H, float *yk, int r, int h0, int d0,
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

/* x: K blocks of [B, D] rows, x_model_stride elements apart (0: rows shared by every model); W [K, D, H];
   b [K, H] or NULL (none); scale [K] or NULL (1); y [K, B, H] (written). */
void data_forward(const float *x, long long x_model_stride, const float *W, const float *b, const float *scale,
                  float *y, int K, int B, int D, int H, int threads) {
    int nh = (H + 63) / 64, rt = (B + 3) / 4 * 4;
    while (rt > 4 && K * nh * ((B + rt - 1) / rt) < 4 * threads) rt = (rt / 2 + 3) / 4 * 4;
    int nr = (B + rt - 1) / rt;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int task = 0; task < K * nr * nh; task++) {
        int k = task / (nr * nh), r0 = (task / nh) % nr * rt, h0 = task % nh * 64;
        int r1 = r0 + rt < B ? r0 + rt : B, h1 = h0 + 64 < H ? h0 + 64 : H;
        const float *xk = x + (size_t)k * (size_t)x_model_stride, *wk = W + (size_t)k * D * H;
        float *yk = y + (size_t)k * B * H;
        for (int r = r0; r < r1; r++)
            for (int h = h0; h < h1; h++) yk[(size_t)r * H + h] = 0.0f;
        for (int d0 = 0; d0 < D; d0 += DC) {
            int d1 = d0 + DC < D ? d0 + DC : D;
            int r = r0;
            for (; r + 4 <= r1; r += 4) {
                if (h1 - h0 == 64) tile4x64(xk, D, wk + h0, H, yk, r, h0, d0, d1, H);
                else
                    for (int h = h0; h + 16 <= h1; h += 16) tile4x16(xk, D, wk, H, yk, r, h, d0, d1);
            }
            for (; r < r1; r++)
                for (int h = h0; h < h1; h++) {
                    float s = yk[(size_t)r * H + h];
                    for (int d = d0; d < d1; d++) s += xk[(size_t)r * D + d] * wk[(size_t)d * H + h];
                    yk[(size_t)r * H + h] = s;
                }
        }
        if (scale || b) {
            float sc = scale ? scale[k] : 1.0f;
            for (int r = r0; r < r1; r++)
                for (int h = h0; h < h1; h++)
                    yk[(size_t)r * H + h] = yk[(size_t)r * H + h] * sc + (b ? b[(size_t)k * H + h] : 0.0f);
        }
    }
}
