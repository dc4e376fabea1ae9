/* The forward product of a data layer, K models at once (see trainer/native.py):

       y[k] = (x[k] @ W[k]) * scale[k] + b[k]          x[k]: [B, D] (the masked input), W[k]: [D, H], y[k]: [B, H]

   torch's bmm over K = 5 models runs each model's product on one thread (3 + 2 over two cores); here the parallel
   tasks are (model, rows, 64 columns) tiles -- all B rows, or fewer when that gives under four tasks a thread -- so
   two threads get equal shares. Inside a task the reduction over D goes in chunks of DC rows of W (a block of its
   64 columns that stays in the core's L2 while every group of four input rows passes over it); four rows x 64
   columns of y sit in sixteen 16-float vectors (AVX-512; elsewhere four 4 x 16 tiles pass over the block, each
   column strip of it then in L1). Each element of y is summed by one thread in one order (d = 0, 1, ..., D - 1),
   so the result does not depend on the thread count.
   H must be a multiple of 16 (trainer.native sends nothing else); rows past the last four take a scalar loop.
   GCC vector extensions (no intrinsics, see vec.h): the compiler maps them to AVX-512, AVX2 or NEON. */
#include <stddef.h>

#include "forward_tile.h"

#if WIDE_TILES
#define DC 512          /* rows of W per chunk */
#else
#define DC 256          /* a 4 x 16 tile's strip of W (16 KB) then stays in L1 with its x rows: 10% faster (AVX2) */
#endif

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
            fwd_block(xk, D, wk, H, yk, r0, r1, h0, h1, d0, d1);
        }
        if (scale || b) scale_bias_rows(yk, H, r0, r1, h0, h1, scale ? scale[k] : 1.0f, b ? b + (size_t)k * H : NULL);
    }
}

/* y[k] = y[k] * scale[k] + b[k] in place, with data_forward's own arithmetic: the epilogue of a product made
   elsewhere (wgrad_adam_next's next-step product), so that it equals data_forward's result bit for bit. */
void scale_bias(float *y, const float *b, const float *scale, int K, int B, int H) {
    for (int k = 0; k < K; k++)
        scale_bias_rows(y + (size_t)k * B * H, H, 0, B, 0, H, scale ? scale[k] : 1.0f, b ? b + (size_t)k * H : NULL);
}

/* the float32 lanes of the kernels' native vectors (vec.h's VN) */
int vector_lanes(void) { return VN; }
